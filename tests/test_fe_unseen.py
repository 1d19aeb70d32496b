"""Weights from features a unit never saw on at its surface (functional_equivalence/deep/unseen.py and the attack's
refusal of a twinned last layer, the promotion of a pending candidate in a repair): the final check's wedge points
find a network wrong on a 1e-5 part of the domain that its 8,192 points miss; a twinned last layer ends in a one-line
error instead of a network wrong at rare points; a unit taken for a linear remainder is recovered exactly."""

import collections

import numpy as np
import pytest

from extraction.oracle import Oracle
from functional_equivalence import domain, queries
from functional_equivalence.deep import align, attack, network, unseen
from functional_equivalence.deep import layer as layers
from tests.counting import CountingBackend
from tests.deep_points import eval_points, middle_unit, unit_row


def _off(net, other, x):
  a, b = network.logits(net, x), network.logits(other, x)
  return np.max(np.abs(a - b), axis=1) / np.max(np.abs(a)) > 1e-8


def _extracted_exactly(net, seed):
  """The whole attack on `net` through logits (every query counted by a counting backend), its logits the victim's
  to 1e-12 (relative) and its aligned weights to 2^-30 on the deep tests' points and 200,000 of the ball."""
  d = net.sizes[0]
  counter = CountingBackend(network.backend(net))
  result = attack.extract(Oracle(counter, output="logits", record_inputs=False), d, attack.Config(), seed=seed)
  assert result.queries == counter.rows
  x = np.concatenate([eval_points(d), domain.Ball(1000.0).check_points(np.random.default_rng(3), d, 200_000)])
  a, b = network.logits(net, x), network.logits(result.net, x)
  assert np.max(np.abs(a - b)) <= 1e-12 * np.max(np.abs(a))
  assert align.weight_error(net, result.net, x)["max_weight_error"] <= 2.0**-30
  return result


def test_wedge_points_find_a_wrong_weight_from_a_rarely_seen_feature():
  # random 10-8-8-8-1 seed 14: third-layer unit 3's weight from feature 5 off by 5% of the unit's norm moves its
  # surface only inside feature 5's region, where the unit is rarely near it: the network is off at 5 of 200,000
  # points of the ball, none of the final check's 8,192; near the predicted surface where feature 5 is on, some are
  net = network.random_net(14, (10, 8, 8, 8, 1))
  dom = domain.Ball(1000.0)
  j, k = 3, 5
  w = net.weights[2].copy()
  w[k, j] += 0.05 * np.linalg.norm(w[:, j])
  wrong = network.DeepNet(net.weights[:2] + (w,) + net.weights[3:], net.biases)
  known = np.ones(8, bool)
  known[k] = False
  unit = layers.Unit(w[:, j], known, net.biases[2][j], 1e-12, np.ones(1))
  prefix = net.prefix(2)
  assert not _off(net, wrong, dom.check_points(np.random.default_rng(0), 10, 8192)).any()
  points = unseen.wedge_points([(prefix, unit)], dom, 10)
  assert len(points) == 64 and dom.contains(points).all()
  assert np.all(network.feature_values(prefix, points)[:, k] > 0)
  assert _off(net, wrong, points).sum() >= 2
  assert np.array_equal(points, unseen.wedge_points([(prefix, unit)], dom, 10))  # its own stream: reproducible


def test_wedge_points_only_for_units_with_unseen_features_after_the_first_layer():
  net = network.random_net(14, (10, 8, 8, 8, 1))
  dom = domain.Ball(1000.0)
  seen = layers.Unit(net.weights[2][:, 0], np.ones(8, bool), net.biases[2][0], 1e-12, np.ones(1))
  first = layers.Unit(net.weights[0][:, 0], np.zeros(10, bool), net.biases[0][0], 1e-12, np.ones(1))
  assert unseen.wedge_points([(net.prefix(2), seen), (network.DeepNet((), ()), first)], dom, 10).shape == (0, 10)


