"""Entry points as a user runs them: bad input gives one clear line, exit 2, no damage."""

import hashlib
import json
import os
import pathlib
import shutil

import pytest
from helpers import run_module, tiny_config

from maml_dist import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = f"--config={ROOT / 'configs' / 'sinusoid.py'}:tiny"


def _run(module, *args):
    return run_module(module, *args, timeout=120)


def _digest(directory):
    """Hash of every file under `directory`, to prove it was left untouched."""
    h = hashlib.sha256()
    for path in sorted(pathlib.Path(directory).rglob("*")):
        h.update(str(path).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("trained"))
    trainer.train_and_evaluate(tiny_config(num_steps=100), workdir)
    return workdir


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--config.meta_batch_size=25", "--cpu_devices=8"],
            "config.meta_batch_size=25 does not divide by the 8 devices; use a multiple of 8 "
            "(e.g. 24 or 32) or pass --config.pad_meta_batch=True",
        ),
        (
            ["--config.meta_bach_size=16"],
            "unknown config field 'meta_bach_size' (did you mean 'meta_batch_size'?)",
        ),
        (["--config.inner_lr=-0.01"], "config.inner_lr must be a positive finite number"),
        (["--config.meta_lr=0"], "config.meta_lr must be a positive finite number"),
        (["--config.num_steps=0"], "config.num_steps must be a positive integer, got 0"),
        (["--config.inner_steps=-1"], "config.inner_steps must be a non-negative integer"),
        (
            ["--config.algorithm=mamll"],
            "config.algorithm must be one of 'maml', 'fomaml', 'metasgd', 'anil', 'boil', "
            "'reptile', 'imaml', 'mamlpp', got 'mamll'",
        ),
        (["--config.imaml_lambda=0"], "config.imaml_lambda must be a positive finite number"),
        (["--config.inner_lr=0.5"], "this workdir holds a run with a different config (inner_lr"),
        (["--config.inner_lr=nan"], "config.inner_lr must be a positive finite number, got nan"),
        (["--config.meta_lr=inf"], "config.meta_lr must be a positive finite number, got inf"),
        (["--config.inner_lr=abc"], "flag --config.inner_lr=abc: could not convert string to"),
        (["--config.num_steps=1.5"], "flag --config.num_steps=1.5: invalid literal for int()"),
        (["--config.seed=-1"], "config.seed must be a non-negative integer, got -1"),
        (["--config.cpu_threads=-1"], "config.cpu_threads must be an integer from 0 to 256"),
        (
            ["--config.tasks_per_vmap=3", "--cpu_devices=2"],
            "config.tasks_per_vmap=3 does not divide the 8 tasks each device runs per "
            "meta-step; pass a divisor of 8 (e.g. --config.tasks_per_vmap=2 or 4), or 0",
        ),
        (
            ["--config.tasks_per_vmap=4", "--config.task_batching=loop"],
            "config.tasks_per_vmap=4 groups vmapped tasks, but config.task_batching='loop' "
            "runs them one at a time; pass --config.task_batching=vmap, or",
        ),
        (
            ["--config.eval_tasks=3000000000"],
            "config.eval_tasks must be a positive integer of at most",
        ),
        (
            ["--config.grad_clip_norm=nan"],
            "config.grad_clip_norm must be a finite number >= 0 (0 turns it off), got nan",
        ),
        (["--config.algorithm=metasgd", "--config.inner_lr=-1e-300"], "config.inner_lr must be"),
        (
            ["--config.mamlpp.doa_steps=-2"],
            "config.mamlpp.doa_steps must be a meta-step count >= 0, or -1",
        ),
        (["--config.meta_lr_schedule=linear"], "config.meta_lr_schedule must be 'auto', 'const"),
        (
            ["--config.learned_lr_scale=0.1"],
            "config.learned_lr_scale=0.1 scales the meta-updates of learned inner rates, and "
            "algorithm 'maml' learns none here; leave --config.learned_lr_scale=1, or use",
        ),
        (
            ["--config.model.compute_dtype=float16"],
            "config.model.compute_dtype must be 'float32' or 'bfloat16', got 'float16'; pass "
            "--config.model.compute_dtype=float32 (the default) or",
        ),
    ],
)
def test_train_rejects_bad_input_and_keeps_checkpoints(trained, args, message):
    before = _digest(trained)
    proc, errors = _run("maml_dist.train", TINY, f"--workdir={trained}", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("maml_dist.train: error: ")
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    assert _digest(trained) == before


def test_train_rejects_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc, errors = _run("maml_dist.train", TINY, f"--workdir={blocker / 'run'}")
    assert proc.returncode == 2
    assert len(errors) == 1
    assert "is not writable (Not a directory); pass a --workdir you can write to" in errors[0]


def test_train_rejects_a_workdir_that_is_a_file(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    proc, errors = _run("maml_dist.train", TINY, f"--workdir={blocker}")
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert f"workdir '{blocker}' is a file, not a folder; pass a --workdir" in errors[0]
    assert blocker.read_text() == "keep me"


BAD_CONFIG_FILES = {
    "missing.py": None,
    "raises.py": "def get_config():\n    raise RuntimeError('no such dataset')\n",
    "syntax.py": "def get_config(:\n",
    "empty.py": "import ml_collections\n",
}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.py", "config file '{path}' does not exist (relative paths start at"),
        ("", "config file '{path}' is a folder"),
        ("raises.py", "config file '{path}' raised RuntimeError: no such dataset; fix the file"),
        ("syntax.py", "config file '{path}' is not valid Python (invalid syntax, line 1)"),
        ("empty.py", "config file '{path}' defines no get_config(); a config file defines"),
        (
            "omniglot.py:9w9s",
            "config file '{path}' raised ValueError: unknown variant '9w9s' of "
            "configs/omniglot.py; use one of",
        ),
    ],
)
def test_train_names_a_bad_config_file_in_one_line(tmp_path, name, message):
    for file, text in BAD_CONFIG_FILES.items():
        if text is not None:
            (tmp_path / file).write_text(text)
    shutil.copy(ROOT / "configs" / "omniglot.py", tmp_path / "omniglot.py")
    path = str(tmp_path / name.split(":")[0]).rstrip("/")
    argument = path + (":" + name.split(":")[1] if ":" in name else "")
    proc, errors = _run("maml_dist.train", f"--config={argument}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert message.format(path=path) in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shots=0"], "need --num_tasks >= 2, --max_inner_steps >= 0, --num_query >= 1 and"),
        (["--shots=a,b"], "--shots must be integers, got ['a', 'b']; pass e.g. --shots=5,10,20"),
        (["--num_tasks=1"], "need --num_tasks >= 2"),
        (["--num_query=0"], "--num_query >= 1"),
        (["--protocol=paper"], "flag --protocol=paper: value should be one of"),
        (["--protocol=maml_code", "--shots=5,10"], "takes K queries per class, one K at a time"),
        (["--omniglot_runs=/nowhere"], "the one-shot runs are 20-way Omniglot problems; this"),
        (["--data_dir=/nowhere"], "--data_dir applies to runs that read a data set; 'sinusoid'"),
    ],
)
def test_evaluate_rejects_bad_input_in_one_line(trained, args, message):
    before = _digest(trained)
    proc, errors = _run("maml_dist.evaluate", f"--workdir={trained}", *args)
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    assert _digest(trained) == before


