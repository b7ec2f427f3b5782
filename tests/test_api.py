"""The public API: the README's example, the tutorial, and every module importable first."""

import pathlib
import re
import subprocess
import sys

import pytest

import maml_dist
from maml_dist.errors import UserInputError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_learns():
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 15
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    # The example prints the query MSE before and after adaptation; adaptation must help.
    before, after = namespace["result"]["mean"][[0, 10]]
    assert after < 0.5 * before, (before, after)


def test_public_api_is_declared():
    for name in maml_dist.__all__:
        assert hasattr(maml_dist, name), name
    assert set(maml_dist.ALGORITHMS) == {
        "maml",
        "fomaml",
        "metasgd",
        "anil",
        "reptile",
        "imaml",
        "mamlpp",
    }


def test_every_module_imports_first():
    """Each module imported first (the package's modules dropped in between): no cycles.

    The two entry modules define absl flags, which cannot be defined twice in a process;
    the command-line tests import each of them first (`python -m maml_dist.train`).
    """
    entries = {"maml_dist.train", "maml_dist.evaluate"}
    modules = sorted(
        name
        for p in (ROOT / "maml_dist").rglob("*.py")
        if (name := ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
        not in entries
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    for m in [m for m in sys.modules if m.startswith('maml_dist')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "maml_dist.data.episodes" in modules


def test_tutorial_runs_fast(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/tutorial_sinusoid.py", "--fast", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "relative max error" in proc.stdout
    assert (tmp_path / "before_after.png").stat().st_size > 0
    assert (tmp_path / "cost.png").stat().st_size > 0


def test_a_learners_vmap_groups_give_the_same_meta_step():
    import chex
    import jax

    import maml_dist as md

    def first_steps(size):
        config = md.MetaConfig(meta_batch_size=8, tasks_per_vmap=size)
        learner = md.make_learner(config, md.Sinusoid(), devices=jax.devices()[:2])
        state = learner.init()
        # The groups run one after another: one more loop in the program than at once.
        loops = jax.jit(learner.meta_step).lower(state).as_text().count("stablehlo.while")
        return learner.run(state, 2), loops

    # Groups of 2 divide each device's 4 tasks (one gradient a group); groups of 3 leave
    # a last one of 1 (a gradient per task).
    whole, loops = first_steps(0)
    for size in (2, 3):
        grouped, grouped_loops = first_steps(size)
        assert grouped_loops > loops
        chex.assert_trees_all_close(grouped, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserInputError, match=r"MetaConfig\.tasks_per_vmap must be an integer"):
        md.make_learner(md.MetaConfig(tasks_per_vmap=-1), md.Sinusoid())
