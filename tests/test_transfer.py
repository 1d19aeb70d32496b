"""Transfer sets (extraction/transfer.py): shapes and channels fitted to the victim, kinds that name the source and
class, the draw a function of the attacker's generator, and one clear error for a missing source."""

import sys

import numpy as np
import pytest

from extraction import transfer


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3)])
def test_union_of_sources_fitted_to_the_victims_shape_with_kinds(shape):
  pytest.importorskip("skimage")
  ts = transfer.load(["photos", "digits"], shape, 41, np.random.default_rng(0))
  assert ts.images.dtype == np.uint8 and ts.images.shape == (41,) + shape
  assert ts.names == ("photos", "digits")
  assert (ts.kinds[:, 0] == 0).sum() == 21 and (ts.kinds[:, 0] == 1).sum() == 20  # split evenly, larger first
  photos = ts.kinds[ts.kinds[:, 0] == 0, 1]
  assert photos.min() >= 0 and photos.max() < 2 + len(transfer.SKIMAGE_PHOTOS)
  assert set(ts.kinds[ts.kinds[:, 0] == 1, 1]) <= set(range(10))
  assert ts.images.std() > 10  # natural images, not blank
  if shape[-1] == 3:  # colour photographs stay colour
    assert np.abs(ts.images[:21, ..., 0].astype(int) - ts.images[:21, ..., 1]).mean() > 1


def test_the_draw_is_a_function_of_the_attackers_generator():
  a = transfer.load(["digits"], (8, 8, 1), 30, transfer.draw_rng(3))
  b = transfer.load(["digits"], (8, 8, 1), 30, transfer.draw_rng(3))
  c = transfer.load(["digits"], (8, 8, 1), 30, transfer.draw_rng(4))
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.array_equal(a.images, c.images)


def test_digits_gives_at_most_what_scikit_learn_ships():
  ts = transfer.load(["digits"], (8, 8, 1), 5000, np.random.default_rng(0))
  assert len(ts.images) == 1797 and len({x.tobytes() for x in ts.images}) > 1700


def test_cifar10_crops_from_the_data_dir(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / "cifar10").mkdir()
  np.savez(
    tmp_path / "cifar10" / "train.npz",
    image=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8),
    label=np.arange(50) % 10,
  )
  ts = transfer.load(["cifar10"], (8, 8, 1), 20, rng, str(tmp_path))
  assert ts.images.shape == (20, 8, 8, 1) and set(ts.kinds[:, 1]) <= set(range(10))


def test_missing_sources_are_clear_errors(tmp_path, monkeypatch):
  with pytest.raises(transfer.TransferSetUnavailable, match="cifar10/train.npz"):
    transfer.load(["cifar10"], (8, 8, 1), 10, np.random.default_rng(0), str(tmp_path))
  monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
  with pytest.raises(transfer.TransferSetUnavailable, match="pip install scikit-image"):
    transfer.load(["photos"], (8, 8, 1), 10, np.random.default_rng(0))
  with pytest.raises(ValueError, match="unknown transfer set"):
    transfer.load(["imagenet"], (8, 8, 1), 10, np.random.default_rng(0))