@pytest.mark.slow
def test_a_once_twinned_last_layer_is_recovered():
  # random 10-8-8-8-1 seed 7 (fe_deep_seeds20's attack seed): a third-layer unit on at 99.97% of the ball has 3
  # weights it never saw; after 8 repairs the last layer's fit paired every unit with a twin, exact on its points, and
  # the network passed the final check while off by 2.8e-4 at points of 4 million (ad hoc): refused since the eighth
  # session ("the last hidden layer's fit pairs ... with twins"). Since the fifteenth the final check also looks deep
  # inside where rarely co-active (unit, feature) pairs are on: it fails there earlier, and the repairs recovered it
  # on the Xeon machines of sessions 15-28. Which path the attack takes depends on float rounding: on a 2-core AMD
  # EPYC (thirty-first session) the last repair's fit pairs one unit, every weight seen, and passes the check: polished
  # without its twin since then (attack._without_twins), exact. Under another path tried that session the fit paired
  # all 8 units, one with a weight never seen; polished without the twins it passed a fresh check and was off by
  # 6.6e-6 at 1 of these 220,000 points, so that polish is only for units whose weights were all seen. Since the
  # forty-third session a shared kink's reading takes it down yet another path, exact through attack._join_pockets
  result = _extracted_exactly(network.random_net(7, (10, 8, 8, 8, 1)), seed=4184397123)
  assert result.stats["repair_rounds"] >= 1


def test_a_nearly_always_active_unit_taken_for_a_remainder_is_promoted_in_a_repair():
  # random 10-10-10-1 seed 6: second-layer unit 2 is crossed by 5 of 2,000 random lines and on at ~100% of the ball,
  # so the last layer is first fitted with a linear remainder in its place; where it is off the final check fails,
  # and the repairs' lines meet its kinks, which stay pending (before: 8 repairs, "final check failed", attack seed 1).
  # The candidate that makes the fit exact without the remainder and fits the failing points is promoted
  net = network.random_net(6, (10, 10, 10, 1))
  counter = CountingBackend(network.backend(net))
  result = attack.extract(Oracle(counter, output="logits", record_inputs=False), 10, attack.Config(), seed=1)
  assert result.queries == counter.rows
  assert result.net.sizes == net.sizes and result.stats["repair_promotions"] == 1
  x = eval_points(10)
  err = align.weight_error(net, result.net, x)
  assert err["max_weight_error"] <= 1e-9, err
  a, b = network.logits(net, x), network.logits(result.net, x)
  assert np.max(np.abs(a - b)) / np.max(np.abs(a)) < 1e-10


def _unit_missing(net, j, missing):
  """Last-hidden unit j of `net` as a layer.Unit whose weights from `missing` features are unknown (left at 0)."""
  w = net.weights[-2][:, j].copy()
  w[missing] = 0.0
  known = np.ones(len(w), bool)
  known[missing] = False
  unit = layers.Unit(w, known, float(net.biases[-2][j]), 1e-12, np.ones(1))
  unit.normalise()
  return unit


def test_read_weights_solves_two_unseen_weights_together_and_reads_none_from_one_equation():
  # two weights of a third-layer unit unknown and both features on at the failing points: one kink gives one equation
  # in two unknowns (nothing read: the weights stay unknown), kinks on several points' lines give both, to 1e-9
  from functional_equivalence import queries

  net = network.random_net(4, (10, 8, 8, 8, 1))
  prefix = net.prefix(2)
  j, missing = 5, [3, 4]
  truth = np.append(net.weights[2][:, j], net.biases[2][j])
  truth = truth / np.linalg.norm(truth[:-1])  # as Unit.normalise leaves it once every weight is known
  rng = np.random.default_rng(0)
  x = domain.Ball(20.0).check_points(rng, 10, 200_000)
  h = network.feature_values(prefix, x)
  pre = h @ net.weights[2] + net.biases[2]
  near = np.abs(pre[:, j]) / (np.linalg.norm(h, axis=1) + 1) < 0.05
  points = x[near & np.all(h[:, missing] > 0, axis=1)][:16]
  assert len(points) >= 8

  def read(points):
    units = [(prefix, _unit_missing(net, i, missing if i == j else [])) for i in range(8)]
    q = queries.Querier(Oracle(network.backend(net), output="logits", record_inputs=False))
    cfg = layers.LayerConfig(center=np.zeros(10), far=2000.0)
    stats = {}
    count = unseen.read_weights(q, units, points, cfg, stats)
    assert stats.get("read_weights_refused", 0) == 0  # the true weights: confirmed
    return units[j][1], count, q.queries

  unit, count, asked = read(points[:1])
  assert count == 0 and asked > 0 and not unit.known[missing].any() and np.all(unit.w[missing] == 0)
  unit, count, _ = read(points)
  assert count == 2 and unit.known.all()
  assert np.max(np.abs(np.append(unit.w, unit.b) - truth)) <= 1e-9


