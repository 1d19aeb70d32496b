"""The victim behind the prediction API: `ServedModel` and the loaders of the victims `launch.serve` serves."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class ServedModel:
  """The victim behind the API. backend: inputs (N, *input_shape) of input_dtype -> logits (N, num_classes)."""
  backend: Callable[[np.ndarray], Any]
  input_shape: tuple
  input_dtype: str  # 'uint8' (images), 'float64', or 'int32' (a language model's prompts)
  num_classes: int
  name: str = "victim"
  lm: Optional[Any] = None  # a language model: service.lm.LMApi (input_shape is then (longest prompt,))


def resolve_victim_dir(path) -> pathlib.Path:
  """The victim directory of an experiment workdir W (W/victim), or the victim directory itself."""
  path = pathlib.Path(path)
  if (path / "info.json").is_file() or not (path / "victim" / "info.json").is_file():
    return path
  return path / "victim"


def model_from_victim_dir(path) -> ServedModel:
  """The trained Flax victim of `launch.run` (uint8 images -> logits, jitted) from a workdir or its victim dir."""
  from extraction import oracle, victim  # jax: imported only to serve a Flax victim
  directory = resolve_victim_dir(path)
  v = victim.load_victim(directory)
  name = f"{directory} (test accuracy {v.test_accuracy:.4f})"
  return ServedModel(oracle.model_backend(v.model, v.variables), tuple(v.image_shape), "uint8", v.num_classes, name)


def model_from_npz(path) -> ServedModel:
  """A two-layer ReLU victim from an npz file (w0, b0, w1, b1), answered in float64."""
  from functional_equivalence import victims
  net = victims.load_npz(path)
  d, _, k = net.shape
  return ServedModel(victims.backend(net), (d,), "float64", k, str(path))


def warm_up(model: ServedModel, max_batch: int) -> None:
  """Compiles the victim for the power-of-two batch sizes it pads to (up to 1024, see extraction/predict.py)."""
  size = 1
  while size <= min(max_batch, 1024):
    model.backend(np.zeros((size,) + tuple(model.input_shape), model.input_dtype))
    size *= 2
