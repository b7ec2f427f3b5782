"""Sinusoid regression, the setting of Finn et al. 2017 (section 5.1).

Meta-batch 25, K=10 support and 10 query points, one inner SGD step with alpha=0.01,
Adam with meta learning rate 1e-3, 70,000 meta-steps; MLP 1-40-40-1 with ReLU.

Train and meta-test (one CPU device):

    python -m maml_dist.train --config=configs/sinusoid.py --workdir=runs/sinusoid
    python -m maml_dist.evaluate --workdir=runs/sinusoid

Measured on a 2-core CPU, one device, version 0.8 (docs/benchmarks.md, "The trainer against a
hand-written loop"): 16.3 to 16.6 s for the whole training process; over 600 meta-test
tasks, K=10 query MSE 0.318 ± 0.031 after 1 inner step and 0.095 ± 0.011 after 10 (seed
0; seeds 1 and 2: 0.327/0.145 and 0.366/0.098).

Variants are overrides, not copies:

    --config.algorithm=metasgd       another algorithm (maml fomaml metasgd anil reptile imaml
                                     mamlpp)
    --config.first_order=True        first-order MAML
    --config.remat_inner=True        rematerialise each inner step (long inner loops)
    --config.pad_meta_batch=True     run meta-batch 25 on 2, 4 or 8 devices (masked padding)
    --config.algorithm=mamlpp --config.inner_steps=5 --config.learned_lr_scale=0.1
                                     MAML++ with five inner steps (at scale 1 it diverges;
                                     docs/algorithms.md, "MAML++ with five inner steps")

`configs/sinusoid.py:tiny` is a seconds-long variant for tests and smoke runs.
"""

import math

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """Returns the paper config, or a variant of it ("tiny")."""
    c = ml_collections.ConfigDict()
    c.task = "sinusoid"
    c.seed = 0

    c.num_steps = 70_000
    c.meta_batch_size = 25
    c.pad_meta_batch = False
    c.shots = 10
    c.num_query = 10

    # The meta-learning algorithm: maml | fomaml | metasgd | anil | boil | reptile | imaml | mamlpp.
    c.algorithm = "maml"
    c.inner_steps = 1
    c.inner_lr = 0.01
    c.first_order = False
    c.remat_inner = False
    # Inner loops of up to this many steps are traced unrolled, not as a lax.scan: the
    # meta-step ran 19% faster on CPU at 1 and at 5 inner steps (docs/benchmarks.md, "The trainer
    # against a hand-written loop"); the compile grows with the steps.
    c.inner_unroll = 5
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

    # How a device runs its tasks ("vmap" | "loop" | "unroll") and how devices combine them
    # ("sum" | "ordered": bit-identical results for any device count). README, "Sharding".
    c.task_batching = "vmap"
    c.reduction = "sum"
    # With vmap: a device's tasks in batched groups of this many, one after another
    # (memory and compile shapes of a group, not of the meta-batch); 0: all at once.
    c.tasks_per_vmap = 0
    # XLA's CPU thread pool (maml_dist/cpu_threads.py): one thread. This net is too small
    # to gain from two: the meta-step ran 172-175 us on one, 191-192 us on two (2 cores),
    # the other core left to compiles, validations and checkpoints. 0: one per core.
    c.cpu_threads = 1

    c.meta_lr = 1e-3
    # "auto": cosine-annealed to meta_lr_min over num_steps for mamlpp (MAML++), constant
    # for every other algorithm; or "constant" | "cosine".
    c.meta_lr_schedule = "auto"
    c.meta_lr_min = 1e-5
    c.grad_clip_norm = 0.0  # 0 disables global-norm clipping.
    # The meta-optimiser's step on learned inner rates (metasgd; mamlpp with lslr), as a
    # fraction of its step on the weights; 1: the same (the papers'). docs/algorithms.md,
    # "MAML++ with five inner steps": 0.1 lets MAML++ train five steps on the sinusoid.
    c.learned_lr_scale = 1.0
    # A meta-step whose meta-loss, meta-gradient or update is inf or NaN is never applied
    # (README, "Non-finite values"): "stop" ends the run at the first one (exit status 1);
    # "skip" goes on without it, and stops after nonfinite_max_skips of them in a row.
    c.nonfinite = "stop"
    c.nonfinite_max_skips = 10

    c.log_every = 500
    c.eval_every = 5_000
    c.checkpoint_every = 10_000
    c.max_to_keep = 3
    c.eval_tasks = 100  # validation tasks scored at every eval
    c.eval_inner_steps = 10

    c.model = ml_collections.ConfigDict()
    c.model.hidden_sizes = (40, 40)
    # 0 = flax LeCun-normal init. The original code's 0.01 truncated normal reaches a similar
    # 1-step loss but an initialisation that diverges after 3+ inner steps (README, Results).
    c.model.init_stddev = 0.0
    # "float32", or "bfloat16": matrix products and activations in bfloat16, the parameters,
    # output, loss and updates float32 (README, "Compute dtype").
    c.model.compute_dtype = "float32"

    c.sinusoid = ml_collections.ConfigDict()
    c.sinusoid.amp_range = (0.1, 5.0)
    c.sinusoid.phase_range = (0.0, math.pi)
    c.sinusoid.x_range = (-5.0, 5.0)

    if variant == "tiny":
        c.num_steps = 200
        c.meta_batch_size = 16
        c.log_every = 10
        c.eval_every = 50
        c.checkpoint_every = 100
        c.eval_tasks = 16
        c.eval_inner_steps = 3
        c.meta_lr = 1e-2
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r} of configs/sinusoid.py; use 'tiny'")
    return c
