r"""Omniglot N-way K-shot classification (Finn et al. 2017, section 5.2), every variant.

The named files `configs/omniglot_<variant>.py` return these variants; the variant can also
be given after a colon, `--config=configs/omniglot.py:5w1s`.

Paper variants, from the original code's commands (github.com/cbfinn/maml, README and
main.py): 5-way: meta-batch 32, inner lr 0.4, 1 inner step; 20-way: meta-batch 16, inner
lr 0.1, 5 inner steps; Adam at 1e-3; 60,000 meta-steps; 10 inner steps at test time;
K query images per class in training, as the original data generator draws 2K per class;
1200 characters shuffled with seed 1 for meta-training (the last 100 of them validate),
the other 423 for meta-testing; rotations by 90/180/270 degrees as new classes.

    "5w1s", "5w5s", "20w1s", "20w5s"   the full data set (images_background + _evaluation)
    "lake_20w1s"                       the full data set, the ten alphabets of Lake et al.'s
                                       one-shot runs held out whole for meta-testing, four
                                       others (by split_seed) for validation: the config
                                       whose error on the runs is a held-out one
    "minimal_5w1s", "minimal_20w1s"    the two minimal splits; Greek and Korean held out
                                       whole for meta-testing, Tagalog for validation;
                                       sized for about an hour on a 2-core CPU
    "tiny"                             seconds-long, for tests (needs tiny image data)

Run from the repository root (the named files import this module as `configs.omniglot`):

    python -m maml_dist.train --config=configs/omniglot_5w1s.py --workdir=runs/o5w1s \
        --config.data_dir=/path/to/omniglot
    python -m maml_dist.evaluate --workdir=runs/o5w1s

Task batching and the conv implementation default to "auto": a loop over each device's
tasks and slices convs on CPU (README trap 8, README "Omniglot speed"; im2col convs before
maml_dist 0.5), vmap and XLA convs on accelerators.
"""

import ml_collections

from maml_dist.data import omniglot_runs

_PAPER = {
    # ways, shots: (meta_batch_size, inner_lr, inner_steps)
    (5, 1): (32, 0.4, 1),
    (5, 5): (32, 0.4, 1),
    (20, 1): (16, 0.1, 5),
    (20, 5): (16, 0.1, 5),
}
VARIANTS = (
    "5w1s",
    "5w5s",
    "20w1s",
    "20w5s",
    "lake_20w1s",
    "minimal_5w1s",
    "minimal_20w1s",
    "tiny",
)


