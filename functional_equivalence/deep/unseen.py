"""Where a unit's weights from features it never saw on would be wrong: check points near its predicted surface.

A unit's kinks give its weight from input feature k only where k is on at its surface. Where the search met no such
point (the weight stays 0, or `layer.complete` read it by walking), a wrong weight moves the unit's surface inside
k's region only, by about d_k h_k / |grad p|: the recovered network is off in the wedge between the predicted
surface and the true one, a small part of the domain (random 10-8-8-8-1 seed 8 under another random stream: a
network off by 0.15 (relative) at about 1e-4 of the ball's points passed the final check's 8,192 points, its walked
points (`layer.reach_points`) and the polish step's re-check; its third-layer unit had 2 such features, one on
nowhere on the unit's surface within the ball). `wedge_points` draws many points over the domain offline (no query)
and keeps, for each such unit, those nearest its predicted surface, relative to its scale, among the points where
such a feature is on: 10 of 64 of them fail on that network (1 of 64 from 20,000 draws, 20 of 64 from 10^6).
`on_points` finds where a unit and such a feature are both on; `read_weights` reads the weights in the final
check's repairs (last hidden layer), `read_middle` in a layer that is not the last
(attack.Config.middle_unseen_reads).
Float64 numpy.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from functional_equivalence.deep import active, network


def wedge_points(
  surfaces: list, dom, d: int, count: int = 64, draws: int = 1 << 18, chunk: int = 1 << 14
) -> np.ndarray:
  """For every unit of `surfaces` ((prefix, layer.Unit) pairs) after the first layer with features it never saw on
  (`Unit.known` False), the `count` of `draws` points of the domain (dom.check_points) with the smallest
  |p_hat(x)| / (|h(x)| |w| + |b|) among those where such a feature is on (module docstring); drawn in chunks from a
  generator seeded by the units' weights (crc32), so that the attack's random stream stays as it was. Returns
  (k, d) points, k <= count times the number of such units."""
  units = [(prefix, u) for prefix, u in surfaces if prefix.weights and not np.all(u.known)]
  if not units:
    return np.zeros((0, d))
  rng = np.random.default_rng(zlib.crc32(b"".join(u.w.tobytes() for _, u in units)))
  best = [(np.full(0, np.inf), np.zeros((0, d))) for _ in units]
  for _ in range(max(1, draws // chunk)):
    x = dom.check_points(rng, d, chunk)
    values: dict[int, np.ndarray] = {}  # per prefix, its features at x (the units of a layer share one)
    for i, (prefix, u) in enumerate(units):
      h = values.setdefault(id(prefix), network.feature_values(prefix, x))
      score = np.abs(h @ u.w + u.b) / (np.linalg.norm(h, axis=1) * np.linalg.norm(u.w) + abs(u.b) + 1e-300)
      score[~np.any(h[:, ~u.known] > 0, axis=1)] = np.inf
      scores, points = np.concatenate([best[i][0], score]), np.concatenate([best[i][1], x])
      keep = np.argsort(scores)[:count]
      keep = keep[np.isfinite(scores[keep])]
      best[i] = (scores[keep], points[keep])
  return np.concatenate([points for _, points in best])


def on_points(
  surfaces: list, dom, d: int, starts: int = 8, steps: int = 64, draws: int = 1 << 14, owners: bool = False
):
  """For every unit after the first layer with features it never saw on, and each such feature k, points of the
  domain where the unit's predicted pre-activation p_hat and k's are both > 0: there a wrong weight from k changes
  the answers by c (dw_k h_k), or c p_hat where the true unit is off, whatever the wedge (`wedge_points` looks only
  near the predicted surface, where they are small). Found offline by ascent on min(p_hat / |grad p_hat|,
  pre_k / |grad pre_k|) (steps along the gradient of the smaller, projected onto the domain) from the `starts` best of
  `draws` points (dom.check_points, a stream seeded by the units' weights). Random 10-8-8-8-1 seed 0 under another
  stream: a third-layer unit with weights off by 1.4 from two such features, both > 0 on 1 in 262,144 of the
  domain's check points, every one of them wrong, none near the predicted surface: the final check passed, logits off
  by 0.12 at one of 200,000 points. Returns (k, d) points, at most `starts` per (unit, feature); with `owners`, also
  (k,) the index in `surfaces` of the unit each point was found for."""
  units = [(i, prefix, u) for i, (prefix, u) in enumerate(surfaces) if prefix.weights and not np.all(u.known)]
  if not units:
    return (np.zeros((0, d)), np.zeros(0, int)) if owners else np.zeros((0, d))
  rng = np.random.default_rng([zlib.crc32(b"".join(u.w.tobytes() for _, _, u in units)), 1])
  x0 = dom.check_points(rng, d, draws)
  found = [
    active.both_on_points(prefix, u.w, u.b, np.flatnonzero(~u.known), x0, dom, starts, steps) for _, prefix, u in units
  ]
  points = np.concatenate(found)
  if owners:
    return points, np.concatenate([np.full(len(x), i) for (i, _, _), x in zip(units, found)])
  return points


def read_weights(
  q, units: list, points: np.ndarray, cfg, stats: dict | None = None, rtol: float = 1e-9, cond: float = 1e-6
) -> int:
  """A repair's reading of weights from features never seen on (in place; returns how many were read). At each
  point x of `points` (where the final check failed) where one unit u of `units` ((prefix, layer.Unit) pairs of the
  last hidden layer) has features K it never saw on that are on at x, the line through x along u's normal is
  searched for kinks (search.find_kinks, queries) over the stretch where no prefix unit changes state (`_kink`).
  There g's kinks are the last layer's; those the other units predict are set aside, and a single one left, at x*,
  is u's: h(x*)[K] . w[K] = -(h(x*)[known] . w[known] + b), one linear
  equation in u's unknown weights. The equations of all points are solved together (least squares) and each weight
  they determine is kept (the system's null space, singular values below `cond` times the largest, has no component
  above `cond` along it). u need not be predicted on at x: random 10-8-8-8-1 seed 4 has a third-layer unit on at
  99.65% of the ball whose surface lies near the center, where two of its features are off; the linear remainder
  takes up its error wherever it is on, and the check fails where it is off with both features on.
  Why the searches miss such weights (random 10-8-8-8-1 seed 0, see `on_points`): their kinks never had k on with the
  unit's other features measurable (more features on than the first layer has active units: the Jacobian along them
  is singular), and `layer.complete`'s walk along the predicted surface never reached k's region. A weight read from
  another unit's kink is mostly caught by the next final check, not always (below). Each kink read joins u's precise points (`Unit.points`, which the
  polish step's points go around and the layer's refit uses): random 10-8-8-8-1 seed 0 and digits 64-64-64-10 are
  exact with them, stop without (docs/fe_deep.md, fourteenth and fifteenth sessions). Where the kink left is a
  missed unit's, the reading is wrong and the next check need not catch it (iris-trained 4-16-16-3 seed 0 of
  `fe_deep_unseen.md`: a second-layer unit on at 0.1% of the ball was never found, one of its kinks gave another
  unit a weight from a feature never on at that unit's surface, which then passed for known and the layer never
  settled): a unit's reading is kept only if the unit it makes predicts its surface around each kink read
  (`_confirmed`, window tests with cfg, a layer.LayerConfig; refusals counted in stats['read_weights_refused']).
  Where several units have such features on at x (until the forty-third session: nothing read there), each one's
  line is searched, and the kink left on it is read for that unit alone (one equation, after the points where one
  unit has them), kept only if `_confirmed` finds the unit's surface where the reading puts it: another unit's kink
  gives a plane of another slope through that point (random 8-8-8-8-8-1 seed 4: last hidden units 0 and 7 both
  lack their weight from a feature on with unit 7 at 21 of 262,144 points of the ball, with unit 0 at none; unit
  7's is read, unit 0's refused; counted in stats['read_weights_shared'])."""
  rows: dict[int, list] = {}  # id(unit) -> [(h(x*), right-hand side, x*)]
  shared: list = []  # (unit index, (h(x*), x*)) where several units have such features on: whose kink is it?
  for x in points:
    values: dict[int, list] = {}  # per prefix (the layer's units share one), its pre-activations at x
    for prefix, _ in units:
      if id(prefix) not in values:
        values[id(prefix)] = network.preactivations(prefix, x[None])
    pre = [values[id(prefix)] for prefix, _ in units]
    which = [i for i, ((_, u), p) in enumerate(zip(units, pre)) if np.any(~u.known & (p[-1][0] > 0))]
    for i in which:
      kink = _kink(q, units, i, pre[i], x, cfg, rtol)
      if kink is not None and len(which) == 1:
        rows.setdefault(id(units[i][1]), []).append(_row(units[i][1], *kink))
      elif kink is not None:
        shared.append((i, kink))
  read = 0
  for prefix, u in units:
    if id(u) in rows:
      read += take_reading(q, prefix, u, rows[id(u)], cfg, stats, cond)
  for i, (ht, at) in shared:
    # one equation for the unit along whose normal its line ran, taken only if the unit's surface is where the
    # reading predicts it (`_confirmed`): another unit's kink gives a plane of another slope through the point
    prefix, u = units[i]
    if np.any(~u.known & (ht > 0)):
      got = take_reading(q, prefix, u, [_row(u, ht, at)], cfg, stats, cond)
      read += got
      if stats is not None:
        stats["read_weights_shared"] = stats.get("read_weights_shared", 0) + got
  return read


def _row(u, ht: np.ndarray, at: np.ndarray) -> tuple:
  """The equation (h(x*), right-hand side, x*) of unit u's kink at x* (`at`, its features ht): h(x*)[K] . w[K] =
  -(h(x*)[known] . w[known] + b)."""
  return ht, -(ht[u.known] @ u.w[u.known] + u.b), at


def trusted_stretch(x: np.ndarray, v: np.ndarray, cfg) -> tuple[float, float]:
  """The t for which x + t v (d,) lies in the ball where the answers are trusted (cfg.radius around cfg.center, a
  probabilities oracle's; cfg a layer.LayerConfig): (lo, hi), (-inf, inf) where the radius is infinite, lo > hi
  where the line misses the ball."""
  if not np.isfinite(cfg.radius):
    return -np.inf, np.inf
  off = x - cfg.center
  half = float(off @ v) / float(v @ v)
  disc = half**2 - (float(off @ off) - cfg.radius**2) / float(v @ v)
  if not disc > 0:
    return 1.0, 0.0
  return -half - np.sqrt(disc), -half + np.sqrt(disc)


def _kink(q, units: list, i: int, p: list, x: np.ndarray, cfg, rtol: float):
  """(h(x*), x*) of the one kink left on the line through x along unit i's normal (`read_weights`), over the stretch
  where no prefix unit changes state inside the ball where the answers are trusted (cfg.radius around cfg.center: a
  probabilities oracle's; random 8-12-8-6-4 seed 0 through probabilities, forty-third session, had a probability
  underflow on a line past it), or None (no stretch, none or several kinks left)."""
  from functional_equivalence import search  # the kink search of the attack's lines

  prefix, u = units[i]
  h = np.maximum(p[-1][0], 0.0)
  g = active.input_grad(prefix, p, ((p[-1] > 0) * u.w))[0]
  if not np.linalg.norm(g):
    return None
  v = -g / np.linalg.norm(g)
  slopes = network.along(prefix, x[None], v[None])
  roots = np.concatenate([-a[0] / np.where(s[0] == 0, np.nan, s[0]) for a, s in zip(p, slopes)])
  hi = np.nanmin(np.where(roots > 0, roots, np.nan), initial=np.inf)
  lo = np.nanmax(np.where(roots < 0, roots, np.nan), initial=-np.inf)
  if not (np.isfinite(hi) and np.isfinite(lo)):
    return None
  near, far = trusted_stretch(x, v, cfg)
  lo, hi = max(lo, near), min(hi, far)
  if not lo < 0 < hi:
    return None
  hi, lo = hi * (1 - 1e-6), lo * (1 - 1e-6)
  kinks = search.find_kinks(q, x[None], v[None], np.array([[lo, hi]]))
  others = [w for a, w in units if a is prefix and w is not u]
  dh = slopes[-1][0] * (p[-1][0] > 0)  # h is linear along the stretch
  left = []
  for t in kinks.t:
    ht = h + t * dh
    size = np.linalg.norm(ht) + 1.0
    if any(abs(ht @ w.w + w.b) <= rtol * size * (np.linalg.norm(w.w) + abs(w.b)) for w in others):
      continue
    left.append((t, ht))
  if len(left) != 1:
    return None
  t, ht = left[0]
  return ht, x + t * v


def take_reading(q, prefix: network.DeepNet, u, rows: list, cfg, stats: dict | None = None, cond: float = 1e-6) -> int:
  """Solves the equations `rows` ((h(x*), right-hand side, x*) at kinks of u's surface: h(x*)[K] . w[K] = -(h(x*)[known]
  . w[known] + b)) for u's unknown weights together (least squares) and keeps each weight they determine (the
  system's null space, singular values below `cond` times the largest, has no component above `cond` along it), if
  `_confirmed` finds u's surface where the new weights predict it (refusals counted in stats['read_weights_refused']).
  In place; the kinks join u's precise points either way. Returns how many weights were read."""
  a = np.array([r[0] for r in rows])
  rhs = np.array([r[1] for r in rows])
  read_at = np.array([r[2] for r in rows])
  cols = np.flatnonzero(~u.known & np.any(a > 0, axis=0))
  norms = np.linalg.norm(a[:, cols], axis=1)
  m, rhs = a[:, cols] / norms[:, None], rhs / norms
  left_sv, sv, vt = np.linalg.svd(m, full_matrices=False)
  rank = int(np.sum(sv > cond * sv[0]))
  # the least-norm solution on the directions the equations fix (a weight they determine has no component along
  # the others, which they leave free: every solution agrees with this one there)
  sol = vt[:rank].T @ ((left_sv[:, :rank].T @ rhs) / sv[:rank])
  fixed = np.all(np.abs(vt[rank:]) <= cond, axis=0)
  if not fixed.any():
    u.points += list(read_at)  # precise points of u's surface (read_weights' docstring)
    return 0
  w = u.w.copy()
  w[cols[fixed]] = sol[fixed]
  trial = dataclasses.replace(u, w=w, known=u.known | np.isin(np.arange(len(u.known)), cols[fixed]))
  trial.err = max(u.err, 1e-9)  # as layer.complete's check of a weight just read
  if not _confirmed(q, prefix, trial, read_at, cfg):
    if stats is not None:
      stats["read_weights_refused"] = stats.get("read_weights_refused", 0) + 1
    return 0
  u.w, u.known = w, trial.known
  u.points += list(read_at)  # precise points of u's surface (read_weights' docstring)
  u.normalise()
  return int(fixed.sum())


