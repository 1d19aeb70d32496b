"""Pruned victims: first-layer units whose kink is invisible on a whole side of another first-layer unit.

The deep attack's first layer takes a unit for a whole hyperplane with a kink wherever some later path is alive, and
its verification and cross check refute a candidate with a side of another unit where every test misses
(deep/crosscheck.py). A unit whose every later path is dead on such a side is then never kept. This looks at the
victims of `fe_deep --pruned_sizes` (the victim used only to look, never the attack): for each first-layer unit j,
`--points` N(0, I) points projected onto its surface, whether the output's gradient with respect to h_j is 0 at every
one of them (more than `--min_side`) on one side of another first-layer unit. Float64 numpy, seconds.

  python -m benchmarks.fe_dead_sides

Writes benchmarks/results/fe_dead_sides.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks.common import RESULTS, machine, report_head
from functional_equivalence.deep import network

FLAGS = flags.FLAGS


def output_grad_h1(net: network.DeepNet, x: np.ndarray) -> np.ndarray:
  """d logits / d h_1 (N, n_1, m) at x, h_1 the first hidden layer's activations."""
  masks = [p > 0 for p in network.preactivations(net, x)[1:-1]]
  g = np.broadcast_to(net.weights[-1], (len(x),) + net.weights[-1].shape)
  for w, mask in zip(reversed(net.weights[1:-1]), reversed(masks)):
    g = np.einsum("ij,nj,njm->nim", w, mask, g)
  return g


def dead_sides(net: network.DeepNet, x: np.ndarray, min_side: int) -> tuple[list, list]:
  """(live, dead): the first-layer units whose kink shows somewhere at the points x moved onto their surface, and
  those of them whose kink shows nowhere on one side of another first-layer unit (min_side points or more there)."""
  w0, b0 = net.weights[0], net.biases[0]
  live, dead = [], []
  for j in range(w0.shape[1]):
    on = x - ((x @ w0[:, j] + b0[j]) / (w0[:, j] @ w0[:, j]))[:, None] * w0[:, j]
    shows = np.any(output_grad_h1(net, on)[:, j] != 0, axis=1)
    if not shows.any():
      continue
    live.append(j)
    z = on @ w0 + b0
    sides = [s * z[:, u] > 0 for u in range(w0.shape[1]) if u != j for s in (1.0, -1.0)]
    if any(side.sum() >= min_side and not shows[side].any() for side in sides):
      dead.append(j)
  return live, dead


def main(argv):
  del argv
  command = " ".join(["python -m benchmarks.fe_dead_sides"] + sys.argv[1:])
  start = time.time()
  rows = []
  for fraction in FLAGS.fractions:
    for sizes in FLAGS.sizes:
      for seed in range(FLAGS.seeds):
        net = network.pruned(network.random_net(seed, [int(s) for s in sizes.split("-")]), 1, float(fraction))
        x = np.random.default_rng([seed, 99]).normal(size=(FLAGS.points, net.sizes[0]))
        live, dead = dead_sides(net, x, FLAGS.min_side)
        rows.append(dict(fraction=float(fraction), shape=sizes, seed=seed, live_units=live, dead_on_a_side=dead))
  seconds = time.time() - start
  info = machine()
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{FLAGS.out}.json").write_text(json.dumps(dict(command=command, machine=info, rows=rows), indent=2))
  cols = ["pruned", "shape", "seed", "live first-layer units", "dead on a side"]
  lines = report_head("Pruned victims: first-layer units dead on a side", f"Command: `{command}`", info, seconds, cols)
  lines += [
    f"| {r['fraction']:g} | {r['shape']} | {r['seed']} | {r['live_units']} | {r['dead_on_a_side']} |" for r in rows
  ]
  lines += ["", "Victims with a unit dead on a side:", ""]
  for fraction in sorted({r["fraction"] for r in rows}, reverse=True):
    for shape in FLAGS.sizes:
      group = [r for r in rows if r["fraction"] == fraction and r["shape"] == shape]
      lines.append(f"- {fraction:g} pruned {shape}: {sum(bool(r['dead_on_a_side']) for r in group)} of {len(group)}")
  (RESULTS / f"{FLAGS.out}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines[-8:]))


def define_flags() -> None:
  """The script's flags, defined only when run as a script (--seeds, --out clash with other modules on import)."""
  flags.DEFINE_list("sizes", ["10-8-6-1", "12-10-8-1", "10-8-8-8-1"], "Victim sizes (fe_deep's --pruned_sizes).")
  flags.DEFINE_list("fractions", ["0.75", "0.5"], "Shares of the second weight matrix pruned (network.pruned).")
  flags.DEFINE_integer("seeds", 8, "Victim seeds 0..seeds-1 per size and fraction.")
  flags.DEFINE_integer("points", 50_000, "N(0, I) points projected onto each unit's surface.")
  flags.DEFINE_integer("min_side", 1000, "Fewest of those points on a side for it to count as dead.")
  flags.DEFINE_string("out", "fe_dead_sides", "Results file stem.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
