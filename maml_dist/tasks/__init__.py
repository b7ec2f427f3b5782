"""Explicit registry of task families (no string imports)."""

from __future__ import annotations

import ml_collections

from maml_dist.tasks.base import TaskFamily
from maml_dist.tasks.image_folder import ImageFolderFamily
from maml_dist.tasks.miniimagenet import MiniImageNetFamily
from maml_dist.tasks.omniglot import OmniglotFamily
from maml_dist.tasks.sinusoid import Sinusoid
from maml_dist.types import TaskBatch

REGISTRY: dict[str, type] = {
    Sinusoid.name: Sinusoid,
    OmniglotFamily.name: OmniglotFamily,
    ImageFolderFamily.name: ImageFolderFamily,
    MiniImageNetFamily.name: MiniImageNetFamily,
}

__all__ = ["REGISTRY", "TaskBatch", "TaskFamily", "make_task_family"]


def make_task_family(config: ml_collections.ConfigDict) -> TaskFamily:
    """Builds the task family named by `config.task`.

    Raises:
        ValueError: if the name is not registered.
    """
    try:
        cls = REGISTRY[config.task]
    except KeyError:
        raise ValueError(
            f"unknown task {config.task!r}; choose one of {sorted(REGISTRY)}"
        ) from None
    return cls.from_config(config)
