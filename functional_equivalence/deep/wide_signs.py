"""The signs of a first hidden layer wider than the input, checked (and corrected) by the next layer's surfaces.

Where the first layer has more units than the input has dimensions, the sign tests of signs.hidden_signs have no
exact direction at most points and fall back to votes, which can be wrong (iris-trained 4-16-16-3: 2 of 16 units
voted wrong, among them units dead on the training data, whose bias never left 0). A wrong sign is seen one layer
on: with unit j taken as relu(-p_j) in place of relu(p_j) = relu(-p_j) + p_j, every unit of the next layer that
weighs feature j carries, beside its weights on the recovered features, an affine term -w_j p_j(x) that no
combination of them makes (their kinks cannot cancel). So each surface of the next layer is followed
(`expansive.follow`) with an affine term v . x allowed: with the signs right v = 0; with the units S wrong,
v = -sum over j in S of w_j a_j (a_j = d p_j / dx), in the span of their gradients. Once the v of several
surfaces span r < d dimensions, the uncertain units whose gradients lie in that span are S, accepted only if
they are exactly r of them (`_by_span`); otherwise the equations are linear in the flips themselves, with the
surfaces' own weights w_j (`_by_weights`), and where they leave flips free, the flips being 0 or 1 may still fix
them (`_binary_flips`: the 2^r points of an r-dimensional freedom listed, r <= 14). A feature on at every kink of a
surface is affine along it: its weight is folded into v (whatever its sign) and its gradient's direction taken out
of v's. Nothing is exponential in the width; float64 numpy; every query through the Querier.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from functional_equivalence.deep import expansive, network
from functional_equivalence.deep.layer import (
  LayerConfig,
  kink_room,
  line_kinks,
  prefix_distance,
  random_lines,
  surface_tol,
)


def _surfaces(q, prefix, cfg: LayerConfig, dom, rng, stats, want: int, rounds: int, per_round: int = 4) -> list:
  """Up to `want` surfaces of the next layer followed with an affine term (expansive.Followed with v), from kinks
  off the prefix's surfaces on random lines (as layer._round draws them), at most `per_round` a round."""
  found: list = []
  for _ in range(rounds):
    if len(found) >= want:
      break
    starts, dirs = random_lines(cfg, dom, rng)
    q0 = q.queries
    _, kinks = line_kinks(q, starts, dirs, cfg)
    stats["wide_sign_queries"] = stats.get("wide_sign_queries", 0) + q.queries - q0
    x = starts[kinks.line] + kinks.t[:, None] * dirs[kinks.line]
    off = np.flatnonzero(prefix_distance(network.features(prefix, x)) > surface_tol(cfg, x))
    for k in rng.permutation(off)[:per_round]:
      scratch: dict = {}  # the layer search's follow counts stay its own
      measured = expansive.normal_at(q, prefix, x[k], dirs[kinks.line[k]], kink_room(kinks, dirs, k), cfg, rng, scratch)
      got = None
      if measured is not None:
        normal, jump, err = measured
        got = expansive.follow(q, prefix, x[k], normal, jump, err, cfg, rng, scratch, affine=True)
      stats["wide_sign_queries"] = stats.get("wide_sign_queries", 0) + scratch.get("follow_queries", 0)
      if got is not None:
        found.append(got)
  return found


def _informative(prefix, found: list) -> list:
  """(surface, its features always on: expansive.always_on) of the followed surfaces with fewer such features
  than the input has dimensions (whose gradients would span every affine term)."""
  d = prefix.weights[0].shape[0]
  pairs = [(f, expansive.always_on(prefix, f)) for f in found]
  return [(f, always) for f, always in pairs if always.sum() < d]


def _relative_v(prefix, f: expansive.Followed, always: np.ndarray) -> np.ndarray:
  """The affine term of a followed surface, less its part along the gradients of its features `always` on
  (their weights', whatever the signs), over the largest norm of its unit's normal at its kinks."""
  feats = network.features(prefix, f.points)
  v = f.v
  if always.any():
    basis = np.linalg.qr(prefix.weights[0][:, always])[0]
    v = v - basis @ (basis.T @ v)
  return v / np.max(np.linalg.norm(feats.jac @ f.w, axis=1))


def _by_span(prefix, cand: np.ndarray, vs: np.ndarray, tol: float):
  """The voted units `cand` whose gradients lie in the span of the affine terms `vs` (k, d), or None unless they
  are exactly as many as its dimension (fewer than d)."""
  d = prefix.weights[0].shape[0]
  _, sv, vt = np.linalg.svd(vs, full_matrices=False)
  rank = int(np.sum(sv > 1e2 * tol * sv[0]))
  if rank >= d:
    return None
  grads = prefix.weights[0][:, cand] / np.linalg.norm(prefix.weights[0][:, cand], axis=0)
  inside = np.linalg.norm(grads - vt[:rank].T @ (vt[:rank] @ grads), axis=0) < 1e2 * tol
  return cand[inside] if inside.sum() == rank else None


