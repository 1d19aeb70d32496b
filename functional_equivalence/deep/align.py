"""Evaluation of an extracted deep network against the victim: weight errors per layer after alignment.

A ReLU network is defined up to a permutation of each hidden layer's units and a positive scale per unit (its
incoming weights and bias times lambda, its outgoing weights divided by lambda). `weight_error` brings both
networks to a canonical form (every hidden unit's incoming weight vector of norm 1), matches the units of each
layer in turn (Hungarian matching on incoming weights, already permuted by the previous layer's matching, and
biases), then scales the recovered network back to the victim's norms and reports the largest absolute
difference of each layer's weights and biases. Units that never change the function are set aside first: units
never active on the evaluation points `x` (N, d) and units whose outgoing weights are all zero, with everything
downstream of them. So are weights the function does not determine on `x` (`undetermined`): the weight from unit j
of one hidden layer to unit k of the next, where no point of x has both j and k active (k's value never depends
on it there; e.g. a unit active on a small part of the domain only, where some units of the layer before are
always off). Each network's are found from its own activations (equivalent networks have the same ones) and set
to 0 before the comparison; their count is reported. In the last hidden layer, which answers determine only up to
a linear remainder (remainder.py), the recovered units are first turned to the victim's orientation (`_orient_like`)
and a weight whose unit is on wherever its feature is moves into the remainder on both sides
(`_linear_into_remainder`). Precision: float64.
"""

from __future__ import annotations

import math

import numpy as np

from functional_equivalence.deep import network, remainder
from functional_equivalence.deep.network import DeepNet


def live_units(net: DeepNet, x: np.ndarray) -> list:
  """Per hidden layer, a bool mask of units active at some point of x and with a nonzero outgoing weight to a live
  unit of the next layer (from the last hidden layer down: a unit that feeds only units never active, or only units
  cut off themselves, has no path to the output, as in a pruned network)."""
  pre = network.preactivations(net.prefix(net.depth), x)
  live = [np.any(p > 0, axis=0) for p in pre]
  live[-1] &= np.any(net.weights[-1] != 0, axis=1)
  for i in range(len(live) - 2, -1, -1):
    live[i] &= np.any(net.weights[i + 1][:, live[i + 1]] != 0, axis=1)
  return live


def prune(net: DeepNet, x: np.ndarray) -> tuple[DeepNet, list]:
  """The network without the units `live_units` sets aside (their constant contribution, 0, is dropped).
  Returns (net, pruned count per layer)."""
  keep = live_units(net, x)
  ws, bs = list(net.weights), list(net.biases)
  for i, k in enumerate(keep):
    ws[i], bs[i] = ws[i][:, k], bs[i][k]
    ws[i + 1] = ws[i + 1][k]
  return DeepNet(tuple(ws), tuple(bs)), [int(np.sum(~k)) for k in keep]


def undetermined(net: DeepNet, x: np.ndarray) -> list:
  """Per hidden layer after the first, a bool mask (units of the layer before, units of the layer) of the weights
  that no point of x has both ends of active (module docstring)."""
  pre = network.preactivations(net.prefix(net.depth), x)
  active = [(p > 0).astype(np.float64) for p in pre]
  return [(active[i - 1].T @ active[i]) == 0 for i in range(1, net.depth)]


def _without_undetermined(net: DeepNet, x: np.ndarray) -> tuple[DeepNet, list]:
  """The network with its `undetermined` weights set to 0; returns (net, their count per hidden layer after the
  first)."""
  masks = undetermined(net, x)
  ws = list(net.weights)
  for i, m in enumerate(masks, start=1):
    ws[i] = np.where(m, 0.0, ws[i])
  return DeepNet(tuple(ws), net.biases), [int(m.sum()) for m in masks]


