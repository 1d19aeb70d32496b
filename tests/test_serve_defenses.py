"""Defenses as pure functions (extraction/defenses.py) and on a local defended Oracle."""

import numpy as np
import pytest

from extraction import defenses as D
from extraction.oracle import Oracle, softmax, transform_logits

pytestmark = pytest.mark.serve  # the prediction service (HTTP, keys); `-m 'not serve'` skips it

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(scale=3.0, size=(500, 10))


def backend(x):
  return LOGITS[np.asarray(x, int).reshape(-1)]


def ask(output, defenses, top_k=None, n=500):
  return Oracle(backend, output, top_k=top_k, defenses=defenses)(np.arange(n))


def test_no_defense_is_the_plain_oracle():
  x = np.arange(50)
  np.testing.assert_array_equal(Oracle(backend, defenses=D.Defenses())(x), Oracle(backend)(x))
  assert not D.Defenses().active and D.Defenses().to_dict() == {}


@pytest.mark.parametrize("n", [0, 2, 4])
def test_rounding_gives_n_decimals(n):
  out = ask("probabilities", D.Defenses(round_decimals=n))
  np.testing.assert_array_equal(out, np.round(softmax(LOGITS), n))
  scaled = out * 10**n
  np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-6)


def test_top_k_only_and_labels_only():
  p = ask("top_k", None, top_k=3)
  assert np.all((p > 0).sum(1) == 3)
  np.testing.assert_array_equal(np.sort(p, 1)[:, -3:], np.sort(softmax(LOGITS), 1)[:, -3:])
  labels = ask("labels", None)
  np.testing.assert_array_equal(labels.sum(1), 1)
  np.testing.assert_array_equal(labels.argmax(1), LOGITS.argmax(1))


def test_noise_is_seeded_and_has_the_asked_scale():
  d = D.Defenses(noise_std=0.5, noise_seed=3)
  a, b = ask("logits", d), ask("logits", d)
  np.testing.assert_array_equal(a, b)  # same seed, same query position: same noise
  assert not np.array_equal(a, ask("logits", D.Defenses(noise_std=0.5, noise_seed=4)))
  noise = a - LOGITS
  assert abs(noise.mean()) < 0.02 and abs(noise.std() - 0.5) < 0.02
  o = Oracle(backend, "logits", defenses=d)  # the second query's noise follows the first's
  o(np.arange(10))
  assert not np.array_equal(o(np.arange(10)), a[:10])


def test_noise_keeps_probabilities_distributions_and_top_k_support():
  p = ask("probabilities", D.Defenses(noise_std=0.05))
  assert p.min() >= 0 and np.allclose(p.sum(1), 1)
  t = ask("top_k", D.Defenses(noise_std=0.05), top_k=2)
  assert np.all((t > 0).sum(1) <= 2) and t.min() >= 0


def test_reverse_sigmoid_perturbation_sign():
  """r(y) = beta (sigmoid(gamma logit y) - 1/2): 0 at 1/2, > 0 above (y pushed down), < 0 below (pushed up)."""
  y = np.array([0.01, 0.3, 0.5, 0.7, 0.99])
  r = D.reverse_sigmoid_perturbation(y, beta=0.8, gamma=0.3)
  assert r[2] == 0 and np.all(r[:2] < 0) and np.all(r[3:] > 0)
  np.testing.assert_allclose(r, 0.8 * (1 / (1 + np.exp(-0.3 * np.log(y / (1 - y)))) - 0.5))


@pytest.mark.parametrize("beta,gamma", [(1.0, 0.1), (0.7, 0.4), (0.3, 0.9)])
def test_reverse_sigmoid_keeps_confident_top1_and_is_deceptive(beta, gamma):
  probs = softmax(LOGITS)
  q = ask("probabilities", D.Defenses(reverse_sigmoid_beta=beta, reverse_sigmoid_gamma=gamma))
  assert q.min() >= 0 and np.allclose(q.sum(1), 1)
  confident = probs.max(1) > 0.5  # Lee et al.: the top-1 label is kept (beta <= 1, gamma < 1)
  assert confident.sum() > 100
  np.testing.assert_array_equal(q[confident].argmax(1), probs[confident].argmax(1))
  assert np.abs(q - probs).max() > 0.05  # the probabilities themselves are perturbed
  # Deceptive: y - r(y) is not monotone near 0 (tiny probabilities come out above small ones): not invertible
  y = np.logspace(-9, -0.4, 2000)
  assert np.any(np.diff(y - D.reverse_sigmoid_perturbation(y, beta, gamma)) < 0)


def test_reverse_sigmoid_top_k_reveals_k_perturbed_entries():
  d = D.Defenses(reverse_sigmoid_beta=0.7, reverse_sigmoid_gamma=0.4)
  full = ask("probabilities", d)
  t = ask("top_k", d, top_k=2)
  np.testing.assert_array_equal(t, D.top_k_only(full, 2))


def test_apply_defenses_order_noise_then_rounding():
  d = D.Defenses(noise_std=0.01, round_decimals=3, noise_seed=1)
  answers = transform_logits(LOGITS, "probabilities")
  out = D.apply_defenses(answers, LOGITS, d, D.noise_rng(d, 0), output="probabilities")
  noisy = D.gaussian_noise(answers, 0.01, D.noise_rng(d, 0), "probabilities")
  np.testing.assert_array_equal(out, np.round(noisy, 3))


@pytest.mark.parametrize(
  "settings,output,match",
  [
    (dict(round_decimals=-1), None, "round_decimals"),
    (dict(noise_std=-0.1), None, "noise_std"),
    (dict(reverse_sigmoid_beta=1.0), None, "both"),
    (dict(reverse_sigmoid_beta=0.0, reverse_sigmoid_gamma=0.1), None, "beta must be"),
    (dict(shuffle=True), None, "unknown defense"),
    (dict(reverse_sigmoid_beta=1.0, reverse_sigmoid_gamma=0.1), "logits", "needs output"),
    (dict(round_decimals=2), "labels", "do nothing"),
  ],
)
def test_invalid_settings(settings, output, match):
  with pytest.raises(ValueError, match=match):
    D.Defenses.from_dict(settings).check(output)


def test_oracle_refuses_a_defense_its_output_cannot_carry():
  with pytest.raises(ValueError, match="needs output"):
    Oracle(backend, "logits", defenses=D.Defenses(reverse_sigmoid_beta=1.0, reverse_sigmoid_gamma=0.1))
