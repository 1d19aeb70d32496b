"""The deep functionally-equivalent attack (functional_equivalence/deep/): exact recovery of two- and three-hidden-layer
random nets up to permutation and scale (aligned weights to 1e-9, agreement 1.0 near the origin and out to the domain's
radius 1000), a two-layer victim as the depth-1 case, sign recovery on a contractive layer (exact) and on an
expanding one (exact decisions only where they are sound), bounded stages with clear errors, and the launcher on a
deep npz. Query counts are checked against a backend that counts its own rows."""

import collections
import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from extraction.oracle import Oracle
from functional_equivalence import domain, queries, recover
from functional_equivalence.deep import active, align, attack, network, signs, support, unseen
from functional_equivalence.deep import layer as layers
from functional_equivalence.errors import ExtractionError, LimitReachedError
from tests.counting import CountingBackend
from tests.deep_points import eval_points, middle_unit, rare_net, surface_point, unit_row

REPO = pathlib.Path(__file__).resolve().parent.parent


def _extract(net, seed=7, output="logits", **cfg):
  counter = CountingBackend(network.backend(net))
  oracle = Oracle(counter, output=output, record_inputs=False)
  result = attack.extract(oracle, net.sizes[0], attack.Config(**cfg), seed=seed)
  assert result.queries == counter.rows == sum(result.queries_by_stage.values())
  return result


def _assert_recovered(net, rec, bound):
  """Aligned weights within `bound` and the same logits on the deep tests' evaluation points; returns the errors."""
  x = eval_points(net.sizes[0])
  err = align.weight_error(net, rec, x)
  assert err["max_weight_error"] <= bound, err
  _assert_equivalent(net, rec, x)
  return err


def _assert_equivalent(net, rec, x):
  a, b = network.logits(net, x), network.logits(rec, x)
  scale = np.abs(a).max(axis=1, keepdims=True) + 1.0
  assert np.max(np.abs(a - b) / scale) < 1e-8
  labels = (lambda z: z[:, 0] > 0) if a.shape[1] == 1 else (lambda z: z.argmax(1))
  assert np.mean(labels(a) == labels(b)) == 1.0


@pytest.mark.parametrize("sizes,seed", [((10, 8, 8, 1), 1), ((12, 8, 6, 3), 0)])
def test_two_hidden_layers_recovered_exactly(sizes, seed):
  net = network.random_net(seed, sizes)
  result = _extract(net)
  assert result.net.sizes == sizes and result.widths == list(sizes[1:-1])
  x = eval_points(sizes[0])
  err = align.weight_error(net, result.net, x)
  # ~1e-11 from the peeling, ~1e-14 after the polish step (every weight at once, test_fe_polish.py)
  assert err["max_weight_error"] <= 1e-12 and err["inert_true_units"] == [0, 0], err
  assert result.sign_methods == [["exact"], "last layer least squares"]
  _assert_equivalent(net, result.net, x)
  assert result.stats["check_error"] < 1e-12 and result.stats["polish_steps"] >= 1


@pytest.mark.slow
def test_three_hidden_layers_recovered_exactly():
  # layer 1 is not the last: its lenient search does not settle (deeper units' pieces), the strict one does; the
  # signs of layers 1 and 2 are exact (layer 1's from points where every first-layer feature is live)
  sizes = (10, 8, 8, 8, 1)
  net = network.random_net(2, sizes)
  result = _extract(net)
  assert result.net.sizes == sizes and result.widths == list(sizes[1:-1])
  x = eval_points(sizes[0])
  err = align.weight_error(net, result.net, x)
  assert err["max_weight_error"] <= 1e-9 and err["inert_true_units"] == [0, 0, 0], err
  assert result.sign_methods == [["exact"], ["exact"], "last layer least squares"]
  assert result.stats["strict_layers"] == 1
  _assert_equivalent(net, result.net, x)


@pytest.mark.slow
def test_a_unit_active_on_a_small_part_of_the_space_is_not_missed_silently():
  # random 20-10-10-1 seed 0, attack seed 121999420 (the benchmark's): a second-layer unit active on ~1% of N(0, I)
  # is recovered wrong; a final check on 512 points passed it (weights off, logits off ~1e-6 over the ball) until the
  # check also looked where rarely co-active (unit, feature) pairs are on (fifteenth session): with 512 points and 3
  # repairs it then stopped in one line. Since the forty-third session a repair reads a candidate's unseen weights
  # on its minority side and joins it to a linear remainder: with 512 points and 3 repairs it returns a network with
  # 12 columns in the last hidden layer (a redundant pair of a unit on at 0.09% of the ball, output weights ~5e-7
  # apart, and a remainder), whose logits are the victim's to 6e-15 (relative) over 2 million points of the ball
  # (ad hoc): not missed either way. The default 8,192 points and 8 repairs recover the victim's own shape
  sizes = (20, 10, 10, 1)
  net = network.random_net(0, sizes)
  small = _extract(net, seed=121999420, check_points=512, repairs=3)
  x = np.concatenate([eval_points(20), domain.Ball(1000.0).check_points(np.random.default_rng(7), 20, 200_000)])
  _assert_equivalent(net, small.net, x)
  result = _extract(net, seed=121999420)
  assert result.stats["repair_rounds"] >= 1
  _assert_recovered(net, result.net, 1e-7)


@pytest.mark.slow
def test_three_layers_an_always_active_unit_recovered():
  # random 10-8-8-8-1 seed 3, the benchmark's attack seed: a third-layer unit is active over the whole domain (a
  # linear term, no kink); before the last layer's fit had a linear remainder, a fourth layer was searched, found
  # nothing, and a pending candidate promoted in its place was refused by the polish step (an error, not a wrong
  # network); now the network is recovered.
  sizes = (10, 8, 8, 8, 1)
  net = network.random_net(3, sizes)
  result = _extract(net, seed=408810553)
  assert _assert_recovered(net, result.net, 1e-9)["folded_units"][0] == 1 and result.stats["promoted_units"] == 0


@pytest.mark.slow
def test_weights_from_features_a_unit_never_saw_on_are_checked_where_both_are_on():
  # random 10-8-8-8-1 seed 0, the benchmark's attack seed: two third-layer units active on <0.3% of the space are
  # missed by the searches and found by the final check's repairs (with 512 check points the network passed without
  # them, logits off by 1.6 over the ball). Then a third-layer unit has weights from two features never on at its
  # kinks (left at 0), off by 1.4; the features are on together with it on 1 in 262,144 of the domain's check points,
  # none near its predicted surface: without the check's points where unit and feature are both on
  # (unseen.on_points) the network was returned, logits off by 0.12 at one of 200,000 points (every point of the
  # final check, its walked and wedge points agreed). With them the check fails there: the attack stops in one line
  # or returns the victim's function on those points, never the wrong network. (The thirteenth session's reading
  # kept the kink it read among the unit's precise points and recovered this victim, 2^-31.0; keeping them returned
  # another victim wrong, so they are not kept, and this one stops again: "final check failed".)
  sizes = (10, 8, 8, 8, 1)
  net = network.random_net(0, sizes)
  try:
    result = _extract(net, seed=121999420)
  except ExtractionError as e:
    assert "final check failed" in str(e)
    return
  many = eval_points(sizes[0], count=100_000)
  off = np.abs(network.logits(net, many) - network.logits(result.net, many)).max()
  assert off <= 1e-9 * np.abs(network.logits(net, many)).max(), off


