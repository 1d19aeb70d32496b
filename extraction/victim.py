"""Train or restore the victim: a classifier trained on the full train split with flip/shift augmentation,
Adam + decoupled weight decay, cosine schedule and an EMA of the weights; orbax checkpoints in its directory,
resumed if interrupted and reused (no retraining) once complete. `info.json` beside them records how it was made
and its test accuracy, and lets `load_victim` rebuild it (e.g. for serving)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import numpy as np

from extraction import augment, metrics, models, seeds, train
from extraction.datasets import Dataset
from extraction.predict import predict_logits


class VictimMismatch(ValueError):
  """The victim directory holds a victim made with other settings (or by an older version of this code)."""


FORMAT = 2  # 2: the victim draws from its own random stream (extraction.seeds); earlier victims are refused


@dataclasses.dataclass(frozen=True)
class VictimConfig:
  model: str = "small_cnn"
  steps: int = 2000
  batch_size: int = 128
  lr: float = 0.002
  weight_decay: float = 0.02
  ema: float = 0.999
  seed: int = 0
  conv: str = "xla"  # how its convolutions are computed (extraction.conv.CONVS); another choice rounds differently


@dataclasses.dataclass(frozen=True)
class Victim:
  model: Any
  variables: dict
  test_accuracy: float
  image_shape: tuple
  num_classes: int


def train_victim(
  dataset: Dataset, cfg: VictimConfig, directory: pathlib.Path, mesh: jax.sharding.Mesh | None = None
) -> Victim:
  """Trains (or restores) the victim of `cfg` on `dataset.train` and measures its test accuracy."""
  directory = pathlib.Path(directory)
  info_path = directory / "info.json"
  if info_path.exists():
    old = json.loads(info_path.read_text())
    if old.get("format") != FORMAT:
      raise VictimMismatch(
        f"{directory} holds a victim trained by an older version of this code (format "
        f"{old.get('format', 1)}, now {FORMAT}); use another --workdir or delete it"
      )
    if VictimConfig(**old["config"]) != cfg or old["dataset"] != dataset.name:  # fields added since: defaults
      raise VictimMismatch(
        f"{directory} holds a victim trained with other settings ({old['config']}, "
        f"{old['dataset']}); use another --workdir or delete it"
      )
  model, state = fit_recipe(dataset, cfg, directory / "checkpoints", mesh)
  variables = jax.device_get(state.variables(ema=True))
  acc = metrics.top1_accuracy(predict_logits(model, variables, dataset.test.images), dataset.test.labels)
  info_path.write_text(
    json.dumps(
      {
        "format": FORMAT,
        "config": dataclasses.asdict(cfg),
        "dataset": dataset.name,
        "image_shape": list(dataset.image_shape),
        "num_classes": dataset.num_classes,
        "test_accuracy": acc,
      },
      indent=2,
    )
  )
  return Victim(model, variables, acc, dataset.image_shape, dataset.num_classes)


def fit_recipe(
  dataset: Dataset,
  cfg: VictimConfig,
  checkpoint_dir: pathlib.Path | None,
  mesh: jax.sharding.Mesh | None = None,
  *,
  init_seed: int | None = None,
  data_seed: int | None = None,
  precision: str = "float32",
  name: str = "victim",
) -> tuple:
  """Trains the victim's recipe on `dataset.train` (resuming from `checkpoint_dir`); returns (model, final state).

  With the defaults this is exactly the victim of `cfg`. The limits study (`extraction.limits`) varies one thing
  at a time: `init_seed` (the initial weights), `data_seed` (the order of the examples and the augmentation draws;
  both seeds default to `cfg.seed`, and draw from the 'victim' stream), `precision` (of the convolutions and
  dense layers, `models.PRECISIONS`) and the devices of `mesh` (the order of the data-parallel reductions).
  """
  init_seed = cfg.seed if init_seed is None else init_seed
  data_seed = cfg.seed if data_seed is None else data_seed
  model = models.create_model(cfg.model, dataset.num_classes, precision=precision, conv=cfg.conv)
  tx = train.make_optimizer(cfg.lr, cfg.weight_decay, cfg.steps, schedule="cosine")
  state = train.create_state(
    model, tx, seeds.key(init_seed, "victim"), dataset.image_shape, data_key=seeds.key(data_seed, "victim")
  )
  flip, shift = augment.default_augmentation(dataset.name)
  step = train.make_supervised_step(model, ema_decay=cfg.ema, flip=flip, shift=shift)
  one_hot = np.eye(dataset.num_classes, dtype=np.float32)
  images, labels = dataset.train.images, dataset.train.labels

  def make_batch(i):
    idx = train.batch_indices(data_seed, i, len(labels), cfg.batch_size, salt=seeds.salt("victim"))
    return {"images": images[idx], "targets": one_hot[labels[idx]]}

  state = train.fit(step, state, make_batch, cfg.steps, checkpoint_dir=checkpoint_dir, name=name, mesh=mesh)
  return model, state


def load_victim(directory: pathlib.Path) -> Victim:
  """Restores a victim trained by `train_victim` from its directory (no dataset needed)."""
  directory = pathlib.Path(directory)
  info_path = directory / "info.json"
  if not info_path.exists():
    raise FileNotFoundError(f"no trained victim in {directory} (missing info.json); train one with launch.run first")
  info = json.loads(info_path.read_text())
  cfg = VictimConfig(**info["config"])
  model = models.create_model(cfg.model, info["num_classes"], conv=cfg.conv)
  tx = train.make_optimizer(cfg.lr, cfg.weight_decay, cfg.steps, schedule="cosine")
  template = train.create_state(model, tx, seeds.key(cfg.seed, "victim"), tuple(info["image_shape"]))
  state, step = train.restore_latest(train.checkpoint_manager(directory / "checkpoints"), template)
  if step < cfg.steps:
    raise ValueError(f"victim in {directory} is incomplete (step {step} of {cfg.steps})")
  return Victim(
    model,
    jax.device_get(state.variables(ema=True)),
    info["test_accuracy"],
    tuple(info["image_shape"]),
    info["num_classes"],
  )
