"""Weights from features never seen on, read from the jump of the input gradient at a kink (last hidden layer).

`unseen.read_weights` reads such a weight from where a kink lies, and only where one unit of the layer has unseen
features on (else: whose kink is it?); `layer.measure` needs a feature Jacobian dh/dx of full rank on the active
features. Far from the center neither holds: on random 8-8-8-8-8-1 seed 0 (`fe_deep_unseen.md`), whose first three
layers are recovered exactly, four of the last hidden layer's units keep 0 for weights from two features on at 4-6%
of the ball and never on at N(0, I), three units lack the same feature, and where it is on 7 features are active
with a Jacobian of rank 2 or 3: the final check fails (2^-11.3) after every repair (not read there: reading in the
repairs was tried and not kept, docs/fe_deep.md, twenty-first session). On seed 2 five such weights
(one feature on at 1.3% of the ball) keep the last layer's fit off, so that a deeper layer seems to follow
(`attack._read_lenient` reads them there).

Across a kink of unit u of the last hidden layer the input gradient of g jumps by c (G w) (G = dh/dx there, (d, n);
c the output weights, w the unit's true weights): with w's known part w_kn fixed, the unknown part w_K and a scale
alpha, alpha G w_kn + G_K (alpha w_K) = jump and alpha (h_kn . w_kn + b) + h_K . (alpha w_K) = 0 (the kink lies on
the surface) are linear in (alpha, alpha w_K): d + 1 equations, 1 + |K| unknowns. A unit whose system is well
posed and leaves a residual at the gradients' rounding owns the kink; a kink that fits no unit, or more than one,
is dropped. Float64 numpy; queries through the Querier (find_kinks on the lines, recover.gradients beside kinks).
"""

from __future__ import annotations

import zlib

import numpy as np

from functional_equivalence import recover
from functional_equivalence.deep import active, network, unseen


