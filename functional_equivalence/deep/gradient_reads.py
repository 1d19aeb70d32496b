"""Weights from features never seen on, read from the output's gradient where the unit and the feature are on.

A unit u whose kinks never had input feature k on keeps 0 for w_k (`Unit.known` False); where u and k are both on,
its value is off by w_k h_k: in a middle layer the next layer is searched on a wrong feature, in the last hidden
layer the final check fails. `unseen.read_middle`, `unseen.read_weights` and `jumps.read` read such weights from
kinks of u's own surface, which may be rare: random 8-8-8-8-8-1 seed 3 (fe_deep_unseen.md) has a third-layer unit
on at 81% of the ball whose weight from a feature on at 59% is never seen, the two never off and on together in
N(0, I) and on 5.5e-5 of the ball (measured with the victim, ad hoc); its fourth layer never settles.

No kink is needed. Once the layer's signs are known, the input gradient of any output g at x, on x's linear region,
is a combination of the true input gradients of the layer's units on at x (the deeper layers only weigh them):
grad g = sum_i beta_i grad z_i, and u's true gradient is grad z_u_hat + sum_k w_k grad h_k (h the features entering
the layer, known exactly). With the units' predicted gradients as columns beside grad h_k for the unseen features k
on, the system is linear in (beta, beta_u w_k): w_k is a ratio. In the last hidden layer beta is the output layer's
weights, known from the fit for every unit but u: only (beta_u, beta_u w_k) are unknown (`out`). A point is
chosen offline where the columns are independent and fewer than the rank of dh/dx (grad g lies in dh/dx's range: the
spare directions check the fit), no other on unit has an unseen feature on, and far from every known surface (so
that the finite differences stay in one region of the prefix and the layer). Each output row of each point gives a
reading if its fit is at the gradients' rounding; a weight is set when its readings agree. A unit whose sign is wrong
is on where it is predicted off: its part of the gradient is 0 there and the readings are refused (or, where it is
on all the same, they are its weights in its own convention); its sign is to be found again after a reading. Float64
numpy; queries through the Querier (recover.gradients: d + 2 queries a point).
"""

from __future__ import annotations

import zlib

import numpy as np

from functional_equivalence import recover
from functional_equivalence.deep import network, unseen


def read(
  q, prefix: network.DeepNet, units: list, signs: np.ndarray, dom, stats: dict, hints=None, out=None, passes=3, **kw
) -> int:
  """Reads, in place, weights of `units` (layer.Unit on `prefix`, not the first layer) from features they never saw
  on (module docstring), the layer's `signs` (+-1 each) known: up to `passes` passes (`_pass`, keywords `kw`) while
  they read something (a unit is read where no other on unit has an unseen feature on, so that a weight read may
  open another's points). `hints` (k, d): points where a unit may be on though predicted off (the final check's
  failing points: a unit lacking a positive weight is on there), measured beside the draws. Returns the number of
  weights read (also added to stats["read_gradients"]). `out` (units, m): the output layer's weights of the units of
  the last hidden layer (module docstring), None for a middle layer."""
  read = 0
  for _ in range(passes):
    got = _pass(q, prefix, units, signs, dom, hints, out, stats, **kw) if prefix.weights else 0
    read += got
    if not got:
      break
  stats["read_gradients"] += read
  return read