def test_evaluate_without_checkpoint(tmp_path):
    proc, errors = _run("maml_dist.evaluate", f"--workdir={tmp_path}")
    assert proc.returncode == 2
    assert len(errors) == 1
    assert f"no checkpoint in '{tmp_path}/checkpoints'; train first with" in errors[0]
    assert not (tmp_path / "checkpoints").exists()


def test_evaluate_unknown_step(trained):
    before = _digest(os.path.join(trained, "checkpoints"))
    proc, errors = _run("maml_dist.evaluate", f"--workdir={trained}", "--step=7")
    assert proc.returncode == 2
    assert len(errors) == 1
    assert "no checkpoint at step 7" in errors[0] and "available steps: [100]" in errors[0]
    assert _digest(os.path.join(trained, "checkpoints")) == before


def test_train_then_evaluate_from_the_command_line(tmp_path):
    workdir = tmp_path / "run"
    proc, _ = _run(
        "maml_dist.train",
        TINY,
        f"--workdir={workdir}",
        "--config.num_steps=20",
        "--config.first_order=True",
        "--config.remat_inner=True",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 20/20" in proc.stderr
    assert "compiling the meta-step..." in proc.stderr
    assert "compiled the meta-step and ran steps 1-" in proc.stderr
    assert "tpu" not in proc.stderr.lower()  # no probing of backends that are not there
    assert "XLA's CPU thread pool: 1 thread(s)" in proc.stderr  # configs/sinusoid.py's
    assert "cannot take effect" not in proc.stderr  # applied once, before JAX started
    proc, _ = _run(
        "maml_dist.evaluate",
        f"--workdir={workdir}",
        "--num_tasks=50",
        "--shots=5,10",
        "--max_inner_steps=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "query mse (mean ± 95% CI) over 50 test tasks" in proc.stdout
    assert "XLA's CPU thread pool: 1 thread(s)" in proc.stderr  # the run's
    report = json.loads((workdir / "eval" / "results.json").read_text())
    assert (report["task"], report["metric"], report["num_tasks"], report["step"]) == (
        "sinusoid",
        "mse",
        50,
        20,
    )
    assert [r["shots"] for r in report["results"]] == [5, 10]
    for r in report["results"]:
        assert r["inner_steps"] == [0, 1, 2]
        assert len(r["mean"]) == len(r["ci95"]) == 3
        assert all(c > 0 for c in r["ci95"])
        assert r["mean"][2] < r["mean"][0]  # adapting helps even after 20 meta-steps
    assert (workdir / "eval" / "curves.png").stat().st_size > 0
    assert (workdir / "eval" / "example_fits.png").stat().st_size > 0


def test_evaluate_reports_its_progress_then_a_readable_table(trained):
    proc, _ = _run("maml_dist.evaluate", f"--workdir={trained}", "--num_tasks=600", "--shots=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress = [line for line in proc.stderr.splitlines() if "meta-test K=10: " in line]
    assert len(progress) >= 3, proc.stderr[-3000:]
    assert "/600 tasks, " in progress[0] and "600/600 tasks" in progress[-1]
    assert "restoring the checkpoint at step 100" in proc.stderr
    assert "tpu" not in proc.stderr.lower()
    _, header, _, row = proc.stdout.splitlines()[:4]
    assert header.split() == [
        "K",
        "0",
        "steps",
        "1",
        "step",
        "(trained)",
        "5",
        "steps",
        "10",
        "steps",
    ]
    assert row.split()[0] == "10" and len(row) < 120  # fixed notation, five columns
    assert "e+" not in row and "e-" not in row


def test_runs_of_version_0_1_are_named_not_misread(trained, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained, old)
    saved = json.loads((old / "config.json").read_text())
    for field in ("algorithm", "imaml_lambda", "cg_steps"):  # what 0.1 configs lacked
        del saved[field]
    (old / "config.json").write_text(json.dumps(saved))
    before = _digest(old)
    for module, args in (("maml_dist.train", (TINY,)), ("maml_dist.evaluate", ())):
        proc, errors = _run(module, *args, f"--workdir={old}")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(errors) == 1 and "holds a run of maml_dist 0.1" in errors[0], errors
    assert _digest(old) == before


def test_a_second_run_loads_its_compiled_steps_from_the_compilation_cache(tmp_path):
    cache = tmp_path / "cache"

    def train(name):
        proc, _ = _run(
            "maml_dist.train",
            TINY,
            f"--workdir={tmp_path / name}",
            "--config.num_steps=20",
            f"--compile_cache={cache}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return (tmp_path / name / "metrics.jsonl").read_text()

    first = train("first")
    entries = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert entries, "the first run wrote nothing to the cache"
    second = train("second")  # same programs: every one a cache hit, nothing new written
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == entries
    strip = lambda text: [  # noqa: E731
        {k: v for k, v in json.loads(line).items() if "time" not in k and "per_s" not in k}
        for line in text.splitlines()
    ]
    assert strip(second) == strip(first)


def test_compile_cache_off_writes_no_cache(tmp_path):
    env_cache = tmp_path / "xdg"
    proc, _ = run_module(
        "maml_dist.train",
        TINY,
        f"--workdir={tmp_path / 'run'}",
        "--config.num_steps=5",
        "--compile_cache=off",
        env={"XDG_CACHE_HOME": str(env_cache)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (env_cache / "maml_dist" / "jax").exists()
