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
surfaces' own weights w_j (`_by_weights`). Nothing is exponential in the width; float64 numpy; every query
through the Querier.
"""

from __future__ import annotations

import numpy as np

from functional_equivalence.deep import expansive, network
from functional_equivalence.deep.layer import LayerConfig, kink_room, line_kinks, prefix_distance, random_lines


def _surfaces(q, prefix, cfg: LayerConfig, dom, rng, stats, want: int, rounds: int, per_round: int = 4) -> list:
  """Up to `want` surfaces of the next layer followed with an affine term (expansive.Followed with v), from kinks
  off the prefix's surfaces on random lines (as layer._round draws them), at most `per_round` a round."""
  center = cfg.center
  found: list = []
  for _ in range(rounds):
    if len(found) >= want:
      break
    starts, dirs = random_lines(cfg, dom, rng)
    q0 = q.queries
    _, kinks = line_kinks(q, starts, dirs, cfg)
    stats["wide_sign_queries"] = stats.get("wide_sign_queries", 0) + q.queries - q0
    x = starts[kinks.line] + kinks.t[:, None] * dirs[kinks.line]
    tol = 1e-7 * (cfg.scale + np.linalg.norm(x - center, axis=1))
    off = np.flatnonzero(prefix_distance(network.features(prefix, x)) > tol)
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


def _relative_v(prefix, f: expansive.Followed) -> np.ndarray:
  """The affine term of a followed surface over the largest norm of its unit's normal at its kinks."""
  feats = network.features(prefix, f.points)
  return f.v / np.max(np.linalg.norm(feats.jac @ f.w, axis=1))


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
  if not found:
    return None, "no surface of the next layer followed"
  rel = np.array([_relative_v(prefix, f) for f in found])
  big = np.linalg.norm(rel, axis=1) > tol
  if not big.any():
    return np.zeros(n0, bool), f"{len(found)} surfaces followed, none with an affine term: the signs hold"
  head = f"{len(found)} surfaces followed, {int(big.sum())} with an affine term"
  cand = np.flatnonzero(uncertain)
  wrong = np.zeros(n0, bool)
  spanned = _by_span(prefix, cand, rel[big], tol)
  if spanned is not None:
    wrong[spanned] = True
    return wrong, f"{head}: {len(spanned)} sign(s) wrong (span)"
  weighed, why = _by_weights(prefix, cand, found, tol)
  if weighed is None:
    return None, f"{head}; {why}"
  wrong[weighed] = True
  return wrong, f"{head}: {len(weighed)} sign(s) wrong (weights)"


def _by_weights(prefix, cand: np.ndarray, found: list, tol: float):
  """(the voted units `cand` whose flip explains the surfaces' affine terms, or None; why).

  Each surface e gives d equations v_e = -sum_j f_j w_ej a_j, linear in the flips f_j (0 or 1) of the uncertain
  units; a unit the surface never saw on (w_ej unknown: its h is 0 at every kink, and if flipped its -w_ej p_j is
  all affine) gets a free coefficient of its own in e's equations. The least squares must leave no residual; the
  flips it determines (those its null space does not reach) must be within 1e-4 of 0 or 1, and those at 1 are
  returned (the audit's next pass, on the prefix they correct, sees the rest)."""
  grads = prefix.weights[0]  # a_j (d, n0): the input gradient of unit j's pre-activation
  d = grads.shape[0]
  used = [f for f in found if np.sum(~f.known[cand]) < d]  # a surface with d unseen units says nothing
  free = [(e, j) for e, f in enumerate(used) for j in cand if not f.known[j]]
  a = np.zeros((d * len(used), len(cand) + len(free)))
  for e, f in enumerate(used):
    a[e * d : (e + 1) * d, : len(cand)] = np.where(f.known[cand], f.w[cand], 0.0)[None] * grads[:, cand]
  for i, (e, j) in enumerate(free):
    a[e * d : (e + 1) * d, len(cand) + i] = grads[:, j]
  y = np.concatenate([-f.v for f in used]) if used else np.zeros(0)
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
  # a flip is determined where the null space of the system does not reach it; the others wait for the next pass
  null = vt[rank:]
  fixed = np.zeros(a.shape[1], bool)
  fixed[np.flatnonzero(keep)] = np.all(np.abs(null) < 1e-8, axis=0) if len(null) else True
  flip, fixed = sol[: len(cand)], fixed[: len(cand)]
  if np.max(np.minimum(np.abs(flip[fixed]), np.abs(flip[fixed] - 1)), initial=0.0) > 1e-4:
    return None, f"the affine terms need flips that are not 0 or 1 ({len(used)} usable surfaces)"
  if not np.any(fixed & (flip > 0.5)):
    return None, f"{len(used)} usable surfaces determine no wrong sign among {len(cand)} voted units"
  return cand[fixed & (flip > 0.5)], ""


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
    mask = None
    for _ in range(rounds):
      found += _surfaces(q, prefix, cfg, dom, rng, stats, want=4, rounds=1)
      mask, why = flips(prefix, uncertain & ~total, found)
      if mask is not None and (mask.any() or len(found) >= hold):
        break
    if mask is None or (not mask.any() and len(found) < hold):
      return total, f"{int(total.sum())} flipped; then undecided after {rounds} rounds: {why}"
    if not mask.any():
      return total, why
    total ^= mask
    flip = np.where(mask, -1.0, 1.0)
    prefix = network.DeepNet((prefix.weights[0] * flip,), (prefix.biases[0] * flip,))
  return total, f"{int(total.sum())} flipped; {why}; still not settled after {passes} passes"
