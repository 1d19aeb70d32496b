"""Tramer, Zhang, Juels, Reiter, Ristenpart 2016, "Stealing machine learning models via prediction APIs" (USENIX
Security), Sec. 4.2: decision trees from an API that names the leaf it reached (the oracle's `leaf` mode: an
opaque leaf identifier and the leaf's value), with complete or incomplete (NaN-holding) queries.

Every node of a tree owns an axis-aligned box, so along any line parallel to an axis the identifier is piecewise
constant and each identifier occupies one interval. `line_search` finds every change along such a line: query the
two ends, bisect every bracket whose ends differ (a third identifier at a midpoint splits it in two) until it is
narrower than epsilon box widths. The bracket's left end is the recovered threshold (x <= t goes left). The leaf
containing a point then has, along each feature, exactly the interval of its own identifier: its box. With
`reuse_thresholds` (our addition, on by default) a bracket first tries the two ends of a boundary already found on
the same feature (the same node's split is met from many leaves): 2 queries instead of a bisection; a miss still
splits the bracket, so nothing is lost but the 2 queries.

Strategies (`STRATEGIES`):
  * 'exhaustive' (Algorithm 1, complete queries only; any tree API): from a random point, line searches along
    every feature give the leaf's box and a point in every neighbouring leaf; repeat for each new leaf;
  * 'incomplete' (needs an API that stops at a node testing a missing feature, 'stop'): as 'exhaustive', but a
    feature left out of a leaf's point changes the answer only if the leaf's path tests it, so one incomplete
    query per feature spares the line searches of the features the path does not test;
  * 'top_down' (needs 'stop'): from the empty query (the root), find the feature the reached node tests by
    setting halves of the missing features (log2 d queries), search along it over the box, and recurse into each
    node reached, features set as they are met; a reached node whose answer does not change when every missing
    feature is set is a leaf, whose box comes from line searches along its set features.
Every line search stays inside the box [low, high]; leaves only reachable outside it are not found (they never
answer an input of the box). Leaf boxes are turned back into a tree by `tree_build.build`.
Precision: thresholds within epsilon box widths (float64 bisection); leaf values exact (they are answered).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from functional_equivalence.errors import ExtractionError
from functional_equivalence.simple_models import tree_build
from functional_equivalence.simple_models.common import Asker, Box, UnsupportedAnswersError

STRATEGIES = ("top_down", "incomplete", "exhaustive")
NEEDS_STOP = ("top_down", "incomplete")


@dataclasses.dataclass(frozen=True)
class Config:
  """strategy: one of STRATEGIES; epsilon: bracket width (box widths) at which a threshold is placed;
  reuse_thresholds: try the boundaries already found on a feature before bisecting (see `line_search`);
  max_leaves: stop with an error past this many leaves (a guard against an API that is not a tree)."""

  strategy: str = "top_down"
  epsilon: float = 1e-9
  reuse_thresholds: bool = True
  max_leaves: int = 100_000


@dataclasses.dataclass
class Result:
  """leaves: ids (n,), lo (n, d), hi (n, d) (box edges; -inf/inf unbounded), values (n, v); tree: the rebuilt
  tree (tree_build.Tree); queries: inputs asked; stats."""

  ids: np.ndarray
  lo: np.ndarray
  hi: np.ndarray
  values: np.ndarray
  tree: tree_build.Tree
  queries: int
  stats: dict


class _LeafAsker:
  def __init__(self, oracle):
    self.ask = Asker(oracle)

  def __call__(self, x):
    out = self.ask(x)
    if out.ndim != 2 or out.shape[1] < 2:
      raise UnsupportedAnswersError(f"path finding needs the oracle's 'leaf' answers (N, 1 + v), got shape {out.shape}")
    return out[:, 0], out[:, 1:]


def line_search(ask, box: Box, bases: np.ndarray, features: np.ndarray, eps: float, known: dict | None = None):
  """All identifier changes along the lines bases[i] with feature features[i] running over [low, high].

  Args:
    known: None, or {feature: set of brackets (a, b)} of the boundaries found so far (updated here): a bracket to
      search first tries the two ends of a known boundary inside it (the same split met from another leaf), which
      settles it in 2 queries instead of a bisection, and bisects only otherwise.
  Returns, per line, a list of pieces (id, value, lower edge, upper edge, point inside) in increasing order;
  edges at the box's ends are -inf / inf. One oracle call for the ends, then one per bisection level."""
  m = len(bases)
  if not m:
    return []
  ends = np.concatenate([bases, bases])
  ends[np.arange(m), features] = box.low
  ends[m + np.arange(m), features] = box.high
  ids, vals = ask(ends)
  value_of = {i: v for i, v in zip(ids, vals)}
  line, a, b = np.arange(m), np.full(m, box.low), np.full(m, box.high)
  ida, idb = ids[:m], ids[m:]
  bounds: list[list] = [[] for _ in range(m)]  # (a, b, id_a, id_b) per line
  sorted_known = {f: np.array(sorted(v)) for f, v in (known or {}).items()}
  while len(line):
    diff = ida != idb
    line, a, b, ida, idb = (v[diff] for v in (line, a, b, ida, idb))
    mid = 0.5 * (a + b)
    closed = (b - a <= eps * box.width) | (mid <= a) | (mid >= b)
    for i in np.flatnonzero(closed).tolist():
      bounds[line[i]].append((a[i], b[i], ida[i], idb[i]))
      if known is not None:
        f = int(features[line[i]])
        known.setdefault(f, set()).add((a[i], b[i]))
        sorted_known[f] = np.array(sorted(known[f]))
    line, a, b, ida, idb, mid = (v[~closed] for v in (line, a, b, ida, idb, mid))
    if not len(line):
      break
    probes = []  # per bracket: the points to ask
    for j in range(len(line)):
      k = sorted_known.get(int(features[line[j]]))
      inside = k[(k[:, 0] > a[j]) & (k[:, 1] < b[j])] if k is not None else np.zeros((0, 2))
      probes.append(list(inside[np.argmin(np.abs(inside.mean(axis=1) - mid[j]))]) if len(inside) else [mid[j]])
    owner = np.repeat(np.arange(len(line)), [len(p) for p in probes])
    t = np.concatenate(probes)
    pts = bases[line[owner]].copy()
    pts[np.arange(len(owner)), features[line[owner]]] = t
    idt, valt = ask(pts)
    value_of.update(zip(idt, valt))
    new = []  # consecutive segments of every bracket
    for j in range(len(line)):
      ts, it = t[owner == j], idt[owner == j]
      cuts, cut_ids = [a[j], *ts, b[j]], [ida[j], *it, idb[j]]
      new += [(line[j], cuts[q], cuts[q + 1], cut_ids[q], cut_ids[q + 1]) for q in range(len(cuts) - 1)]
    line, a, b, ida, idb = (np.array(v) for v in zip(*new))
  out = []
  for i in range(m):
    bl = sorted(bounds[i])
    edges = [-np.inf] + [br[0] for br in bl] + [np.inf]
    inner = [box.low] + [br[1] for br in bl]
    inner_hi = [br[0] for br in bl] + [box.high]
    pieces_ids = [ids[i]] + [br[3] for br in bl]
    for j in range(len(bl)):
      if bl[j][2] != pieces_ids[j]:
        raise ExtractionError(
          "path finding: the answers along a line are not those of a tree (an identifier "
          "occurs on two separate intervals)"
        )
    out.append(
      [(pid, value_of[pid], edges[j], edges[j + 1], 0.5 * (inner[j] + inner_hi[j])) for j, pid in enumerate(pieces_ids)]
    )
  return out