def test_read_middle_fills_a_third_layer_weight_from_a_feature_rarely_on_with_its_unit():
  # random 8-8-8-8-8-1 seed 2 (fe_deep_unseen.md): third-layer unit 0 has weight -0.38 from second-layer unit 7,
  # on together with it at 0.014% of the ball; the searches left it 0 and the fourth layer never settled. Given
  # the victim's first two layers, read_middle reads it (on_points, lines along the unit's normal, the kinks
  # matched to the units with unseen weights) to 1e-9, and touches neither the other units nor their weights
  from functional_equivalence import queries

  net = network.random_net(2, (8, 8, 8, 8, 8, 1))
  prefix = net.prefix(2)
  units = [middle_unit(net, 2, i, [7] if i == 0 else []) for i in range(8)]
  others = [(u.w.copy(), u.b) for u in units[1:]]
  truth = unit_row(net, 2, 0)
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  cfg = layers.LayerConfig(center=np.zeros(8), far=2000.0, strict=True)
  stats = collections.defaultdict(int)  # the attack's counters
  read = unseen.read_middle(q, prefix, units, cfg, domain.Ball(1000.0), np.random.default_rng(0), stats)
  assert read == 1 and stats["middle_unseen_read"] == 1 and units[0].known.all() and counter.rows == q.queries > 0
  assert np.max(np.abs(np.append(units[0].w, units[0].b) - truth)) <= 1e-9
  assert all(np.array_equal(u.w, w) and u.b == b for u, (w, b) in zip(units[1:], others))
  # with every weight known there is nothing to read, and nothing is asked
  again = unseen.read_middle(q, prefix, units, cfg, domain.Ball(1000.0), np.random.default_rng(0), stats)
  assert again == 0
  assert counter.rows == q.queries


def _seed0_last_layer():
  # random 8-8-8-8-8-1 seed 0 (fe_deep_unseen.md): with its first three layers exact, last-hidden-layer units 4 and 5
  # kept weight 0 from third-layer unit 2 (on at 6% of the ball, never at N(0, I)) and the final check failed after
  # every repair; both have it on at the same points, where 7 features are on with a Jacobian of rank 2-3
  net = network.random_net(0, (8, 8, 8, 8, 8, 1))
  prefix = net.prefix(3)
  units = [middle_unit(net, 3, i, [2] if i in (4, 5) else []) for i in (0, 1, 2, 3, 4, 5, 7)]  # 6: never on
  points = unseen.on_points([(prefix, u) for u in units if not u.known.all()], domain.Ball(1000.0), 8)
  return net, prefix, units, points


