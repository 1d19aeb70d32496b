"""benchmarks/art_extraction.py: ART's thief is evaluated by the launcher's rule (every eval_every steps of its
final training and at the end), and the side-by-side table shows the final evaluation beside the median."""

import numpy as np
import pytest

from benchmarks import art_extraction


def test_side_by_side_shows_the_final_evaluation_beside_the_reported_median():
  ours = {
    "method": "fs",
    "strategy": "random",
    "queries": 100,
    "fidelity": 0.5,
    "fidelity_std": 0.1,
    "accuracy": 0.4,
    "per_seed": [
      {"curve": [{"step": 1, "fidelity": 0.2}, {"step": 2, "fidelity": 0.6}]},
      {"curve": [{"step": 2, "fidelity": 0.8}]},
    ],
  }
  art = {
    "method": "fs",
    "strategy": "ART copycat",
    "queries": 100,
    "fidelity": 0.3,
    "per_seed": [{"last_fidelity": 0.35}],
  }
  bare = {"method": "fs", "strategy": "dfme", "queries": 100, "fidelity": 0.1}
  text = art_extraction.side_by_side([{"method": "victim", "accuracy": 0.9}, ours, art, bare])
  lines = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
  assert lines["random"][2] == "0.7000"  # mean of the curves' last points, not of the medians
  assert lines["ART copycat"][2] == "0.3500"
  assert lines["dfme"][2] == ""
  assert "Victim test accuracy 0.9000" in text


@pytest.mark.slow  # importing ART takes ~15 s; skipped where ART is not installed (CI)
def test_art_thief_is_evaluated_like_the_launchers_students():
  pytest.importorskip("art")
  cfg = {"student_model": "mlp", "lr": None, "weight_decay": None, "student_steps": 10, "ema": 0.999, "eval_every": 4}
  calls = []

  def evaluator(predict, full=True):
    calls.append(full)
    return {"fidelity": float(len(calls)), "accuracy": 0.0, "val_fidelity": 0.0}

  thief = art_extraction._Thief(cfg, "digits", 10, (8, 8, 1), 0, evaluator)
  x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1)).astype(np.float32)
  y = np.eye(10, dtype=np.float32)[np.arange(40) % 10]
  thief.fit(x, y, batch_size=8, nb_epochs=2)  # 2 epochs x 5 batches: evaluated at steps 4, 8 and 10
  assert [h["step"] for h in thief.history] == [4, 8, 10] and calls == [False] * 3
  thief.fit(x[:1], y[:1], batch_size=8, nb_epochs=1)  # an online one-step update: not evaluated
  assert [h["step"] for h in thief.history] == [4, 8, 10] and thief.steps == 11
  z = thief.logits(x)  # what ART softmaxes with np.exp: float64, at most 0
  assert z.dtype == np.float64 and np.allclose(z.max(-1), 0.0)