def _leaf_boxes(ask, box, points, ids, features_per_point, eps, known):
  """Boxes of the leaves at `points` (ids known; NaN features stay left out) from line searches along the given
  features (others unbounded), and the other pieces met: (id, value, point, feature, lower edge, upper edge)."""
  n, d = points.shape
  lo, hi = np.full((n, d), -np.inf), np.full((n, d), np.inf)
  rows = np.array([i for i, fs in enumerate(features_per_point) for _ in fs], np.int64)
  feats = np.array([f for fs in features_per_point for f in fs], np.int64)
  found = []
  for r, f, pieces in zip(rows, feats, line_search(ask, box, points[rows], feats, eps, known)):
    for pid, value, e_lo, e_hi, inside in pieces:
      if pid == ids[r]:
        lo[r, f], hi[r, f] = e_lo, e_hi
      else:
        x = points[r].copy()
        x[f] = inside
        found.append((x, pid, value, f, e_lo, e_hi))
  return lo, hi, found


def _search_leaves(ask, box, cfg, rng, leaf_features):
  """'exhaustive' / 'incomplete': grow the set of leaves from a random point (see module docstring)."""
  known: dict[int, set] | None = {} if cfg.reuse_thresholds else None
  x0 = box.sample(rng, 1)
  ids0, vals0 = ask(x0)
  frontier = {ids0[0]: (vals0[0], x0[0])}
  leaves: dict = {}
  while frontier:
    if len(leaves) + len(frontier) > cfg.max_leaves:
      raise ExtractionError(f"path finding: more than {cfg.max_leaves} leaves; is the victim a tree?")
    ids = np.array(list(frontier))
    points = np.stack([frontier[i][1] for i in ids])
    lo, hi, found = _leaf_boxes(ask, box, points, ids, leaf_features(ids, points), cfg.epsilon, known)
    for j, i in enumerate(ids):
      leaves[i] = (frontier[i][0], lo[j], hi[j])
    new = {}
    for x, pid, value, *_ in found:
      if pid not in leaves and pid not in new:
        new[pid] = (value, x)
    frontier = new
  return leaves


