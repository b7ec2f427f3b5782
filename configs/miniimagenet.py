r"""mini-ImageNet 5-way K-shot classification (Finn et al. 2017, section 5.2), every variant.

The named files `configs/miniimagenet_<variant>.py` return these variants; the variant can
also be given after a colon, `--config=configs/miniimagenet.py:5w5s`.

The paper's settings, from its section 5.2 and the original code's commands
(github.com/cbfinn/maml, README and main.py): 5-way; a network of 4 blocks of 3x3 conv
with 32 filters (stride 1, "SAME"), batch norm, ReLU and 2x2 max-pool, then a linear head;
5 inner steps at inner lr 0.01 in training, 10 at test time; meta-batch 4 (1-shot) or 2
(5-shot); 15 query images per class; Adam at 1e-3; 60,000 meta-steps. The first-order
approximation the paper also reports: `--config.first_order=True`.

    "5w1s", "5w5s"   the paper's 5-way 1-shot and 5-shot
    "tiny"           seconds-long, for tests (2-way, 4 filters; needs tiny data)

Data: `ROOT/images/*.jpg` (84x84 RGB) and `ROOT/{train,val,test}.csv`, Ravi & Larochelle's
split (github.com/twitter/meta-learning-lstm, folder data/miniImagenet; the images come
from ImageNet). Nothing is downloaded. Run from the repository root (the named files
import this module as `configs.miniimagenet`):

    python -m maml_dist.train --config=configs/miniimagenet_5w1s.py --workdir=runs/mi5w1s \
        --config.data_dir=/path/to/miniimagenet
    python -m maml_dist.evaluate --workdir=runs/mi5w1s

`paper_settings` is also the base of `configs/image_folder.py`.
"""

import ml_collections

VARIANTS = ("5w1s", "5w5s", "tiny")
# shots: meta-batch size (the original code's commands).
_META_BATCH = {1: 4, 5: 2}


