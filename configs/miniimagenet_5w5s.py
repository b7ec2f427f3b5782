"""mini-ImageNet "5w5s": see configs/miniimagenet.py (run from the repository root)."""

import functools

from configs import miniimagenet

get_config = functools.partial(miniimagenet.get_config, "5w5s")
