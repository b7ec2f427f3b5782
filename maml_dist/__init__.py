"""maml_dist: distributed gradient-based meta-learning (MAML and its family) in JAX.

The public API a notebook uses; see the README's "Python API". Everything here is a pure
function or a frozen dataclass, except `train_and_evaluate`, the full trainer (a workdir
with checkpoints, TensorBoard and metrics), imported on first call.
"""

from maml_dist.algorithms import (
    REGISTRY as ALGORITHMS,
)
from maml_dist.algorithms import (
    Algorithm,
    InnerConfig,
    make_algorithm,
    make_head_split,
    make_loss_fn,
    make_query_fn,
)
from maml_dist.api import Learner, MetaConfig, adapt, evaluate, make_learner, sample_tasks
from maml_dist.errors import UserInputError
from maml_dist.models import MLP, ConvNet
from maml_dist.nonfinite import NonFiniteError
from maml_dist.state import TrainState
from maml_dist.tasks import REGISTRY as TASK_FAMILIES
from maml_dist.tasks.image_folder import ImageFolderFamily
from maml_dist.tasks.miniimagenet import MiniImageNetFamily
from maml_dist.tasks.omniglot import OmniglotFamily
from maml_dist.tasks.sinusoid import Sinusoid
from maml_dist.types import HeadSplit, TaskBatch

__version__ = "0.11.0"

__all__ = [
    "ALGORITHMS",
    "MLP",
    "TASK_FAMILIES",
    "Algorithm",
    "ConvNet",
    "HeadSplit",
    "ImageFolderFamily",
    "InnerConfig",
    "Learner",
    "MetaConfig",
    "MiniImageNetFamily",
    "NonFiniteError",
    "OmniglotFamily",
    "Sinusoid",
    "TaskBatch",
    "TrainState",
    "UserInputError",
    "adapt",
    "evaluate",
    "make_algorithm",
    "make_head_split",
    "make_learner",
    "make_loss_fn",
    "make_query_fn",
    "sample_tasks",
    "train_and_evaluate",
]


def train_and_evaluate(config, workdir: str, devices: list | None = None) -> TrainState:
    """The full trainer: `maml_dist.trainer.train_and_evaluate` (see its docstring)."""
    from maml_dist import trainer  # orbax and tensorboardX load only for the trainer

    return trainer.train_and_evaluate(config, workdir, devices)
