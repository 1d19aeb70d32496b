"""A strict layer's pending candidates tested again once the layer after it finds no unit (deep/retest.py)."""

import collections

import numpy as np

from extraction.oracle import Oracle
from functional_equivalence import queries
from functional_equivalence.deep import attack, network, retest
from functional_equivalence.deep import layer as layers
from tests.counting import CountingBackend
from tests.deep_points import middle_unit, surface_point, unit_row


def _second_layer(seed=4):
  """Random 8-8-8-8-8-1 seed 4 (fe_deep_unseen.md) on its true first layer: its second layer's units but unit 3 (on
  at all of 200,000 N(0, I) points, off in a cone far out: pending with exact weights in the attack) as a strict
  search's units, and as its pending candidates unit 3 with every weight known, unit 5 missing a weight, a copy of
  unit 0 and a third-layer unit's piece (its hyperplane in one region of the second layer), each with an anchor."""
  net = network.random_net(seed, (8, 8, 8, 8, 8, 1))
  rng = np.random.default_rng(0)
  h0 = lambda x: np.maximum(x @ net.weights[0] + net.biases[0], 0)  # noqa: E731
  h1 = lambda x: np.maximum(h0(x) @ net.weights[1] + net.biases[1], 0)  # noqa: E731
  far = rng.normal(size=(200_000, 8))
  far *= 1000 * rng.random((len(far), 1)) ** (1 / 8) / np.linalg.norm(far, axis=1, keepdims=True)
  kept = [middle_unit(net, 1, j, []) for j in range(8) if j != 3]
  unit3, unit5, copy0 = middle_unit(net, 1, 3, []), middle_unit(net, 1, 5, [2]), middle_unit(net, 1, 0, [])
  for j, u in ((3, unit3), (5, unit5), (0, copy0)):
    u.anchor = surface_point(lambda x, j=j: h0(x) @ net.weights[1][:, j] + net.biases[1][j], rng, 8, far)
  xs = surface_point(lambda x: h1(x) @ net.weights[2][:, 0] + net.biases[2][0], rng, 8)
  on = h0(xs[None])[0] @ net.weights[1] + net.biases[1] > 0
  w = net.weights[1][:, on] @ net.weights[2][on, 0]
  b = float(net.biases[1][on] @ net.weights[2][on, 0] + net.biases[2][0])
  piece = layers.Unit(w, np.ones(8, bool), b, 1e-12, np.ones(1), anchor=xs)
  piece.normalise()
  state = layers.LayerState(units=list(kept), pending=[unit3, unit5, copy0, piece])
  return net, kept, state


def _querier(net):
  counter = CountingBackend(network.backend(net))
  return counter, queries.Querier(Oracle(counter, output="logits", record_inputs=False))


def _error(u, truth):
  return min(np.abs(np.append(u.w, u.b) - s * truth).max() for s in (1, -1))


def test_a_pending_true_unit_is_accepted_by_the_freer_test_and_a_piece_is_not():
  net, kept, state = _second_layer()
  counter, q = _querier(net)
  lcfg = layers.LayerConfig(center=np.zeros(8), far=2000.0, strict=True, thorough=True)
  stats: collections.defaultdict = collections.defaultdict(int)
  grown = retest.retest_pending(q, net.prefix(1), kept, state, lcfg, 16, np.random.default_rng(1), stats)
  assert grown is not None and len(grown) == 8 and grown[:7] == kept
  assert _error(grown[7], unit_row(net, 1, 3)) <= 1e-9
  # tested: unit 3 and the piece (unit 5 lacks a weight, the copy is one of the units); the piece is refused
  assert stats["pending_retested"] == 2 and stats["pending_accepted"] == 1
  assert len(state.pending) == 4 and counter.rows == q.queries > 0  # the state as it was; every query counted
  assert retest.retest_pending(q, net.prefix(1), kept, state, lcfg, 0, np.random.default_rng(1), stats) is None


def test_the_layer_before_is_retested_once_with_its_signs_voted_again():
  # `_retest_before`, where the attack would stop: the layer before grows by unit 3, its signs make the prefix the
  # victim's second layer up to the order and positive scale of its units; asked again, it does nothing
  net, kept, state = _second_layer()
  _, q = _querier(net)
  lcfg = layers.LayerConfig(center=np.zeros(8), far=2000.0, strict=True, thorough=True)
  before = dict(prefix=net.prefix(1), tries=[(kept, state, None, lcfg)], kept=0, surfaces=8)
  cfg = attack.Config()
  stats = attack._new_stats(52)
  units, votes = attack._retest_before(q, before, cfg, cfg.the_domain(), np.random.default_rng(2), stats, 0, 8)
  assert len(units) == 8 and before["tries"][0][0] is units and len(state.pending) == 3
  prefix = attack._append(net.prefix(1), units, votes.signs)
  ours = np.vstack([prefix.weights[1], prefix.biases[1]])  # columns: the units as signed, (w, b)
  theirs = np.vstack([net.weights[1], net.biases[1]])
  for j in range(8):  # each victim unit a positive multiple of one of ours
    scale = (theirs[:, j] @ ours) / (ours * ours).sum(0)
    off = np.abs(theirs[:, j, None] - scale * ours).max(0)
    assert off.min() / np.abs(theirs[:, j]).max() <= 1e-9 and scale[np.argmin(off)] > 0
  assert attack._retest_before(q, before, cfg, cfg.the_domain(), np.random.default_rng(2), stats, 0, 8) is None