@pytest.mark.parametrize("reader", ["jumps", "kinks"])
def test_last_layer_weights_read_where_two_units_have_the_same_unseen_feature_on(reader):
  # jumps.read attributes each kink by its input-gradient jump; read_weights (forty-third session; it read nothing
  # where two units have such a feature on) searches the line along each unit's normal and keeps a kink's reading
  # for the unit whose surface is then where it predicts it (unseen._confirmed). Both weights to 1e-12 (jumps) or
  # 1e-11 (kinks, located by bisection), the other units untouched, counted against a counting backend
  from functional_equivalence.deep import jumps

  net, prefix, units, points = _seed0_last_layer()
  others = [(u.w.copy(), u.b) for u in units if u.known.all()]
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  cfg = layers.LayerConfig(center=np.zeros(8), far=2000.0)
  stats = collections.defaultdict(int)
  if reader == "jumps":
    assert jumps.read(q, prefix, units, points, cfg) == 2
  else:
    assert unseen.read_weights(q, [(prefix, u) for u in units], points, cfg, stats) == 2
    assert stats["read_weights_shared"] == 2
  assert counter.rows == q.queries > 0
  for i, u in zip((4, 5), units[4:6]):
    truth = unit_row(net, 3, i)
    assert u.known.all() and np.max(np.abs(np.append(u.w, u.b) - truth)) <= (1e-12 if reader == "jumps" else 1e-11)
  assert all(np.array_equal(u.w, w) and u.b == b for u, (w, b) in zip([units[j] for j in (0, 1, 2, 3, 6)], others))
  # with every weight known there is nothing to read, and nothing is asked
  asked = q.queries
  assert jumps.read(q, prefix, units, points, cfg) == 0 and q.queries == asked


def test_a_shared_kink_is_read_only_for_the_unit_whose_surface_it_is():
  # random 8-8-8-8-8-1 seed 4: last-hidden-layer units 0 and 7 both lack their weight from third-layer unit 2; unit 7
  # (on at 0.25% of the ball) is on with it at 21 of 262,144 points, unit 0 at none. At points where unit 7 and the
  # feature are on, each unit's line meets unit 7's kink: unit 7's reading is kept (to 1e-9), unit 0's is refused
  # (its surface is not where the reading puts it), and unit 0's weight stays unknown
  net = network.random_net(4, (8, 8, 8, 8, 8, 1))
  prefix = net.prefix(3)
  units = [middle_unit(net, 3, i, [2] if i in (0, 7) else []) for i in range(8)]
  x = domain.Ball(1000.0).check_points(np.random.default_rng(0), 8, 1 << 18)
  pre = network.preactivations(net, x)
  points = x[(pre[2][:, 2] > 0) & (pre[3][:, 7] > 0)][:16]
  assert len(points) == 16 and not np.any((pre[2][:, 2] > 0) & (pre[3][:, 0] > 0))
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  stats = collections.defaultdict(int)
  cfg = layers.LayerConfig(center=np.zeros(8), far=2000.0)
  assert unseen.read_weights(q, [(prefix, u) for u in units], points, cfg, stats) == 1
  assert stats["read_weights_shared"] == 1 and stats["read_weights_refused"] >= 1 and counter.rows == q.queries
  assert units[7].known.all() and np.max(np.abs(np.append(units[7].w, units[7].b) - unit_row(net, 3, 7))) <= 1e-9
  assert not units[0].known[2] and units[0].w[2] == 0.0


def test_read_lenient_takes_a_layer_as_the_last_once_its_unseen_weights_are_read():
  # random 8-8-8-8-8-1 seed 2: its last hidden layer's 8 units found, 5 weights from features never seen on left 0
  # (one feature on at 1.3% of the ball), the last layer's fit off, so a deeper layer seemed to follow and the
  # strict search never settled. Given the victim's first three layers and that lenient outcome, _read_lenient
  # reads the 5 weights from gradient jumps and the fit becomes exact: the layer is the last hidden one
  from functional_equivalence import queries

  net = network.random_net(2, (8, 8, 8, 8, 8, 1))
  prefix = net.prefix(3)
  missing = {3: [2], 2: [6], 6: [6, 3], 7: [0]}
  units = [middle_unit(net, 3, i, missing.get(i, [])) for i in range(8)]
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  cfg, dom = attack.Config(), domain.Ball(1000.0)
  lcfg = layers.LayerConfig(center=np.zeros(8), far=2000.0)
  stats = collections.defaultdict(int)
  state = layers.LayerState(units=list(units))
  units, off = attack._fit_last(q, prefix, units, state, cfg, np.zeros(8), np.random.default_rng(0), stats, dom)
  assert off.residual > 1e3 * cfg.check_rtol  # a deeper layer seems to follow
  taken = attack._read_lenient(q, prefix, (units, state, off, lcfg), cfg, dom, np.random.default_rng(0), stats)
  assert taken is not None and taken[2].residual <= cfg.check_rtol and stats["read_jumps"] == 5
  assert counter.rows == q.queries
  for i, u in enumerate(taken[0]):
    truth = unit_row(net, 3, i)
    assert u.known.all() and np.max(np.abs(np.append(u.w, u.b) - truth)) <= 1e-9


