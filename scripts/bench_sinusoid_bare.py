"""The reference for the sinusoid paper run: a bare, hand-written JAX training loop.

    python scripts/bench_sinusoid_bare.py [--variant=host] [--steps=70000] [--seed=0]

What a researcher writes by hand for MAML on the sinusoid problem of Finn et al. 2017,
with plain JAX and optax and nothing of maml_dist: an MLP 1-40-40-1 with ReLU (weights
LeCun-normal, biases zero: flax's default, the config's `init_stddev=0`), amplitude in
[0.1, 5], phase in [0, pi], x in [-5, 5], K=10 support and 10 query points, meta-batch
25, one inner SGD step with alpha 0.01, second-order MAML (`jax.grad` through
`jax.grad`), Adam 1e-3, 70,000 meta-steps. Each step samples its meta-batch with numpy
on the host and calls one `jax.jit`-compiled step function: one dispatch per step, the
loss fetched every `log_every` steps. The settings are read from configs/sinusoid.py
(that file needs only ml_collections), so the loop trains what `maml_dist.train
--config=configs/sinusoid.py` trains, less its validations and checkpoints.

It is the reference because it is the obvious way to train this model without a
library: whatever a trainer adds (or saves) is measured against it. scripts/benchmark.py
runs it as the setting `sinusoid_bare_loop` and reports `paper_vs_bare`, the trainer
process's wall time over this process's.

`--variant` changes one thing at a time, to split where a per-step loop spends its time:

    host      the reference above (numpy sampling on the host, one dispatch per step)
    device    the same step, sampling with jax.random inside the jitted step: still one
              dispatch per step, no host sampling nor host-to-device copy
    scan      device sampling and `--chunk` steps per dispatch in one `lax.scan` (what
              maml_dist's trainer does): the step's compute, almost no dispatch
    api       maml_dist's own pure meta-step (`maml_dist.api.make_learner(...).meta_step`)
              under a plain `jax.jit`, called once per step with device sampling: the
              library's step in the hand-written loop
    host_jax  host-side sampling with jax.random op by op outside jit (a dispatch per
              operation, about ten per step), then the one jitted step
    scan_host numpy sampling of `--chunk` meta-batches at once, `--chunk` steps per
              dispatch in one `lax.scan` over them; the next chunk is sampled while the
              last one computes

The loop is timed in-process (`time.perf_counter`); the host variant also sums the time
spent sampling and inside the step call (`sample_s`, `call_s`; the call returns before
the step has run only while JAX's dispatch queue has room); so do host_jax and
scan_host. The last stdout line is one JSON record; `marks` are `time.time()` stamps from
which a caller that knows the process start splits the process's wall time.
"""

from __future__ import annotations

import time

T_START = time.time()  # the first statement: the interpreter is up

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import resource  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

T_IMPORTED = time.time()
ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("host", "device", "scan", "api", "host_jax", "scan_host")


def load_config(path: pathlib.Path = ROOT / "configs" / "sinusoid.py"):
    """configs/sinusoid.py's `get_config()`, loaded by path (no maml_dist import)."""
    spec = importlib.util.spec_from_file_location("sinusoid_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# ---------------------------------------------------------------- the hand-written model


def init_mlp(key, sizes, init_stddev=0.0):
    """[(W, b), ...] of an MLP with layer widths `sizes` (1, 40, 40, 1)."""
    if init_stddev > 0:
        kernel_init = jax.nn.initializers.truncated_normal(init_stddev)
    else:
        kernel_init = jax.nn.initializers.lecun_normal()  # flax.linen.Dense's default
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (kernel_init(k, (n_in, n_out), jnp.float32), jnp.zeros((n_out,), jnp.float32))
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def mse(params, x, y):
    return jnp.mean(jnp.square(mlp(params, x) - y))


def make_meta_loss(inner_lr, inner_steps):
    """Mean over tasks of the query MSE after `inner_steps` SGD steps (second order)."""

    def task_loss(params, sx, sy, qx, qy):
        adapted = params
        for _ in range(inner_steps):
            grads = jax.grad(mse)(adapted, sx, sy)
            adapted = jax.tree.map(lambda p, g: p - inner_lr * g, adapted, grads)
        return mse(adapted, qx, qy)

    def meta_loss(params, batch):
        return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(params, *batch))

    return meta_loss


# ------------------------------------------------------------------------- the tasks