def _orient_like(true: DeepNet, rec: DeepNet, rem: np.ndarray, x: np.ndarray, agree: float = 0.999):
  """`rec` with each unit of its last hidden layer whose on-set over x is the complement of a victim unit's (to
  `agree` of the points) turned over (remainder.flip, into the remainder `rem`): an orientation the answers do not fix
  (remainder.py), fixed here before the weights x does not determine are set aside, which depends on it (random
  12-8-6-3 seed 3 with a unit on at 0.03% of the ball: recovered as relu(-z) plus a linear term, on at 99.96%, so
  its 3 weights from features never on with the victim's unit were kept and it matched nothing). Returns (rec,
  rem, how many turned)."""
  last = true.depth - 1
  on_t = network.preactivations(true.prefix(true.depth), x)[last] > 0
  on_r = network.preactivations(rec.prefix(rec.depth), x)[last] > 0
  if not on_t.shape[1] or not on_r.shape[1]:
    return rec, rem, 0
  same = (on_r.T.astype(float) @ on_t + (~on_r).T.astype(float) @ ~on_t) / len(x)  # (n_rec, n_true)
  turn = (1 - same.min(axis=1) >= agree) & (same.max(axis=1) < agree)
  if not turn.any():
    return rec, rem, 0
  w, b = rec.weights[last].copy(), rec.biases[last].copy()
  v, c, rem = rec.weights[-1].copy(), rec.biases[-1].copy(), rem.copy()
  for j in np.flatnonzero(turn).tolist():
    remainder.flip(w, b, v, rem, c, j)
  net = DeepNet(rec.weights[:last] + (w, v), rec.biases[:last] + (b, c))
  return net, rem, int(turn.sum())


def _linear_into_remainder(net: DeepNet, rem: np.ndarray, x: np.ndarray):
  """`net` with each weight of its last hidden layer from a feature j into a unit k that is on at every point of x
  where j is (and at some) moved into the remainder (rem[j] += w_jk v_k, w_jk = 0): there w_jk h_j v_k is a linear
  term, which answers on x cannot tell from the remainder's (remainder.py), so the two are compared as one (random
  10-8-8-8-1 seed 8: a third-layer weight traded against the remainder, logits within 2.5e-11 of the victim's on 4
  million points, counted unmatched); a unit left with no incoming weight is a constant, folded into the output
  bias. Returns (net, rem, how many weights moved)."""
  last = net.depth - 1
  if not last:  # one hidden layer: its inputs are the network's, not ReLU features
    return net, rem, 0
  pre = network.preactivations(net.prefix(net.depth), x)
  feat, on = pre[last - 1] > 0, pre[last] > 0
  with_on = feat.T.astype(float) @ on  # (n_in, n): points where feature j and unit k are both on
  with_off = feat.T.astype(float) @ ~on
  move = (with_on > 0) & (with_off == 0)
  if not move.any():
    return net, rem, 0
  w, v, rem = net.weights[last].copy(), net.weights[-1], rem.copy()
  for j, k in zip(*np.nonzero(move)):
    rem[j] += w[j, k] * v[k]
    w[j, k] = 0.0
  # a unit left with no incoming weight is the constant relu(b_k): into the output bias
  keep = np.any(w != 0, axis=0)
  b, c = net.biases[last], net.biases[-1] + np.maximum(net.biases[last][~keep], 0) @ v[~keep]
  net = DeepNet(net.weights[:last] + (w[:, keep], v[keep]), net.biases[:last] + (b[keep], c))
  return net, rem, int(move.sum())


def canonical(net: DeepNet) -> tuple[DeepNet, list]:
  """The same function with every hidden unit's incoming weights of norm 1; returns (net, norms per layer)."""
  ws, bs, norms = list(net.weights), list(net.biases), []
  for i in range(net.depth):
    n = np.linalg.norm(ws[i], axis=0)
    n = np.where(n > 0, n, 1.0)
    ws[i], bs[i] = ws[i] / n, bs[i] / n
    ws[i + 1] = ws[i + 1] * n[:, None]
    norms.append(n)
  return DeepNet(tuple(ws), tuple(bs)), norms


def _second_layer(w, b, differences):
  return (w[:, 1:] - w[:, :1], b[1:] - b[:1]) if differences else (w, b)