def test_read_before_takes_the_layer_before_as_the_last_once_its_unseen_weights_are_read():
  # random 14-10-10-10-2 seed 3 (fe_deep_fresh2.md): its last hidden layer's 10 units found, units 5 and 6 (on at 98%
  # and 94% of the ball) without their weight from second-layer feature 8 (on with them at 19%; their kinks lie where
  # it is off). The fit's twins stood in for those weights (in the attack, where another unit lacked a weight too,
  # the fit was off by 0.015), a deeper layer was searched and found nothing. Given the victim's first two layers and
  # that outcome as the layer before's, _read_before reads them (one from the output's gradient, where every unit is
  # on at every point: the joint system is singular, and the single points' readings, which agree, are kept) and
  # takes the layer as the last hidden one
  net = network.random_net(3, (14, 10, 10, 10, 2))
  prefix = net.prefix(2)
  units = [middle_unit(net, 2, i, [8] if i in (5, 6) else []) for i in range(10)]
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  cfg, dom = attack.Config(), domain.Ball(1000.0)
  lcfg = layers.LayerConfig(center=np.zeros(14), far=2000.0)
  stats = collections.defaultdict(int)
  state = layers.LayerState(units=list(units))
  units, off = attack._fit_last(q, prefix, units, state, cfg, np.zeros(14), np.random.default_rng(0), stats, dom)
  # the fit's twins stand in for the unread weights (in the attack its units' own errors left it off)
  assert off.pairs.any() and attack._unseen_left(prefix, units, dom)
  before = dict(prefix=prefix, tries=[(units, state, off, lcfg)], surfaces=0)
  taken = attack._read_before(q, before, cfg, dom, np.random.default_rng(0), stats)
  assert taken is not None and taken[2].residual <= cfg.check_rtol and stats["read_before"] == 1
  assert stats["read_gradients"] >= 1 and stats["gradient_joint_fallbacks"] >= 1
  assert counter.rows == q.queries
  for i, u in enumerate(taken[0]):
    truth = unit_row(net, 2, i)
    assert u.known.all() and np.max(np.abs(np.append(u.w, u.b) - truth)) <= 1e-9, i
  # nothing to read in a layer before whose units are all known, or without a layer before
  assert attack._read_before(q, before, cfg, dom, np.random.default_rng(0), stats) is None
  assert attack._read_before(q, None, cfg, dom, np.random.default_rng(0), stats) is None


def _onto(net, x, j):
  """x moved along the gradient of last-hidden-layer unit j's pre-activation onto its surface, kept where the
  move stays inside x's first-layer region (there the pre-activation is linear)."""
  pre = network.preactivations(net, x)
  on = pre[0] > 0
  grads = np.einsum("dk,nk,k->nd", net.weights[0], on, net.weights[1][:, j])
  y = x - (pre[1][:, j] / np.maximum(np.sum(grads**2, axis=1), 1e-300))[:, None] * grads
  return y[np.all((network.preactivations(net, y)[0] > 0) == on, axis=1)]


