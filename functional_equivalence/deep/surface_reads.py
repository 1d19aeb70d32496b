"""A pocket unit's weights from features never seen on, read just past each feature's surface.

A last hidden unit on in a pocket only (pockets.py finds where; the repairs' lines cross it) is seen at kinks where
few of its input features are on: its weights from the others stay unknown (0), and it cannot be promoted without
them (`attack._promote_in_repair`: random 9-14-7-1 seed 1, promoted with 3 such weights at 0, was off by 0.15
where they count). `unseen.on_points` + `unseen.read_weights` look where the unit is predicted on with such a
feature k on; with k's weight unknown the prediction there can be wrong (a negative weight keeps the true unit off
there: 9-14-7-1 seed 1, the true pre-activation -7 to -18 at every such point, no kink near them). Here the reading
starts where the prediction cannot be wrong: on k's own surface (h_k = 0, so w_k does not count), at the point
where the predicted pre-activation p_hat is greatest (an ascent along the surface, offline), and searches the line
from there into k's on side along the direction that keeps p_hat constant (in that point's linear region): the true
pre-activation is p_hat + w_k h_k there, so with w_k < 0 the unit turns off at h_k = p_hat / |w_k|, a kink of the
oracle that no prefix unit and no other unit of the layer predicts. The first such kink past the surface gives one
equation in the unknown weights, h(x*)[K] . w[K] = -(h(x*)[known] . w[known] + b), as `unseen.read_weights`'
kinks do, solved and confirmed the same way (`unseen.take_reading`).
A pending candidate's orientation is not known (its kinks give w up to sign): `oriented_variants` tries both and
returns the copies whose every weight was read; the fit of the last layer and the final check then judge them.
`read_oriented` reads in one orientation: a unit off in a pocket only, standing in a linear remainder elsewhere,
is read on its pocket's side (attack._promote_in_repair, attack._join_pockets).
Float64 numpy; queries only in the line searches and the confirmation.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from functional_equivalence.deep import active, network, unseen


def _terms(prefix: network.DeepNet, u, k: int, x: np.ndarray):
  """At x (d,), on its linear region of the prefix: (pre_k, grad pre_k, the terms whose least `surface_peak`
  raises (p_hat and minus each other unknown feature's pre-activation, each over its gradient's norm), and their
  gradients)."""
  pre = network.preactivations(prefix, x[None])
  n = len(u.w)
  rows = np.zeros((n + 1, n))
  rows[:n] = -np.eye(n)
  rows[n] = (pre[-1][0] > 0) * u.w
  grads = active.input_grad(prefix, pre, rows)
  values = np.append(-pre[-1][0], np.maximum(pre[-1][0], 0.0) @ u.w + u.b)
  keep = np.append(~u.known, True)
  keep[k] = False
  norms = np.linalg.norm(grads, axis=1) + 1e-300
  return pre[-1][0, k], -grads[k], values[keep] / norms[keep], grads[keep] / norms[keep, None]


def _onto_surface(prefix, u, k: int, x: np.ndarray, dom, steps: int = 8) -> np.ndarray:
  """x moved onto prefix unit k's surface by Newton steps (exact in one for a first-layer unit), kept in dom."""
  for _ in range(steps):
    pk, gk, _, _ = _terms(prefix, u, k, x)
    if not gk @ gk or pk == 0.0:
      break
    x = dom.project(x - pk * gk / (gk @ gk))
  return x


def surface_peak(prefix, u, k: int, x: np.ndarray, dom, steps: int = 200) -> np.ndarray:
  """A point of prefix unit k's surface inside dom where u's predicted pre-activation p_hat is positive and every
  other feature u never saw on is off, as far as possible (the least of those terms, each relative to its gradient,
  locally greatest): from x projected onto the surface, steps along the least term's gradient projected on the
  surface's tangent, each moved back onto it, kept when the least term grows (the step then 1.5x, else halved).
  There the prediction is the true pre-activation, whatever the unknown weights. Offline (no query)."""
  x = _onto_surface(prefix, u, k, x, dom)
  step = 0.1 * (np.linalg.norm(x) + 1.0)
  for _ in range(steps):
    _, gk, values, grads = _terms(prefix, u, k, x)
    n = gk / (np.linalg.norm(gk) + 1e-300)
    g = grads[np.argmin(values)]
    d = g - (g @ n) * n
    if not np.linalg.norm(d) or step < 1e-9 * (np.linalg.norm(x) + 1.0):
      break
    y = _onto_surface(prefix, u, k, x + step * d / np.linalg.norm(d), dom)
    pk, _, moved, _ = _terms(prefix, u, k, y)
    if moved.min() > values.min() and abs(pk) <= 1e-9 * (np.linalg.norm(y) + 1.0):
      x, step = y, 1.5 * step
    else:
      step *= 0.5
  return x


def _with_flipped(prefix: network.DeepNet, k: int) -> network.DeepNet:
  """The prefix with its last layer's unit k turned over: its on side is k's off side (for `active.both_on`)."""
  w, b = list(prefix.weights), list(prefix.biases)
  w[-1], b[-1] = w[-1].copy(), b[-1].copy()
  w[-1][:, k] *= -1
  b[-1][k] *= -1
  return network.DeepNet(tuple(w), tuple(b))