def flips(prefix, uncertain: np.ndarray, found: list, tol: float = 1e-6) -> tuple[np.ndarray | None, str]:
  """(mask of the first-layer units whose sign is wrong, or None when undecided; why) from followed surfaces
  (module docstring). `uncertain` (n0,): the units whose sign was voted, the only ones that may be flipped.

  First by span (fewer wrong units than inputs: those whose gradients span what the affine terms span, exactly as
  many as its dimension), else by weights (`_by_weights`)."""
  n0 = prefix.weights[0].shape[1]
  found = _informative(prefix, found)
  if not found:
    return None, "no surface of the next layer followed"
  rel = np.array([_relative_v(prefix, f, always) for f, always in found])
  big = np.linalg.norm(rel, axis=1) > tol
  if not big.any():
    return np.zeros(n0, bool), f"{len(found)} surfaces followed, none with an affine term: the signs hold"
  head = f"{len(found)} surfaces followed, {int(big.sum())} with an affine term"
  cand = np.flatnonzero(uncertain)
  wrong = np.zeros(n0, bool)
  clean = np.array([not always.any() for _, always in found])  # the span test needs the whole affine term
  spanned = _by_span(prefix, cand, rel[big & clean], tol) if np.any(big & clean) else None
  if spanned is not None:
    wrong[spanned] = True
    return wrong, f"{head}: {len(spanned)} sign(s) wrong (span)"
  weighed, why = _by_weights(prefix, cand, found, tol)
  if weighed is None:
    return None, f"{head}; {why}"
  wrong[weighed] = True
  return wrong, f"{head}: {len(weighed)} sign(s) wrong (weights)"


def _by_weights(prefix, cand: np.ndarray, found: list, tol: float):
  """(the voted units `cand` whose flip explains the affine terms of the surfaces `found` (pairs of surface and
  its features always on, `_informative`), or None; why).

  Each surface e gives d equations v_e = -sum_j f_j w_ej a_j, linear in the flips f_j (0 or 1) of the uncertain
  units; a voted unit the surface never saw on (w_ej unknown: its h is 0 at every kink, and if flipped its
  -w_ej p_j is all affine) and any unit on at every kink (its whole term affine there) get a free coefficient of
  their own in e's equations. The least squares must leave no residual; the flips its 0/1 solutions agree on
  (`_binary_flips`) are determined, and those at 1 are returned (the audit's next pass, on the prefix they
  correct, sees the rest)."""
  grads = prefix.weights[0]  # a_j (d, n0): the input gradient of unit j's pre-activation
  d = grads.shape[0]
  voted = np.zeros(grads.shape[1], bool)
  voted[cand] = True
  # a voted unit never seen on, or any unit always on, at a surface's kinks: a free coefficient of its own there
  unseen = [(f, (~f.known & voted) | always) for f, always in found]
  used = [(f, u) for f, u in unseen if u.sum() < d]  # a surface with d free terms says nothing
  free = [(e, j) for e, (_, u) in enumerate(used) for j in np.flatnonzero(u)]
  a = np.zeros((d * len(used), len(cand) + len(free)))
  for e, (f, _) in enumerate(used):
    a[e * d : (e + 1) * d, : len(cand)] = np.where(f.known[cand], f.w[cand], 0.0)[None] * grads[:, cand]
  for i, (e, j) in enumerate(free):
    a[e * d : (e + 1) * d, len(cand) + i] = grads[:, j]
  y = np.concatenate([-f.v for f, _ in used]) if used else np.zeros(0)
  norms = np.linalg.norm(a, axis=0)
  keep = norms > 1e-12 * max(float(norms.max(initial=0.0)), 1e-300)  # a unit no surface weighs is not judged
  if not keep[: len(cand)].any():
    return None, "no surface weighs a voted unit"
  scaled = a[:, keep] / norms[keep]
  _, sv, vt = np.linalg.svd(scaled, full_matrices=True)
  rank = int(np.sum(sv > 1e-10 * sv[0]))
  part = vt[:rank].T @ ((vt[:rank] @ scaled.T @ y) / sv[:rank] ** 2)  # the least-norm solution
  sol = np.zeros(a.shape[1])
  sol[keep] = part / norms[keep]
  residual = np.linalg.norm(a @ sol - y) / max(np.linalg.norm(y), 1e-300)
  if residual > 1e2 * tol:
    return None, f"no flip of voted units explains the affine terms (residual {residual:.1e})"
  kept = keep[: len(cand)]
  null = vt[rank:, : int(kept.sum())] / norms[: len(cand)][kept]  # in the flips' own units
  fixed, flip, count = _binary_flips(sol[: len(cand)], null, kept)
  if count == 0:
    return None, f"no flips of 0 or 1 explain the affine terms ({len(used)} usable surfaces)"
  if count < 0:
    return None, f"{len(used)} usable surfaces leave too many flips free to list their solutions"
  if not np.any(fixed & (flip > 0.5)):
    return None, f"{len(used)} usable surfaces determine no wrong sign among {len(cand)} voted units"
  return cand[fixed & (flip > 0.5)], ""


