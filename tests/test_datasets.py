import time

import numpy as np
import pytest

from extraction import datasets


def _write(root, name, n_train=12, n_test=5, shape=(6, 6, 3)):
  rng = np.random.default_rng(0)
  (root / name).mkdir(parents=True)
  for split, n in (("train", n_train), ("test", n_test)):
    np.savez(
      root / name / f"{split}.npz",
      image=rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
      label=rng.integers(0, 10, n),
    )


def test_npz_loader(tmp_path):
  _write(tmp_path, "cifar10")
  ds = datasets.load("cifar10", data_dir=str(tmp_path))
  assert ds.train.images.shape == (12, 6, 6, 3) and ds.train.images.dtype == np.uint8
  assert ds.test.labels.dtype == np.int32 and len(ds.test) == 5 and ds.num_classes == 10


def test_npz_bad_arrays(tmp_path):
  (tmp_path / "cifar10").mkdir()
  for split in ("train", "test"):
    np.savez(tmp_path / "cifar10" / f"{split}.npz", image=np.zeros((3, 4, 4, 3), np.float32), label=np.zeros(3))
  with pytest.raises(ValueError, match="must be uint8"):
    datasets.load("cifar10", data_dir=str(tmp_path))
  np.savez(tmp_path / "cifar10" / "train.npz", pixels=np.zeros((3, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match=r"missing array\(s\) \['image', 'label'\]"):
    datasets.load("cifar10", data_dir=str(tmp_path))


def test_digits():
  ds = datasets.load("digits")
  assert ds.train.images.shape == (1437, 8, 8, 1) and ds.test.images.shape == (360, 8, 8, 1)
  assert ds.train.images.max() == 255 and ds.num_classes == 10
  assert (datasets.load_digits().test.labels == ds.test.labels).all()  # fixed split


def test_missing_npz_fails_fast_naming_both_ways(tmp_path):
  t = time.time()
  with pytest.raises(datasets.DatasetUnavailable, match=r"--data_dir=DIR.*tfds"):
    datasets.load("svhn_cropped", data_dir=str(tmp_path))
  assert time.time() - t < 5


def test_unprepared_tfds_offline_fails_fast(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(datasets, "_online", lambda: False)  # CI may have network: behave as offline here
  t = time.time()
  with pytest.raises(datasets.DatasetUnavailable, match="not prepared.*--data_dir"):
    datasets.load("cifar10", tfds_data_dir=str(tmp_path))
  assert time.time() - t < 20


def test_tfds_path_with_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=7):
    ds = datasets.load("svhn_cropped", tfds_data_dir=str(tmp_path))
  assert ds.train.images.shape == (7, 32, 32, 3) and ds.train.images.dtype == np.uint8
  assert len(ds.test) == 7 and ds.num_classes == 10


def test_unknown_dataset():
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    datasets.load("mnist")