def peak_lines(prefix, u, dom, starts: int = 8, draws: int = 1 << 14):
  """For each feature k that u ((layer.Unit) after the first layer) never saw on: the distinct points of k's surface
  where u is predicted on (`surface_peak` from the `starts` best points where u is on and k off, `active.both_on`
  on the prefix with k turned over) and the directions into k's on side along which p_hat stays constant. Returns
  (starts (L, d), directions (L, d), lengths (L,), features (L,))."""
  d = prefix.sizes[0]
  rng = np.random.default_rng([zlib.crc32(u.w.tobytes()), 3])  # the attack's stream stays as it was
  x0 = dom.check_points(rng, d, draws)
  ys: list[np.ndarray] = []
  vs: list[np.ndarray] = []
  ks: list[int] = []
  for k in map(int, np.flatnonzero(~u.known)):
    for z in active.both_on_points(_with_flipped(prefix, k), u.w, u.b, [k], x0, dom, starts):
      y = surface_peak(prefix, u, k, z, dom)
      _, gk, values, grads = _terms(prefix, u, k, y)
      if not values.min() > 0 or any(np.linalg.norm(y - other) <= 1e-9 * (np.linalg.norm(y) + 1.0) for other in ys):
        continue  # p_hat <= 0 there, or another unknown feature on: the prediction may be wrong
      gp = grads[-1]
      v = gk - (gk @ gp) / (gp @ gp) * gp if gp @ gp else gk
      if not np.linalg.norm(v):
        continue
      ys.append(y)
      vs.append(v / np.linalg.norm(v))
      ks.append(k)
  y = np.array(ys).reshape(-1, d)
  lengths = 2 * np.linalg.norm(y - dom.center(d), axis=1) + dom.circumradius(d) if len(y) else np.zeros(0)
  return y, np.array(vs).reshape(-1, d), lengths, np.array(ks, int)


def read_past_surfaces(q, prefix, u, others: list, dom, cfg, stats: dict | None = None, rtol: float = 1e-9) -> int:
  """Reads u's weights from features it never saw on (in place; returns how many), from the first kink past each
  line of `peak_lines` that neither the prefix (any of its units at 0) nor `others` (the layer's other units,
  layer.Unit, weights known where they count) predict and where such a feature is on (module docstring); the
  equations solved together and the reading kept only if the unit's surface is where it predicts it around them
  (`unseen.take_reading`; cfg a layer.LayerConfig)."""
  from functional_equivalence import search

  y, v, lengths, _ = peak_lines(prefix, u, dom)
  # inside the ball where the answers are trusted (a probabilities oracle's: random 8-12-8-6-4 seed 0 had a
  # probability underflow past it, forty-third session)
  reach = np.array([unseen.trusted_stretch(a, b, cfg) for a, b in zip(y, v)]).reshape(-1, 2)
  inside = (reach[:, 0] < 0) & (reach[:, 1] > 0)
  y, v, lengths = y[inside], v[inside], np.minimum(lengths[inside], reach[inside, 1])
  if not len(y):
    return 0
  kinks = search.find_kinks(q, y, v, np.stack([-1e-9 * lengths, lengths], axis=1))
  rows: list = []
  for line in range(len(y)):
    for t in np.sort(kinks.t[kinks.line == line]):
      x = y[line] + t * v[line]
      pre = network.preactivations(prefix, x[None])
      size = np.linalg.norm(x) + 1.0
      if any(np.min(np.abs(p[0])) <= 1e-7 * size for p in pre):
        continue  # a prefix unit's kink
      h = np.maximum(pre[-1][0], 0.0)
      hsize = np.linalg.norm(h) + 1.0
      if any(abs(h @ o.w + o.b) <= rtol * hsize * (np.linalg.norm(o.w) + abs(o.b)) for o in others):
        continue  # another unit's
      if np.any(h[~u.known] > 0):
        rows.append((h, -(h[u.known] @ u.w[u.known] + u.b), x))
        break
  if not rows:
    return 0
  return unseen.take_reading(q, prefix, u, rows, cfg, stats)


def read_oriented(q, prefix, cand, others: list, dom, cfg, stats: dict | None = None, passes: int = 3, sign=1.0):
  """A copy of the pending candidate `cand` (layer.Unit with unknown weights) with those read where it is on once
  multiplied by `sign`: `unseen.read_weights` at `unseen.on_points`, and where that reads nothing,
  `read_past_surfaces`; up to `passes` rounds while they read something. `others` are the layer's units (their own
  unknown weights are taken as they stand: only the candidate's are read). Returned in `cand`'s orientation, with
  the weights left unread still unknown."""
  fixed = [(prefix, dataclasses.replace(o, known=np.ones_like(o.known))) for o in others]
  trial = dataclasses.replace(
    cand, w=sign * cand.w, b=sign * cand.b, c=sign * cand.c, known=cand.known.copy(), points=list(cand.points)
  )
  for _ in range(passes):
    at = unseen.on_points([(prefix, trial)], dom, prefix.sizes[0])
    read = unseen.read_weights(q, fixed + [(prefix, trial)], at, cfg, stats)
    if not read:
      read = read_past_surfaces(q, prefix, trial, [o for _, o in fixed], dom, cfg, stats)
    if not read or np.all(trial.known):
      break
  return dataclasses.replace(trial, w=sign * trial.w, b=sign * trial.b, c=sign * trial.c)


def oriented_variants(q, prefix, cand, others: list, dom, cfg, stats: dict | None = None, passes: int = 3) -> list:
  """Copies of the pending candidate `cand` in each orientation whose every weight was read (`read_oriented`: its
  kinks do not say which side is on)."""
  read = [read_oriented(q, prefix, cand, others, dom, cfg, stats, passes, sign) for sign in (1.0, -1.0)]
  return [trial for trial in read if np.all(trial.known)]
