"""mini-ImageNet meta-training throughput through the real trainer (host feed included).

`configs/miniimagenet_5w1s.py` (or `--variant=5w5s`) as configured: second order, 5
inner steps, 15 query images per class, the paper's pooled 32-filter net on 84x84 RGB,
one device. Without `--data_dir` it writes a stand-in data set in mini-ImageNet's layout
(noise JPEGs, 84x84, 10/5/5 classes of 20 images) to a temporary folder: the step's cost
does not depend on the pixels. Reports the tasks/s the trainer logs for every interval
after the first (which holds the compile) and the host's data time per step.

    python scripts/bench_miniimagenet_trainer.py [--data_dir=ROOT] [--variant=5w1s] \
        [--steps=20] [--log_every=5] [--conv_impl=auto]

`--conv_impl` is the config's `model.conv_impl`: "auto" (the default) is "slices" on CPU
since maml_dist 0.5 and was "im2col" before (the README's CPU number names
`--conv_impl=im2col`). The first line printed gives the conv as resolved.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import miniimagenet
from maml_dist import metrics, models, trainer


def write_stand_in(root: pathlib.Path, classes=(10, 5, 5), per_class=20) -> None:
    """Noise JPEGs in mini-ImageNet's layout: ROOT/images/*.jpg and the three CSV files."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    c = 0
    for name, count in zip(("train.csv", "val.csv", "test.csv"), classes, strict=True):
        rows = []
        for _ in range(count):
            for i in range(per_class):
                filename = f"n{c:08d}{i:08d}.jpg"
                pixels = rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / filename)
                rows.append(f"{filename},n{c:08d}\n")
            c += 1
        (root / name).write_text("filename,label\n" + "".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--variant", default="5w1s", choices=("5w1s", "5w5s"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--log_every", type=int, default=5)
    parser.add_argument("--conv_impl", default="auto", choices=models.CONV_IMPLS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = os.path.join(tmp, "data")
            write_stand_in(pathlib.Path(data_dir))
        config = miniimagenet.get_config(args.variant)
        config.data_dir = data_dir
        config.model.conv_impl = args.conv_impl
        config.miniimagenet.cache_dir = os.path.join(tmp, "cache")
        config.update(
            num_steps=args.steps,
            log_every=args.log_every,
            eval_every=args.steps,
            checkpoint_every=args.steps,
            eval_tasks=2,
        )
        workdir = os.path.join(tmp, "run")
        t0 = time.perf_counter()
        trainer.train_and_evaluate(config, workdir, jax.devices()[:1])
        wall = time.perf_counter() - t0
        records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    steady = [r for r in records[1:] if "tasks_per_sec" in r]
    print(
        f"{jax.devices()[0].platform}, 1 device: mini-ImageNet {args.variant}, meta-batch "
        f"{config.meta_batch_size}, {config.inner_steps} inner steps, second order, "
        f"{config.num_query} query/class, {models.resolve_conv_impl(args.conv_impl)} convs; "
        f"{args.steps} steps in {wall:.1f} s wall"
    )
    print("| steps | tasks/s | s/step | data s/step (host, overlapped) | data wait s/step |")
    print("|---:|---:|---:|---:|---:|")
    for r in records:
        print(
            f"| {r['step']} | {r['tasks_per_sec']:.2f} | {r['sec_per_step']:.3f} | "
            f"{r['data_sec_per_step']:.4f} | {r['data_wait_sec_per_step']:.4f} |"
        )
    if steady:
        rate = statistics.median(r["tasks_per_sec"] for r in steady)
        print(f"median steady throughput (intervals after the first): {rate:.2f} tasks/s")


if __name__ == "__main__":
    main()