def weight_error(true: DeepNet, rec: DeepNet, x: np.ndarray, differences: bool = False) -> dict:
  """Per-layer max aligned absolute weight error (module docstring).

  Returns:
    dict with max_weight_error (inf unless every live unit of every layer is matched and nothing is extra),
    weight_error_bits, per layer (lists): errors (max over the layer's weights and biases), true_units,
    inert_true_units, matched_units, extra_units; and sign_flipped_units (units matched only with the opposite
    orientation), undetermined_weights (per hidden layer after the first: the victim's weights that x does not
    determine, set aside).
  """
  from scipy.optimize import linear_sum_assignment  # here, not at import: scipy.optimize adds 0.3 s to every launch

  if true.depth != rec.depth:
    return dict(
      max_weight_error=math.inf,
      weight_error_bits=0.0,
      depth_true=true.depth,
      depth_recovered=rec.depth,
      errors=[],
      true_units=list(true.sizes[1:-1]),
      recovered_units=list(rec.sizes[1:-1]),
    )
  t_net, inert = prune(true, x)
  r_net, _ = prune(rec, x)
  t_net, t_rem, t_folded = remainder.fold(t_net, x)  # before the undetermined weights: a pair stays one
  r_net, r_rem, r_folded = remainder.fold(r_net, x)
  r_net, r_rem, oriented = _orient_like(t_net, r_net, r_rem, x)
  t_net, t_rem, t_moved = _linear_into_remainder(t_net, t_rem, x)
  r_net, r_rem, _ = _linear_into_remainder(r_net, r_rem, x)
  t_net, loose = _without_undetermined(t_net, x)
  r_net, _ = _without_undetermined(r_net, x)
  tc, t_norms = canonical(t_net)
  rc, r_norms = canonical(r_net)
  last = true.depth - 1
  r_rem = r_rem * r_norms[last - 1][:, None] if last else r_rem  # the inputs of the last hidden layer, canonical
  r_out, r_out_b = rc.weights[-1].copy(), rc.biases[-1].copy()
  perm_prev = np.arange(true.sizes[0])
  aligned_w, aligned_b, matched, extra, complete, flipped, turned = [], [], [], [], True, 0, 0
  for i in range(true.depth):
    tw, tb = tc.weights[i], tc.biases[i]
    rw, rb = rc.weights[i][perm_prev], rc.biases[i].copy()
    cost = np.maximum(2 - 2 * tw.T @ rw, 0) + (tb[:, None] - rb[None, :]) ** 2
    flip_cost = np.maximum(2 + 2 * tw.T @ rw, 0) + (tb[:, None] + rb[None, :]) ** 2
    if i == last:  # orientation traded for the remainder (remainder.py): either one matches
      r_rem = r_rem[perm_prev]
      turn = flip_cost < cost
      cost = np.minimum(cost, flip_cost)
    close = cost < 1e-6
    ti, rj = linear_sum_assignment(np.where(close, cost, 1.0)) if cost.size else (np.zeros(0, int),) * 2
    ok = close[ti, rj]
    flipped += int(np.sum(np.min(flip_cost, axis=1, initial=1.0) < 1e-6)) if i < last else 0
    ti, rj = ti[ok], rj[ok]
    if i == last:
      for t, r in zip(ti, rj):
        if turn[t, r]:
          remainder.flip(rw, rb, r_out, r_rem, r_out_b, r)
          turned += 1
    matched.append(int(len(ti)))
    extra.append(int(rw.shape[1] - len(ti)))
    complete &= len(ti) == tw.shape[1] == rw.shape[1]
    perm = np.full(tw.shape[1], -1)
    perm[ti] = rj
    if np.any(perm < 0):
      perm[perm < 0] = 0  # unmatched true units: compared against an arbitrary unit (error reported as inf)
    aligned_w.append(rw[:, perm])
    aligned_b.append(rb[perm])
    perm_prev = perm
  out_w, out_b = r_out[perm_prev], r_out_b
  errors = []
  for i in range(true.depth + 1):
    # back to the victim's scale: incoming times the victim's norm, outgoing divided by the previous one's
    if i < true.depth:
      w, b = aligned_w[i] * t_norms[i], aligned_b[i] * t_norms[i]
    else:
      w, b = out_w, out_b
    if i > 0:
      w = w / t_norms[i - 1][:, None]
    tw, tb = t_net.weights[i], t_net.biases[i]
    if i == true.depth:
      (w, b), (tw, tb) = _second_layer(w, b, differences), _second_layer(tw, tb, differences)
    errors.append(float(max(np.max(np.abs(w - tw), initial=0.0), np.max(np.abs(b - tb), initial=0.0))))
  rem = r_rem / t_norms[last - 1][:, None] if last else r_rem  # at the victim's scale
  (rem, _), (t_rem, _) = _second_layer(rem, out_b, differences), _second_layer(t_rem, out_b, differences)
  errors[-1] = max(errors[-1], float(np.max(np.abs(rem - t_rem), initial=0.0)))
  err = max(errors) if complete else math.inf
  bits = 64.0 if err <= 0 else 0.0 if not math.isfinite(err) else -math.log2(err)
  return dict(
    max_weight_error=err,
    weight_error_bits=bits,
    errors=errors,
    true_units=list(true.sizes[1:-1]),
    inert_true_units=inert,
    matched_units=matched,
    extra_units=extra,
    sign_flipped_units=flipped,
    recovered_units=list(rec.sizes[1:-1]),
    undetermined_weights=loose,
    remainder_weights=t_moved,
    folded_units=[t_folded, r_folded],
    turned_units=turned + oriented,
  )