def _confirmed(q, prefix: network.DeepNet, trial, kinks: np.ndarray, cfg, tests: int = 2) -> bool:
  """Whether the unit `trial` (layer.Unit with weights just read from the kinks `kinks`, (k, d)) has its surface
  where it predicts it around them: at each kink where every feature on is known, window tests (layer.locate,
  queries) at `tests` points of its predicted surface a quarter of the way to the nearest prefix surface, in random
  directions along it (within the kink's prefix region the surface is a plane: another unit's kink lies on another
  plane through the same point), inside the ball where the answers are trusted (cfg.radius: a probabilities
  oracle's). True when every test hits, or when nothing can be tested (a 1-dimensional input, no kink where the unit
  is predicted, every test point outside that ball): the reading is then kept as before."""
  from functional_equivalence.deep import layer

  rng = np.random.default_rng([zlib.crc32(trial.w.tobytes()), 7])  # the attack's stream stays as it was
  f = network.features(prefix, kinks)
  walls = layer.prefix_distance(f)
  unpredicted = np.any(layer.live_features(prefix, f.h) & ~trial.known, axis=1)
  pts, normals = [], []
  for i, x in enumerate(kinks):
    n, room = f.jac[i] @ trial.w, float(walls[i])
    if unpredicted[i] or not np.linalg.norm(n) > 0 or not 0 < room < np.inf:
      continue
    n = n / np.linalg.norm(n)
    for _ in range(tests):
      e = rng.normal(size=len(x))
      e -= (e @ n) * n
      if not np.linalg.norm(e) > 0:
        continue
      pts.append(x + 0.25 * room * e / np.linalg.norm(e))
      normals.append(n)
  x = np.array(pts).reshape(-1, kinks.shape[1])
  if np.isfinite(cfg.radius):  # where the answers are trusted (a probabilities oracle's ball)
    keep = np.linalg.norm(x - cfg.center, axis=1) <= cfg.radius
    x, normals = x[keep], [n for n, k in zip(normals, keep) if k]
  if not len(x):
    return True
  rooms = layer.prefix_distance(network.features(prefix, x))
  hit, _, _ = layer.locate(q, prefix, [trial], [0] * len(x), x, np.array(normals), rooms, cfg, "read_weights")
  return bool(hit.all())


