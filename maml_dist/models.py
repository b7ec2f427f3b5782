"""Networks that are meta-learned (flax.linen)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maml_dist.convs import PatchConv, SliceConv, cast
from maml_dist.norms import BatchStatNorm, StepNorm, SupportNorm
from maml_dist.types import HEAD

CONV_IMPLS = ("xla", "im2col", "slices", "auto")
# What a network's `part` argument selects: the whole network, the body (everything up to
# the head's input), or the head alone on the body's output. ANIL adapts the head on
# features the body computes once per task (`maml_dist.algorithms.anil`).
PARTS = ("all", "body", "head")
# How a conv net normalises (README, "Batch norm"): "transductive" normalises every set
# with its own batch statistics (MAML's, and this project's default); "per_step_running"
# keeps a scale, offset and running statistics per inner step (MAML++), normalising with
# batch statistics in meta-training and with the running ones at meta-test, so a query is
# classified the same alone or in a batch; "per_step_support" keeps a scale and offset per
# inner step and normalises every set with the support set's batch statistics at the same
# parameters (MetaBN, Bronskill et al. 2020), so a query's prediction depends on the
# labelled support set and on itself only; "none" has no normalisation layer.
BN_MODES = ("transductive", "per_step_running", "per_step_support", "none")
# The modes whose outputs depend on how many inner steps the parameters have had.
PER_STEP_BN_MODES = ("per_step_running", "per_step_support")
# What a network computes in (README, "Compute dtype"): "float32" everything; "bfloat16"
# the activations, convolutions and matrix products, with the parameters float32 (cast
# down where used, so gradients and updates are float32), batch-norm statistics computed
# in float32, and the output cast to float32 before any loss.
COMPUTE_DTYPES = ("float32", "bfloat16")


def check_part(part: str) -> None:
    """Raises ValueError unless `part` is one of PARTS (a programming error, not user input)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def resolve_compute_dtype(name: str):
    """The dtype flax layers are given for compute dtype `name`: None for "float32".

    None is flax's "from the inputs and parameters": float32 networks run exactly the code
    they ran before compute dtypes existed (and float64 ones, in tests, stay float64).

    Raises:
        ValueError: for a name not in COMPUTE_DTYPES (a programming error: configs are
            checked by `maml_dist.checks.validate_config`).
    """
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
    return None if name == "float32" else jnp.dtype(name)