@pytest.mark.slow
def test_unseen_weights_of_a_unit_on_almost_everywhere_read_where_it_is_predicted_off(monkeypatch):
  # random 10-8-8-8-1 seed 4, the benchmark's attack seed: a third-layer unit on at 99.65% of the ball has its surface
  # near the center, where two of its features are off: their weights stay 0 and the linear remainder takes up the
  # error wherever the unit is on. The final check fails where it is off with both features on (predicted off too),
  # so the thirteenth session's reading, which needed a point where the unit is predicted on with one unseen feature
  # on, read nothing and the attack stopped after 8 repairs; read together from the kinks on several points' lines,
  # both weights are exact. How many of them this reading finds depends on float rounding (2 on the Xeon machines
  # of sessions 15-28, 1 on a 2-core AMD EPYC, where another path finds the other one). Without it, since the
  # forty-third session, the unit is joined to the remainder with its weights read on its pocket's side
  # (attack._join_pockets, exact too); without both the attack stops
  sizes = (10, 8, 8, 8, 1)
  net = network.random_net(4, sizes)
  result = _extract(net, seed=852798553)
  assert result.stats["read_weights"] >= 1
  _assert_recovered(net, result.net, 1e-9)
  monkeypatch.setattr(unseen, "read_weights", lambda *args: 0)
  joined = _extract(net, seed=852798553)
  assert joined.stats["pocket_joins"] == 1
  _assert_recovered(net, joined.net, 1e-9)
  monkeypatch.setattr(attack, "_join_pockets", lambda q, prefix, units, last, *args: (units, last))
  with pytest.raises(ExtractionError, match="final check failed"):
    _extract(net, seed=852798553)


def test_a_fit_without_its_twins_keeps_each_pair_s_larger_side_in_the_victim_s_shape():
  # attack._without_twins, for the polish of a check that fails by little with a pair (random 10-8-8-8-1 seed 19):
  # a pair whose relu(-z) side carries the output becomes the unit with its sign flipped, one whose twin is ~0 the
  # unit as it is: the same function where the dropped side is ~0, n units as the victim has
  net = network.random_net(2, (6, 5, 4, 2))
  units = [
    layers.Unit(net.weights[1][:, j].copy(), np.ones(5, bool), float(net.biases[1][j]), 1e-12, np.ones(2))
    for j in range(4)
  ]
  w_out = net.weights[2].copy()
  last = signs.LastLayer(
    np.ones(4), np.array([True, False, True, False]), w_out.copy(), np.zeros((2, 2)), net.biases[2], 0.0
  )
  last.w_out[0], last.w_twin[0] = 0.0, w_out[0]  # unit 0: all of it on relu(-z)
  last.w_twin[1] = 1e-13 * w_out[2]  # unit 2: its twin ~0
  plain = attack._without_twins(last)
  assert np.array_equal(plain.signs, [-1.0, 1.0, 1.0, 1.0]) and not plain.pairs.any() and plain.w_twin.shape == (0, 2)
  assert np.array_equal(plain.w_out[0], w_out[0]) and np.array_equal(plain.w_out[1:], w_out[1:])
  prefix, x = net.prefix(1), np.random.default_rng(0).normal(size=(1000, 6)) * 10
  with_twins, without = attack._network(prefix, units, last, False), attack._network(prefix, units, plain, False)
  assert without.sizes == (6, 5, 4, 2) and with_twins.sizes == (6, 5, 6, 2)
  assert np.max(np.abs(network.logits(with_twins, x) - network.logits(without, x))) <= 1e-9


def _with_a_twin_and_a_weight_never_seen(fit_last):
  """`fit_last` whose fit, where it pairs no unit, pairs its first unit with a twin of output weight 0 (the function
  unchanged) and whose first unit's first weight is said never seen. A fit that pairs units already is left as it
  is: a layer's fit before the next is found pairs every unit (10-8-8-1's first layer on the thirty-eighth session's
  AMD EPYC, whose w_twin then had a row for each: a made-up twin there broke the network's shapes)."""

  def fit(*args, **kwargs):
    units, last = fit_last(*args, **kwargs)
    if last.pairs.any():
      return units, last
    last.pairs = last.pairs.copy()
    last.pairs[0] = True
    last.w_twin = np.zeros((1, last.w_out.shape[1]))
    units[0].known = units[0].known.copy()
    units[0].known[0] = False
    return units, last

  return fit


def test_a_last_layer_fit_with_twins_and_a_weight_never_seen_is_refused(monkeypatch):
  # the refusal's first real case (random 10-8-8-8-1 seed 7) is recovered since the fifteenth session: here the fit
  # of a recovered network is made to pair its first unit with a twin of output weight 0 (the function unchanged, so
  # every check passes) and that unit's first weight is said never seen; such a pair can stand for a unit off by that
  # weight (seed 7 under another path, thirty-first session: off by 6.6e-6), so the attack refuses the network
  # instead of returning it (with every weight seen it is polished without the twin:
  # test_a_fit_that_passes_with_a_twin_of_a_fully_seen_unit_is_returned_without_it)
  net = network.random_net(1, (10, 8, 8, 1))
  monkeypatch.setattr(attack, "_fit_last", _with_a_twin_and_a_weight_never_seen(attack._fit_last))
  with pytest.raises(ExtractionError, match=r"fit pairs 1 of its 8 units with twins"):
    _extract(net)


def test_a_rescue_with_twins_and_a_weight_never_seen_is_not_polished_without_them(monkeypatch):
  # the same guard where a final check that fails by little is rescued by the polish step (attack._rescue) with the
  # fit's twins: only a layer whose weights were all seen is tried in the victim's shape (until the thirty-second
  # session that try had no guard there). The fit is made to pair a unit with a twin of weight 0 and one of that
  # unit's weights is said never seen, as above; the first final check is made to fail by 1e-9 at the points it
  # used. The twin-free network is never polished (every rescue keeps the twin) and the network is refused
  final_check, rescue = attack._final_check, attack._rescue
  failed, rescued_widths = [], []

  def failing_once(q, net, surfaces, dom, cfg, rng, differences, earlier):
    checked, bad = final_check(q, net, surfaces, dom, cfg, rng, differences, earlier)
    if failed:
      return checked, bad
    failed.append(net.sizes)
    return dict(checked, check_error=1e-9), np.ones((1, net.sizes[0]))

  def spy(q, net, *args):
    rescued_widths.append(net.sizes[-2])
    return rescue(q, net, *args)

  net = network.random_net(1, (10, 8, 8, 1))
  monkeypatch.setattr(attack, "_fit_last", _with_a_twin_and_a_weight_never_seen(attack._fit_last))
  monkeypatch.setattr(attack, "_final_check", failing_once)
  monkeypatch.setattr(attack, "_rescue", spy)
  with pytest.raises(ExtractionError, match=r"fit pairs 1 of its 8 units with twins"):
    _extract(net)
  assert failed == [(10, 8, 9, 1)] and rescued_widths == [9]


