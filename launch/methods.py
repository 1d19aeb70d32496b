"""Registry of learning-based extraction methods keyed by the `--method` flag string.

A method says what its students need (unlabeled inputs or not), its reference defaults (optimizer, learning rate,
schedule, weight decay, unlabeled batch) used where the flags leave them unset, and how to build the step of one
student. Adding a method is adding one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from extraction import train


@dataclasses.dataclass(frozen=True)
class Method:
  needs_unlabeled: bool
  optimizer: str
  lr: float
  schedule: str
  weight_decay: float
  lambda_u: float  # 0 where the method has no unlabeled loss
  build: Callable  # build(params: dict, flip, shift, extra_loss) -> make_step(model)


def _fs(p, flip, shift, extra_loss):
  return lambda model: train.make_supervised_step(
    model, ema_decay=p["ema"], flip=flip, shift=shift, extra_loss=extra_loss
  )


def _mixmatch(p, flip, shift, extra_loss):
  from semisup import mixmatch

  return lambda model: mixmatch.make_mixmatch_step(
    model,
    lambda_u=p["lambda_u"],
    rampup_steps=p["rampup_steps"],
    temperature=p["temperature"],
    alpha=p["alpha"],
    k=p["mixmatch_k"],
    ema_decay=p["ema"],
    flip=flip,
    shift=shift,
    extra_loss=extra_loss,
  )


def _fixmatch(p, flip, shift, extra_loss):
  from semisup import fixmatch

  return lambda model: fixmatch.make_fixmatch_step(
    model,
    threshold=p["threshold"],
    lambda_u=p["lambda_u"],
    ema_decay=p["ema"],
    flip=flip,
    shift=shift,
    num_ops=p["randaugment_ops"],
    extra_loss=extra_loss,
  )


METHODS = {
  # FS and MixMatch: the MixMatch reference's Adam; FixMatch: its paper's SGD and cosine decay.
  "fs": Method(False, "adam", 0.002, "constant", 0.02, 0.0, _fs),
  "mixmatch": Method(True, "adam", 0.002, "constant", 0.02, 75.0, _mixmatch),
  "fixmatch": Method(True, "sgd", 0.03, "fixmatch_cosine", 5e-4, 1.0, _fixmatch),
}


def make_step_factory(name: str, params: dict, augmentation: tuple[bool, int], extra_loss=None) -> Callable:
  """`make_step(model)` of method `name` with the weak augmentation (flip, shift) (`extraction.augment`)."""
  flip, shift = augmentation
  return METHODS[name].build(params, flip, shift, extra_loss)
