"""Flax (linen) models chosen by name: WRN-28-k as in the MixMatch reference, a small CNN, an MLP.

Every model maps float inputs (N, H, W, C) in [-1, 1] (see `extraction.datasets.to_float`) to logits (N, classes).
With `rotation_head=True` it returns `(logits, rotation_logits)`, the second a 4-way head on the same features
(used by the rotation self-supervised loss). `compute_dtype=jnp.bfloat16` computes the convolutions and dense
layers in bfloat16 (inputs and kernels rounded to it; parameters, batch norm and the returned logits stay
float32), the mixed precision of flax's ImageNet example; None (the default) computes in the parameters' dtype. Models with batch norm keep running statistics in the
`batch_stats` collection; call them with `train=True` and `mutable=['batch_stats']` while training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from extraction.conv import CONVS

# The MixMatch reference uses momentum 0.999 over ~1M steps; at our budgets of a few thousand steps the running
# statistics would still be mostly their initial values, so 0.99 (flax's default).
_BN = functools.partial(nn.BatchNorm, momentum=0.99, epsilon=1e-3)
_leaky = functools.partial(nn.leaky_relu, negative_slope=0.1)
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Heads(nn.Module):
  """Class head plus the optional 4-way rotation head on a feature vector; outputs in the parameters' dtype."""

  num_classes: int
  rotation_head: bool
  dtype: Any = jnp.float32
  compute_dtype: Any = None

  @nn.compact
  def __call__(self, feats):
    dense = lambda n, name: nn.Dense(n, dtype=self.compute_dtype or self.dtype, param_dtype=self.dtype, name=name)(
      feats
    ).astype(self.dtype)
    logits = dense(self.num_classes, "classifier")
    if self.rotation_head:
      return logits, dense(4, "rotation")
    return logits


class _Residual(nn.Module):
  filters: int
  stride: int = 1
  activate_before_residual: bool = False
  compute_dtype: Any = None
  conv: str = "xla"

  @nn.compact
  def __call__(self, x0, train: bool):
    conv = functools.partial(
      nn.Conv, kernel_init=_conv_init, dtype=self.compute_dtype, conv_general_dilated=CONVS[self.conv]
    )
    x = _leaky(_BN(use_running_average=not train)(x0))
    if self.activate_before_residual:
      x0 = x
    x = conv(self.filters, (3, 3), self.stride)(x)
    x = _leaky(_BN(use_running_average=not train)(x))
    x = conv(self.filters, (3, 3))(x)
    if x0.shape[-1] != self.filters:
      x0 = conv(self.filters, (1, 1), self.stride)(x0)
    return x0 + x


class WideResNet(nn.Module):
  """WRN-28-k of the MixMatch reference (libml/models.py): 3 scales of 4 residual blocks, 32*k/2 filters first.

  WRN-28-2 (filters=32) has about 1.47M parameters.
  """

  num_classes: int
  filters: int = 32
  repeat: int = 4
  scales: int = 3
  rotation_head: bool = False
  compute_dtype: Any = None
  conv: str = "xla"  # extraction.conv.CONVS

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = CONVS[self.conv]
    x = nn.Conv(16, (3, 3), kernel_init=_conv_init, dtype=self.compute_dtype, conv_general_dilated=conv)(x)
    block = functools.partial(_Residual, compute_dtype=self.compute_dtype, conv=self.conv)
    for scale in range(self.scales):
      f = self.filters << scale
      x = block(f, stride=2 if scale else 1, activate_before_residual=scale == 0)(x, train)
      for _ in range(self.repeat - 1):
        x = block(f)(x, train)
    x = _leaky(_BN(use_running_average=not train)(x))
    return _Heads(self.num_classes, self.rotation_head, compute_dtype=self.compute_dtype)(x.mean(axis=(1, 2)))


class SmallCNN(nn.Module):
  """Two 3x3 convolutions per width (default 32, 64, 128: ~0.29M parameters) with batch norm, a max pooling between
  widths, global average pooling and the heads."""

  num_classes: int
  widths: Sequence[int] = (32, 64, 128)
  rotation_head: bool = False
  compute_dtype: Any = None
  conv: str = "xla"  # extraction.conv.CONVS

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(
      nn.Conv, kernel_init=_conv_init, use_bias=False, dtype=self.compute_dtype, conv_general_dilated=CONVS[self.conv]
    )
    for i, w in enumerate(self.widths):
      for _ in range(2):
        x = conv(w, (3, 3))(x)
        x = _leaky(_BN(use_running_average=not train)(x))
      if i < len(self.widths) - 1:
        x = nn.max_pool(x, (2, 2), (2, 2))
    return _Heads(self.num_classes, self.rotation_head, compute_dtype=self.compute_dtype)(x.mean(axis=(1, 2)))


class MLP(nn.Module):
  """Fully connected ReLU network on flattened inputs; `dtype=jnp.float64` for exact-extraction victims."""

  num_classes: int
  hidden: Sequence[int] = (128,)
  rotation_head: bool = False
  dtype: Any = jnp.float32
  compute_dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for h in self.hidden:
      x = nn.relu(nn.Dense(h, dtype=self.compute_dtype or self.dtype, param_dtype=self.dtype)(x))
    return _Heads(self.num_classes, self.rotation_head, self.dtype, self.compute_dtype)(x)


MODELS: dict[str, Callable[..., nn.Module]] = {
  "wrn28_2": functools.partial(WideResNet, filters=32),
  "wrn28_8": functools.partial(WideResNet, filters=128),
  "small_cnn": SmallCNN,
  "tiny_cnn": functools.partial(SmallCNN, widths=(16, 32)),  # four convolutions, ~15k parameters: digits on a CPU
  "mlp": MLP,
  "mlp2x256": functools.partial(MLP, hidden=(256, 256)),
}


DENSE_MODELS = ("mlp", "mlp2x256")  # no convolutions


PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16}  # name -> compute_dtype


def create_model(
  name: str, num_classes: int, rotation_head: bool = False, precision: str = "float32", conv: str = "xla"
) -> nn.Module:
  """Model by flag name (see MODELS) computing its convolutions and dense layers in `precision` (PRECISIONS), its
  convolutions by `conv` (`extraction.conv.CONVS`: the parameters are the same either way; dense models have
  none); raises ValueError naming the choices for an unknown name."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
  if conv not in CONVS:
    raise ValueError(f"unknown convolution {conv!r}; choose one of {', '.join(CONVS)}")
  kwargs = {"compute_dtype": PRECISIONS[precision]} if PRECISIONS[precision] is not None else {}
  if name not in DENSE_MODELS:
    kwargs["conv"] = conv
  return MODELS[name](num_classes=num_classes, rotation_head=rotation_head, **kwargs)
