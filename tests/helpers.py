"""Shared test fixtures: the tiny sinusoid config and generated Omniglot-layout data."""

import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image

from configs import sinusoid as sinusoid_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_module(module, *args, timeout=120, env=None):
    """Runs `python -m module args` from the repository root on CPU, as a user would.

    Args:
        module: the module to run.
        *args: its command-line arguments.
        timeout: seconds before the process is killed (and the test fails).
        env: variables to set on top of this process's environment.

    Returns:
        (the finished process, its stderr lines holding ": error: ").
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    return proc, [line for line in proc.stderr.splitlines() if ": error: " in line]


def tiny_config(**overrides):
    config = sinusoid_config.get_config("tiny")
    config.update(overrides)
    return config


def make_omniglot_set(root, name, alphabets, drawers=4):
    """Writes <root>/<name>/<Alphabet>/characterNN/NNNN_DD.png, 105x105 1-bit images.

    Like the real data, an image's file name and content depend only on its alphabet,
    character and drawer, so a character written under two roots is the same files.
    """
    for alphabet, characters in alphabets.items():
        for c in range(1, characters + 1):
            folder = root / name / alphabet / f"character{c:02d}"
            folder.mkdir(parents=True)
            number = 100 * (ord(alphabet[0]) - ord("A")) + c
            for d in range(1, drawers + 1):
                _blob(number, d).save(folder / f"{number:04d}_{d:02d}.png")
    return root / name


def zip_folder(folder):
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def make_one_shot_runs(root, num_runs, ways=20):
    """Writes Lake et al.'s layout: runNN/{training/classKK,test/itemMM}.png, class_labels.txt.

    Test item m of run r is class `(m * 7 + r) % ways` drawn by another drawer, so the
    true labels are a permutation the reader must take from class_labels.txt.

    Returns:
        (folder, {run name: true class index of each item}).
    """
    truth = {}
    for r in range(1, num_runs + 1):
        run = root / f"run{r:02d}"
        (run / "training").mkdir(parents=True)
        (run / "test").mkdir()
        lines, labels = [], []
        for k in range(ways):
            _blob(r * 100 + k, 1).save(run / "training" / f"class{k + 1:02d}.png")
        for m in range(ways):
            k = (m * 7 + r) % ways
            _blob(r * 100 + k, 2).save(run / "test" / f"item{m + 1:02d}.png")
            lines.append(
                f"run{r:02d}/test/item{m + 1:02d}.png run{r:02d}/training/class{k + 1:02d}.png"
            )
            labels.append(k)
        (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
        truth[f"run{r:02d}"] = labels
    return root, truth


def _blob(number, drawer):
    """A 105x105 1-bit image: white background, a black bar placed by (number, drawer)."""
    rng = np.random.default_rng([number, drawer])
    pixels = np.ones((105, 105), bool)
    r, col = rng.integers(10, 80, 2)
    pixels[r : r + 20, col : col + 5] = False
    return Image.fromarray(pixels)
