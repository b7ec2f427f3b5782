"""The sinusoid paper step alone: the trainer's scanned program against a hand-written one.

Times chunks of 500 meta-steps (one `lax.scan` each, nothing else running in the
process), rounds interleaved, and prints the median microseconds per meta-step of:

    hand      the hand-written MAML step of `bench_sinusoid_bare.py` (plain JAX + optax)
              scanned over 500 meta-batches sampled beforehand with numpy: the step's
              compute alone
    ahead     the trainer's program (`meta_update.make_multi_step` with the chunk's tasks
              sampled ahead by `parallel.make_chunk_sampler`; the trainer compiles the
              sampling and the steps as two programs, with the same result bit for bit)
    in_step   the trainer's program sampling each step's tasks inside the step

and each program's count of optimised HLO instructions.

    python scripts/bench_sinusoid_step.py [--rounds=8]
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import time

import jax
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_sinusoid_bare as bare  # noqa: E402

from maml_dist import meta_objective, meta_update, nonfinite, parallel  # noqa: E402
from maml_dist import state as state_lib  # noqa: E402
from maml_dist.problem import make_problem  # noqa: E402

CHUNK = 500


def _instructions(compiled) -> int:
    return sum(1 for line in compiled.as_text().splitlines() if re.match(r"\s+\S+ = ", line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    c = bare.load_config()

    params = bare.init_mlp(jax.random.key(c.seed), (1, *c.model.hidden_sizes, 1))
    opt = optax.adam(c.meta_lr)
    meta_loss = bare.make_meta_loss(c.inner_lr, c.inner_steps)

    def run_chunk(params, opt_state, batches):
        def body(carry, batch):
            loss, grads = jax.value_and_grad(meta_loss)(carry[0], batch)
            updates, opt_state = opt.update(grads, carry[1], carry[0])
            return (optax.apply_updates(carry[0], updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), batches)
        return params, opt_state, losses[-1]

    batches = bare.sample_host(np.random.default_rng(c.seed), c, (CHUNK,))
    hand = jax.jit(run_chunk).lower(params, opt.init(params), batches).compile()
    hand_state = (params, opt.init(params))

    problem = make_problem(c)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx, _ = state_lib.make_meta_optimizer(c)
    spec = meta_objective.meta_batch_spec(c, problem)
    step = meta_update.make_train_step(
        parallel.make_meta_grad_fn(spec, mesh), tx, nonfinite.limit(c)
    )
    runs = {
        "ahead": meta_update.make_multi_step(step, parallel.make_chunk_sampler(spec, mesh)),
        "in_step": meta_update.make_multi_step(step),
    }
    states = {
        name: state_lib.init_state(
            problem.model,
            problem.family.example_input(),
            tx,
            c.seed,
            problem.algorithm,
            parallel.replicated(mesh),
        )
        for name in runs
    }
    print(f"hand: {_instructions(hand)} HLO instructions")
    for name, run in runs.items():
        print(f"{name}: {_instructions(run.lower(states[name], CHUNK).compile())} HLO instructions")
        states[name], metrics = run(states[name], CHUNK)  # compile and warm up
        jax.block_until_ready(metrics)
    times = {name: [] for name in ("hand", *runs)}
    for _ in range(args.rounds):
        started = time.perf_counter()
        *hand_state, loss = hand(*hand_state, batches)
        jax.block_until_ready(loss)
        times["hand"].append((time.perf_counter() - started) / CHUNK * 1e6)
        for name, run in runs.items():
            started = time.perf_counter()
            states[name], metrics = run(states[name], CHUNK)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - started) / CHUNK * 1e6)
    for name, values in times.items():
        rounds = " ".join(f"{v:.0f}" for v in values)
        print(f"{name}: median {np.median(values):.1f} us per meta-step (rounds: {rounds})")


if __name__ == "__main__":
    main()