def test_a_weight_read_at_another_unit_s_kink_is_refused_and_one_read_at_the_unit_s_own_kept():
  # unseen.read_weights' check (`_confirmed`): iris-trained 4-16-16-3 seed 0 (fe_deep_unseen.md) gave a unit a weight
  # from a feature never on at its surface from a kink of a unit never found, which then passed for known, and the
  # attack stopped. Here a random victim with more first-layer units than inputs: unit u made to pass through a kink
  # of unit m, by the one weight that reading there gives it (what read_weights solves), is refused; the same unit
  # with its true weight, at a kink of its own, is kept. Window tests only (queries counted by the backend)
  net = network.random_net(3, (4, 12, 8, 2))
  prefix, u, m = net.prefix(1), 0, 1
  x = np.random.default_rng(0).normal(size=(4000, 4)) * 3
  own, other = _onto(net, x, u), _onto(net, x, m)
  h = network.feature_values(prefix, other)
  k = int(np.argmax((h > 1e-3).sum(axis=0)))  # a feature on at many of m's surface points
  x_m = other[np.argmax(h[:, k])]  # where it is on most
  hk = network.feature_values(prefix, x_m[None])[0]
  w, b = net.weights[1][:, u].copy(), float(net.biases[1][u])
  w[k] = -(np.delete(hk, k) @ np.delete(w, k) + b) / hk[k]  # the reading at m's kink
  assert abs(w[k] - net.weights[1][k, u]) > 1e-3 * np.linalg.norm(net.weights[1][:, u])
  known = np.ones(12, bool)
  cfg = layers.LayerConfig(center=np.zeros(4), scale=1.0)
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  wrong = layers.Unit(w, known, b, 1e-9, np.ones(2))
  assert not unseen._confirmed(q, prefix, wrong, x_m[None], cfg)
  assert counter.rows > 0
  true = layers.Unit(net.weights[1][:, u].copy(), known, b, 1e-9, np.ones(2))
  x_u = own[np.argmax(network.feature_values(prefix, own)[:, k])]
  assert network.feature_values(prefix, x_u[None])[0, k] > 0
  assert unseen._confirmed(q, prefix, true, x_u[None], cfg)


def test_a_remainder_unit_off_in_a_pocket_has_its_unseen_weight_read_there():
  # random 8-8-8-8-8-1 seed 4: last-hidden unit 6 is on over the ball but at 1.3e-5 of it (a pocket), so it stands in
  # the linear remainder; its kinks, on the pocket's edge, never had third-layer units 2 and 6 on. Unit 2 is off in
  # the whole pocket (its weight cannot count: relu(z) = z + relu(-z), the remainder takes z), unit 6 is on at a
  # quarter of it, so the candidate could not join the remainder (attack._pocket_only) and the attack stopped after 8
  # repairs. On the side of its surface that holds fewer points, read_oriented reads the weight from unit 6 and
  # leaves unit 2's unknown, and no point of that side has a feature on whose weight is still unknown
  from functional_equivalence.deep import surface_reads

  net = network.random_net(4, (8, 8, 8, 8, 8, 1))
  prefix, dom = net.prefix(3), domain.Ball(1000.0)
  cand = middle_unit(net, 3, 6, [2, 6])
  others = [middle_unit(net, 3, i, []) for i in (0, 1, 2, 3, 5, 7)]  # 4: on everywhere, the remainder
  side = attack._minority_side(prefix, cand, dom)
  assert side == -1.0 and not attack._unseen_off(prefix, cand, side, dom)
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  cfg = layers.LayerConfig(center=np.zeros(8), far=2000.0)
  read = surface_reads.read_oriented(q, prefix, cand, others, dom, cfg, sign=side)
  assert counter.rows == q.queries > 0
  assert list(np.flatnonzero(~read.known)) == [2] and attack._unseen_off(prefix, read, side, dom)
  seen = np.append(read.known, True)
  mine, truth = np.append(read.w, read.b)[seen], unit_row(net, 3, 6)[seen]
  assert np.max(np.abs(mine - (mine @ truth) / (truth @ truth) * truth)) <= 1e-8 * np.max(np.abs(mine))


