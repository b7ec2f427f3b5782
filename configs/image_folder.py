r"""Few-shot classification of your own images: any folder `ROOT/<class>/<image>`.

    python -m maml_dist.train --config=configs/image_folder.py --workdir=runs/mine \
        --config.data_dir=ROOT --config.image_size=84
    python -m maml_dist.evaluate --workdir=runs/mine

Images are .png or .jpg files, grayscale or RGB, any size: each is resized (squashed, not
cropped) to image_size x image_size and converted to RGB, or to grayscale with
`--config.image_folder.channels=1`. The classes are split 60/20/20 into meta-training,
validation and meta-test parts, shuffled by `--config.image_folder.split_seed`, unless
`--config.image_folder.split_file=PATH` names a JSON file
`{"train": [...], "validation": [...], "test": [...]}` of class folder names.

Every other setting is mini-ImageNet's (configs/miniimagenet.py): the paper's network for
natural images (4 blocks of 32 3x3 convs, batch norm, ReLU, 2x2 max-pool; images of at
least 16 pixels), 5 inner steps at lr 0.01 (10 at test time), Adam at 1e-3, 15 query
images per class, 60,000 meta-steps. Variants:

    "5w1s", "5w5s"   5-way 1-shot (meta-batch 4) and 5-shot (meta-batch 2)
    "tiny"           about half a minute on a 2-core CPU, for tests: 5-way 1-shot with a
                     small stride-2 conv net, 1 inner step at lr 0.4, 150 meta-steps

Run from the repository root (this file imports `configs.miniimagenet`).
"""

import ml_collections

from configs import miniimagenet

VARIANTS = ("5w1s", "5w5s", "tiny")


def get_config(variant: str | None = "5w1s") -> ml_collections.ConfigDict:
    """Returns one of `VARIANTS` (default 5-way 1-shot)."""
    variant = variant or "5w1s"
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r} of configs/image_folder.py; use one of {VARIANTS}"
        )
    c = miniimagenet.paper_settings(5 if variant == "5w5s" else 1)
    c.task = "image_folder"
    c.image_size = 0  # must be given: --config.image_size=N
    c.image_folder = ml_collections.ConfigDict()
    c.image_folder.channels = 3  # 3: RGB, 1: grayscale
    c.image_folder.split_file = ""  # JSON {"train": [...], "validation": [...], "test": [...]}
    c.image_folder.split_seed = 0  # shuffles the classes of the 60/20/20 split
    c.image_folder.cache_dir = ""  # decoded images; "" = $XDG_CACHE_HOME/maml_dist
    if variant == "tiny":
        c.num_query = 5
        c.meta_batch_size = 8
        c.inner_steps = 1
        c.inner_lr = 0.4
        c.num_steps = 150
        c.log_every = 50
        c.eval_every = 150
        c.checkpoint_every = 150
        c.eval_tasks = 16
        c.eval_inner_steps = 3
        c.host_chunk_steps = 25
        c.model.filters = 16
        c.model.blocks = 3
        c.model.strides = 2
        c.model.pool = False
    return c