def test_a_network_passing_with_unread_weights_after_its_last_layer_signs_were_voted_again(monkeypatch):
  # random 8-8-8-8-8-1 seed 0 (fe_deep_unseen.md) passed its final check once weights of its last hidden layer were
  # read after the signs were voted again (`_read_last`, when fits with a linear remainder were read too), two
  # others still unread, and was off by 1.7e-3 where a rare feature and their unit are on (3 of 108 co-active
  # points). Here a network that is recovered exactly is made to look like that (a reading counted, a weight said to
  # be unread): where points are predicted where the weight would count, repairs there, then a one-line error
  # instead of the network; where none is, it is returned as a network with unread weights and no reading is
  # (iris-trained 4-16-16-3 seed 0 was refused so, its unread weights ones the victim's function does not determine)
  net = network.random_net(1, (10, 8, 8, 1))
  read_last = attack._read_last

  def counted(q, prefix, units, last, state, cfg, center, rng, stats, dom, bad):
    units, last = read_last(q, prefix, units, last, state, cfg, center, rng, stats, dom, bad)
    stats["last_signs_read"] = 1
    units[0].known = np.concatenate([[False], units[0].known[1:]])  # its weight kept: the same function
    return units, last

  monkeypatch.setattr(attack, "_read_last", counted)
  points = {}
  monkeypatch.setattr(unseen, "on_points", lambda surfaces, dom, d, **kw: points.get("x", np.zeros((0, d))))
  points["x"] = np.ones((2, 10))
  with pytest.raises(ExtractionError, match=r"passed the final check after 1 repairs, but .* not returned"):
    _extract(net, repairs=1)
  del points["x"]
  result = _extract(net, repairs=1)
  assert result.stats["unvouched_passed"] == 1 and result.stats["repair_rounds"] == 0
  _assert_recovered(net, result.net, 1e-9)


def test_an_expanding_first_layer_recovered_exactly():
  # 16 first-layer units on 8 inputs: no direction moves one unit alone, so the exact sign test of the passes is
  # impossible almost everywhere and the votes got 6 of 16 signs wrong (then layer 2's search found no unit);
  # the signs now come from sparse live sets of g's gradient and exact tests under guessed constraints
  sizes = (8, 16, 8, 1)
  net = network.random_net(0, sizes)
  result = _extract(net, seed=1)
  assert result.net.sizes == sizes
  x = eval_points(sizes[0])
  err = align.weight_error(net, result.net, x)
  assert err["max_weight_error"] <= 1e-12 and err["inert_true_units"] == [0, 0], err
  assert result.sign_methods == [["exact"], "last layer least squares"]
  _assert_equivalent(net, result.net, x)


def test_live_support_finds_the_sparse_live_set_or_nothing():
  # a gradient in the span of < d unit vectors is attributed to exactly those units; a dense one to none
  rng = np.random.default_rng(0)
  d, n = 8, 16
  w = rng.normal(size=(d, n))
  w /= np.linalg.norm(w, axis=0)
  found = 0
  for k in range(1, d + 2):
    for _ in range(5):
      live = rng.choice(n, size=k, replace=False)
      grad = w[:, live] @ (rng.uniform(0.5, 2.0, size=k) * rng.choice([-1.0, 1.0], size=k))
      got = support.live_support(w, grad)
      truth = np.zeros(n, bool)
      truth[live] = True
      if k >= d:
        assert got is None
      else:
        assert got is None or np.array_equal(got, truth), (k, got, truth)
        found += got is not None
        if k <= 3:
          assert got is not None
  assert found >= 25


def test_a_two_layer_victim_is_the_depth_one_case():
  net = network.random_net(3, (10, 7, 4))
  result = _extract(net)
  assert result.net.depth == 1 and result.widths == [7]
  x = eval_points(10)
  assert align.weight_error(net, result.net, x)["max_weight_error"] <= 1e-9
  _assert_equivalent(net, result.net, x)


def _sign_test(sizes, seed):
  """hidden_signs on layer 1 of a random net, given its true prefix and its true units with random orientations."""
  net = network.random_net(seed, sizes)
  return _signs_of(net, 1, net.weights[1], net.biases[1])


def _signs_of(net, layer: int, w, b):
  """hidden_signs on the units (w, b) of `layer` of net (columns of w, oriented at random), given its true prefix:
  (votes, the orientations drawn); every query counted as a sign query."""
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False), queries.Limits(None, 60.0))
  rng = np.random.default_rng(0)
  flip = np.where(rng.uniform(size=w.shape[1]) < 0.5, -1.0, 1.0)
  norms = np.linalg.norm(w, axis=0)
  units = [
    layers.Unit(flip[j] * w[:, j] / norms[j], np.ones(w.shape[0], bool), flip[j] * b[j] / norms[j], 1e-14, np.zeros(1))
    for j in range(w.shape[1])
  ]
  stats = dict(sign_queries=0, support_queries=0)
  votes = signs.hidden_signs(q, net.prefix(layer), units, 1.0, np.zeros(net.sizes[0]), rng, stats)
  assert stats["sign_queries"] == counter.rows
  return votes, flip


def _pruned_seed4():
  """Random 10-8-6-1 seed 4 with half its second weights pruned (fe_deep_pruned50.md)."""
  return network.pruned(network.random_net(4, (10, 8, 6, 1)), 1, 0.5)


def test_a_first_layer_unit_with_a_parallel_hyperplane_gets_an_exact_sign():
  # 50%-pruned random 10-8-6-1 seed 4: second-layer unit 0 reads first-layer unit 0 alone, relu(0.5 - 0.35 relu(z0)),
  # so the first layer found holds a hyperplane parallel to unit 0's at z0 = 1.43. An exact test of either one kept
  # the other still too, which no direction can: both fell to votes (in the attack unit 0's, tied, was taken wrong
  # and layer 2 never settled; here, on the true weights, the support test decides unit 0 and the parallel one was
  # voted). Now a unit whose gradient is in the span of those kept still before it is left free.
  net = _pruned_seed4()
  w0, b0, w1, b1 = net.weights[0], net.biases[0], net.weights[1], net.biases[1]
  assert np.count_nonzero(w1[:, 0]) == 1 and w1[0, 0] < 0 < b1[0]
  kink = -b1[0] / w1[0, 0]
  ws = np.concatenate([w0, w0[:, :1]], axis=1)
  bs = np.concatenate([b0, [b0[0] - kink]])  # z0 - kink = 0
  votes, flip = _signs_of(net, 0, ws, bs)
  assert votes.how == ["exact"] * 9 and np.all(votes.signs[:8] == flip[:8])  # the parallel one was left to votes


