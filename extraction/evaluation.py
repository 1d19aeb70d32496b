"""The evaluator's side of the fair protocol: the attacker's pool and a held-out validation split, the victim's
answers on every evaluation set (computed by the evaluator directly, never through the attacker's oracle), the
metrics of one student, the reported figure (median of the last evaluations) and the spread over seeds.

Evaluation sets, all fixed by the evaluation seed (`extraction.seeds`, stream 'eval'):
  * test: the dataset's test split (accuracy, top-1 / top-5 fidelity);
  * val: held-out training inputs that the attacker never queries nor uses as unlabeled data (for tuning);
  * gauss<s>: test images plus Gaussian noise of standard deviation s pixel levels (of 255), rounded and clipped;
  * noise: uniform uint8 noise. Agreement there is reported beside the student's and the victim's class
    histograms: a student that predicts one class on noise scores the victim's share of that class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from extraction import metrics, seeds

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 images -> logits


def split_pool(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(attacker's pool indices, validation indices) of a training split of n inputs, both sorted.

  The validation inputs are held out of the pool: never queried, never unlabeled data; the evaluator labels
  them with the victim directly, for tuning without the test set.
  """
  if not 0 <= val_size < n:
    raise ValueError(f"validation split of {val_size} does not fit a training split of {n}")
  order = seeds.rng(seed, "split").permutation(n)
  return np.sort(order[val_size:]), np.sort(order[:val_size])


def gaussian_noised(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
  """uint8 images plus N(0, sigma^2) noise in pixel levels, rounded and clipped to 0..255."""
  noise = seeds.rng(seed, "eval", int(sigma * 1000)).normal(0.0, sigma, images.shape)
  return np.clip(np.round(images.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def uniform_noise(n: int, shape: tuple, seed: int) -> np.ndarray:
  """n images of uniform uint8 noise: an off-distribution probe set."""
  return seeds.rng(seed, "eval", 7).integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)


def class_histogram(logits: np.ndarray, num_classes: int) -> list:
  """Fraction of inputs predicted as each class."""
  return (np.bincount(np.argmax(logits, -1), minlength=num_classes) / max(len(logits), 1)).round(4).tolist()


@dataclasses.dataclass
class Evaluator:
  """Victim answers on the evaluation sets, computed once; `__call__` measures one student against them.

  Attributes:
    sets: name -> uint8 images ('test' required; 'val', 'noise', 'gauss<s>' optional).
    victim: name -> the victim's logits on those images.
    test_labels: labels of the test images (for accuracy).
    num_classes: number of classes.
    top_k: k of the top-k accuracy and fidelity (`top<k>_accuracy`, `top<k>_fidelity`), reported when there are
      more than k classes.
  """

  sets: dict
  victim: dict
  test_labels: np.ndarray
  num_classes: int
  top_k: int = 5

  @classmethod
  def build(
    cls,
    victim_predict: Predict,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    *,
    val_images: np.ndarray | None = None,
    noise_samples: int = 0,
    gauss_sigmas: Sequence[float] = (),
    gauss_samples: int | None = None,
    seed: int = 0,
    top_k: int = 5,
  ) -> Evaluator:
    """Draws the evaluation sets from the evaluation stream of `seed` and labels them with the victim."""
    sets = {"test": test_images}
    if val_images is not None and len(val_images):
      sets["val"] = val_images
    if noise_samples:
      sets["noise"] = uniform_noise(noise_samples, test_images.shape[1:], seed)
    subset = test_images[:gauss_samples] if gauss_samples else test_images
    for s in gauss_sigmas:
      sets[f"gauss{s:g}"] = gaussian_noised(subset, s, seed)
    return cls(sets, {k: victim_predict(v) for k, v in sets.items()}, test_labels, num_classes, top_k)

  def victim_row(self) -> dict:
    """The victim's own figures: accuracy and, on noise, its class histogram (the baseline of noise agreement)."""
    row: dict[str, Any] = {"accuracy": metrics.top1_accuracy(self.victim["test"], self.test_labels)}
    if self.num_classes > self.top_k:
      row[f"top{self.top_k}_accuracy"] = metrics.topk_accuracy(self.victim["test"], self.test_labels, self.top_k)
    if "noise" in self.victim:
      row["noise_victim_hist"] = class_histogram(self.victim["noise"], self.num_classes)
    return row

  def __call__(self, student: Predict, full: bool = True) -> dict:
    """Every metric of one student (a function from uint8 images to logits); with full=False only those of the
    test and validation sets (cheaper, for learning curves)."""
    return self.compare({k: student(v) for k, v in self.sets.items() if full or k in ("test", "val")})

  def compare(self, s: dict) -> dict:
    """The metrics of a model given its logits on (some of) the sets: name -> logits ('test' required)."""
    k = self.top_k
    out: dict[str, Any] = {
      "accuracy": metrics.top1_accuracy(s["test"], self.test_labels),
      "fidelity": metrics.fidelity(s["test"], self.victim["test"]),
    }
    if self.num_classes > k:
      out[f"top{k}_accuracy"] = metrics.topk_accuracy(s["test"], self.test_labels, k)
      out[f"top{k}_fidelity"] = metrics.topk_fidelity(s["test"], self.victim["test"], k)
    for name in s:
      if name != "test":
        out[f"{name}_fidelity"] = metrics.fidelity(s[name], self.victim[name])
    if "noise" in s:
      out["noise_hist"] = class_histogram(s["noise"], self.num_classes)
    return out


def summarize(history: list[dict], median_of: int) -> dict:
  """The reported figures of one run: for each metric the median over its last `median_of` evaluations (the
  MixMatch reference's rule); non-numeric entries (histograms) from the last evaluation."""
  if not history:
    raise ValueError("no evaluation to summarize")
  last = sorted(history, key=lambda h: h["step"])[-max(median_of, 1) :]
  out = {}
  for k, v in last[-1].items():
    if k == "step":
      continue
    out[k] = float(np.median([h[k] for h in last if k in h])) if isinstance(v, (int, float)) else v
  return out


def aggregate(runs: list[dict]) -> dict:
  """Mean of every numeric figure over runs (seeds), with its standard deviation as `<name>_std` (ddof=0) and
  the number of runs as `seeds`; histograms are averaged entrywise."""
  out: dict[str, Any] = {"seeds": len(runs)}
  for k, v in runs[0].items():
    values = [r[k] for r in runs]
    if isinstance(v, bool) or not isinstance(v, (int, float, list)):
      continue
    arr = np.asarray(values, np.float64)
    out[k] = arr.mean(0).round(4).tolist() if isinstance(v, list) else float(arr.mean())
    if not isinstance(v, list):
      out[f"{k}_std"] = float(arr.std())
  return out
