import numpy as np

from extraction import metrics


def test_accuracy_and_fidelity():
  student = np.array([[2.0, 1, 0], [0, 2, 1], [0, 1, 2], [2, 0, 1]])
  victim = np.array([[1.0, 0, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]])
  labels = np.array([0, 1, 1, 1])
  assert metrics.top1_accuracy(student, labels) == 0.5
  assert metrics.fidelity(student, victim) == 0.75  # the victim's mistakes count as agreement targets
  assert metrics.topk_accuracy(student, labels, k=2) == 0.75
  assert metrics.topk_fidelity(student, victim, k=2) == 0.75


def test_evaluator_reports_top5_only_above_five_classes():
  from extraction import evaluation

  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (20, 4, 4, 1), dtype=np.uint8)
  for c, has_top5 in ((3, False), (10, True)):
    w = rng.normal(size=(16, c))
    f = lambda x, w=w: x.reshape(len(x), -1) @ w
    out = evaluation.Evaluator.build(f, images, np.argmax(f(images), -1), c, noise_samples=8)(f)
    assert out["fidelity"] == 1.0 and out["accuracy"] == 1.0 and out["noise_fidelity"] == 1.0
    assert ("top5_fidelity" in out) == has_top5


def test_noise_images_are_seeded():
  from extraction import evaluation

  a, b = evaluation.uniform_noise(5, (8, 8, 1), 1), evaluation.uniform_noise(5, (8, 8, 1), 1)
  assert a.dtype == np.uint8 and a.shape == (5, 8, 8, 1) and (a == b).all()
