# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Backpropagating through an optimiser: MAML on sine waves
#
# Finn et al. (2017), section 5.1. A *task* is a sine wave y = A sin(x + φ) with
# A ∈ [0.1, 5], φ ∈ [0, π]; we see K points of it (the support set) and must predict it
# elsewhere (the query set). MAML meta-learns initial weights θ₀ such that k SGD steps on
# the support set give a low query loss. This file runs as a script
# (`python scripts/tutorial_sinusoid.py [--fast] [--out DIR]`) and opens as a notebook
# (jupytext "percent" format). `--fast` trains shorter and times fewer settings.
#
# It uses only the public API, `import maml_dist as md`.

# %%
import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from jax.flatten_util import ravel_pytree

import maml_dist as md

parser = argparse.ArgumentParser(description="MAML on sine waves, step by step.")
parser.add_argument("--fast", action="store_true", help="short training; fewer timings")
parser.add_argument("--out", default="runs/tutorial_sinusoid", help="folder for the figures")
# In a notebook there is no command line: parse an empty one there.
args = parser.parse_args(sys.argv[1:] if "ipykernel" not in sys.modules else [])
OUT = pathlib.Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
TRAIN_STEPS = 4_000 if args.fast else 70_000
print(f"jax {jax.__version__} on {jax.default_backend()}; figures in {OUT}/")

# %% [markdown]
# ## 1. The task family
#
# `md.Sinusoid()` samples tasks as a pure function of a key; `make_model()` is the paper's
# 1-40-40-1 ReLU network.

# %%
family = md.Sinusoid()
task = family.sample(jax.random.key(0), shots=10, num_query=100)
print("support", task.support_x.shape, "query", task.query_x.shape)

# %% [markdown]
# ## 2. The chain rule through k inner steps
#
# With support loss L_S, query loss L_Q and k SGD steps θ_{j+1} = θ_j − α ∇L_S(θ_j),
# the meta-gradient is
#
#     ∇_{θ₀} L_Q(θ_k) = (I − α H_0)(I − α H_1) ⋯ (I − α H_{k−1}) ∇L_Q(θ_k),
#
# with H_j = ∇²L_S(θ_j) (symmetric, so no transposes). Below we build every Hessian densely
# for a small network, multiply the product out, and compare with MAML's `task_grad`,
# which never forms a Hessian: `jax.grad` through the scanned inner loop does k
# Hessian-vector products in reverse mode.

# %%
with jax.enable_x64(True):
    small = md.MLP(hidden_sizes=(8,), out_features=1)
    theta0 = small.init(jax.random.key(1), jnp.zeros((1, 1)))["params"]
    theta0 = jax.tree.map(lambda p: p.astype(jnp.float64), theta0)
    t64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), task)
    loss_fn = md.make_loss_fn(small, family.loss)
    alpha, k = 0.01, 3
    maml_small = md.make_algorithm("maml", loss_fn, md.InnerConfig(lr=alpha, steps=k))

    flat0, unravel = ravel_pytree(theta0)

    def support_loss(flat):
        return loss_fn(unravel(flat), t64.support_x, t64.support_y)

    thetas = [flat0]
    for _ in range(k):
        thetas.append(thetas[-1] - alpha * jax.grad(support_loss)(thetas[-1]))
    query_grad = jax.grad(lambda f: loss_fn(unravel(f), t64.query_x, t64.query_y))(thetas[-1])
    by_hand = query_grad
    for j in reversed(range(k)):
        hessian = jax.hessian(support_loss)(thetas[j])
        by_hand = (jnp.eye(flat0.size) - alpha * hessian) @ by_hand
    library, _ = maml_small.task_grad({"params": theta0}, t64, 0)
    library = ravel_pytree(library["params"])[0]
    first_order = query_grad  # what first-order MAML uses: the Jacobian taken as I
    err = float(jnp.max(jnp.abs(library - by_hand)) / jnp.max(jnp.abs(by_hand)))
    fo_gap = float(jnp.max(jnp.abs(first_order - by_hand)) / jnp.max(jnp.abs(by_hand)))
print(
    f"{flat0.size} parameters, k = {k}: library vs the product of (I - aH_j), relative "
    f"max error {err:.1e}; first order differs by {fo_gap:.1e}"
)
assert err < 1e-8, err

# %% [markdown]
# ## 3. What second order costs, against first order and iMAML
#
# Second-order MAML keeps every inner step's activations for the backward pass, so its
# memory grows with k; `remat` recomputes them instead. First-order MAML drops the
# Hessian terms. iMAML does not differentiate the inner loop at all: it solves
# (I + H/λ) v = ∇L_Q(φ) with a few conjugate-gradient steps, so its memory does not grow
# with k. We time one meta-step (meta-batch 25) and read XLA's temporary memory.

# %%
KS = (1, 5) if args.fast else (1, 5, 10, 25, 50, 100)
COST_ALGORITHMS = ("maml", "fomaml", "imaml")


