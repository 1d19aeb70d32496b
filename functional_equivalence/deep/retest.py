"""A layer's pending candidates tested again once the layer after it finds no unit.

Under strict acceptance (a layer that is not the last hidden one) a candidate becomes a unit only with
`deep_verify_hits` hits in as many rounds (layer._verify), and a round where no point of its predicted surface is
found ("blind") uses up a round. A true unit off on a small part of the domain can so stay pending with every weight
known and right: random 8-8-8-8-8-1 seed 4 (fe_deep_unseen.md), whose second hidden layer's unit 3 (off at 0.77% of
the ball, in a cone) got 7 hits and 1 blind round; the third layer, whose units read it, then found none. Making
blind rounds free for every strict test (LayerConfig.strict_blind_tries) accepted it, but changed the path of every
three-layer search: on 117 benchmark rows 2 rows gained and 6 were lost (docs/fe_deep.md, forty-first session).
Here the freer test is asked only where the attack would stop: the layer after found no unit, `_fall_back` and the
readings did not take the layer as the last hidden one. Only candidates of the layer's strict search with every
weight known, no copy of a kept unit, are tested; one accepted is refitted and cross-checked with the kept units
(crosscheck.cross_check) before it joins them. Float64 numpy.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from functional_equivalence.deep import crosscheck
from functional_equivalence.deep import layer as layers


def retest_pending(q, prefix, units: list, state: layers.LayerState, lcfg: layers.LayerConfig, tries: int, rng, stats):
  """The units of a strict layer search (`units`, its `state`, settings `lcfg`) with those of its pending
  candidates that pass `layer._verify` with blind rounds free and `tries` surface tries (copies; `state` is left
  as it is), or None when none passes (or none is eligible: every weight known, no copy of a unit)."""
  if not prefix.weights or not lcfg.strict or tries <= 0:
    return None
  todo = [copy.deepcopy(c) for c in state.pending if np.all(c.known) and not crosscheck.duplicate(prefix, units, c)]
  stats["pending_retested"] = stats.get("pending_retested", 0) + len(todo)
  if not todo:
    return None
  test_cfg = dataclasses.replace(lcfg, strict_blind_tries=tries)
  passed = [c for c, verdict in zip(todo, layers._verify(q, prefix, todo, test_cfg, rng, stats)) if verdict == "unit"]
  passed = layers.dedup(prefix, passed)
  if not passed:
    return None
  layers.refit(q, prefix, passed, lcfg, rng, stats)
  kept, _ = crosscheck.cross_check(q, prefix, list(units) + passed, lcfg, rng, stats, retest=1, own_stream=True)
  joined = [u for u in passed if any(k is u for k in kept)]
  if not joined:
    return None
  stats["pending_accepted"] = stats.get("pending_accepted", 0) + len(joined)
  return list(units) + joined
