"""3x3 "SAME" convolutions as patches times a matrix: what XLA:CPU runs fast under loops.

`nn.Conv`'s parameters and outputs, computed as im2col (`PatchConv`) or with patches cut
by strided slices (`SliceConv`); `ConvNet`'s `conv_impl` picks one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def cast(x: jax.Array, dtype) -> jax.Array:
    """`x` in `dtype`, or unchanged for None."""
    return x if dtype is None else x.astype(dtype)


class PatchConv(nn.Module):
    """A 3x3 "SAME" convolution computed as image patches times a matrix (im2col).

    Same parameters (`kernel` HWIO, `bias`) and outputs as `nn.Conv`, but its kernel
    gradient is a matrix product instead of a backward-filter convolution. XLA:CPU runs
    backward-filter convolutions inside a loop body (a `lax.scan` over inner steps, tasks
    or meta-steps) ~77x slower than outside one (measured: 3.1 s against 40 ms for ten
    14x14x64 kernel gradients); with patches the loop costs what straight code does.

    Attributes:
        features: output channels.
        strides: spatial stride.
        dtype: what the patches and product are computed in (`nn.Conv`'s `dtype`): None
            for the inputs' and parameters' dtype; the parameters stay float32.
    """

    features: int
    strides: int = 1
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H/stride, W/stride, features)."""
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = (cast(a, self.dtype) for a in (x, kernel, bias))
        # Patch features are ordered (channel, row, column).
        matrix = kernel.transpose(2, 0, 1, 3).reshape(-1, self.features)
        return self.patches(x) @ matrix + bias

    def patches(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H/stride, W/stride, 9C) 3x3 "SAME" patches."""
        return jax.lax.conv_general_dilated_patches(
            x,
            (3, 3),
            (self.strides, self.strides),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


def slice_patches(x: jax.Array, strides: int) -> jax.Array:
    """The 3x3 "SAME" patches of (B, H, W, C) images, as nine strided slices.

    The values and feature order (channel, row, column) of
    `lax.conv_general_dilated_patches`, which computes them as a convolution grouped by
    channel, a kind XLA:CPU runs slowly (and its gradient likewise); slices and their
    gradients (pads) are memory moves.
    """
    _, h, w, _ = x.shape
    out_h, out_w = -(-h // strides), -(-w // strides)
    # "SAME" padding: the total is split with the smaller half first, as XLA does.
    pad_h = max((out_h - 1) * strides + 3 - h, 0)
    pad_w = max((out_w - 1) * strides + 3 - w, 0)
    x = jnp.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    taps = [
        x[
            :,
            i : i + (out_h - 1) * strides + 1 : strides,
            j : j + (out_w - 1) * strides + 1 : strides,
        ]
        for i in range(3)
        for j in range(3)
    ]
    patches = jnp.stack(taps, axis=-1)  # (B, out_h, out_w, C, 9): channel, then row, column
    return patches.reshape(*patches.shape[:3], -1)


class SliceConv(PatchConv):
    """`PatchConv` with its patches cut by `slice_patches` instead of a grouped convolution.

    Same parameters, names and outputs (the gradients differ in rounding: the slices'
    transpose adds a pixel's contributions in another order).
    """

    def patches(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H/stride, W/stride, 9C) 3x3 "SAME" patches."""
        return slice_patches(x, self.strides)