def read_middle(q, prefix: network.DeepNet, units: list, cfg, dom, rng, stats, tries: int = 3) -> int:
  """Weights from features never seen on, of a layer that is not the last hidden one (in place; returns how many
  features were read). Such a weight stays 0 and the next layer is searched on a wrong feature: random
  8-8-8-8-8-1 seeds 0 and 2 (fe_deep_unseen.md) have a third-layer unit off by 0.03-0.47 from one feature on
  with it at 0.014% of the ball, and their fourth layer never settles (docs/fe_deep.md, twentieth session). There
  is no final check yet to point at failing places (`read_weights`): `on_points` finds, offline, points where the
  unit is predicted on with such a feature on; lines through them along the unit's predicted normal are searched
  for kinks (queries); the kinks off every known surface are measured (`layer.measure`, the partial signature from
  the Jacobian jump) and matched to these units only (`layer.match`: the known weights agree up to scale), which
  fills the new features' weights (`layer.absorb`). A kink of another or a deeper unit matches none of them and is
  dropped: no unit is added here (the search's rounds, tried first, accepted new units from these lines). Up to
  `tries` passes while they read something."""
  from functional_equivalence.deep import layer

  d = prefix.sizes[0]
  read = 0
  for _ in range(tries):
    todo = [u for u in units if not np.all(u.known)]
    if not todo:
      break
    before = sum(int(u.known.sum()) for u in todo)
    starts, owner = on_points([(prefix, u) for u in todo], dom, d, owners=True)
    if not len(starts):
      break
    pre = network.preactivations(prefix, starts)
    w = np.stack([u.w for u in todo])
    dirs = active.input_grad(prefix, pre, (pre[-1] > 0) * w[owner])  # along the normal of the unit it was found for
    dirs = cfg.scale * dirs / np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-300)
    ranges, kinks = layer.line_kinks(q, starts, dirs, cfg)
    if len(kinks.t):
      _, new = layer.new_kinks(prefix, units, starts[kinks.line] + kinks.t[:, None] * dirs[kinks.line], cfg)
      if len(new):
        _absorb_into(todo, prefix, layer.measure(q, prefix, kinks, starts, dirs, ranges, new, cfg, rng, stats))
    gained = sum(int(u.known.sum()) for u in todo) - before
    stats["middle_unseen_read"] = stats.get("middle_unseen_read", 0) + gained
    read += gained
    if not gained:
      break
  return read