@pytest.mark.slow
def test_a_pruned_victim_whose_second_layer_unit_reads_one_feature_is_recovered():
  # the same victim with its benchmark attack seed (fe_deep_pruned50.md): it stopped with "layer 2: the search did
  # not settle", unit 0's sign wrong. The parallel hyperplane is a legitimate first-layer unit of another network
  # computing the same function: the network returned has 9 first-layer units for the victim's 8 (and 5 second-layer
  # units with a linear remainder for its 6; "equivalent on the points" in the benchmark)
  net = _pruned_seed4()
  result = _extract(net, seed=852798553, max_seconds=300)
  _assert_equivalent(net, result.net, eval_points(10))


@pytest.mark.slow
def test_a_unit_off_only_in_a_pocket_with_weights_never_seen_joins_the_remainder_or_the_attack_stops():
  # random 10-8-8-8-3 seed 3 with its benchmark attack seed (fe_deep_outputs_logits.md): third-layer unit 5, on at
  # 99.9% of N(0, I), is first taken into the linear remainder; it is off in a pocket at |x| ~ 2-5 (0.05% of N(0, I))
  # that the domain's spheres (radii 1, 10, 100, ...) miss. Without the check's points near the center the attack
  # returned that network, logits off by 0.0078 there; with them it stopped, "final check failed" after 8 repairs at
  # points of the pocket: the unit's kinks, at the pocket's edge, never have 4 of its 8 features on, and the fit with
  # it paired every unit (8 units on 8 features). On the Xeon machines of the twenty-eighth session it joins the
  # remainder (attack._promote_in_repair, signs.remainder_fit) and the attack is exact. Which path it takes depends
  # on float rounding: on a 2-core AMD EPYC (thirty-first session) the candidate knows 3 of its weights, not 4, a
  # feature never seen on is on in the pocket (`attack._pocket_only` refuses it, rightly) and the attack stops as
  # before. Either way the network is never returned wrong
  net = network.random_net(3, (10, 8, 8, 8, 3))
  try:
    result = _extract(net, seed=408810553, max_seconds=300)
  except ExtractionError as e:
    assert "final check failed" in str(e), e
    return
  assert result.widths == [8, 8, 8] and result.stats["repair_promotions"] == 1
  _assert_equivalent(net, result.net, eval_points(10))


def test_signs_of_a_contractive_layer_are_exact():
  # 10 first-layer features into 8 units: a direction moving one unit alone exists at most surface points
  votes, flip = _sign_test((20, 10, 8, 1), 1)
  assert votes.how == ["exact"] * 8 and np.all(votes.signs == flip)


@pytest.mark.parametrize("seed", [1, 2])
def test_signs_of_an_expanding_layer_exact_and_right(seed):
  # 16 units on 16 first-layer features from 8 inputs: rank <= 8, so most tests of the passes are neuron-wiggle
  # votes (statistical, and were wrong on some units); the exact tests under guessed constraints decide every unit
  votes, flip = _sign_test((8, 16, 16, 1), seed)
  assert votes.wiggle_tests > 0
  assert votes.how == ["exact"] * 16 and np.all(votes.signs == flip)


def test_limits_end_in_clear_errors_not_loops():
  net = network.random_net(1, (10, 8, 8, 1))
  with pytest.raises(LimitReachedError):
    _extract(net, max_queries=3000)
  with pytest.raises(ExtractionError, match=r"did not settle in 2 rounds"):
    _extract(net, max_rounds=2, patience=5)


def test_a_strict_search_settles_on_its_units_while_features_still_join_them():
  # random 14-10-10-10-2 seed 0 (fe_deep_fresh2.md), its third hidden layer searched strictly on the victim's first
  # two: all 10 units found by round 10, but features kept joining them (one every few rounds: features rarely on
  # with their unit), so the search never had 6 quiet rounds and ended in "did not settle". A strict search (no
  # deeper unit's piece accepted) whose units stayed the same for 6 rounds now settles on them; a lenient one, whose
  # new units may be deeper units' pieces, still does not
  net = network.random_net(0, (14, 10, 10, 10, 2))
  cfg = attack.Config()
  dom = cfg.the_domain()
  w, b = net.weights[2], net.biases[2]
  for strict in (True, False):
    counter = CountingBackend(network.backend(net))
    q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
    lcfg = layers.LayerConfig(
      center=np.zeros(14),
      reach=cfg.line_reach * dom.circumradius(14) / cfg.scale,
      far=2000.0,
      lines_per_round=cfg.lines_per_round,
      max_rounds=20,
      strict=strict,
      thorough=strict,
    )
    stats: collections.defaultdict = collections.defaultdict(int)
    if not strict:
      with pytest.raises(ExtractionError, match="did not settle in 20 rounds"):
        layers.recover_layer(q, net.prefix(2), lcfg, dom, np.random.default_rng(0), stats)
      continue
    units = layers.recover_layer(q, net.prefix(2), lcfg, dom, np.random.default_rng(0), stats)
    assert stats["settled_on_units"] == 1 and len(units) == 10 and counter.rows == q.queries
    matched = set()
    for u in units:  # each unit a true one on the features it knows (the others are filled in later)
      k = u.known
      rows = np.vstack([np.append(w[k, j], b[j]) / np.linalg.norm(w[k, j]) for j in range(10)])
      mine = np.append(u.w[k], u.b)
      errs = np.minimum(np.abs(rows - mine).max(1), np.abs(rows + mine).max(1))
      assert errs.min() <= 1e-9, errs.min()
      matched.add(int(np.argmin(errs)))
    assert matched == set(range(10))


def test_a_strict_tests_blind_round_uses_up_no_round_when_asked(monkeypatch):
  # random 8-8-8-8-8-1 seed 4 (fe_deep_unseen.md): second-layer unit 3, off only in a cone far out (0.77% of the
  # ball), stayed a pending candidate with exact weights: strict acceptance wants 8 hits in 8 rounds, and a round
  # where no point of its predicted surface was found offline ("blind") used one up: 7 hits, 1 blind. With
  # strict_blind_tries a blind round is free. Here the first search for a test point is blind, the others find one
  net = network.random_net(4, (8, 8, 8, 8, 8, 1))
  prefix = net.prefix(1)
  pre = lambda x: np.maximum(x @ net.weights[0] + net.biases[0], 0) @ net.weights[1][:, 3] + net.biases[1][3]  # noqa: E731
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200000, 8))
  x *= 1000 * rng.random((len(x), 1)) ** (1 / 8) / np.linalg.norm(x, axis=1, keepdims=True)  # the ball of radius 1000
  assert 0 < np.mean(pre(x) <= 0) < 0.02  # off in a small part of the ball only
  anchor = surface_point(pre, rng, 8, x)
  real = layers.surface_points
  cases = ((0, True, "pending"), (16, True, "unit"), (0, False, "unit"))  # the last: a true unit, every test a hit
  for tries, blind_first, verdict in cases:
    asked: list = []

    def searched(*args, asked=asked, blind_first=blind_first, **kwargs):
      asked.append(kwargs["tries"])
      if blind_first and len(asked) == 1:
        return np.zeros((0, 8)), np.zeros((0, 8)), np.zeros(0)
      return real(*args, **dict(kwargs, tries=16))  # found: only the rounds' count differs between the first two

    monkeypatch.setattr(layers, "surface_points", searched)
    unit = middle_unit(net, 1, 3, [])
    unit.anchor = anchor
    counter = CountingBackend(network.backend(net))
    q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
    lcfg = layers.LayerConfig(center=np.zeros(8), strict=True, strict_blind_tries=tries)
    stats: collections.defaultdict = collections.defaultdict(int)
    assert layers._verify(q, prefix, [unit], lcfg, np.random.default_rng(1), stats) == [verdict]
    assert asked[0] == (tries or 4) and len(asked) == 8 + (tries > 0)
    assert stats["verify_queries"] == counter.rows > 0


