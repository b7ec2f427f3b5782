"""The public API: the README's example, the tutorial, and every module importable first."""

import dataclasses
import pathlib
import re
import subprocess
import sys

import pytest

import maml_dist
from maml_dist.errors import UserInputError
from maml_dist.types import RATES

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
        "boil",
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


def test_run_stops_at_a_non_finite_step_with_the_last_finite_state():
    import chex
    import jax
    import numpy as np

    import maml_dist as md

    # An inner rate of 100 overflows after a finite first meta-step: at step 2 on the suite's
    # 8 devices (the meta-batch split 8 ways; other splits round, and overflow, otherwise).
    learner = md.make_learner(md.MetaConfig(inner=md.InnerConfig(lr=100.0)), md.Sinusoid())
    with pytest.raises(md.NonFiniteError, match=r"of meta-step (\d+) is not finite") as info:
        learner.run(learner.init(), 20)
    state, metrics = info.value.state, info.value.metrics
    # The first step the guard counted (its metrics, not the message) is the one named.
    bad = int(np.flatnonzero(np.asarray(metrics["nonfinite_in_row"]))[0]) + 1
    assert bad > 1 and f"of meta-step {bad} is not finite" in str(info.value)
    assert int(state.step) == bad and int(state.nonfinite_in_row) == 1
    assert metrics["meta_loss"].shape == (20,)
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(jax.device_get(state.meta_params)))
    # Its meta-parameters are those of the steps before the bad one, run alone.
    before, _ = learner.run(learner.init(), bad - 1)
    chex.assert_trees_all_close(state.meta_params, before.meta_params, rtol=1e-6)
    # As the message says, the state goes on once its count is cleared (a halted one not).
    step = jax.jit(learner.meta_step)
    assert int(step(state)[0].step) == bad
    assert int(step(state.replace(nonfinite_in_row=0))[0].step) == bad + 1


def test_learned_lr_scale_scales_the_learned_rates_steps_alone():
    import chex
    import jax

    import maml_dist as md

    def first_update(scale):
        config = md.MetaConfig(algorithm="metasgd", learned_lr_scale=scale)
        learner = md.make_learner(config, md.Sinusoid())
        start = learner.init()
        before = jax.device_get(start.meta_params)
        state, metrics = learner.run(start, 1)
        after = jax.device_get(state.meta_params)
        # The step reports the learned rates' range (TensorBoard's train/inner_lr_*).
        rates = [a.ravel() for a in jax.tree.leaves(after[RATES])]
        assert float(metrics["inner_lr_min"][-1]) == min(r.min() for r in rates)
        assert float(metrics["inner_lr_max"][-1]) == max(r.max() for r in rates)
        return jax.tree.map(lambda a, b: a - b, after, before)

    full, scaled = first_update(1.0), first_update(0.25)
    chex.assert_trees_all_close(scaled["params"], full["params"], rtol=1e-6)
    quarter = jax.tree.map(lambda d: 0.25 * d, full[RATES])
    chex.assert_trees_all_close(scaled[RATES], quarter, rtol=1e-4)
    assert max(abs(d).max() for d in jax.tree.leaves(full[RATES])) > 1e-4
    with pytest.raises(UserInputError, match=r"algorithm 'maml' learns none here"):
        md.make_learner(md.MetaConfig(learned_lr_scale=0.5), md.Sinusoid())
    no_rates = md.MetaConfig(algorithm="mamlpp", inner=md.InnerConfig(lslr=False))
    with pytest.raises(UserInputError, match=r"algorithm 'mamlpp' learns none here"):
        md.make_learner(dataclasses.replace(no_rates, learned_lr_scale=0.5), md.Sinusoid())
    with pytest.raises(UserInputError, match=r"learned_lr_scale must be a positive finite"):
        md.make_learner(md.MetaConfig(algorithm="metasgd", learned_lr_scale=0), md.Sinusoid())