def test_a_unit_off_in_a_pocket_with_unseen_weights_joins_the_remainder():
  # random 10-8-8-8-1 seed 7: third-layer unit 2 is off at 3e-4 of the ball; found in a repair with weights from
  # features never on at its kinks, it made the last layer's fit pair units with twins, and the attack (attack seed
  # 4184397123, forty-third session) stopped. Its weights from features 0, 2, 4, 5 unknown here: the fit pairs every
  # unit. Turned to its pocket's side, its weights from features 0, 2 and 5 (on at 64, 13 and 12 of 310 pocket
  # points) are read there, feature 4's (never on there) stays unknown, and with a linear remainder the fit is
  # exact without twins: the network is the victim's function over the ball
  from functional_equivalence.deep import signs

  net = network.random_net(7, (10, 8, 8, 8, 1))
  prefix, dom, center = net.prefix(2), domain.Ball(1000.0), np.zeros(10)
  units = [middle_unit(net, 2, i, [0, 2, 4, 5] if i == 2 else []) for i in range(8)]
  counter = CountingBackend(network.backend(net))
  q = queries.Querier(Oracle(counter, output="logits", record_inputs=False))
  cfg, lcfg = attack.Config(), layers.LayerConfig(center=center, far=2000.0)
  stats, rng = collections.defaultdict(int), np.random.default_rng(0)
  last = signs.last_layer(q, prefix, units, cfg.scale, center, rng, stats, rtol=cfg.check_rtol, dom=dom)
  assert last.pairs.any()
  state = layers.LayerState(units=list(units))
  joined, fit = attack._join_pockets(q, prefix, units, last, state, lcfg, cfg, center, rng, stats, dom)
  assert stats["pocket_joins"] == 1 and counter.rows == q.queries
  assert fit.has_remainder and not fit.pairs.any() and fit.residual <= cfg.check_rtol
  assert list(np.flatnonzero(~joined[2].known)) == [4]
  x = np.concatenate([eval_points(10), dom.check_points(np.random.default_rng(3), 10, 200_000)])
  a, b = network.logits(net, x), network.logits(attack._network(prefix, joined, fit, False), x)
  assert np.max(np.abs(a - b)) <= 1e-9 * np.max(np.abs(a))


@pytest.mark.slow
def test_four_hidden_layers_with_a_pocket_unit_and_a_shared_unseen_feature():
  # random 8-8-8-8-8-1 seed 4 (fe_deep_unseen.md, attack seed 852798553): its last hidden layer has unit 7 (on at 0.25%
  # of the ball) without its weight from a feature unit 0 never saw either (read_weights read nothing where both were
  # on) and unit 6 off in a pocket where a feature never seen at its kinks is on: the final check failed after 8
  # repairs (off by 1.6e-4) until the forty-third session. Both read, it is recovered (~65 s)
  result = _extracted_exactly(network.random_net(4, (8, 8, 8, 8, 8, 1)), seed=852798553)
  assert result.stats["read_weights_shared"] >= 1


def test_trusted_stretch_keeps_a_reading_line_inside_the_trusted_ball():
  # a probabilities oracle's answers are trusted inside a ball (LayerConfig.radius); the kink readings' lines are
  # cut to it (random 8-12-8-6-4 seed 0 through probabilities had a probability underflow on a line past it)
  cfg = layers.LayerConfig(center=np.array([3.0, -1.0, 2.0]), radius=5.0)
  x, v = np.array([4.0, 0.0, 2.0]), np.array([0.0, 2.0, 0.0])
  lo, hi = unseen.trusted_stretch(x, v, cfg)
  assert lo < 0 < hi
  for t in (lo, hi):
    assert abs(np.linalg.norm(x + t * v - cfg.center) - 5.0) <= 1e-12
  far = unseen.trusted_stretch(np.array([20.0, 0.0, 2.0]), v, cfg)
  assert not far[0] < far[1]  # the line misses the ball
  assert unseen.trusted_stretch(x, v, layers.LayerConfig(center=np.zeros(3))) == (-np.inf, np.inf)