def sample_host(rng: np.random.Generator, c, lead: tuple[int, ...] = ()):
    """One meta-batch with numpy: (support_x, support_y, query_x, query_y), float32.

    `lead` stacks meta-batches on leading axes (`(chunk,)`: one per step of a chunk).
    """
    s = c.sinusoid
    n, k, q = c.meta_batch_size, c.shots, c.num_query
    amp = rng.uniform(*s.amp_range, size=(*lead, n, 1, 1))
    phase = rng.uniform(*s.phase_range, size=(*lead, n, 1, 1))
    x = rng.uniform(*s.x_range, size=(*lead, n, k + q, 1))
    y = amp * np.sin(x + phase)
    x, y = x.astype(np.float32), y.astype(np.float32)
    return x[..., :k, :], y[..., :k, :], x[..., k:, :], y[..., k:, :]


def sample_device(key, c):
    """The same distribution with jax.random, inside a jitted function."""
    s = c.sinusoid
    n, k, q = c.meta_batch_size, c.shots, c.num_query
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amp = jax.random.uniform(k_amp, (n, 1, 1), minval=s.amp_range[0], maxval=s.amp_range[1])
    phase = jax.random.uniform(k_phase, (n, 1, 1), minval=s.phase_range[0], maxval=s.phase_range[1])
    x = jax.random.uniform(k_x, (n, k + q, 1), minval=s.x_range[0], maxval=s.x_range[1])
    y = amp * jnp.sin(x + phase)
    return x[:, :k], y[:, :k], x[:, k:], y[:, k:]


# -------------------------------------------------------------------------- the loops