def verdict(net: network.DeepNet, rec: network.DeepNet, fields: dict) -> str:
  """What a finished attack achieved: "exact" (every unit matched, aligned error <= 2^-30, the issue's target, and
  agreement 1.0 on both sets), "close" (matched, error <= 1e-6), "equivalent on the points" (units unmatched, but
  agreement 1.0 and every logit within 2^-30 of the victim's on both sets: another network computing the victim's
  function there, e.g. a pruned victim's next-layer kink taken as a unit of its own; beyond the points not shown),
  else "wrong" with the reason; a width found that is not the victim's is named (an inert victim unit, never
  active, cannot be seen and is allowed for). `fields`: max_weight_error (from `weight_error`), agreement and
  domain_agreement (top-1 agreement on two sets of inputs), optionally max_logit_error and domain_max_logit_error
  (absolute, on the same sets) and undetermined_weights (named when there are any: weights the evaluation points
  do not determine)."""
  error = fields["max_weight_error"]
  loose = sum(fields.get("undetermined_weights") or [])
  shape_note = f"; {loose} weights undetermined on the points" if loose else ""
  folded = (fields.get("folded_units") or [0, 0])[0]
  shape_note += f"; {folded} always-active victim unit(s) compared as a linear remainder" if folded else ""
  widths = "-".join(map(str, rec.sizes[1:-1]))
  shape = "" if rec.sizes == net.sizes else f"; widths {widths}, victim's {'-'.join(map(str, net.sizes[1:-1]))}"
  agreement = min(fields["agreement"], fields["domain_agreement"])
  if not math.isfinite(error):
    logit_error = max(fields.get("max_logit_error", math.inf), fields.get("domain_max_logit_error", math.inf))
    same = agreement == 1.0 and logit_error <= 2.0**-30
    return ("equivalent on the points: units unmatched" if same else "wrong: units unmatched") + shape
  if agreement < 1.0:
    return f"wrong: agreement {agreement}" + shape
  return grade(error) + shape + shape_note


def grade(error: float) -> str:
  """A matched network's (or layer's) largest aligned error: "exact" (<= 2^-30), "close" (<= 1e-6) or "wrong"."""
  return "exact" if error <= 2.0**-30 else "close" if error <= 1e-6 else f"wrong: error {error:.3g}"