def _pass(
  q,
  prefix,
  units: list,
  signs: np.ndarray,
  dom,
  hints,
  out,
  stats: dict,
  points: int = 8,
  draws: int = 1 << 16,
  rtol: float = 1e-7,
  cond: float = 1e-9,
  weight: float = 1e-3,
) -> int:
  """One reading (`read`). Up to `points` points per unseen feature of each unit are measured (where the feature is
  on), the farthest from a known surface of `draws` offline draws of `dom.check_points` (a stream seeded by the
  units' weights: the attack's stream stays as it was). A reading counts when the fit's residual is at the
  gradients' rounding (`rtol` of it; a point whose steps leave a rounding 1e3 times larger gives none) and u's part
  beta_u grad z_u is at least `weight` of the gradient; a weight is set from the median of its readings when there
  are two or more and they agree within `rtol` (relative to the unit's weights). With `out` (a last hidden layer) the
  points that gave readings are solved together (`_joint`), their output weights unknown again; where that system
  is not of full rank, the single points' readings are kept as above (stat `gradient_joint_fallbacks`)."""
  todo = [i for i, u in enumerate(units) if not np.all(u.known)]
  if not todo:
    return 0
  d = prefix.sizes[0]
  w = np.stack([u.w for u in units], 1) * signs
  b = np.array([u.b for u in units]) * signs
  lacks = np.stack([~u.known for u in units])  # (units, features)
  rng = np.random.default_rng([zlib.crc32(b"".join(units[i].w.tobytes() for i in todo)), 3])
  width = w.shape[0] + len(units)  # the columns of a point's system, at most
  chunk = max(64, (1 << 23) // (d * width))
  draws = min(draws, (1 << 32) // (d * width * width))  # the SVDs' work bounded for wide networks
  best = {(i, k): (np.full(0, -np.inf), np.zeros((0, d))) for i in todo for k in np.flatnonzero(lacks[i])}
  for _ in range(max(1, draws // chunk)):
    x = dom.check_points(rng, d, chunk)
    feats = network.features(prefix, x)
    for i, (room, ok) in _usable(feats, w, b, lacks, todo, cond, False, out is not None).items():
      for k in np.flatnonzero(lacks[i]):  # the best points for each unseen feature, so that every one is read
        at = ok & (feats.h[:, k] > 0)
        rooms, pts = np.concatenate([best[i, k][0], room[at]]), np.concatenate([best[i, k][1], x[at]])
        keep = np.argsort(-rooms)[:points]
        best[i, k] = (rooms[keep], pts[keep])
  chosen = [(i, p, r) for (i, _), (rooms, pts) in best.items() for p, r in zip(pts, rooms)]
  if hints is not None and len(hints):  # every usable hint: few, and the unit may be on at only some of them
    feats = network.features(prefix, hints)
    for i, (room, ok) in _usable(feats, w, b, lacks, todo, cond, True, out is not None).items():
      chosen += [(i, hints[n], room[n]) for n in np.flatnonzero(ok)]
  if not chosen:
    return 0
  x = np.array([p for _, p, _ in chosen])
  jac, ok, _, noise = recover.gradients(q, x, 0.25 * np.array([r for _, _, r in chosen]), rng)
  feats = network.features(prefix, x)
  readings: dict[int, list] = {}  # unit index -> [(features, their weights)]
  where: dict[int, list] = {}  # unit index -> the points (indices into chosen) that gave readings
  for n, (i, _, _) in enumerate(chosen):
    got = _readings(jac[n], noise[n], feats.h[n], feats.jac[n], w, b, lacks, i, rtol, weight, out) if ok[n] else []
    readings.setdefault(i, []).extend(got)
    where.setdefault(i, []).extend([n] if got else [])
  least = dict.fromkeys(readings, 2)
  if out is not None:  # the fit's output weights are only near rounding: they told where i is on; all at once there
    for i, at in where.items():
      joint = _joint(jac[at], feats.h[at], feats.jac[at], w, b, lacks, i, rtol, cond, weight) if len(at) >= 2 else []
      if joint is None:  # not determined jointly: the single points' readings, if they agree (below)
        stats["gradient_joint_fallbacks"] = stats.get("gradient_joint_fallbacks", 0) + 1
      else:
        readings[i], least[i] = joint, 1
  # read in the signed convention; u.w is unsigned
  return sum(unseen.fill(units[i], got, rtol, least[i], signs[i]) for i, got in readings.items())


def _usable(feats: network.Features, w, b, lacks, todo: list, cond: float, forced: bool, known_out: bool) -> dict:
  """Per unit i of `todo`: (room (N,), usable (N,) bool) at the points of `feats`: i (predicted on, or taken as on
  where `forced`) and one of its unseen features on; no other on unit with an unseen feature on there (its column
  would be off); the system's columns (with `known_out`, i's and its unseen features' only) independent and fewer
  than the rank of dh/dx. room: the distance to the nearest surface of the prefix and of the layer (predicted)."""
  from functional_equivalence.deep import layer

  z = feats.h @ w + b
  grads = np.einsum("ndk,kj->ndj", feats.jac, w)  # (N, d, units): predicted input gradients
  with np.errstate(divide="ignore", invalid="ignore"):
    room = np.minimum(np.min(np.abs(z) / np.linalg.norm(grads, axis=1), axis=1), layer.prefix_distance(feats))
  on, feat_on = z > 0, feats.h > 0
  sv = np.linalg.svd(feats.jac, compute_uv=False)
  rank_h = np.sum(sv > cond * sv[:, :1], axis=1)
  out = {}
  for i in todo:
    unseen_on = lacks[i] & feat_on  # (N, features)
    others = np.einsum("nj,jk->nk", on & (np.arange(len(on[0])) != i), lacks.astype(int)) > 0
    on_i = on.copy()
    on_i[:, i] |= forced
    ok = on_i[:, i] & unseen_on.any(axis=1) & ~np.any(others & feat_on, axis=1) & np.isfinite(room)
    unknown = np.arange(len(on[0])) == i if known_out else on_i  # the units whose beta is unknown
    cols = np.concatenate([grads * (on_i & unknown)[:, None, :], feats.jac * unseen_on[:, None, :]], axis=2)
    sv = np.linalg.svd(cols, compute_uv=False)
    count = (on_i & unknown).sum(1) + unseen_on.sum(1)
    ok &= (np.sum(sv > cond * sv[:, :1], axis=1) == count) & (count < rank_h)
    out[i] = (room, ok)
  return out


def _readings(jac, noise, h, dh, w, b, lacks, i: int, rtol: float, weight: float, out) -> list:
  """(unseen features k of unit i on at the point, w_k) from each output row of the gradient `jac` (m, d) whose fit
  on the columns (module docstring) is at rounding; h, dh the features and their Jacobian (d, n) there; `out` the
  known output weights (units, m) of a last hidden layer, whose part for the other on units is taken off first."""
  on = np.union1d(np.flatnonzero(h @ w + b > 0), [i])  # i's own column whatever its predicted state (a hint)
  ks = np.flatnonzero(lacks[i] & (h > 0))
  sizes = np.linalg.norm(jac, axis=1)  # the answers' gradients, before any known part is taken off
  if out is not None:
    others = on[on != i]
    jac = jac - (dh @ w[:, others] @ out[others]).T  # (m, d): the other units' known part
    on = np.array([i])
  cols = np.concatenate([dh @ w[:, on], dh[:, ks]], axis=1)
  at = int(np.searchsorted(on, i))
  got = []
  for g, size in zip(jac, sizes):
    if not size or 1e3 * noise > rtol * size:
      continue  # a step too short for the gradient's rounding to allow the test
    z = np.linalg.lstsq(cols, g, rcond=None)[0]
    part = abs(z[at]) * np.linalg.norm(cols[:, at])
    if np.linalg.norm(cols @ z - g) <= rtol * size and part >= weight * size:
      got.append((ks, z[len(on) :] / z[at]))
  return got


def _joint(jac, h, dh, w, b, lacks, i: int, rtol: float, cond: float, weight: float) -> list | None:
  """The last hidden layer's unit i at the points (P) where its readings counted: the output weights c (constant over
  the domain) and gamma_k = c_i w_k solved from every point's gradient at once, c unknown for every unit (the fit's
  are off by up to 2e-5 relative on random 8-8-8-8-8-1 seed 3's last hidden layer, ad hoc: the readings of single
  points spread by 1e-6). jac (P, m, d), h (P, n), dh (P, d, n). Returns [(features k, w_k)], one per
  output whose system fits every point to `rtol` and gives i at least `weight` of the largest output weight; None
  where the system is not of full column rank: the same units on at every point, whose output weights can then
  stand in for gamma (random 14-10-10-10-2 seed 3's last hidden layer: all 10 units' columns span the 10 features
  at every point, unit 6 on at 98% of the ball; its 16 single readings agreed to 1e-8, ad hoc)."""
  ks = np.flatnonzero(lacks[i] & np.any(h > 0, axis=0))
  on = h @ w + b > 0
  on[:, i] = True  # where its reading counted
  a = np.concatenate([np.einsum("pdn,nj->pdj", dh, w) * on[:, None, :], dh[:, :, ks] * (h[:, None, ks] > 0)], axis=2)
  a = a.reshape(-1, a.shape[2])
  used = np.flatnonzero(np.any(a != 0, axis=0))
  a = a[:, used]
  sv = np.linalg.svd(a, compute_uv=False)
  if len(used) >= a.shape[0] or sv[-1] <= cond * sv[0]:
    return None
  at = int(np.searchsorted(used, i))
  got = []
  for r in range(jac.shape[1]):
    g = jac[:, r].reshape(-1)
    size = np.linalg.norm(g)
    z = np.linalg.lstsq(a, g, rcond=None)[0]
    c = z[: len(used) - len(ks)]
    off = np.linalg.norm((a @ z - g).reshape(len(jac), -1), axis=1)  # each point's own fit
    if size and np.all(off <= rtol * np.linalg.norm(jac[:, r], axis=1)):
      if abs(c[at]) >= weight * np.max(np.abs(c)):
        got.append((ks, z[len(used) - len(ks) :] / c[at]))
  return got
