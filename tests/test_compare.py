"""`python -m maml_dist.compare`: the table, the figure and the refusals, on run folders."""

import json

import numpy as np
from helpers import run_module, tiny_config
from PIL import Image

from maml_dist import formatting


def _write_run(folder, *, num_query=100, seed=0, shift=0.0, older_than=(), **config_fields):
    """A run folder as train + evaluate leave it: config.json and eval/results.json.

    `older_than`: config fields the run predates (left out of its config.json).
    """
    (folder / "eval").mkdir(parents=True)
    config = json.loads(tiny_config(**config_fields).to_json())
    (folder / "config.json").write_text(
        json.dumps({k: config[k] for k in config if k not in older_than})
    )
    steps = list(range(4))
    results = [
        {
            "shots": k,
            "inner_steps": steps,
            "mean": [float(m) for m in np.linspace(3.0, 0.5 + shift, 4) / k],
            "ci95": [0.05] * 4,
            "median": [1.0] * 4,
            "nonfinite": [0] * 4,
        }
        for k in (5, 10)
    ]
    report = {
        "task": "sinusoid",
        "metric": "mse",
        "num_tasks": 50,
        "step": 200,
        "seed": seed,
        "num_query": num_query,
        "algorithm": "maml",
        "results": results,
    }
    (folder / "eval" / "results.json").write_text(json.dumps(report))
    return folder


def test_compare_prints_the_differing_fields_and_both_runs_and_draws_them(tmp_path):
    a = _write_run(tmp_path / "lr001", inner_lr=0.01)
    # A run older than two fields: they take the values it ran with, so no column.
    older = ("learned_lr_scale", "meta_lr_schedule")
    b = _write_run(tmp_path / "lr003", inner_lr=0.03, shift=0.2, older_than=older)
    out = tmp_path / "cmp.png"
    proc, errors = run_module("maml_dist.compare", str(a), str(b), f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not errors
    lines = proc.stdout.splitlines()
    header = lines[1].split()
    assert header[:2] == ["run", "inner_lr"]  # the one config field that differs
    assert not set(older) & set(header)
    assert "K=5," in header and "K=10," in header
    rows = {line.split()[0]: line for line in lines[3:5]}
    assert set(rows) == {"lr001", "lr003"}
    assert "0.01" in rows["lr001"].split() and "0.03" in rows["lr003"].split()
    # Fixed notation, three significant digits: 3.0 / 5 after 0 steps is not shown, after
    # 3 steps (the last) 0.5 / 5 = 0.100 and (0.5 + 0.2) / 5 = 0.140.
    assert "0.100 ± 0.050" in rows["lr001"] and "0.140 ± 0.050" in rows["lr003"]
    image = np.asarray(Image.open(out))
    assert image.shape[1] > image.shape[0] > 100  # two panels side by side


def test_compare_refuses_runs_tested_differently_in_one_line(tmp_path):
    a = _write_run(tmp_path / "a", inner_lr=0.01)
    b = _write_run(tmp_path / "b", inner_lr=0.03, num_query=10)
    proc, errors = run_module("maml_dist.compare", str(a), str(b), f"--out={tmp_path / 'x.png'}")
    assert proc.returncode == 2
    assert len(errors) == 1 and "meta-tested differently (num_query: 100 against 10)" in errors[0]
    assert not (tmp_path / "x.png").exists()
    proc, errors = run_module("maml_dist.compare", str(a), str(tmp_path / "missing"))
    assert proc.returncode == 2 and len(errors) == 1 and "does not exist" in errors[0]


def test_numbers_are_in_fixed_notation_with_the_median_when_it_matters():
    assert formatting.mean_ci(0.9953, 0.0191, "accuracy") == "99.5% ± 1.9"
    assert formatting.mean_ci(0.0943, 0.0132, "mse") == "0.0943 ± 0.0132"
    assert formatting.mean_ci(99.5, 190.0, "mse") == "99.5 ± 190.0"
    assert formatting.mean_ci(None, None, "mse") == "not finite"
    assert formatting.cell(0.295, 0.028, 0.21, 0, 600, "mse") == "0.295 ± 0.028"
    # A mean that a few tasks dominate (K = 5 after 10 steps, README "Results").
    assert formatting.cell(99.5, 190.0, 0.0951, 0, 600, "mse") == ("99.5 ± 190.0 (median 0.0951)")
    assert formatting.cell(None, None, 0.21, 1, 600, "mse") == "median 0.210 (1 of 600 not finite)"