def train(variant: str, c, steps: int, log_every: int, chunk: int) -> dict:
    """Trains `steps` meta-steps; returns the timings and the logged losses."""
    if variant == "api":
        return _train_api(c, steps, log_every)
    sizes = (1, *c.model.hidden_sizes, 1)
    params = init_mlp(jax.random.key(c.seed), sizes, c.model.init_stddev)
    opt = optax.adam(c.meta_lr)
    opt_state = opt.init(params)
    meta_loss = make_meta_loss(c.inner_lr, c.inner_steps)

    def update(params, opt_state, batch):
        loss, grads = jax.value_and_grad(meta_loss)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    sample_s = call_s = 0.0
    if variant == "host":
        step = jax.jit(update)
        rng = np.random.default_rng(c.seed)
        t_ready = time.time()
        params, opt_state, loss = step(params, opt_state, sample_host(rng, c))
        jax.block_until_ready(loss)  # the first call: trace, lower, compile, one step
        t_compiled = time.time()
        perf = time.perf_counter
        for i in range(1, steps):
            t0 = perf()
            batch = sample_host(rng, c)
            t1 = perf()
            params, opt_state, loss = step(params, opt_state, batch)
            t2 = perf()
            sample_s += t1 - t0
            call_s += t2 - t1
            if (i + 1) % log_every == 0:
                losses.append(float(loss))
    elif variant == "device":

        @jax.jit
        def step(params, opt_state, key):
            key, sub = jax.random.split(key)
            return *update(params, opt_state, sample_device(sub, c)), key

        key = jax.random.key(c.seed + 1)
        t_ready = time.time()
        params, opt_state, loss, key = step(params, opt_state, key)
        jax.block_until_ready(loss)
        t_compiled = time.time()
        for i in range(1, steps):
            params, opt_state, loss, key = step(params, opt_state, key)
            if (i + 1) % log_every == 0:
                losses.append(float(loss))
    elif variant == "host_jax":

        @jax.jit
        def step(params, opt_state, batch):
            return update(params, opt_state, batch)

        key = jax.random.key(c.seed + 1)
        key, sub = jax.random.split(key)
        t_ready = time.time()
        params, opt_state, loss = step(params, opt_state, sample_device(sub, c))
        jax.block_until_ready(loss)
        t_compiled = time.time()
        perf = time.perf_counter
        for i in range(1, steps):
            t0 = perf()
            key, sub = jax.random.split(key)
            batch = sample_device(sub, c)  # op by op, outside jit: a dispatch each
            t1 = perf()
            params, opt_state, loss = step(params, opt_state, batch)
            t2 = perf()
            sample_s += t1 - t0
            call_s += t2 - t1
            if (i + 1) % log_every == 0:
                losses.append(float(loss))
    elif variant == "scan_host":
        if steps % chunk:
            raise ValueError(f"--steps={steps} must be a multiple of --chunk={chunk}")

        def run_chunk(params, opt_state, batches):
            def body(carry, batch):
                params, opt_state, loss = update(*carry, batch)
                return (params, opt_state), loss

            (params, opt_state), chunk_losses = jax.lax.scan(body, (params, opt_state), batches)
            return params, opt_state, chunk_losses[-1]

        rng = np.random.default_rng(c.seed)
        batches = sample_host(rng, c, (chunk,))
        t_ready = time.time()
        run_chunk = jax.jit(run_chunk).lower(params, opt_state, batches).compile()
        t_compiled = time.time()
        perf = time.perf_counter
        for i in range(steps // chunk):
            t0 = perf()
            params, opt_state, loss = run_chunk(params, opt_state, batches)
            t1 = perf()
            if i + 1 < steps // chunk:  # the next chunk, while this one computes
                batches = sample_host(rng, c, (chunk,))
            t2 = perf()
            call_s += t1 - t0
            sample_s += t2 - t1
            if ((i + 1) * chunk) % log_every == 0:
                losses.append(float(loss))
    elif variant == "scan":
        if steps % chunk:
            raise ValueError(f"--steps={steps} must be a multiple of --chunk={chunk}")

        def run(carry, _):
            params, opt_state, key = carry
            key, sub = jax.random.split(key)
            params, opt_state, loss = update(params, opt_state, sample_device(sub, c))
            return (params, opt_state, key), loss

        def run_chunk(carry):
            carry, chunk_losses = jax.lax.scan(run, carry, length=chunk)
            return carry, chunk_losses[-1]

        carry = (params, opt_state, jax.random.key(c.seed + 1))
        t_ready = time.time()
        run_chunk = jax.jit(run_chunk).lower(carry).compile()  # ahead of time: no steps
        t_compiled = time.time()
        for i in range(steps // chunk):
            carry, loss = run_chunk(carry)
            if ((i + 1) * chunk) % log_every == 0:
                losses.append(float(loss))
        params = carry[0]
    else:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    jax.block_until_ready(params)
    t_end = time.time()
    # The first call is the compile's, but for the ahead-of-time compiled scans.
    timed = steps - (0 if variant.startswith("scan") else 1)
    out = _timings(t_ready, t_compiled, t_end, timed, c.meta_batch_size, losses)
    if variant in ("host", "host_jax", "scan_host"):
        out.update(sample_s=sample_s, call_s=call_s)
    return out


def _train_api(c, steps: int, log_every: int) -> dict:
    """maml_dist's pure meta-step, jitted and called once per step (device sampling)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from maml_dist import algorithms
    from maml_dist.api import MetaConfig, make_learner
    from maml_dist.tasks.sinusoid import Sinusoid

    config = MetaConfig(
        algorithm="maml",
        inner=algorithms.InnerConfig(lr=c.inner_lr, steps=c.inner_steps),
        meta_batch_size=c.meta_batch_size,
        shots=c.shots,
        num_query=c.num_query,
        meta_lr=c.meta_lr,
        seed=c.seed,
    )
    learner = make_learner(config, Sinusoid.from_config(c))
    state = learner.init()
    step = jax.jit(learner.meta_step)
    losses = []
    t_ready = time.time()
    state, metrics = step(state)
    jax.block_until_ready(metrics)
    t_compiled = time.time()
    for i in range(1, steps):
        state, metrics = step(state)
        if (i + 1) % log_every == 0:
            losses.append(float(metrics["meta_loss"]))
    jax.block_until_ready(state)
    t_end = time.time()
    return _timings(t_ready, t_compiled, t_end, steps - 1, c.meta_batch_size, losses)


def _timings(t_ready, t_compiled, t_end, timed_steps, meta_batch, losses) -> dict:
    loop_s = t_end - t_compiled
    return {
        "compile_s": t_compiled - t_ready,
        "loop_s": loop_s,
        "steps_per_sec": timed_steps / loop_s,
        "tasks_per_sec": meta_batch * timed_steps / loop_s,
        "us_per_step": 1e6 * loop_s / timed_steps,
        "final_loss": losses[-1] if losses else None,
        "losses": losses,
        "marks": {
            "start": T_START,
            "imported": T_IMPORTED,
            "ready": t_ready,
            "compiled": t_compiled,
            "loop_end": t_end,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="host")
    parser.add_argument("--steps", type=int, help="meta-steps (default: the config's 70,000)")
    parser.add_argument("--log_every", type=int, help="default: the config's (500)")
    parser.add_argument("--chunk", type=int, default=500, help="steps per dispatch (scan)")
    parser.add_argument("--seed", type=int, help="default: the config's (0)")
    args = parser.parse_args()
    c = load_config()
    if args.seed is not None:
        c.seed = args.seed
    steps = args.steps or c.num_steps
    log_every = args.log_every or c.log_every
    record = train(args.variant, c, steps, log_every, args.chunk)
    record.update(
        variant=args.variant,
        params={
            "variant": args.variant,
            "num_steps": steps,
            "log_every": log_every,
            "chunk": args.chunk if args.variant.startswith("scan") else None,
            "meta_batch_size": c.meta_batch_size,
            "shots": c.shots,
            "num_query": c.num_query,
            "inner_lr": c.inner_lr,
            "inner_steps": c.inner_steps,
            "meta_lr": c.meta_lr,
            "hidden_sizes": list(c.model.hidden_sizes),
            "seed": c.seed,
        },
        process_s=time.time() - T_START,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