def test_an_unsettled_lenient_searchs_true_unit_is_finished_and_taken_back_and_a_piece_is_not():
  # random 14-10-10-10-2 seed 2 (fe_deep_fresh2.md): second-layer unit 5, on at 99.6% of the ball, was accepted by
  # the lenient search, which did not settle, and refused by the strict one (its surface out of reach of the 9
  # features it knew), so the third layer found no unit. Given the victim's first layer, its other 9 units as the
  # strict search's, and as the unsettled units unit 5 knowing 9 features and one point and a third-layer unit's
  # piece (its hyperplane in one region of the second layer), `_finish_unsettled` fills in unit 5's weight and
  # `_take_back` takes unit 5 back, not the piece
  net = network.random_net(2, (14, 10, 10, 10, 2))
  prefix = net.prefix(1)
  rng = np.random.default_rng(0)
  h0 = lambda x: np.maximum(x @ net.weights[0] + net.biases[0], 0)  # noqa: E731
  h1 = lambda x: np.maximum(h0(x) @ net.weights[1] + net.biases[1], 0)  # noqa: E731
  kept = [middle_unit(net, 1, j, []) for j in range(10) if j != 5]
  unit5 = middle_unit(net, 1, 5, [3])
  unit5.anchor = surface_point(lambda x: h0(x) @ net.weights[1][:, 5] + net.biases[1][5], rng, 14)
  unit5.points = [unit5.anchor]
  xs = surface_point(lambda x: h1(x) @ net.weights[2][:, 0] + net.biases[2][0], rng, 14)
  on = h0(xs[None])[0] @ net.weights[1] + net.biases[1] > 0  # the second layer's units on there
  w = net.weights[1][:, on] @ net.weights[2][on, 0]
  piece = layers.Unit(
    w, np.ones(10, bool), float(net.biases[1][on] @ net.weights[2][on, 0] + net.biases[2][0]), 1e-12, np.ones(1)
  )
  piece.normalise()
  piece.anchor, piece.points = xs, [xs]
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  cfg = attack.Config()
  lcfg = layers.LayerConfig(center=np.zeros(14), far=2000.0, strict=True, thorough=True)
  stats = collections.defaultdict(int)
  finished = attack._finish_unsettled(q, prefix, kept, [unit5, piece], lcfg, rng, stats)
  assert stats["unsettled_finished"] == 2 and counter.rows == q.queries
  truth = unit_row(net, 1, 5)
  errors = [min(np.abs(np.append(u.w, u.b) - s * truth).max() for s in (1, -1)) for u in finished]
  assert finished[0].known.all() and errors[0] <= 1e-9  # unit 5, its weight from feature 3 filled in
  assert all(e > 0.1 for e in errors[1:])  # the piece, if not refuted by the test (where its paths are dead)
  state = layers.LayerState(units=list(kept))
  units, _, _, without = attack._take_back(
    q, prefix, (kept, state, None, lcfg), finished, cfg, np.zeros(14), 0, stats, cfg.the_domain(), 1
  )
  # unit 5 taken back (its points straddle the kept units), the piece not (a hyperplane only in its region)
  assert len(units) == 10 and stats["units_taken_back"] == 1
  assert min(np.abs(np.append(units[-1].w, units[-1].b) - s * truth).max() for s in (1, -1)) <= 1e-9
  assert without is not None and len(without[0]) == 9


def test_time_limit_stops_offline_work(monkeypatch):
  # the refit's surface points are found offline (no query): a run past its time limit must stop there, not after
  # computing them for every unit (a 784-32-32-10 run once spent 37 min there under a 30-min limit)
  net = network.random_net(3, (10, 8, 8, 1))
  prefix = network.DeepNet(net.weights[:1], net.biases[:1])
  w, b = net.weights[1], net.biases[1]
  units = [layers.Unit(w[:, j].copy(), np.ones(8, bool), float(b[j]), 1e-6, np.ones(1)) for j in range(8)]
  for u in units:
    u.normalise()
  calls = []
  monkeypatch.setattr(layers, "surface_points", lambda *a, **k: calls.append(1) or (np.zeros((0, 10)),) * 3)
  q = queries.Querier(Oracle(network.backend(net), output="logits"), queries.Limits(max_seconds=0.0))
  with pytest.raises(LimitReachedError, match="refine: time limit"):
    layers.refit(q, prefix, units, layers.LayerConfig(center=np.zeros(10)), np.random.default_rng(0), {})
  assert calls == [] and q.queries == 0


def _unit_missing_a_feature(seed=3):
  """Layer 1 of a random 10-8-8-1 net on its true first layer, as a unit that has not seen feature `feat`, with
  precise points of its surface where that feature is inactive (what `complete` starts from)."""
  net = network.random_net(seed, (10, 8, 8, 1))
  prefix = network.DeepNet(net.weights[:1], net.biases[:1])
  w, b = net.weights[1][:, 0], float(net.biases[1][0])
  full = layers.Unit(w.copy(), np.ones(8, bool), b, 1e-12, np.ones(1))
  full.normalise()
  pts, _, _ = layers.surface_points(prefix, full, np.zeros((1, 10)), 64, 4.0, np.random.default_rng(0))
  h = network.features(prefix, pts).h
  feat = int(np.argmin((h > 0).sum(0)))
  known = np.ones(8, bool)
  known[feat] = False
  unit = layers.Unit(np.where(known, full.w, 0.0), known, full.b, 1e-12, np.ones(1), points=list(pts[h[:, feat] <= 0]))
  assert len(unit.points) >= 4
  return net, prefix, unit, feat, full


def test_complete_fills_a_weight_and_skips_lines_rounding_hides(monkeypatch):
  from functional_equivalence import search
  from functional_equivalence.errors import OraclePrecisionError

  net, prefix, unit, feat, full = _unit_missing_a_feature()
  q = queries.Querier(Oracle(network.backend(net), output="logits"))
  cfg = layers.LayerConfig(center=np.zeros(10), far=2000.0)
  fresh = {"complete_queries": 0, "completed_features": 0, "complete_precision_skips": 0}
  layers.complete(q, prefix, [unit], cfg, np.random.default_rng(1), dict(fresh))
  assert unit.known.all() and abs(unit.w[feat] - full.w[feat]) < 1e-6 * np.abs(full.w).max()

  # a short line whose answers rounding blurs (a trained deep net's cancellations; 40-20-10-10-1 once stopped the
  # whole attack there): no verdict for that try, the unit keeps its features, the attack goes on
  def blurred(*args, **kwargs):
    raise OraclePrecisionError("precision reached", precision_bits=26)

  monkeypatch.setattr(search, "find_kinks", blurred)
  _, _, unit, _, _ = _unit_missing_a_feature()
  stats = dict(fresh)
  layers.complete(q, prefix, [unit], cfg, np.random.default_rng(1), stats)
  assert not unit.known[feat] and stats["complete_precision_skips"] > 0


