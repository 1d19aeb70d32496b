"""How a model's convolutions are computed: XLA's convolution, or shifted slices and one matrix product.

`matmul_conv` is a drop-in for `jax.lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)`) for
the convolutions the models here use: NHWC inputs, HWIO kernels, any window strides and padding, no dilation, one
feature group. It pads the input, stacks the kh * kw shifted (strided) views of it on the channel axis and
multiplies that (N, H', W', kh * kw * C) array by the kernel reshaped to (kh * kw * C, O): im2col by slicing, so
its gradient is slicing and padding again, and the work is one large GEMM a layer. `matmul_grad_conv` keeps XLA's
convolution forward and takes `matmul_conv`'s gradient. On XLA:CPU the GEMMs make the MixMatch training step
1.5-2x faster than XLA's convolutions (small CNN and WRN-28-2 on 32x32 images; `matmul_grad` the faster,
`benchmarks/results/mixmatch_throughput_conv.md`), but forward-only work (evaluation) is about 2x slower with
`matmul` for the small CNN and unchanged with `matmul_grad` (`mixmatch_throughput_predict.md`); FS students at
batch 64 and the 8x8 digits CNNs gain nothing (docs/learning.md). So it is a choice (`--conv`), not the default.
It costs kh * kw times the layer's input in memory. Numerically it is the same sum in another order (float32 results within rounding of XLA's). On
GPU/TPU keep `xla`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _check_supported(
  lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_groups
) -> None:
  """Raises ValueError for what the matrix-product convolutions do not compute (lax's other options)."""
  if lhs.ndim != 4 or rhs.ndim != 4:
    raise ValueError(f"matmul_conv handles 2-D convolutions (4-D arrays), got {lhs.shape} and {rhs.shape}")
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    raise ValueError("matmul_conv does not handle dilation; use conv='xla'")
  if feature_group_count != 1 or batch_groups != 1:
    raise ValueError("matmul_conv does not handle feature or batch groups; use conv='xla'")
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  if dimension_numbers is not None and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
    raise ValueError(f"matmul_conv handles NHWC inputs and HWIO kernels only, got {dimension_numbers}")
  if lhs.shape[-1] != rhs.shape[2]:
    raise ValueError(f"input channels {lhs.shape[-1]} differ from the kernel's {rhs.shape[2]}")


def matmul_conv(
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
):
  """`lax.conv_general_dilated(lhs, rhs, ...)` for NHWC `lhs` (N, H, W, C) and HWIO `rhs` (kh, kw, C, O) as one
  matrix product of the stacked shifted views; `padding` a lax padding string or ((lo, hi), (lo, hi)). Any float
  dtype; the result has lax's shape (N, H', W', O)."""
  _check_supported(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count)
  kh, kw, c, o = rhs.shape
  sh, sw = window_strides
  pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding) if isinstance(padding, str) else padding
  x = jnp.pad(lhs, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  views = [
    x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] for i in range(kh) for j in range(kw)
  ]
  columns = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)  # (N, H', W', kh * kw * C)
  return jnp.einsum(
    "nhwk,ko->nhwo",
    columns,
    rhs.reshape(kh * kw * c, o),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def matmul_grad_conv(
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
):
  """XLA's convolution forward and `matmul_conv`'s gradient backward (a `jax.custom_vjp`): the same arguments and
  result as `matmul_conv`. Forward-only uses (evaluation, the oracle, MixMatch's label guesses) keep XLA's speed,
  training gets the matrix products' gradient."""
  _check_supported(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count)
  strides = tuple(window_strides)
  pads = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))

  @jax.custom_vjp
  def conv(a, b):
    return lax.conv_general_dilated(
      a, b, strides, pads, dimension_numbers=nhwc, precision=precision, preferred_element_type=preferred_element_type
    )

  def forward(a, b):
    return conv(a, b), (a, b)

  def backward(saved, g):
    return jax.vjp(lambda a, b: matmul_conv(a, b, strides, pads, precision=precision), *saved)[1](g)

  conv.defvjp(forward, backward)
  return conv(lhs, rhs)


CONVS = {"xla": lax.conv_general_dilated, "matmul": matmul_conv, "matmul_grad": matmul_grad_conv}