def _binary_flips(sol: np.ndarray, null: np.ndarray, kept: np.ndarray, tol: float = 1e-4, most: int = 14):
  """(determined (n,), flips (n,), how many 0/1 solutions; -1 when too many free) of the flips `sol` (n,): one
  solution of the equations, the rows of `null` (k, kept.sum()) spanning what the flips kept can move by without
  changing them (the free coefficients' part of the null space dropped).

  Every flip is 0 or 1: the solutions sol + null^T c with all kept flips within `tol` of 0 or 1 are listed by
  choosing r (the rank of null) pivot flips and trying their 2^r values (r <= `most`: exponential in the freedom
  the surfaces leave, not in the width); a flip is determined where it is kept and equal in every solution found."""
  n = len(sol)
  free = null.T  # (kept, k): how each kept flip moves along the null space
  s = sol[kept]
  if free.size == 0 or np.max(np.abs(free), initial=0.0) < 1e-8:
    ok = np.max(np.minimum(np.abs(s), np.abs(s - 1)), initial=0.0) <= tol
    determined = np.zeros(n, bool)
    determined[kept] = ok
    return determined, sol, int(ok)
  _, sv, _ = np.linalg.svd(free, full_matrices=False)
  r = int(np.sum(sv > 1e-8 * sv[0]))
  if r > most:
    return np.zeros(n, bool), sol, -1
  _, _, piv = scipy.linalg.qr(free.T, pivoting=True, mode="economic")
  pivots = piv[:r]
  values = (np.arange(2**r)[:, None] >> np.arange(r)[None]) & 1  # (2^r, r): every choice of the pivots' flips
  c = np.linalg.lstsq(free[pivots], (values - s[pivots]).T, rcond=None)[0]  # (k, 2^r)
  flips = (s[:, None] + free @ c).T  # (2^r, kept)
  good = flips[np.max(np.minimum(np.abs(flips), np.abs(flips - 1)), axis=1) <= tol]
  determined, out = np.zeros(n, bool), sol.copy()
  if len(good):
    rounded = np.round(good)
    determined[np.flatnonzero(kept)] = np.all(rounded == rounded[0], axis=0)
    out[kept] = rounded[0]
  return determined, out, len(good)


def audit(
  q, prefix, uncertain: np.ndarray, cfg: LayerConfig, dom, rng, stats, hold: int = 6, rounds: int = 24, passes: int = 4
):
  """(flip mask (n0,), why) for the signs of a one-layer `prefix` (module docstring). A pass follows surfaces round
  by round until they decide (a flip, or `hold` surfaces without an affine term: the signs hold) or `rounds` rounds
  are spent; the units a pass proves wrong are flipped and the next pass starts on the corrected prefix (a surface
  shows only the wrong units it weighs), at most `passes` times. The flips of the passes that decided are kept
  when a later one stays undecided (each was proven by its own surfaces' equations)."""
  n0, d = prefix.weights[0].shape[1], prefix.weights[0].shape[0]
  total = np.zeros(n0, bool)
  if len(prefix.weights) != 1 or d < 2 or not uncertain.any():
    return total, "nothing to audit"
  why = ""
  for _ in range(passes):
    found: list = []
    mask, enough = None, False
    for _ in range(rounds):
      found += _surfaces(q, prefix, cfg, dom, rng, stats, want=4, rounds=1)
      mask, why = flips(prefix, uncertain & ~total, found)
      enough = len(_informative(prefix, found)) >= hold
      if mask is not None and (mask.any() or enough):
        break
    if mask is None or (not mask.any() and not enough):
      return total, f"{int(total.sum())} flipped; then undecided after {rounds} rounds: {why}"
    if not mask.any():
      return total, why
    total ^= mask
    flip = np.where(mask, -1.0, 1.0)
    prefix = network.DeepNet((prefix.weights[0] * flip,), (prefix.biases[0] * flip,))
  return total, f"{int(total.sum())} flipped; {why}; still not settled after {passes} passes"