def _cli(*args):
  cli = [sys.executable, "-c", "from launch import fe; from launch import run; run.run()"]
  return subprocess.run(cli + list(args), cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("polish_steps", [3, 0])
def test_launcher_on_a_deep_npz_writes_the_victims_convention(tmp_path, polish_steps):
  net = network.random_net(1, (10, 8, 8, 1))
  path = network.save_npz(tmp_path / "deep.npz", net)
  p = _cli(
    "--experiment=functional_equivalence",
    f"--victim_npz={path}",
    f"--workdir={tmp_path}/w",
    "--fe_eval_inputs=5000",
    "--fe_domain_eval_inputs=5000",
    f"--fe_polish_steps={polish_steps}",
  )
  assert p.returncode == 0, p.stderr[-2000:]
  [row] = json.loads((tmp_path / "w" / "results.json").read_text())
  assert row["attack"] == "deep" and row["recovered_shape"] == "10-8-8-1" and row["agreement"] == 1.0
  assert row["domain_agreement"] == 1.0
  if polish_steps:  # the polish step's queries counted in their own stage, its error near float64's
    assert row["polish_steps"] >= 1 and row["queries_polish"] > 0 and row["max_weight_error"] <= 1e-11
  else:
    assert "polish_steps" not in row and "queries_polish" not in row and row["max_weight_error"] <= 1e-9
  with np.load(tmp_path / "w" / "recovered.npz") as f:
    assert sorted(f.files) == ["b0", "b1", "b2", "w0", "w1", "w2"]
  _assert_equivalent(net, network.load_npz(tmp_path / "w" / "recovered.npz"), eval_points(10, seed=11, count=2000))


@pytest.mark.slow
@pytest.mark.parametrize("flags,taken_back,accepted", [(["--fe_unsettled_take_back"], 1, None), ([], 0, 1)])
def test_launcher_recovers_a_unit_the_strict_search_left_aside(tmp_path, flags, taken_back, accepted):
  # random 14-10-10-10-2 seed 2 (fe_deep_unsettled.md, fe_deep_fresh2.md) through the launcher, with the benchmark's
  # attack seed. Its second layer's unit 5 (on at 99.6% of the ball) is accepted by the lenient search, which does
  # not settle, and left pending by the strict one, so the third layer finds no unit. With --fe_unsettled_take_back
  # the unit is taken back from the lenient search; with the launcher's defaults the second layer's pending
  # candidates are tested again with blind rounds free (deep/retest.py) and the unit accepted. Either way exact;
  # with neither, the attack stops ("layer 2 did not settle", fe_deep_fresh2.md before 421c952: not run here, it
  # takes longer); about 60 s each on 2 cores
  net = network.random_net(2, (14, 10, 10, 10, 2))
  path = network.save_npz(tmp_path / "deep.npz", net)
  p = _cli(
    "--experiment=functional_equivalence",
    f"--victim_npz={path}",
    "--fe_eval_inputs=5000",
    "--fe_domain_eval_inputs=5000",
    "--fe_attack_seed=2380468547",
    "--fe_seconds=300",
    f"--workdir={tmp_path}/w",
    *flags,
  )
  assert p.returncode == 0, p.stderr[-2000:]
  [row] = json.loads((tmp_path / "w" / "results.json").read_text())
  assert row["units_taken_back"] == taken_back and (row["unsettled_finished"] >= 1) == bool(taken_back)
  assert accepted is None or row["pending_accepted"] == accepted
  assert row["recovered_shape"] == "14-10-10-10-2" and row["max_weight_error"] <= 1e-9 and row["agreement"] == 1.0
  _assert_recovered(net, network.load_npz(tmp_path / "w" / "recovered.npz"), 1e-9)


@pytest.mark.parametrize(
  "args,message",
  [
    (["--fe_layers=8,x"], "--fe_layers takes positive integers"),
    (["--victim_npz={tmp}/gap.npz"], "missing array(s) w1, b1"),
    (["--oracle_output=probabilities"], "asks through --fe_oracle_output"),
    (["--fe_oracle_output=probabilities", "--victim_npz={tmp}/one.npz"], "needs a victim with at least 2 outputs"),
  ],
)
def test_launcher_bad_deep_flags_fail_with_one_line(tmp_path, args, message):
  np.savez(tmp_path / "gap.npz", w0=np.ones((3, 2)), b0=np.ones(2), w2=np.ones((2, 1)), b2=np.ones(1))
  network.save_npz(tmp_path / "one.npz", network.random_net(0, (3, 2, 1)))
  p = _cli("--experiment=functional_equivalence", f"--workdir={tmp_path}/w", *[a.format(tmp=tmp_path) for a in args])
  assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_a_first_layer_unit_whose_later_paths_are_rarely_alive_survives_the_cross_check():
  # random 12-8-6-3 seed 7, the benchmark's attack seed: first-layer unit 6 feeds mostly second-layer units that are
  # off on much of one side of another unit; its 3 test points there all missed and the cross check refuted it
  # (7 features for layer 1: its search never settled). Since the eleventh session it was tested again on 12 points
  # a side and kept; since the thirteenth a test point where the network is flat (every second-layer unit off)
  # tells nothing, and the unit is kept at once.
  net = network.random_net(7, (12, 8, 6, 3))
  result = _extract(net, seed=4184397123)
  assert result.stats.get("cross_retests", 0) == 0 and result.stats.get("cross_refuted", 0) == 0
  _assert_recovered(net, result.net, 1e-12)


def test_a_network_short_of_the_checks_precision_after_its_repairs_is_polished_and_checked_again():
  # random 12-8-6-3 seed 0 with a check limit of 1e-11 and no repair: the peeled network is off by 2.4e-11 (before
  # the rescue: "final check failed, precision reached: 2^-35.3"); after the last repair the failing network is
  # polished (every weight at once) and kept because the refined one passes a fresh final check
  net = network.random_net(0, (12, 8, 6, 3))
  result = _extract(net, check_rtol=1e-11, repairs=0)
  assert result.stats["polish_rescue"] == 1 and result.stats["check_error"] <= 1e-11
  _assert_recovered(net, result.net, 1e-12)


def test_a_check_limit_below_the_fits_precision_ends_in_a_one_line_error():
  # with check_rtol 1e-12 the last layer's fit (residual ~1e-11) is never accepted; its misfit points were then
  # empty and the search crashed on zero lines (ValueError); now the layer's search runs out of rounds
  with pytest.raises(ExtractionError, match="did not settle"):
    _extract(network.random_net(1, (12, 8, 6, 3)), check_rtol=1e-12, repairs=0)


def test_a_first_layer_unit_whose_kink_shows_only_where_a_deeper_unit_is_on_is_tested_again_and_kept():
  # fe_deep_rare.md's 10-8-6-1 seed 4 (its victim and attack seed): 4 of the 6 points that first tested the candidate
  # for first-layer unit 5 fell where every second-layer unit is off (the network is constant there: no kink shows),
  # so it became a facet (40 of 40 other streams accept it) which, the first layer having one region, was never
  # tested again however many kinks joined it (10): 7 of 8 units, then "layer 2: the search did not settle". Now a
  # first-layer facet is tested again as its kinks fall in regions told apart by the units found so far.
  net = rare_net(4, (10, 8, 6, 1), point_seed=[99, 4])
  result = _extract(net, seed=852798553)
  assert result.stats["facet_retests"] >= 1
  _assert_recovered(net, result.net, 1e-12)


def test_a_kink_with_no_signature_and_a_unit_with_nan_weights_match_nothing():
  # a pruned victim (12-10-8-1 with 1-2 outgoing weights per first-layer unit) gave a kink whose partial signature
  # is 0 on its features: it matched a unit with scale 0, absorbing it made that unit's weights 0 / 0 = NaN, a NaN
  # unit then matched every kink, and the attack ended in numpy's "array must not contain infs or NaNs"
  unit = layers.Unit(np.array([1.0, 0.5, 0.0]), np.ones(3, bool), 0.5, 1e-12, np.ones(1))
  assert layers.match(unit, np.zeros(3), np.ones(3, bool), 0.0, 1e-12, 1.0) is None
  broken = layers.Unit(np.full(3, np.nan), np.ones(3, bool), np.nan, 1e-12, np.ones(1))
  assert layers.match(broken, np.array([1.0, 0.5, 0.0]), np.ones(3, bool), 0.5, 1e-12, 1.0) is None


def test_magnitude_pruning_zeroes_the_smallest_weights_of_one_layer():
  net = network.random_net(0, (10, 8, 6, 1))
  cut = network.pruned(net, 1, 0.75)
  w, v = np.abs(net.weights[1]), cut.weights[1]
  assert (v == 0).sum() == 36 and np.abs(v[v != 0]).min() >= w[v == 0].max()
  assert np.array_equal(v[v != 0], net.weights[1][v != 0])
  assert all(np.array_equal(a, b) for i, (a, b) in enumerate(zip(net.weights, cut.weights)) if i != 1)


@pytest.mark.slow
def test_true_units_of_a_strict_layer_survive_its_cross_check():
  # random 10-8-8-8-1 seed 15, the benchmark's attack seed: the strict second layer's cross check refuted two true
  # units (its third layer then never settled); retested on 12 points a side (from a stream of their own) they are kept
  sizes = (10, 8, 8, 8, 1)
  net = network.random_net(15, sizes)
  result = _extract(net, seed=1878400661)
  assert result.stats["cross_retests"] >= 1
  _assert_recovered(net, result.net, 1e-9)


@pytest.mark.slow
def test_a_units_pending_candidate_is_promoted_when_no_deeper_layer_is_found():
  # digits 64-24-24-10 of training seed 0 (fe_deep_digits_attack_seeds.md, attack seed 2): a second-layer unit on at
  # 0.03% of the ball is seen at kinks where few of its features are on and stays a pending candidate; the layer is
  # taken for a hidden one, the next finds no unit, and `_fall_back` completes the candidate by walking and keeps it
  # because the last layer's fit with it is exact; the polish step confirms it (check to promoted_rtol): exact
  net, _ = network.digits_net(0, [24, 24])
  result = _extract(net, seed=2)
  assert result.stats["promoted_units"] == 1 and result.stats["repair_promotions"] == 0
  assert result.net.sizes == net.sizes
  assert result.stats["check_error"] <= attack.Config().promoted_rtol
  _assert_recovered(net, result.net, 2.0**-30)


def test_a_fit_that_passes_with_a_twin_of_a_fully_seen_unit_is_returned_without_it(monkeypatch):
  # random 10-8-8-8-1 seeds 7 and 19 on a 2-core AMD EPYC (fe_deep_seeds20.md): the last repair's fit pairs one unit
  # with a twin, every weight seen, and passes the final check; refused for its twin before, now polished without it
  # (attack._without_twins) and kept after a fresh check: exact. Here a twin of weight 1e-13 forced onto a fit
  net = network.random_net(0, (12, 8, 6, 3))
  read_last = attack._read_last

  def with_a_twin(*args):
    units, last = read_last(*args)
    pairs = np.zeros(len(units), bool)
    pairs[0] = True
    return units, dataclasses.replace(last, pairs=pairs, w_twin=1e-13 * last.w_out[pairs])

  monkeypatch.setattr(attack, "_read_last", with_a_twin)
  result = _extract(net)
  assert result.stats["twins_dropped"] == 1 and result.net.sizes == net.sizes
  _assert_recovered(net, result.net, 1e-9)
  monkeypatch.setattr(attack, "_rescue", lambda *args: None)  # without that polish: refused for the twin
  with pytest.raises(ExtractionError, match="with twins"):
    _extract(net)


@pytest.mark.slow
def test_a_promoted_unit_left_unconfirmed_by_the_time_limit_is_reported_as_the_limit(monkeypatch):
  # the victim above, its polish step stopped by the attack's limit (as digits 64-64-64-10 on a loaded 2-core AMD
  # EPYC at its 1,200 s): a LimitReachedError that names the polish step and the limit, not "not confirmed"
  net, _ = network.digits_net(0, [24, 24])

  def stopped(*args, **kwargs):
    raise LimitReachedError("time limit 1200 s reached (123 queries used)")

  monkeypatch.setattr(attack, "_refine", stopped)
  with pytest.raises(LimitReachedError, match=r"polish step that confirms them stopped \(time limit 1200 s"):
    _extract(net, seed=2)


def test_a_window_where_the_network_is_constant_is_flat_not_a_miss():
  # recover.locate_kinks says `flat` where g is constant over the window (every unit of a later layer off): no kink
  # of any unit can show there. A kink, or a slope without a kink, is not flat.
  def oracle(g):
    return lambda x, stage, underflow_ok=False: g(x)

  x0, dirs, w, slope = (
    np.array([[0.3, -0.2], [5.0, 1.0]]),
    np.array([[1.0, 0.0], [0.0, 1.0]]),
    np.full(2, 0.1),
    np.ones(2),
  )
  constant = oracle(lambda x: np.full((len(x), 2), 1.5))
  kink = oracle(lambda x: np.stack([np.maximum(x[:, 0] - 0.3, 0) + 0 * x[:, 1], np.maximum(x[:, 1] - 1.0, 0)], 1))
  line = oracle(lambda x: np.stack([x[:, 0] + 1e-6 * x[:, 1], 2.0 * x[:, 1]], 1))
  st, good, ds, mag, flat = recover.locate_kinks(constant, x0, dirs, w, slope)
  assert flat.all() and not good.any()
  st, good, ds, mag, flat = recover.locate_kinks(kink, x0, dirs, w, slope)
  assert good.all() and not flat.any() and np.allclose(st, 0.0, atol=1e-12)
  st, good, ds, mag, flat = recover.locate_kinks(line, x0, dirs, w, slope)
  assert not good.any() and not flat.any()


@pytest.mark.slow
def test_a_unit_of_a_strict_layer_whose_surface_is_flat_at_some_test_points_is_accepted():
  # random 10-8-8-8-1 seed 10, the benchmark's attack seed: second-layer unit 1 (on at 38% of N(0, I)) failed strict
  # acceptance (8 hits, no miss) every time: at 1 of its test points in 5 every third-layer unit is off and the
  # network is constant, so no kink shows. It was a facet, the layer had 7 units and the third "did not settle"
  # (LayerNotSettledError). A test where g is flat now counts as neither hit nor miss: recovered exactly.
  sizes = (10, 8, 8, 8, 1)
  net = network.random_net(10, sizes)
  result = _extract(net, seed=1058507441)
  assert result.stats["flat_tests"] >= 1 and result.widths == [8, 8, 8]
  _assert_recovered(net, result.net, 1e-9)


def test_on_points_lie_where_the_unit_and_its_unseen_feature_are_both_on():
  # unseen.on_points: offline ascent from the best of the domain's check points; each point returned is inside the
  # domain, the unit's predicted pre-activation > 0 and the unseen feature on there, even where that is rare
  from functional_equivalence import domain

  net = network.random_net(4, (6, 5, 5, 1))
  prefix = network.DeepNet(net.weights[:2], net.biases[:2])
  w = np.array([0.6, -0.3, 0.0, 0.5, 0.2])
  unit = layers.Unit(w, np.array([True, True, False, True, True]), -4.0, 1e-12, np.ones(1))
  ball = domain.Ball(100.0)
  x = unseen.on_points([(prefix, unit)], ball, 6)
  h = network.feature_values(prefix, x)
  assert len(x) >= 4 and ball.contains(x).all()
  assert np.all(h @ w + unit.b > 0) and np.all(h[:, 2] > 0)
  draws = ball.check_points(np.random.default_rng(0), 6, 1 << 14)
  hd = network.feature_values(prefix, draws)
  assert np.mean((hd @ w + unit.b > 0) & (hd[:, 2] > 0)) < 1e-3  # rare among the draws
  # the input gradient it ascends is the network's (finite differences on a point's linear region)
  pre = network.preactivations(prefix, x[:1])
  g = active.input_grad(prefix, pre, (pre[-1] > 0) * w)[0]
  f = lambda z: network.feature_values(prefix, z) @ w  # noqa: E731
  num = np.array([(f(x[:1] + 1e-6 * e) - f(x[:1] - 1e-6 * e))[0] / 2e-6 for e in np.eye(6)])
  assert np.allclose(g, num, rtol=1e-5, atol=1e-8)


def test_a_unit_the_polish_step_leaves_without_output_weight_is_dropped():
  # attack._drop_idle: CME-trained 40-20-10-10-1 with attack seed 1 was returned with an eleventh last-hidden unit
  # (a near-copy of another) whose output weight the polish step brought to 0: the same function, widths 20-10-11
  net = network.random_net(0, (6, 5, 4, 2))
  w_out = net.weights[-1].copy()
  w_out[2] = 1e-12  # unit 2 of the last hidden layer: idle
  idle_net = network.DeepNet(net.weights[:-1] + (w_out,), net.biases)
  units = [layers.Unit(np.ones(5), np.ones(5, bool), 0.0, 1e-12, np.ones(2)) for _ in range(4)]
  stats = {}
  kept, left = attack._drop_idle(idle_net, units, stats)
  assert kept.sizes == (6, 5, 3, 2) and len(left) == 3 and stats["idle_dropped"] == 1
  assert left == [units[0], units[1], units[3]]
  x = np.random.default_rng(0).normal(size=(100, 6)) * 10
  assert np.allclose(network.logits(kept, x), network.logits(idle_net, x), rtol=0, atol=1e-9)
  same, untouched = attack._drop_idle(net, units, {})
  assert same is net and untouched is units


def test_a_middle_unit_the_polish_step_leaves_without_outgoing_weight_is_dropped():
  # random 10-8-8-8-3 seed 0 was returned with a ninth second-layer unit whose weights in every third-layer unit were
  # ~2e-11 ("wrong: units unmatched"; "close" once it is dropped). The tables lose its entry, the next its feature
  net = network.random_net(1, (6, 5, 4, 3, 2))
  weights = list(net.weights)
  weights[2] = weights[2].copy()
  weights[2][1] = 1e-12  # second-layer unit 1: idle
  idle_net = network.DeepNet(tuple(weights), net.biases)
  units = [layers.Unit(np.ones(4), np.ones(4, bool), 0.0, 1e-12, np.ones(2)) for _ in range(3)]
  tables = [
    attack._table([layers.Unit(np.ones(n), np.ones(n, bool), 0.0, e, None) for e in range(m)])
    for n, m in ((6, 5), (5, 4))
  ] + [attack._table(units)]
  stats = {}
  kept, left = attack._drop_idle(idle_net, units, stats, tables)
  assert kept.sizes == (6, 5, 3, 3, 2) and left is units and stats["idle_dropped"] == 1
  assert tables[1]["row_error"] == [0, 2, 3] and tables[2]["features"] == 3 and tables[0]["row_error"] == list(range(5))
  x = np.random.default_rng(0).normal(size=(100, 6)) * 10
  assert np.allclose(network.logits(kept, x), network.logits(idle_net, x), rtol=0, atol=1e-9)
  # without the tables the middle layers are not looked at (their widths unknown)
  assert attack._drop_idle(idle_net, units, {})[0] is idle_net


def test_a_candidate_joins_the_remainder_only_where_its_unseen_weights_cannot_count():
  # attack._pocket_only: a unit off only in a pocket stands in the linear remainder where it is on and is a unit of its
  # own in the pocket; its unknown weight (0) from feature 1 is harmless only if feature 1 is never on on the pocket's
  # side, which the check's failing points tell (random 5-20-10-2 seed 3 joined without the test was returned off
  # by 5.8e-4 on N(0, I))
  from functional_equivalence import domain

  unit = layers.Unit(np.array([1.0, 0.0]), np.array([True, False]), -1.0, 1e-12, np.ones(1))  # z = h0 - 1
  pocket = np.array([[5.0, -3.0], [3.0, 2.0]])  # z > 0 at both: the pocket is the side z > 0, h0 = relu(x0) > 1
  far = network.DeepNet((np.array([[1.0, -1.0], [0.0, 0.0]]),), (np.array([0.0, -5.0]),))  # h1 on only at x0 < -5
  near = network.DeepNet((np.array([[1.0, 0.0], [0.0, 1.0]]),), (np.zeros(2),))  # h1 on wherever x1 > 0
  ball = domain.Ball(1000.0)
  assert attack._pocket_only(far, unit, pocket, ball)
  assert not attack._pocket_only(near, unit, pocket, ball)
  assert not attack._pocket_only(far, unit, np.array([[5.0, -3.0], [0.5, 0.0]]), ball)  # the failing points split