def _output(x: jax.Array) -> jax.Array:
    """A network's output in at least float32: what losses, gradients and updates see."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# What "auto" gives MAML++ where a config does not say (`model.mamlpp_bn_mode`): runs saved
# before 0.5 have no such field, and their "auto" meant running statistics.
OLD_MAMLPP_BN_MODE = "per_step_running"


def resolve_bn_mode(name: str, algorithm: str, mamlpp_bn_mode: str = OLD_MAMLPP_BN_MODE) -> str:
    """The batch-norm mode to use: `name`, or for "auto" the algorithm's own.

    "auto" is `mamlpp_bn_mode` for "mamlpp" (the configs' is "per_step_support" since 0.5:
    queries normalised with the support set's statistics, which trained better than
    running statistics in every measurement; docs/algorithms.md, "MAML++ ablation") and
    "transductive" (MAML's) for every other algorithm.
    """
    if name != "auto":
        return name
    return mamlpp_bn_mode if algorithm == "mamlpp" else "transductive"


def resolve_conv_impl(name: str, backend: str | None = None) -> str:
    """The conv implementation to use: `name`, or for "auto" "slices" on CPU, else "xla".

    XLA:CPU runs conv kernel gradients inside loop bodies ~77x slower than outside one
    (PatchConv's docstring), and im2col's patches as a slow grouped convolution; SliceConv
    avoids both (README "Omniglot speed"). Before maml_dist 0.5 "auto" was "im2col" on CPU.
    Accelerators run `nn.Conv` through their conv libraries.
    """
    if name != "auto":
        return name
    return "slices" if (backend or jax.default_backend()) == "cpu" else "xla"


class MLP(nn.Module):
    """Fully connected ReLU network; the sinusoid regressor of Finn et al. 2017.

    Attributes:
        hidden_sizes: widths of the hidden layers (the paper uses (40, 40)).
        out_features: width of the output layer (1 for regression).
        init_stddev: if > 0, weights start from a truncated normal with this standard
            deviation and biases at zero, as in the original MAML code (0.01); if 0,
            flax's LeCun-normal default. With LeCun init the network's first inner step at
            alpha=0.01 overshoots (query loss rises ~5x on a fresh net); the small init does not.
        compute_dtype: one of COMPUTE_DTYPES; the output is float32 either way.
    """

    hidden_sizes: Sequence[int]
    out_features: int
    init_stddev: float = 0.0
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, part: str = "all") -> jax.Array:
        """Maps inputs of shape (..., in) to outputs of shape (..., out_features).

        Args:
            x: inputs, or for `part="head"` the body's features.
            part: "all"; "body" (the features the head reads); "head" (the head alone).
        """
        dtype = resolve_compute_dtype(self.compute_dtype)
        kwargs = {"dtype": dtype}
        if self.init_stddev > 0:
            kwargs["kernel_init"] = nn.initializers.truncated_normal(self.init_stddev)
        check_part(part)
        x = cast(x, dtype)
        if part != "head":
            for width in self.hidden_sizes:
                x = nn.relu(nn.Dense(width, **kwargs)(x))
        if part == "body":
            return _output(x)
        # Named so that ANIL and BOIL can tell the head from the body.
        return _output(nn.Dense(self.out_features, name=HEAD, **kwargs)(x))


class ConvNet(nn.Module):
    """The MAML paper's conv nets: blocks of 3x3 conv, batch norm, ReLU (, 2x2 max-pool).

    The defaults are its Omniglot network (64 filters, stride-2 convs, no pooling). Its
    mini-ImageNet network is `ConvNet(n, filters=32, strides=1, pool=True)`: stride-1
    convs, each block ending in a 2x2 stride-2 "VALID" max-pool as in the paper's code
    (84 -> 42 -> 21 -> 10 -> 5, so the head reads 5 * 5 * 32 = 800 features). Pooling
    adds no parameters, so both networks have the same parameter names.

    Attributes:
        num_classes: width of the linear head (N of N-way).
        filters: channels of every conv (64 for Omniglot, 32 for mini-ImageNet).
        blocks: number of conv blocks (4).
        conv_impl: "xla" (`nn.Conv`), "im2col" (`PatchConv`: same parameters and
            outputs, much faster under loops on XLA:CPU) or "slices" (`SliceConv`: im2col
            with its patches cut by slices, faster again on XLA:CPU).
        bn_mode: one of BN_MODES.
        bn_slots: per-step slots of the per-step modes (training inner steps + 1).
        strides: the convs' stride (2 for Omniglot; 1 with `pool`).
        pool: end every block with a 2x2 stride-2 max-pool (after the ReLU).
        compute_dtype: one of COMPUTE_DTYPES: what convs, the head and activations run in
            (batch-norm statistics are float32 either way); parameters and the output
            are float32.
    """

    num_classes: int
    filters: int = 64
    blocks: int = 4
    conv_impl: str = "xla"
    bn_mode: str = "transductive"
    bn_slots: int = 2
    strides: int = 2
    pool: bool = False
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        part: str = "all",
        step: jax.Array | int = 0,
        train: bool = False,
        context: jax.Array | None = None,
    ) -> jax.Array:
        """(B, H, W, C) images (uint8 0-255, or floats in [0, 1]) -> (B, num_classes).

        Args:
            x: images, or for `part="head"` the body's (B, features) output.
            part: "all"; "body" (the flattened features the head reads); "head".
            step: inner updates the parameters have had (selects the per-step slots).
            train: "per_step_running" normalises with the batch's statistics and sows
                them (support sets), else with the running ones.
            context: "per_step_support": the task's support images, whose statistics
                normalise `x` (None: `x` is the support set, normalised with its own).
                The other modes ignore it.
        """
        check_part(part)
        dtype = resolve_compute_dtype(self.compute_dtype)
        num_context = None
        if part != "head" and context is not None and self.bn_mode == "per_step_support":
            # One forward pass over support then queries; each norm layer takes its
            # statistics from the support rows, and the rows are otherwise independent.
            num_context = context.shape[0]
            x = jnp.concatenate([context.astype(x.dtype), x])
        if part != "head":
            if x.dtype == jnp.uint8:
                x = x.astype(jnp.float32) / 255.0
            x = cast(x, dtype)
            for i in range(self.blocks):
                if self.conv_impl in ("im2col", "slices"):
                    # Named like nn.Conv's so every implementation shares checkpoints.
                    conv = PatchConv if self.conv_impl == "im2col" else SliceConv
                    x = conv(self.filters, strides=self.strides, dtype=dtype, name=f"Conv_{i}")(x)
                else:
                    # Named explicitly: a "body" call must not renumber the layers.
                    x = nn.Conv(
                        self.filters,
                        (3, 3),
                        strides=self.strides,
                        padding="SAME",
                        dtype=dtype,
                        name=f"Conv_{i}",
                    )(x)
                if self.bn_mode == "transductive":
                    x = BatchStatNorm(name=f"BatchStatNorm_{i}")(x)
                elif self.bn_mode == "per_step_running":
                    x = StepNorm(self.bn_slots, name=f"StepNorm_{i}")(x, step, train)
                elif self.bn_mode == "per_step_support":
                    x = SupportNorm(self.bn_slots, name=f"SupportNorm_{i}")(x, step, num_context)
                x = nn.relu(x)
                if self.pool:
                    # "VALID", as the paper's code pools: an odd side loses its last row.
                    x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            x = x.reshape(x.shape[0], -1)
            if num_context is not None:
                x = x[num_context:]
        if part == "body":
            return _output(x)
        return _output(nn.Dense(self.num_classes, dtype=dtype, name=HEAD)(x))