def _absorb_into(units: list, prefix: network.DeepNet, items) -> None:
  """Each measured item (`layer.Items`) that matches one of `units` fills that unit's new features (in place)."""
  from functional_equivalence.deep import layer

  for k in range(len(items)):
    w, act, b, err = items.w[k], items.active[k], items.b[k], items.err[k]
    if not (np.all(np.isfinite(w)) and np.any(w[act])):
      continue
    hit = layer.first_match(
      [units], w, act, b, err, float(np.linalg.norm(network.feature_values(prefix, items.x[k : k + 1])))
    )
    if hit is not None:
      layer.absorb(hit[1], w / hit[2], act, b / hit[2], err, items.regions[k])


def fill(u, readings: list, rtol: float, least: int = 1, sign: float = 1.0) -> int:
  """Sets, in place, each weight of unit u from a feature never seen on that `readings` ((feature indices, values)
  pairs) give `least` times or more, all within `rtol` (relative to u's weights), to their median times `sign` (the
  readings' orientation against u's stored one); such a weight is marked known and u normalised. Returns how many
  were set (jumps.read, gradient_reads)."""
  new_w = {}
  for k in np.flatnonzero(~u.known):
    got = np.array([values[list(ks).index(k)] for ks, values in readings if k in ks])
    if len(got) >= least and np.ptp(got) <= rtol * np.linalg.norm(u.w):
      new_w[k] = float(np.median(got)) * sign
  if new_w:
    u.w = u.w.copy()
    for k, val in new_w.items():
      u.w[k], u.known = val, u.known | (np.arange(len(u.known)) == k)
    u.normalise()
  return len(new_w)
