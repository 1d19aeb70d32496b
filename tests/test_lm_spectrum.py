"""Hidden-size gap rule, recovery of W up to h x h, and the evaluation, on planted low-rank logits (numpy only)."""
import numpy as np
import pytest

from functional_equivalence.lm import evaluate, recover, spectrum

V = 300


def planted(h, n, seed=0, layernorm=True, beta_scale=0.3, noise=0.0):
  """n logit vectors W g_i (V x h W), with g_i LayerNorm outputs (gamma * z + beta, z orthogonal to 1) or plain
  Gaussian vectors (no centring norm), plus Gaussian noise."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(V, h)) / np.sqrt(h)
  z = rng.normal(size=(n, h)) + 0.5
  if layernorm:
    z -= z.mean(axis=1, keepdims=True)
    z /= z.std(axis=1, keepdims=True)
    g = (1 + 0.1 * rng.normal(size=h)) * z + beta_scale * rng.normal(size=h)
  else:
    g = z
  return g @ w.T + noise * rng.normal(size=(n, V)), w


@pytest.mark.parametrize("h", [7, 20, 64])
def test_planted_low_rank_gap_gives_h(h):
  y, _ = planted(h, h + 10, layernorm=False, noise=1e-10)
  found = spectrum.detect(y, final_norm="rmsnorm")
  assert found.hidden == h and found.linear.dim == h and found.linear.ratio > 1e6 and found.linear.tail == 10


def test_layernorm_rule_reads_h_from_the_affine_hull():
  y, _ = planted(20, 40, noise=1e-12)
  found = spectrum.detect(y)
  assert (found.hidden, found.linear.dim, found.affine.dim) == (20, 20, 19) and not found.notes
  # a LayerNorm without bias: the logits span only h-1 dimensions, the affine rule still reads h and says why
  y0, _ = planted(20, 40, beta_scale=0.0, noise=1e-12)
  found = spectrum.detect(y0)
  assert found.hidden == 20 and found.linear.dim == 19 and "offset" in found.notes[0]
  assert spectrum.detect(y0, final_norm="rmsnorm").hidden == 19


def test_no_gap_accepted_without_enough_vectors_or_over_the_noise():
  h = 30
  for n in (h - 5, h, h + 1):  # no gap yet (n <= h), or fewer than `tail` values below it
    y, _ = planted(h, n, layernorm=False, noise=1e-12)
    assert spectrum.detect(y, tail=2, final_norm="rmsnorm").hidden is None, n
  y, _ = planted(h, h + 2, layernorm=False, noise=1e-12)
  assert spectrum.detect(y, tail=2, final_norm="rmsnorm").hidden == h
  noisy, _ = planted(h, h + 20, layernorm=False, noise=1e-2)  # noise above the gap threshold
  found = spectrum.detect(noisy, threshold=1e3, final_norm="rmsnorm")
  assert found.hidden is None and found.linear.ratio < 1e3


def test_largest_gap_edge_cases():
  assert spectrum.largest_gap(np.array([1.0])) is None and spectrum.largest_gap(np.zeros(3)) is None
  gap = spectrum.largest_gap(np.array([4.0, 2.0, 1e-9, 0.0]))  # exact zero: clipped, not a division by zero
  assert gap.dim == 3 and np.isfinite(gap.ratio) and gap.tail == 1
  assert spectrum.largest_gap(np.array([4.0, 2.0, 1e-9, 1e-10])).dim == 2
  with pytest.raises(ValueError, match="final_norm"):
    spectrum.detect(np.ones((3, 4)), final_norm="batchnorm")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_recovered_w_is_w_times_an_h_by_h_transform(norm):
  y, w = planted(16, 40, layernorm=norm == "layernorm")
  w_rec = recover.recover_unembedding(y, 16, norm)
  assert w_rec.shape == (V, 16)
  err = evaluate.align(w_rec, w)
  assert err["rms_error_relative"] < 1e-10 and err["max_error"] < 1e-9 and err["variance_explained"] > 1 - 1e-15
  with pytest.raises(ValueError, match="more vectors"):
    recover.recover_unembedding(y[:16], 16, norm)


def test_shift_invariant_recovery_compares_with_centred_w():
  y, w = planted(12, 30)
  shifted = y + np.random.default_rng(1).normal(size=(30, 1)) * 5  # log-probabilities: a shift per vector
  w_rec = recover.recover_unembedding(recover.center_vocabulary(shifted), 12)
  assert evaluate.align(w_rec, w, shift_invariant=True)["rms_error_relative"] < 1e-10
  assert evaluate.align(w_rec, w)["rms_error_relative"] > 1e-3  # W's mean row is not identifiable from logprobs


def test_alignment_errors_are_what_was_added():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(V, 8))
  g = rng.normal(size=(8, 8))
  noise = 1e-6 * rng.normal(size=(V, 8))
  err = evaluate.align((w + noise) @ g, w)
  assert 0.5e-6 < err["rms_error"] < 1.1e-6 and err["max_error"] < 6e-6
  assert err["rms_error_relative"] == pytest.approx(err["rms_error"] / np.sqrt(np.mean(w ** 2)))
  basis = np.linalg.qr(rng.normal(size=(8, 3)))[0]
  assert evaluate.align(w @ g, w, directions=basis)["subspace_rms_error_relative"] < 1e-12