def paper_settings(shots: int) -> ml_collections.ConfigDict:
    """The paper's 5-way `shots`-shot mini-ImageNet settings, without a data source."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data_dir = ""  # --config.data_dir
    c.image_size = 84  # side of the images fed to the network
    c.ways = 5
    c.shots = shots
    c.num_query = 15  # per class in training (the original code draws K + 15 per class)

    c.num_steps = 60_000
    c.meta_batch_size = _META_BATCH[shots]
    c.pad_meta_batch = False
    # The meta-learning algorithm: maml | fomaml | metasgd | anil | boil | reptile | imaml | mamlpp.
    c.algorithm = "maml"
    c.inner_steps = 5
    c.inner_lr = 0.01
    c.first_order = False
    c.remat_inner = False
    # Inner loops of up to this many steps are traced unrolled (see configs/omniglot.py).
    c.inner_unroll = 1
    c.imaml_lambda = 2.0  # iMAML: proximal strength (Rajeswaran et al.'s Omniglot value; untuned)
    c.cg_steps = 5  # iMAML: conjugate-gradient iterations per task
    # iMAML: inner steps backtrack from inner_lr up to this many halvings (0: fixed steps).
    c.imaml_line_search = 8
    # MAML++ (algorithm "mamlpp"; README, "MAML++"): each change a switch, for ablations.
    # -1: the anneal over 10% of num_steps, first order for the first third of them.
    c.mamlpp = ml_collections.ConfigDict()
    c.mamlpp.msl = True  # multi-step loss: the query loss after every inner step, weighted
    c.mamlpp.msl_anneal_steps = -1  # meta-steps until the last step's loss alone counts
    c.mamlpp.lslr = True  # learned inner rates, one per parameter tensor and inner step
    c.mamlpp.doa_steps = -1  # derivative-order annealing: first order before this step
    c.task_batching = "auto"
    c.reduction = "sum"
    # With vmap: a device's tasks in batched groups of this many, one after another
    # (memory and compile shapes of a group, not of the meta-batch); 0: all at once.
    c.tasks_per_vmap = 0
    # XLA's CPU thread pool (maml_dist/cpu_threads.py): 0, one thread per core.
    c.cpu_threads = 0
    c.meta_lr = 1e-3
    # "auto": cosine-annealed to meta_lr_min over num_steps for mamlpp (MAML++), constant
    # for every other algorithm; or "constant" | "cosine".
    c.meta_lr_schedule = "auto"
    c.meta_lr_min = 1e-5
    c.grad_clip_norm = 0.0
    # The meta-optimiser's step on learned inner rates (metasgd; mamlpp with lslr), as a
    # fraction of its step on the weights; 1: the same (the papers'). docs/algorithms.md,
    # "MAML++ with five inner steps": 0.1 lets MAML++ train five steps on the sinusoid.
    c.learned_lr_scale = 1.0
    # A meta-step whose meta-loss, meta-gradient or update is inf or NaN is never applied
    # (README, "Non-finite values"): "stop" ends the run at the first one (exit status 1);
    # "skip" goes on without it, and stops after nonfinite_max_skips of them in a row.
    c.nonfinite = "stop"
    c.nonfinite_max_skips = 10

    c.log_every = 100
    c.eval_every = 1_000
    c.checkpoint_every = 2_000
    c.max_to_keep = 3
    c.eval_tasks = 100
    c.eval_inner_steps = 10
    c.host_chunk_steps = 10  # meta-steps per dispatched chunk of host-sampled batches
    # Where training episodes are drawn: "host" (numpy in a feed thread, copied to the
    # devices each chunk) or "device" (the training images put on every device once, the
    # episodes drawn inside the compiled step). README, "Where episodes are drawn".
    c.data_placement = "host"
    # Processes drawing the host feed's episodes (1: the feed's own thread). More help where
    # the host has cores to spare and the feed cannot keep up with the devices.
    c.host_workers = 1

    c.model = ml_collections.ConfigDict()
    c.model.filters = 32
    c.model.blocks = 4
    c.model.strides = 1
    c.model.pool = True  # 2x2 max-pool ending each block
    # "auto": "slices" on CPU ("im2col" before maml_dist 0.5), "xla" on accelerators.
    c.model.conv_impl = "auto"
    # "auto": "per_step_support" for mamlpp (MAML++), "transductive" (MAML's) otherwise;
    # or "per_step_running" or "none". README, "Batch norm", says what each means.
    c.model.bn_mode = "auto"
    # What "auto" gives mamlpp: "per_step_support" (since 0.5) or "per_step_running" (the
    # "auto" of runs saved before 0.5, which have no such field).
    c.model.mamlpp_bn_mode = "per_step_support"
    # "float32", or "bfloat16": convs, matrix products and activations in bfloat16, the
    # parameters, batch-norm statistics, loss and updates float32 (README, "Compute dtype").
    c.model.compute_dtype = "float32"
    c.bn_momentum = 0.1  # per-step running statistics: moving-average rate per meta-step
    return c


def get_config(variant: str | None = "5w1s") -> ml_collections.ConfigDict:
    """Returns one of `VARIANTS` (default the paper's 5-way 1-shot)."""
    variant = variant or "5w1s"
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r} of configs/miniimagenet.py; use one of {VARIANTS}"
        )
    c = paper_settings(5 if variant == "5w5s" else 1)
    c.task = "miniimagenet"
    c.miniimagenet = ml_collections.ConfigDict()
    c.miniimagenet.cache_dir = ""  # decoded images; "" = $XDG_CACHE_HOME/maml_dist
    if variant == "tiny":
        shrink_for_tests(c)
    return c


def shrink_for_tests(c: ml_collections.ConfigDict) -> None:
    """Makes `c` seconds-long: 2-way, 4 filters, 4 meta-steps, tiny evaluations."""
    c.ways = 2
    c.num_query = 2
    c.meta_batch_size = 2
    c.inner_steps = 1
    c.num_steps = 4
    c.log_every = 2
    c.eval_every = 2
    c.checkpoint_every = 2
    c.eval_tasks = 2
    c.eval_inner_steps = 2
    c.host_chunk_steps = 2
    c.model.filters = 4
