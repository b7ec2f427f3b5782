"""PyTorch reference for the Omniglot meta-step: tasks/s of second-order MAML on the CPU.

Run with a Python that has torch (not a project dependency; see NOTES_torch.md):

    /work/torchenv/bin/python scripts/bench_pytorch_omniglot.py [--variants=loop,vmap]
        [--warmup=2] [--reps=7] [--meta_batch=32] [--queries=15] [--threads=2]

The setting of scripts/bench_omniglot_step.py: 5-way 1-shot, 15 query images per class
(5 support + 75 query 28x28x1 images per task), meta-batch 32, one inner SGD step at
alpha 0.4, second order, fp32, Adam 1e-3, random images (speed does not depend on pixel
values). The network is maml_dist.models.ConvNet's default: four blocks of a 3x3 stride-2
conv with 64 filters, batch norm with the batch's own statistics (transductive, no running
averages), ReLU; a linear head on the 2x2x64 features. PyTorch pads 1 on each side where
XLA's "SAME" pads (0, 1) on the even sides; the shapes (14, 7, 4, 2) and costs are equal.

Variants:
    loop    as learn2learn users write MAML: a Python loop over the meta-batch's tasks;
            per task a forward on the support set, torch.autograd.grad with
            create_graph=True, one SGD step as functional weights
            (torch.func.functional_call), the query loss, and backward() accumulating the
            meta-gradient; then one Adam step.
    vmap    the same meta-gradient as torch.func.vmap over the tasks of torch.func.grad
            of the (inner step + query loss) function.

Each variant times `reps` meta-steps after `warmup` ones and reports their median. The
FLOPs of one task's meta-gradient are counted with torch.utils.flop_counter, and the
fp32 matmul peak as the best of several 2048x2048 @ 2048x2048 products. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's own spelling)
from torch import nn
from torch.func import functional_call, grad, vmap

WAYS, SHOTS, SIZE = 5, 1, 28
ALPHA = 0.4


class ConvNet(nn.Module):
    """The MAML paper's Omniglot network, as maml_dist.models.ConvNet (transductive BN)."""

    def __init__(self, ways: int = WAYS, filters: int = 64, blocks: int = 4):
        super().__init__()
        layers, channels = [], 1
        for _ in range(blocks):
            layers += [
                nn.Conv2d(channels, filters, 3, stride=2, padding=1),
                # No running statistics: every call normalises with its own batch's.
                nn.BatchNorm2d(filters, track_running_stats=False),
                nn.ReLU(),
            ]
            channels = filters
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(filters * 2 * 2, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, ways)."""
        return self.head(self.body(x).flatten(1))


def make_tasks(meta_batch: int, queries: int, seed: int = 0) -> list[tuple]:
    """Random episodes: (support_x, support_y, query_x, query_y) per task, floats in [0, 1]."""
    g = torch.Generator().manual_seed(seed)

    def images(k):
        return torch.randint(0, 256, (WAYS * k, 1, SIZE, SIZE), generator=g).float() / 255

    return [
        (
            images(SHOTS),
            torch.arange(WAYS).repeat_interleave(SHOTS),
            images(queries),
            torch.arange(WAYS).repeat_interleave(queries),
        )
        for _ in range(meta_batch)
    ]


def loop_step(model: nn.Module, opt: torch.optim.Optimizer, tasks: list[tuple]) -> None:
    """One meta-step, learn2learn-style: a Python loop over tasks, backward per task."""
    opt.zero_grad(set_to_none=True)
    names, weights = zip(*model.named_parameters(), strict=True)
    n = len(tasks)
    for xs, ys, xq, yq in tasks:
        support = F.cross_entropy(model(xs), ys)
        grads = torch.autograd.grad(support, weights, create_graph=True)
        fast = {k: w - ALPHA * g for k, w, g in zip(names, weights, grads, strict=True)}
        query = F.cross_entropy(functional_call(model, fast, xq), yq)
        (query / n).backward()
    opt.step()


def make_vmap_step(model: nn.Module, opt: torch.optim.Optimizer):
    """One meta-step as vmap over tasks of grad of the task's query loss after its step."""

    def loss(params, x, y):
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    def task_loss(params, xs, ys, xq, yq):
        g = grad(loss)(params, xs, ys)
        return loss({k: params[k] - ALPHA * g[k] for k in params}, xq, yq)

    meta_grad = vmap(grad(task_loss), in_dims=(None, 0, 0, 0, 0))
    params = dict(model.named_parameters())

    def step(batch: tuple) -> None:
        detached = {k: p.detach() for k, p in params.items()}
        grads = meta_grad(detached, *batch)
        for k, p in params.items():
            p.grad = grads[k].mean(0)
        opt.step()

    return step


def time_steps(step, arg, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        step(arg)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step(arg)
        times.append(time.perf_counter() - t0)
    return times


def count_gflop_per_task(queries: int) -> float:
    """FLOPs of one task's meta-gradient (loop variant), counted by PyTorch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model = ConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    tasks = make_tasks(1, queries, seed=1)
    with FlopCounterMode(display=False) as counter:
        loop_step(model, opt, tasks)
    return counter.get_total_flops() / 1e9


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n @ n x n product (MKL here)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="loop,vmap")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--meta_batch", type=int, default=32)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no_flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--no_peak", action="store_true", help="skip the matmul peak")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    record = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "meta_batch": args.meta_batch,
        "queries": args.queries,
        "warmup": args.warmup,
        "reps": args.reps,
    }
    tasks = make_tasks(args.meta_batch, args.queries)
    for variant in args.variants.split(","):
        model = ConvNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if variant == "loop":
            times = time_steps(lambda t, m=model, o=opt: loop_step(m, o, t), tasks, **_n(args))
        elif variant == "vmap":
            batch = tuple(torch.stack(parts) for parts in zip(*tasks, strict=True))
            times = time_steps(make_vmap_step(model, opt), batch, **_n(args))
        else:
            parser.error(f"unknown variant {variant!r}")
        median = statistics.median(times)
        record[f"{variant}_step_s"] = times
        record[f"{variant}_tasks_per_sec"] = args.meta_batch / median
    if not args.no_flops:
        record["gflop_per_task"] = count_gflop_per_task(args.queries)
    if not args.no_peak:
        record["matmul_peak_gflops"] = matmul_peak_gflops()
    print(json.dumps(record), flush=True)


def _n(args) -> dict:
    return {"warmup": args.warmup, "reps": args.reps}


if __name__ == "__main__":
    main()
