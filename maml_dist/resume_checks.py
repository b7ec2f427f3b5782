"""Whether a workdir's run resumes under a config: its format, and the fields that differ.

A resumed run must train what the saved one trained: fields that change the training
refuse the resume (one sentence naming them); fields added by later versions are filled
in with the values that reproduce what older runs did.
"""

from __future__ import annotations

import json

import ml_collections

from maml_dist import nonfinite
from maml_dist.errors import UserInputError
from maml_dist.problem import MAMLPP_DEFAULTS
from maml_dist.state import resolve_schedule

# Fields that may change when a run is resumed: they do not change what is being trained.
RESUMABLE_CHANGES = frozenset(
    {
        "num_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "max_to_keep",
        "eval_tasks",
        "host_chunk_steps",  # chunking does not change the batches of any step
        "host_workers",  # nor does which process draws them
        # The CPU thread pool changes the rounding, not the training: a run moves to a
        # machine with other cores as it does from one device count to another.
        "cpu_threads",
        # Grouping a device's tasks changes memory and rounding, not the tasks or the
        # objective: a run resumed on a smaller accelerator may need smaller groups.
        "tasks_per_vmap",
        "data_dir",  # the same data may live elsewhere on another machine
        # What to do on a non-finite step: a finite run trains the same either way, and a
        # stopped run is resumed with "skip" (or more skips) in the same workdir.
        "nonfinite",
        "nonfinite_max_skips",
    }
)


# Fields added after maml_dist 0.2.0, with the values that reproduce what older runs did;
# every network's config got the compute dtype, conv-net configs (their model has
# `filters`) also the batch-norm fields.
LATER_FIELDS = {
    "learned_lr_scale": 1.0,
    "meta_lr_schedule": "auto",
    "meta_lr_min": 1e-5,
    "mamlpp": MAMLPP_DEFAULTS,
    "nonfinite": nonfinite.DEFAULT_MODE,
    "nonfinite_max_skips": nonfinite.DEFAULT_MAX_SKIPS,
}
LATER_CONV_FIELDS = {"bn_momentum": 0.1, "data_placement": "host"}
LATER_MODEL_FIELDS = {"compute_dtype": "float32"}
LATER_CONV_MODEL_FIELDS = {"bn_mode": "auto", "mamlpp_bn_mode": "per_step_running"}
# Omniglot runs before the alphabet split had validation alphabets (0.3).
LATER_OMNIGLOT_FIELDS = {"validation_alphabets": [], "num_validation_alphabets": 0}


def with_later_fields(saved: dict) -> dict:
    """A saved config with the fields it predates filled in, so older runs resume."""
    out = {**LATER_FIELDS, **saved}
    model = saved.get("model")
    if isinstance(model, dict):
        out["model"] = {**LATER_MODEL_FIELDS, **model}
    if isinstance(model, dict) and "filters" in model:
        out = {**LATER_CONV_FIELDS, **out, "model": {**LATER_CONV_MODEL_FIELDS, **out["model"]}}
    if isinstance(saved.get("omniglot"), dict):
        out["omniglot"] = {**LATER_OMNIGLOT_FIELDS, **saved["omniglot"]}
    return out


def _drop_unused_mamlpp_bn_mode(config: dict) -> dict:
    """`config` without `model.mamlpp_bn_mode` where "auto" does not resolve through it.

    The field only says what "auto" batch norm gives MAML++; for other runs it changes
    nothing, so an older run without it resumes under a config that has it.
    """
    model = config.get("model")
    if not isinstance(model, dict) or "mamlpp_bn_mode" not in model:
        return config
    if config.get("algorithm") == "mamlpp" and model.get("bn_mode") == "auto":
        return config
    return {**config, "model": {k: v for k, v in model.items() if k != "mamlpp_bn_mode"}}


def check_run_format(saved: dict, workdir: str) -> None:
    """Checks that the run in `workdir` (its saved config `saved`) was written by this version.

    Runs of maml_dist 0.1 predate the algorithm interface: their config has no `algorithm`
    and their checkpoints hold the bare weights (last layer `Dense_N`, not `head`).

    Raises:
        UserInputError: for such a run.
    """
    if "algorithm" not in saved:
        raise UserInputError(
            f"{workdir!r} holds a run of maml_dist 0.1 (no config.algorithm; its checkpoints "
            f"have another layout); retrain it in a new --workdir, or use maml_dist 0.1 for it"
        )


def check_resume_compatible(saved: dict, config: ml_collections.ConfigDict) -> None:
    """Checks that `config` continues the run whose resolved config was `saved`.

    Raises:
        UserInputError: naming the fields that differ, if any would change the training.
    """
    current = _drop_unused_mamlpp_bn_mode(with_later_fields(json.loads(config.to_json())))
    saved = _drop_unused_mamlpp_bn_mode(with_later_fields(saved))
    resumable = RESUMABLE_CHANGES
    switches = {**MAMLPP_DEFAULTS, **config.get("mamlpp", {})}
    auto_mamlpp = config.algorithm == "mamlpp" and -1 in (
        switches["msl_anneal_steps"],
        switches["doa_steps"],
    )
    if auto_mamlpp or resolve_schedule(config) == "cosine":
        # These schedules (cosine decay; MSL annealing and DOA at -1) follow num_steps, so
        # a longer run would not continue the same training.
        resumable = resumable - {"num_steps"}
    differing = sorted(
        k
        for k in set(saved) | set(current)
        if k not in resumable and saved.get(k) != current.get(k)
    )
    if differing:
        first = differing[0]
        raise UserInputError(
            f"this workdir holds a run with a different config ({', '.join(differing)}; "
            f"e.g. {first}={saved.get(first)!r} there, {current.get(first)!r} now); use a "
            f"new --workdir, or the saved values to resume"
        )
