"""Two-layer victims: the npz convention, one-line errors for bad files, random and float32 backends."""

import numpy as np
import pytest

from functional_equivalence import victims
from functional_equivalence.errors import VictimFileError


def _net(d=5, h=4, k=3):
  return victims.random_net(0, d, h, k)


def test_npz_round_trip_keeps_logits_exactly(tmp_path):
  net = _net()
  loaded = victims.load_npz(victims.save_npz(tmp_path / "v.npz", net))
  x = np.random.default_rng(1).normal(size=(7, 5))
  assert loaded.shape == (5, 4, 3)
  np.testing.assert_array_equal(victims.logits(loaded, x), victims.logits(net, x))
  # the documented convention, written out
  np.testing.assert_allclose(victims.logits(net, x), np.maximum(x @ net.w0 + net.b0, 0) @ net.w1 + net.b1)


def _write(path, **arrays):
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize(
  "arrays,message",
  [
    (dict(w0=np.ones((3, 2)), b0=np.ones(2), w1=np.ones((2, 4))), "missing array(s) b1"),
    (dict(w0=np.ones((3, 2)), b0=np.ones(3), w1=np.ones((2, 4)), b1=np.ones(4)), "shape mismatch"),
    (dict(w0=np.ones((3, 2)), b0=np.ones(2), w1=np.ones((3, 4)), b1=np.ones(4)), "shape mismatch"),
    (dict(w0=np.ones(3), b0=np.ones(2), w1=np.ones((2, 4)), b1=np.ones(4)), "expected w0 (d,h)"),
    (dict(w0=np.full((3, 2), np.nan), b0=np.ones(2), w1=np.ones((2, 4)), b1=np.ones(4)), "6 NaN/inf"),
    (dict(w0=np.ones((3, 2)), b0=np.ones(2), w1=np.ones((2, 4)), b1=np.array([1, 2, np.inf, 4])), "'b1' holds 1"),
  ],
)
def test_bad_npz_fails_with_one_line(tmp_path, arrays, message):
  with pytest.raises(VictimFileError, match=None) as e:
    victims.load_npz(_write(tmp_path / "bad.npz", **arrays))
  assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_and_non_npz_files(tmp_path):
  with pytest.raises(VictimFileError, match="does not exist"):
    victims.load_npz(tmp_path / "nope.npz")
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(VictimFileError, match="not an npz file"):
    victims.load_npz(tmp_path / "text.npz")


def test_random_net_is_float64_and_seeded():
  a, b = victims.random_net(3, 6, 5, 2), victims.random_net(3, 6, 5, 2)
  assert all(x.dtype == np.float64 for x in a) and a.shape == (6, 5, 2)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a.w0, victims.random_net(4, 6, 5, 2).w0)


def test_float32_backend_answers_in_float32():
  net = _net()
  x = np.random.default_rng(0).normal(size=(4, 5))
  out32, out64 = victims.backend(net, np.float32)(x), victims.backend(net)(x)
  assert out32.dtype == np.float32 and out64.dtype == np.float64
  np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-5)
