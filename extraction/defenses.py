"""Defenses of a prediction API against extraction: pure numpy transforms of the victim's logits / answers.

A `Defenses` value is a setting (of a local `Oracle`, or of one API key of `launch.serve`); `apply_defenses`
applies it in one place, after the output mode has turned the logits into answers:

  1. reverse sigmoid (Lee et al. 2019, "Defending against NN model stealing attacks using deceptive
     perturbations"): the posterior y is perturbed to y - r(y) with r(y) = beta * (sigmoid(gamma * logit(y)) - 1/2),
     clipped to [0, 1] and renormalised; output 'probabilities' returns it, 'top_k' its k largest entries. With
     beta <= 1 and gamma < 1 every class with y > 1/2 stays above every class with y < 1/2 (so a confident top-1
     label is kept), while the map is not monotone near 0 (tiny probabilities come out larger than small ones):
     the attacker cannot invert it to the true posterior;
  2. Gaussian noise N(0, noise_std^2) on every revealed entry: logits as they are; probabilities clipped to
     [0, 1] and renormalised; top-k entries clipped to [0, 1], the hidden ones kept at 0;
  3. rounding of every entry to `round_decimals` decimals (what many APIs do to probabilities).

The output modes 'top_k' (top-k only) and 'labels' (labels only) are the other defenses; they are chosen by the
output mode itself (`extraction.oracle.transform_logits`). Noise is reproducible: `noise_rng(settings, offset)`
seeds it from (noise_seed, number of inputs the key or oracle had answered before this query). The prediction
service (service/) draws it instead with `keyed_normal` from a secret noise key and the bytes of each input: the
same input always gets the same noise (repeating a query gains nothing), different inputs independent noise, and
without the key nothing about it can be recomputed; a local `Oracle(..., noise_key=...)` does the same.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any, Mapping, Optional

import numpy as np

from extraction.oracle import OUTPUT_MODES, softmax

_CLIP = 1e-9  # probabilities are clipped to [_CLIP, 1 - _CLIP] before the logit of the reverse sigmoid


@dataclasses.dataclass(frozen=True)
class Defenses:
  """Which defenses an API applies (None / 0: off). See the module docstring for their order and effect.

  Attributes:
    round_decimals: round every answer entry to this many decimals (>= 0).
    noise_std: standard deviation of Gaussian noise added to every revealed entry (>= 0).
    noise_seed: seed of that noise.
    reverse_sigmoid_beta: beta > 0 of the reverse sigmoid (magnitude); set together with gamma.
    reverse_sigmoid_gamma: gamma > 0 of the reverse sigmoid (convergence).
  """
  round_decimals: Optional[int] = None
  noise_std: float = 0.0
  noise_seed: int = 0
  reverse_sigmoid_beta: Optional[float] = None
  reverse_sigmoid_gamma: Optional[float] = None

  @property
  def active(self) -> bool:
    return self.round_decimals is not None or self.noise_std > 0 or self.reverse_sigmoid_beta is not None

  def to_dict(self) -> dict:
    """The settings that differ from the defaults, as plain JSON values."""
    return {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(Defenses(), k)}

  @classmethod
  def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "Defenses":
    """Builds and checks settings from a JSON object (a keys file); raises ValueError with a one-line message."""
    d = dict(d or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
      raise ValueError(f"unknown defense setting(s) {', '.join(unknown)}; known: {', '.join(names)}")
    out = cls(**d)
    out.check()
    return out

  def check(self, output: Optional[str] = None) -> None:
    """Raises ValueError (one line) for invalid values, or for a defense that does nothing in `output` mode."""
    if self.round_decimals is not None and (isinstance(self.round_decimals, bool)
                                            or not isinstance(self.round_decimals, int) or self.round_decimals < 0):
      raise ValueError(f"round_decimals must be an integer >= 0, got {self.round_decimals!r}")
    if not isinstance(self.noise_std, (int, float)) or not self.noise_std >= 0 or not np.isfinite(self.noise_std):
      raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}")
    if isinstance(self.noise_seed, bool) or not isinstance(self.noise_seed, int) or self.noise_seed < 0:
      raise ValueError(f"noise_seed must be an integer >= 0, got {self.noise_seed!r}")
    beta, gamma = self.reverse_sigmoid_beta, self.reverse_sigmoid_gamma
    if (beta is None) != (gamma is None):
      raise ValueError("the reverse sigmoid needs both reverse_sigmoid_beta and reverse_sigmoid_gamma")
    for name, v in (("reverse_sigmoid_beta", beta), ("reverse_sigmoid_gamma", gamma)):
      if v is not None and (not isinstance(v, (int, float)) or not 0 < v < np.inf):
        raise ValueError(f"{name} must be a number > 0, got {v!r}")
    if output is None:
      return
    if output not in OUTPUT_MODES:
      raise ValueError(f"unknown output {output!r}; choose one of {', '.join(OUTPUT_MODES)}")
    if beta is not None and output not in ("probabilities", "top_k"):
      raise ValueError(f"the reverse sigmoid perturbs probabilities: it needs output 'probabilities' or 'top_k', "
                       f"not {output!r}")
    if output == "labels" and (self.noise_std > 0 or self.round_decimals is not None):
      raise ValueError("noise and rounding do nothing to output 'labels' (one-hot answers); drop them")


def round_answers(answers: np.ndarray, decimals: int) -> np.ndarray:
  """Every entry rounded to `decimals` decimals (same dtype)."""
  return np.round(answers, decimals)


def top_k_only(probs: np.ndarray, k: int) -> np.ndarray:
  """The k largest entries of each row, every other entry 0 (ties: lowest class index first)."""
  keep = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  out = np.zeros_like(probs)
  np.put_along_axis(out, keep, np.take_along_axis(probs, keep, axis=-1), axis=-1)
  return out


def reverse_sigmoid_perturbation(probs: np.ndarray, beta: float, gamma: float) -> np.ndarray:
  """r(y) = beta * (sigmoid(gamma * logit(y)) - 1/2), y clipped to [1e-9, 1 - 1e-9]; 0 at y = 1/2, > 0 above."""
  y = np.clip(probs, _CLIP, 1.0 - _CLIP)
  z = gamma * np.log(y / (1.0 - y))
  return beta * (0.5 * np.tanh(0.5 * z))  # sigmoid(z) - 1/2, without overflow


def reverse_sigmoid(probs: np.ndarray, beta: float, gamma: float) -> np.ndarray:
  """The reverse-sigmoid defense: y - r(y) clipped to [0, 1] and renormalised to sum 1 per row (same dtype).

  A row whose perturbed entries are all 0 (possible only for beta > 1) becomes uniform.
  """
  probs = np.asarray(probs)
  p = np.clip(probs - reverse_sigmoid_perturbation(probs, beta, gamma), 0.0, 1.0)
  total = p.sum(axis=-1, keepdims=True)
  uniform = np.full_like(p, 1.0 / p.shape[-1])
  return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform).astype(probs.dtype)


def gaussian_noise(answers: np.ndarray, std: float, rng: Optional[np.random.Generator], output: str,
                   normal: Optional[np.ndarray] = None) -> np.ndarray:
  """Adds N(0, std^2) to every revealed entry; keeps probabilities in [0, 1] (see module docstring).

  The draws come from `rng`, or are `std * normal` when standard normal draws (N, C) are given (`keyed_normal`).
  """
  draws = rng.normal(scale=std, size=answers.shape) if normal is None else std * np.asarray(normal, np.float64)
  noisy = answers + draws.astype(answers.dtype)
  if output == "logits":
    return noisy
  if output == "top_k":
    return np.where(answers != 0, np.clip(noisy, 0.0, 1.0), 0.0).astype(answers.dtype)
  p = np.clip(noisy, 0.0, 1.0)
  total = p.sum(axis=-1, keepdims=True)
  return np.where(total > 0, p / np.where(total > 0, total, 1.0), answers).astype(answers.dtype)


def noise_rng(settings: Defenses, offset: int) -> np.random.Generator:
  """The generator of the noise of a query whose first input is the `offset`-th answered (0-based)."""
  return np.random.default_rng([settings.noise_seed, offset])


def keyed_normal(noise_key: bytes, inputs: np.ndarray, num_classes: int) -> np.ndarray:
  """Standard normal draws (N, num_classes) where row i depends only on the key and the bytes of inputs[i].

  HMAC-SHA256(noise_key, dtype + shape + bytes of the input) seeds SHAKE-256, whose output gives uniforms in
  [0, 1) with 53 bits each, turned into normals by Box-Muller (float64). Without the key the draws cannot be
  recomputed; with it they are reproduced exactly, whatever was asked before (no dependence on query order).
  The bytes are those of the input as given: the service hashes inputs in its model's dtype (uint8 images,
  float64 vectors), so a local oracle matches it when asked in that dtype.
  """
  x = np.ascontiguousarray(inputs)
  n, pairs = len(x), (num_classes + 1) // 2
  if n == 0:
    return np.zeros((0, num_classes))
  tag = f"{x.dtype.str}{tuple(x.shape[1:])}".encode()
  raw = b"".join(hashlib.shake_256(hmac.digest(noise_key, tag + row.tobytes(), "sha256")).digest(16 * pairs)
                 for row in x.reshape(n, -1))
  u = (np.frombuffer(raw, "<u8").reshape(n, pairs, 2) >> np.uint64(11)) * 2.0 ** -53
  radius, angle = np.sqrt(-2.0 * np.log1p(-u[..., 0])), 2.0 * np.pi * u[..., 1]
  return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1).reshape(n, 2 * pairs)[:, :num_classes]


def apply_defenses(answers: np.ndarray, logits: np.ndarray, settings: Optional[Defenses],
                   rng: Optional[np.random.Generator], *, output: str, top_k: Optional[int] = None,
                   normal: Optional[np.ndarray] = None) -> np.ndarray:
  """Applies `settings` to the answers of one query.

  Args:
    answers: (N, C) answers of the output mode (`extraction.oracle.transform_logits(logits, output, top_k)`).
    logits: (N, C) the victim's logits for the same inputs (the reverse sigmoid starts from their softmax).
    settings: the defenses; None or inactive returns `answers` unchanged.
    rng: generator of the noise (`noise_rng`); needed only when noise_std > 0 and `normal` is None.
    output, top_k: the output mode the answers are in.
    normal: standard normal draws (N, C) for the noise instead of `rng` (`keyed_normal`).
  Returns:
    (N, C) defended answers, in the answers' dtype.
  """
  if settings is None or not settings.active:
    return answers
  if settings.reverse_sigmoid_beta is not None:
    probs = reverse_sigmoid(softmax(np.asarray(logits)), settings.reverse_sigmoid_beta, settings.reverse_sigmoid_gamma)
    answers = probs if output == "probabilities" else top_k_only(probs, top_k)
  if settings.noise_std > 0:
    answers = gaussian_noise(answers, settings.noise_std, rng, output, normal)
  if settings.round_decimals is not None:
    answers = round_answers(answers, settings.round_decimals)
  return answers