def get_config(variant: str | None = "5w1s") -> ml_collections.ConfigDict:
    """Returns one of `VARIANTS` (default the paper's 5-way 1-shot)."""
    variant = variant or "5w1s"
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r} of configs/omniglot.py; use one of {VARIANTS}"
        )
    minimal = variant.startswith("minimal_")
    name = variant.removeprefix("minimal_").removeprefix("lake_")
    ways, shots = (5, 1) if variant == "tiny" else _ways_shots(name)
    meta_batch, inner_lr, inner_steps = _PAPER[ways, shots]

    c = ml_collections.ConfigDict()
    c.task = "omniglot"
    c.seed = 0
    c.data_dir = ""  # a folder holding the sets, zipped or extracted (--config.data_dir)
    c.ways = ways
    c.shots = shots
    c.num_query = shots  # per class, as in the original code

    c.num_steps = 60_000
    c.meta_batch_size = meta_batch
    c.pad_meta_batch = False
    # The meta-learning algorithm: maml | fomaml | metasgd | anil | boil | reptile | imaml | mamlpp.
    c.algorithm = "maml"
    c.inner_steps = inner_steps
    c.inner_lr = inner_lr
    c.first_order = False
    c.remat_inner = False
    # Inner loops of up to this many steps are traced unrolled, not as a lax.scan: the same
    # speed at one step, 21% slower at five for this conv net on CPU (docs/benchmarks.md,
    # "The trainer against a hand-written loop").
    c.inner_unroll = 1
    c.imaml_lambda = 2.0  # iMAML: proximal strength lambda (Rajeswaran et al.: 2 on Omniglot)
    c.cg_steps = 5  # iMAML: conjugate-gradient iterations per task
    # iMAML: inner steps backtrack from inner_lr up to this many halvings (0: fixed steps,
    # which diverge on the sinusoid problem; README, "Algorithms").
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
    # XLA's CPU thread pool (maml_dist/cpu_threads.py): 0, one thread per core; the convs
    # need them (Omniglot 5-way 1-shot on 2 cores: 58 tasks/s, 41 on one thread).
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
    c.model.filters = 64
    c.model.blocks = 4
    # "auto": "slices" on CPU ("im2col" before maml_dist 0.5), "xla" on accelerators; or
    # "xla", "im2col" or "slices" (README "Omniglot speed").
    c.model.conv_impl = "auto"
    # "auto": "per_step_support" for mamlpp (queries normalised with the support set's
    # statistics), "transductive" (MAML's) otherwise; or "per_step_running" or "none".
    # README, "Batch norm", says what each means for the evaluation protocol.
    c.model.bn_mode = "auto"
    # What "auto" gives mamlpp: "per_step_support" (since 0.5) or "per_step_running" (the
    # "auto" of runs saved before 0.5, which have no such field).
    c.model.mamlpp_bn_mode = "per_step_support"
    # "float32", or "bfloat16": convs, matrix products and activations in bfloat16, the
    # parameters, batch-norm statistics, loss and updates float32 (README, "Compute dtype").
    c.model.compute_dtype = "float32"
    c.bn_momentum = 0.1  # per-step running statistics: moving-average rate per meta-step

    c.omniglot = ml_collections.ConfigDict()
    c.omniglot.sets = ("images_background", "images_evaluation")
    c.omniglot.split = "standard"  # or "alphabet"
    c.omniglot.num_train = 1200
    c.omniglot.num_validation = 100
    c.omniglot.split_seed = 1
    c.omniglot.held_out = ()  # alphabet split: alphabets held out for meta-testing
    c.omniglot.num_held_out = 0  # alphabet split: else this many, chosen by split_seed
    # Alphabet split: alphabets held out from meta-training for validation (never test
    # ones), or else this many chosen by split_seed; one of the two is required to train.
    c.omniglot.validation_alphabets = ()
    c.omniglot.num_validation_alphabets = 0
    c.omniglot.rotations = True
    c.omniglot.image_size = 28
    c.omniglot.cache_dir = ""  # "" = $XDG_CACHE_HOME/maml_dist

    if minimal:
        c.omniglot.sets = ("images_background_small1", "images_background_small2")
        c.omniglot.split = "alphabet"
        c.omniglot.held_out = ("Greek", "Korean")
        c.omniglot.validation_alphabets = ("Tagalog",)
        c.num_query = 5
        c.num_steps = 3_000 if ways == 5 else 1_000
        c.log_every = 50
        c.eval_every = 500
        c.checkpoint_every = 500
    elif variant == "lake_20w1s":
        # For Lake et al.'s one-shot runs: their ten alphabets never meta-trained on.
        c.omniglot.split = "alphabet"
        c.omniglot.held_out = omniglot_runs.RUN_ALPHABETS
        c.omniglot.num_validation_alphabets = 4
    elif variant == "tiny":
        c.omniglot.sets = ("images_background_small1", "images_background_small2")
        c.omniglot.split = "alphabet"
        c.omniglot.num_held_out = 1
        c.omniglot.num_validation_alphabets = 1
        c.omniglot.rotations = False
        c.omniglot.image_size = 8
        c.ways = 2
        c.num_query = 1
        c.meta_batch_size = 4
        c.num_steps = 6
        c.log_every = 2
        c.eval_every = 3
        c.checkpoint_every = 3
        c.eval_tasks = 4
        c.eval_inner_steps = 2
        c.host_chunk_steps = 2
        c.model.filters = 4
        c.model.blocks = 2
    return c


def _ways_shots(name: str) -> tuple[int, int]:
    ways, shots = name.removesuffix("s").split("w")
    return int(ways), int(shots)