def cost(name, inner_steps, reps=3, chunk=20):
    learner = md.make_learner(
        md.MetaConfig(algorithm=name, inner=md.InnerConfig(lr=0.01, steps=inner_steps)),
        family,
        devices=jax.devices()[:1],
    )
    state = learner.init()
    # One compiled meta-step, both measured and timed: the memory read is the program's
    # that runs. (Each call is dispatched from Python: tens of microseconds on a CPU, which
    # `learner.run` saves by scanning its steps in one program.)
    compiled = jax.jit(learner.meta_step).lower(state).compile()
    temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
    state, _ = compiled(state)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(chunk):
            state, metrics = compiled(state)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t0) / chunk * 1e3)
    return float(np.median(times)), temp_mib


costs = {(a, kk): cost(a, kk) for a in COST_ALGORITHMS for kk in KS}
print("| k | " + " | ".join(f"{a} ms, MiB" for a in COST_ALGORITHMS) + " |")
for kk in KS:
    cells = " | ".join(f"{costs[a, kk][0]:.2f}, {costs[a, kk][1]:.2f}" for a in COST_ALGORITHMS)
    print(f"| {kk} | {cells} |")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for a in COST_ALGORITHMS:
    axes[0].plot(KS, [costs[a, kk][0] for kk in KS], "o-", label=a)
    axes[1].plot(KS, [costs[a, kk][1] for kk in KS], "o-", label=a)
axes[0].set(xlabel="inner steps k", ylabel="ms per meta-step", xscale="log")
axes[1].set(xlabel="inner steps k", ylabel="XLA temp memory (MiB)", xscale="log")
axes[0].legend()
fig.tight_layout()
fig.savefig(OUT / "cost.png", dpi=120)

# %% [markdown]
# ## 4. Train MAML, and a pretrained baseline
#
# The paper's setting: meta-batch 25, K = 10, one inner step with α = 0.01, Adam at 1e-3.
# The baseline is "pretrained" on all tasks jointly: the same objective with zero inner
# steps, then fine-tuned at test time like MAML.


# %%
def train(name, inner_steps):
    learner = md.make_learner(
        md.MetaConfig(algorithm=name, inner=md.InnerConfig(lr=0.01, steps=inner_steps)),
        family,
    )
    state = learner.init()
    t0 = time.perf_counter()
    for _ in range(TRAIN_STEPS // 1000):
        state, metrics = learner.run(state, 1000)
        jax.block_until_ready(metrics)  # bounds the steps in flight
    print(
        f"{name}, {inner_steps} inner step(s): {TRAIN_STEPS} meta-steps in "
        f"{time.perf_counter() - t0:.1f} s, last meta-loss {float(metrics['meta_loss'][-1]):.3f}"
    )
    return learner, state.meta_params


maml_learner, maml_params = train("maml", 1)
pre_learner, pre_params = train("maml", 0)

# %% [markdown]
# ## 5. Meta-test: K = 10 points, then 0, 1 and 10 gradient steps
#
# Both are fine-tuned with the same SGD steps (α = 0.01) on 600 test tasks that training
# never sampled.

# %%
test = md.sample_tasks(maml_learner, 600, shots=10, num_query=100)
results = {
    "MAML": md.evaluate(maml_learner, maml_params, test, 10),
    "pretrained": md.evaluate(maml_learner, pre_params, test, 10),
}
for label, r in results.items():
    print(
        f"{label:>10}: query MSE after 0 / 1 / 10 steps "
        + " / ".join(f"{r['mean'][s]:.3f} ± {r['ci95'][s]:.3f}" for s in (0, 1, 10))
    )
assert results["MAML"]["mean"][1] < results["pretrained"]["mean"][1]

# %% [markdown]
# The paper's Figure 2: one test task, K = 10, the true function, the support points, and
# each network before and after 1 and 10 steps.

# %%
one = jax.tree.map(lambda a: a[0], test)
grid = jnp.linspace(-5, 5, 200)[:, None]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, (label, params) in zip(
    axes, (("MAML", maml_params), ("pretrained", pre_params)), strict=True
):
    order = np.argsort(np.asarray(one.query_x[:, 0]))
    ax.plot(one.query_x[order, 0], one.query_y[order, 0], "k-", label="true function")
    ax.plot(one.support_x[:, 0], one.support_y[:, 0], "k^", label="K = 10 points")
    for steps, style in ((0, ":"), (1, "--"), (10, "-")):
        adapted = md.adapt(maml_learner, params, one, steps)
        pred = maml_learner.model.apply({"params": adapted}, grid)
        ax.plot(grid[:, 0], pred[:, 0], style, label=f"after {steps} step(s)")
    ax.set_title(label)
    ax.set_xlabel("x")
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "before_after.png", dpi=120)
print(f"wrote {OUT / 'cost.png'} and {OUT / 'before_after.png'}")
