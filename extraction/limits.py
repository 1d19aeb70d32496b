"""The limits of learning-based extraction: how far apart two trainings of the same recipe land when exactly one
source of nondeterminism differs between them (Jagielski et al. 2020, Sec. 5: even an adversary holding the
victim's training set, architecture and hyper-parameters does not get the victim back, which motivates
functionally-equivalent extraction).

A `Run` is one training of the victim's recipe (`extraction.victim.fit_recipe`) with its initialisation seed,
its data-order-and-augmentation seed, its number of data-parallel devices, its matmul/convolution precision and
whether XLA's GPU deterministic ops are on. `plan` lists, for each varied source, pairs of runs that differ in
that one setting and nothing else (`SOURCES`):

  nothing            the same run twice, in two processes: bit-identical on CPU;
  deterministic_ops  the same run twice with --xla_gpu_deterministic_ops=true (GPU; on CPU the same as nothing);
  init               the initialisation seed (the data seed fixed);
  data               the data order and augmentation seed (the initialisation fixed);
  all                every seed (both together);
  devices            the number of data-parallel devices: the same global batches, other reduction orders;
  precision          float32 vs bfloat16 convolutions and dense layers (`models.PRECISIONS`), same seeds.

With n repeats and base seed s, init/data/all use seeds s..s+n-1 and compare every pair of them (n(n-1)/2 pairs,
3 for n=3); precision, nothing and deterministic_ops pair runs of seeds s..s+n-1 (n pairs); devices compares
every pair of the device counts. Runs shared between sources are trained once (`unique_runs`).

`compare` measures one pair from the two models' logits on the evaluation sets (`extraction.evaluation`):
top-1 agreement (fidelity) on the test set, on Gaussian-noised test images and on uniform noise, top-k
fidelity, the largest logit difference, and from their weights the largest parameter difference and whether
they are bit-identical. Precision: the figures are float64 reductions of float32 (or bfloat16) logits.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from extraction import evaluation, metrics

SOURCES = {
  "nothing": "nothing (the same run in two processes)",
  "deterministic_ops": "nothing, with --xla_gpu_deterministic_ops=true",
  "init": "initialisation seed",
  "data": "data order and augmentation seed",
  "all": "all seeds",
  "devices": "data-parallel devices (reduction order)",
  "precision": "float32 vs bfloat16 matmuls and convolutions",
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One training of the recipe: what may vary between two runs."""

  init_seed: int
  data_seed: int
  devices: int
  precision: str = "float32"
  deterministic_ops: bool = False
  repeat: int = 0  # 1: a second training of the same settings (the 'nothing' sources)

  @property
  def name(self) -> str:
    """A directory name that says every setting."""
    return (
      f"init{self.init_seed}_data{self.data_seed}_dev{self.devices}_{self.precision}"
      + ("_detops" if self.deterministic_ops else "")
      + (f"_repeat{self.repeat}" if self.repeat else "")
    )


def plan(
  sources: Sequence[str], seed: int, repeats: int, device_counts: Sequence[int], base_devices: int
) -> dict[str, list[tuple[Run, Run]]]:
  """The pairs of runs of each source (see the module docstring); every run not named by its source uses seed
  `seed` for both seeds, `base_devices` devices and float32."""
  unknown = [s for s in sources if s not in SOURCES]
  if unknown:
    raise ValueError(f"unknown source {unknown[0]!r}; choose from {', '.join(SOURCES)}")
  if repeats < 2 and any(s in ("init", "data", "all") for s in sources):
    raise ValueError(f"seed sources need at least 2 repeats to make a pair, got {repeats}")
  if "devices" in sources and len(set(device_counts)) < 2:
    raise ValueError(f"the devices source needs at least 2 device counts, got {list(device_counts)}")
  seeds = [seed + i for i in range(repeats)]
  run = lambda init=seed, data=seed, **kw: Run(init, data, kw.pop("devices", base_devices), **kw)
  each_pair = lambda runs: list(itertools.combinations(runs, 2))
  make = {
    "nothing": lambda: [(run(s, s), run(s, s, repeat=1)) for s in seeds],
    "deterministic_ops": lambda: [
      (run(s, s, deterministic_ops=True), run(s, s, deterministic_ops=True, repeat=1)) for s in seeds
    ],
    "init": lambda: each_pair([run(init=s) for s in seeds]),
    "data": lambda: each_pair([run(data=s) for s in seeds]),
    "all": lambda: each_pair([run(s, s) for s in seeds]),
    "devices": lambda: each_pair([run(devices=n) for n in dict.fromkeys(device_counts)]),
    "precision": lambda: [(run(s, s), run(s, s, precision="bfloat16")) for s in seeds],
  }
  return {s: make[s]() for s in sources}


def unique_runs(pairs: dict[str, list[tuple[Run, Run]]]) -> list[Run]:
  """Every run of the plan once, in order of first appearance."""
  return list(dict.fromkeys(r for ps in pairs.values() for pair in ps for r in pair))


def param_difference(a: Any, b: Any) -> tuple[float, bool]:
  """(largest |a - b| over every leaf, whether every leaf is bit-identical) of two pytrees of the same
  structure (e.g. two final training states)."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  structure_a: Any = jax.tree.structure(a)  # Any: jaxlib ships no type stub for PyTreeDef (it lives in _jax.so)
  if structure_a != jax.tree.structure(b):
    raise ValueError("the two states have different structures")
  worst, same = 0.0, True
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    same = same and x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
  return worst, same


def compare(logits_a: dict, logits_b: dict, test_labels: np.ndarray, num_classes: int, top_k: int = 5) -> dict:
  """The figures of one pair from the two models' logits on the same sets (name -> (N, C); 'test' required):

  accuracy            mean of the two models' test accuracies;
  fidelity            top-1 agreement on the test set (and top<k>_fidelity: b's top k holds a's top 1);
  <set>_fidelity      top-1 agreement on every other set (gauss<s>, noise);
  max_logit_diff      largest |logit difference| on the test set (noise_max_logit_diff on uniform noise);
  noise_top_share     mean over the two models of the largest share of one class on noise (agreement on noise
                      is at least about this when both predict mostly that class).
  """
  out = evaluation.Evaluator({}, logits_a, test_labels, num_classes, top_k).compare(logits_b)
  out.pop("noise_hist", None)
  out.pop(f"top{top_k}_accuracy", None)
  out["accuracy"] = (out["accuracy"] + metrics.top1_accuracy(logits_a["test"], test_labels)) / 2
  diff = lambda k: float(np.max(np.abs(np.asarray(logits_a[k], np.float64) - np.asarray(logits_b[k], np.float64))))
  out["max_logit_diff"] = diff("test")
  if "noise" in logits_a:
    out["noise_max_logit_diff"] = diff("noise")
    out["noise_top_share"] = float(
      np.mean([max(evaluation.class_histogram(l["noise"], num_classes)) for l in (logits_a, logits_b)])
    )
  return out


def summarize(source: str, pair_figures: list[dict], param_diffs: list[tuple[float, bool]]) -> dict:
  """The row of one source: mean and std over its pairs (`evaluation.aggregate`), the largest parameter
  difference and whether every pair was bit-identical."""
  agg = evaluation.aggregate(pair_figures)
  agg["pairs"] = agg.pop("seeds")
  return {
    "source": source,
    "varied": SOURCES[source],
    **agg,
    "max_param_diff": max(d for d, _ in param_diffs),
    "params_identical": all(s for _, s in param_diffs),
  }
