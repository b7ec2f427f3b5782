"""Omniglot "lake_20w1s": see configs/omniglot.py (run from the repository root)."""

import functools

from configs import omniglot

get_config = functools.partial(omniglot.get_config, "lake_20w1s")