def read(
  q,
  prefix: network.DeepNet,
  units: list,
  points: np.ndarray,
  cfg,
  rtol: float = 1e-7,
  cond: float = 1e-8,
  max_lines: int = 128,
  max_kinks: int = 256,
) -> int:
  """Reads, in place, the weights of the last hidden layer's `units` (layer.Unit, on `prefix`) from features they
  never saw on (module docstring), from the kinks off every known surface (`layer.new_kinks`) on lines through
  `points` along each such unit's predicted normal (`layer.line_kinks`, cfg a layer.LayerConfig). A weight is set
  from the median of its readings when they agree within `rtol` (relative to the unit's weights); each kink read
  joins its unit's precise points. At most `max_lines` lines and `max_kinks` kinks a call (drawn at random beyond
  them): a magnitude-pruned random 10-8-8-8-1 (seed 5, half its second weights 0, `fe_deep_pruned50.md`) drew 3,604
  lines through 86,397 kinks, 6.4 million queries over `attack._read_lenient`'s 3 passes, and read nothing that
  helped; random 8-8-8-8-8-1 seed 2, which the reading makes exact, needs 110 lines and 102 kinks. Returns the number
  of weights read."""
  from functional_equivalence.deep import layer

  todo = [u for u in units if not np.all(u.known)]
  if not prefix.weights or not todo or not len(points):
    return 0
  rng = np.random.default_rng([zlib.crc32(b"".join(u.w.tobytes() for u in units)), 2])
  pre = network.preactivations(prefix, points)
  h = np.maximum(pre[-1], 0.0)
  through, along = [], []
  for u in todo:  # a line along u's predicted normal through each point where u has unseen features on
    at = np.any(~u.known & (h > 0), axis=1)
    if not at.any():
      continue
    g = active.input_grad(prefix, [p[at] for p in pre], (pre[-1][at] > 0) * u.w)
    keep = np.linalg.norm(g, axis=1) > 0
    through.append(points[at][keep])
    along.append(cfg.scale * g[keep] / np.linalg.norm(g[keep], axis=1, keepdims=True))
  if not through:
    return 0
  starts, dirs = np.concatenate(through), np.concatenate(along)
  if len(starts) > max_lines:  # a bounded stage (docstring)
    keep = np.sort(rng.choice(len(starts), max_lines, replace=False))
    starts, dirs = starts[keep], dirs[keep]
  _, kinks = layer.line_kinks(q, starts, dirs, cfg)
  xk = starts[kinks.line] + kinks.t[:, None] * dirs[kinks.line]
  feats, new = layer.new_kinks(prefix, units, xk, cfg)
  room = np.minimum([layer.kink_room(kinks, dirs, k) for k in new], layer.prefix_distance(feats)[new])
  room = np.where(np.isfinite(room), room, cfg.scale)  # alone on its line, no prefix surface near
  todo_at = [[u for u in todo if np.any(~u.known & (feats.h[k] > 0))] for k in new]  # the candidates of each kink
  has = np.array([bool(c) for c in todo_at], bool)
  new, room, todo_at = new[has], room[has], [c for c in todo_at if c]
  if len(new) > max_kinks:
    keep = np.sort(rng.choice(len(new), max_kinks, replace=False))
    new, room, todo_at = new[keep], room[keep], [todo_at[i] for i in keep]
  if not len(new):
    return 0
  v = dirs[kinks.line[new]] / np.linalg.norm(dirs[kinks.line[new]], axis=1, keepdims=True)
  step = 0.25 * room
  sides = np.concatenate([xk[new] - step[:, None] * v, xk[new] + step[:, None] * v])
  jac, ok, _, noise = recover.gradients(q, sides, 0.25 * np.concatenate([step, step]), rng)
  n = len(new)
  readings: dict[int, list] = {}  # id(unit) -> [(feature indices, values, kink point)]
  for i, k in enumerate(new):
    if not (ok[i] and ok[n + i]):
      continue
    owner = _owner(jac[n + i] - jac[i], max(noise[i], noise[n + i]), feats.jac[k], todo_at[i], feats.h[k], rtol, cond)
    if owner is not None:
      readings.setdefault(id(owner[0]), []).append((owner[1], owner[2], xk[k]))
  read = 0
  for u in todo:
    got = unseen.fill(u, [(ks, values) for ks, values, _ in readings.get(id(u), [])], rtol)
    if got:
      u.points.extend(p for _, _, p in readings[id(u)])
    read += got
  return read


def _owner(jump, noise, G, cands, ht, rtol, cond):
  """(unit, unknown features K, their weights) of the one candidate whose system (module docstring) the gradient
  jump (m, d) at a kink with features ht and feature Jacobian G (d, n) fits, or None."""
  _, s, vt = np.linalg.svd(jump, full_matrices=False)
  if not s[0] or (len(s) > 1 and s[1] > 1e-6 * s[0]):
    return None  # not the rank-one jump of one unit
  j = s[0] * vt[0]
  tol = max(rtol, 1e3 * float(noise) / s[0])
  rhs = np.concatenate([j, [0.0]])
  fits = []
  for u in cands:
    k, kn = np.flatnonzero(~u.known & (ht > 0)), u.known & (ht > 0)
    on_surface = np.linalg.norm(j) / (np.linalg.norm(ht) * np.linalg.norm(u.w) + abs(u.b))  # row weight
    a = np.zeros((len(j) + 1, 1 + len(k)))
    a[:-1, 0], a[:-1, 1:] = G[:, kn] @ u.w[kn], G[:, k]
    a[-1, 0], a[-1, 1:] = on_surface * (ht[kn] @ u.w[kn] + u.b), on_surface * ht[k]
    sv = np.linalg.svd(a, compute_uv=False)
    if sv[-1] <= cond * sv[0]:
      continue  # the kink does not determine u's unknown weights
    z = np.linalg.lstsq(a, rhs, rcond=None)[0]
    if z[0] and np.linalg.norm(a @ z - rhs) <= tol * np.linalg.norm(rhs):
      fits.append((u, k, z[1:] / z[0]))
  return fits[0] if len(fits) == 1 else None