def _path_features(ask, d):
  """For 'incomplete': the features each leaf's path tests, one incomplete query per feature and leaf."""

  def features(ids, points):
    n = len(points)
    probe = np.repeat(points, d, axis=0)
    probe[np.arange(n * d), np.tile(np.arange(d), n)] = np.nan
    got, _ = ask(probe)
    changed = got.reshape(n, d) != ids[:, None]
    return [np.flatnonzero(row) for row in changed]

  return features


def _tested_features(ask, points, node_ids, fill):
  """For nodes reached by partial points: the missing feature each one tests (-1: none, a leaf). One query per
  node with every missing feature set, then halving of the candidates (one query per node per level)."""
  full = np.where(np.isnan(points), fill, points)
  got, _ = ask(full)
  cands = {i: np.flatnonzero(np.isnan(points[i])) for i in np.flatnonzero(got != node_ids)}
  while any(len(c) > 1 for c in cands.values()):
    open_ = [i for i, c in cands.items() if len(c) > 1]
    probe = points[open_].copy()
    for r, i in enumerate(open_):
      half = cands[i][: len(cands[i]) // 2]
      probe[r, half] = fill[half]
    got, _ = ask(probe)
    for r, i in enumerate(open_):
      c = cands[i]
      cands[i] = c[: len(c) // 2] if got[r] != node_ids[i] else c[len(c) // 2 :]
  tested = np.full(len(points), -1, np.int64)
  for i, c in cands.items():
    tested[i] = c[0]
  return tested


def _top_down(ask, box, cfg, rng):
  """'top_down' (see module docstring). A state is (partial point, id, value, feature searched last, its edges)."""
  d = box.dim
  known: dict[int, set] | None = {} if cfg.reuse_thresholds else None
  fill = box.sample(rng, 1)[0]  # values given to missing features when testing a node
  ids, vals = ask(np.full((1, d), np.nan))
  states = [(np.full(d, np.nan), ids[0], vals[0], -1, -np.inf, np.inf)]
  seen = {ids[0]}
  leaves: dict = {}
  while states:
    if len(leaves) + len(states) > cfg.max_leaves:
      raise ExtractionError(f"path finding: more than {cfg.max_leaves} nodes; is the victim a tree?")
    points = np.stack([s[0] for s in states])
    node_ids = np.array([s[1] for s in states])
    tested = _tested_features(ask, points, node_ids, fill)
    new_states = []
    inner = np.flatnonzero(tested >= 0)
    for i, pieces in zip(inner, line_search(ask, box, points[inner], tested[inner], cfg.epsilon, known)):
      for pid, value, e_lo, e_hi, inside in pieces:
        x = points[i].copy()
        x[tested[i]] = inside
        new_states.append((x, pid, value, tested[i], e_lo, e_hi))
    leaf_rows = np.flatnonzero(tested < 0)
    feats = [[f for f in np.flatnonzero(~np.isnan(points[i])) if f != states[i][3]] for i in leaf_rows]
    lo, hi, found = _leaf_boxes(ask, box, points[leaf_rows], node_ids[leaf_rows], feats, cfg.epsilon, known)
    for j, i in enumerate(leaf_rows):
      _, _, value, last, e_lo, e_hi = states[i]
      if last >= 0:  # the state's edges along the feature searched last
        lo[j, last], hi[j, last] = e_lo, e_hi
      leaves[node_ids[i]] = (value, lo[j], hi[j])
    states = []
    for st in new_states + found:
      if st[1] not in seen:
        seen.add(st[1])
        states.append(st)
  return leaves


def extract(oracle, box: Box, cfg: Config = Config(), rng: np.random.Generator | None = None) -> Result:
  """Recovers the decision tree behind a `leaf` oracle (see module docstring)."""
  if cfg.strategy not in STRATEGIES:
    raise ValueError(f"unknown path-finding strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")
  rng = rng if rng is not None else np.random.default_rng(0)
  ask = _LeafAsker(oracle)
  if cfg.strategy == "top_down":
    leaves = _top_down(ask, box, cfg, rng)
  else:
    every = lambda ids, points: [np.arange(box.dim)] * len(points)
    leaves = _search_leaves(ask, box, cfg, rng, every if cfg.strategy == "exhaustive" else _path_features(ask, box.dim))
  ids = np.array(list(leaves))
  values = np.stack([leaves[i][0] for i in ids])
  lo, hi = np.stack([leaves[i][1] for i in ids]), np.stack([leaves[i][2] for i in ids])
  tree = tree_build.build(lo, hi, values, tolerance=4 * cfg.epsilon * box.width)
  return Result(
    ids,
    lo,
    hi,
    values,
    tree,
    ask.ask.queries,
    dict(strategy=cfg.strategy, leaves=len(ids), internal_nodes=tree.node_count - len(ids)),
  )
