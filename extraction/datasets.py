"""Datasets as numpy arrays: tfds (`svhn_cropped`, `cifar10`), local npz files, and scikit-learn's digits.

Every loader returns a `Dataset` whose splits hold `images` uint8 (N, H, W, C) and `labels` int32 (N,).
Sources, in order:
  * `data_dir` given: `<data_dir>/<name>/{train,test}.npz` with arrays `image` and `label`;
  * `digits`: scikit-learn's 8x8 digits (ships with the package, offline), 1437 train / 360 test, 8x8x1 uint8;
  * otherwise tfds. An unprepared tfds dataset on a machine without internet fails within seconds
    (`DatasetUnavailable`) instead of tfds's ~205 s of retries, with a message naming both ways to provide it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import socket
import threading

import numpy as np

TFDS_NAMES = ("svhn_cropped", "cifar10")
DATASETS = TFDS_NAMES + ("digits",)
NUM_CLASSES = {"svhn_cropped": 10, "cifar10": 10, "digits": 10}


class DatasetUnavailable(RuntimeError):
  """The dataset is neither in --data_dir nor prepared for tfds, and cannot be downloaded."""


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray  # int32 (N,)

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  test: Split
  num_classes: int

  @property
  def image_shape(self) -> tuple:
    return self.train.images.shape[1:]


def to_float(images):
  """uint8 images -> float32 in [-1, 1]; works on numpy and jax arrays (use inside jitted functions)."""
  return images.astype("float32") / 127.5 - 1.0


def _how_to_provide(name: str) -> str:
  return (
    f"provide dataset {name!r} either with --data_dir=DIR holding {name}/train.npz and {name}/test.npz "
    f"(arrays 'image' uint8 NxHxWxC and 'label' int), or through tfds on a machine with internet "
    f"(`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}').download_and_prepare()\"`, "
    f"needs pip install -e .[tfds])"
  )


def _split_from_arrays(image, label, where: str) -> Split:
  image, label = np.asarray(image), np.asarray(label).reshape(-1)
  if image.ndim == 3:
    image = image[..., None]
  if image.ndim != 4 or image.dtype != np.uint8:
    raise ValueError(f"{where}: 'image' must be uint8 NxHxWxC, got {image.dtype} {image.shape}")
  if len(image) != len(label) or not np.issubdtype(label.dtype, np.integer):
    raise ValueError(f"{where}: 'label' must be {len(image)} integers, got {label.dtype} {label.shape}")
  return Split(image, label.astype(np.int32))


def load_npz(path: pathlib.Path) -> Split:
  """One split from an npz with arrays `image` (uint8 NxHxWxC) and `label` (int)."""
  with np.load(path) as f:
    missing = {"image", "label"} - set(f.files)
    if missing:
      raise ValueError(f"{path}: missing array(s) {sorted(missing)}; found {f.files}")
    return _split_from_arrays(f["image"], f["label"], str(path))


def load_digits() -> Dataset:
  """scikit-learn's digits as 8x8x1 uint8 images (0..16 scaled to 0..255), a fixed seeded 80/20 split."""
  from sklearn.datasets import load_digits as sk_digits

  d = sk_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  order = np.random.default_rng(0).permutation(len(images))
  train, test = order[:1437], order[1437:]
  return Dataset(
    "digits",
    Split(images[train], d.target[train].astype(np.int32)),
    Split(images[test], d.target[test].astype(np.int32)),
    10,
  )


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
  """Whether tfds could download: a TCP connection within `timeout` s (DNS included, run in a thread)."""
  ok = []

  def probe():
    try:
      socket.create_connection((host, 443), timeout=timeout).close()
      ok.append(True)
    except OSError:
      pass

  t = threading.Thread(target=probe, daemon=True)
  t.start()
  t.join(timeout + 1.0)
  return bool(ok)


def _split_from_records(records, where: str) -> Split:
  image = np.stack([np.asarray(r["image"]) for r in records])
  label = np.asarray([int(r["label"]) for r in records])
  return _split_from_arrays(image, label, where)


def load_tfds_split(name: str, split: str, tfds_data_dir: str | None = None) -> Split:
  """One split through tfds; fails fast with DatasetUnavailable when it is not prepared and we are offline."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DatasetUnavailable(f"tensorflow_datasets is not installed; {_how_to_provide(name)}") from e
  try:  # array_record data and tfds.testing.mock_data: no TensorFlow needed
    source = tfds.data_source(name, split=split, data_dir=tfds_data_dir, download=False)
    return _split_from_records([source[i] for i in range(len(source))], f"tfds {name}/{split}")
  except Exception:  # noqa: BLE001 -- not prepared, or prepared as tfrecord: go through the builder
    pass
  builder = tfds.builder(name, data_dir=tfds_data_dir)
  if not builder.is_prepared():
    if not _online():
      raise DatasetUnavailable(
        f"{name} is not prepared in {builder.data_dir} and there is no internet; " + _how_to_provide(name)
      )
    builder.download_and_prepare()
  arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  return _split_from_arrays(arrays["image"], arrays["label"], f"tfds {name}/{split}")


def load(name: str, data_dir: str | None = None, tfds_data_dir: str | None = None) -> Dataset:
  """Loads dataset `name` (one of DATASETS) from `data_dir` npz files, scikit-learn or tfds (module docstring)."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
  if data_dir:
    root = pathlib.Path(data_dir) / name
    paths = [root / "train.npz", root / "test.npz"]
    if all(p.exists() for p in paths):
      splits = [load_npz(p) for p in paths]
      num_classes = max(NUM_CLASSES[name], int(splits[0].labels.max()) + 1)
      return Dataset(name, splits[0], splits[1], num_classes)
    if name != "digits":
      missing = ", ".join(str(p) for p in paths if not p.exists())
      raise DatasetUnavailable(f"{missing} not found; {_how_to_provide(name)}")
  if name == "digits":
    return load_digits()
  return Dataset(
    name, load_tfds_split(name, "train", tfds_data_dir), load_tfds_split(name, "test", tfds_data_dir), NUM_CLASSES[name]
  )
