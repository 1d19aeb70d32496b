"""Hybrid extraction (proposed by Jagielski et al. 2020): the first hidden layer recovered exactly by the
critical-point method (its hyperplanes are kinks of the whole network), the rest learned by distillation from the
oracle's logits, against learning the whole network with the same total number of queries.

The student is an MLP d-n0-(hidden...)-k. Its first layer is the recovered one (the deep attack stopped after
layer 0 with its signs, `attack.Config(layers=1)`), either `frozen` or used as the `init`ialisation of a trainable
layer; `pure` learning starts from He-normal weights. The learning queries are the attacker's unlabeled pool
(inputs it may ask about) and random convex combinations of pairs of them; every answer comes from the Oracle's
__call__. The `frozen` and `init` students also fit the answers the first layer's attack was given (they are paid
for; up to KEPT_ANSWERS of them, far from the data, each batch half learning queries and half those, `kept_answers`).
Training: minibatch Adam (optax) on the squared logit error, float64; through a probabilities oracle on
the squared error of the logit differences to class 0 (log p_i - log p_0, all that probabilities determine; inputs
whose probabilities underflow are asked and counted but not fitted), the first layer recovered through the same
oracle (deep/attack.py works on the ball where no probability underflows). The caller measures fidelity
(launch/hybrid.py: top-1 agreement and logit error on the digits test split, noisy copies of it and uniform points
of the input box).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np

from functional_equivalence.deep import network

if TYPE_CHECKING:
  from extraction.oracle import Oracle

METHODS = ("pure", "frozen", "init")
SCHEDULES = ("constant", "cosine")  # Adam's learning rate over the steps: fixed, or cosine-decayed to 0
KEPT_ANSWERS = 2**18  # at most this many of the first layer attack's answers are kept for the learning


class FirstLayer(NamedTuple):
  """The recovered first layer (w (d, n0), b (n0,)), the queries it took, and (inputs, answers) of up to
  KEPT_ANSWERS of those queries (a uniform sample when there were more), in the oracle's output mode."""

  w: np.ndarray
  b: np.ndarray
  queries: int
  asked: np.ndarray
  answers: np.ndarray


class _Keeping:
  """The oracle as the attack uses it (calls, `output`, `used`), keeping a uniform sample of at most `keep` of the
  (input, answer) pairs it passes on, in memory bounded by 2 keep rows: every pair draws a random key and the
  `keep` smallest keys are kept (a reservoir sample; all pairs when there are no more than `keep`)."""

  def __init__(self, oracle, keep: int, rng: np.random.Generator):
    self.oracle, self.keep, self.rng, self.held = oracle, keep, rng, 0
    self.asked: list = []
    self.answers: list = []
    self.keys: list = []

  @property
  def output(self):
    return self.oracle.output

  @property
  def used(self):
    return self.oracle.used

  def __call__(self, x):
    y = self.oracle(x)
    self.asked.append(np.array(x, np.float64))
    self.answers.append(np.array(y, np.float64))
    self.keys.append(self.rng.uniform(size=len(x)))
    self.held += len(x)
    if self.held > 2 * self.keep:
      self._shrink()
    return y

  def _shrink(self) -> None:
    """Only the `keep` pairs of smallest keys, in the order they were asked."""
    keys = np.concatenate(self.keys)
    pick = np.sort(np.argpartition(keys, self.keep)[: self.keep]) if len(keys) > self.keep else np.arange(len(keys))
    self.asked, self.answers = [np.concatenate(self.asked)[pick]], [np.concatenate(self.answers)[pick]]
    self.keys, self.held = [keys[pick]], len(pick)

  def sample(self, input_dim: int) -> tuple[np.ndarray, np.ndarray]:
    if not self.asked:
      return np.zeros((0, input_dim)), np.zeros((0, 0))
    self._shrink()
    return self.asked[0], self.answers[0]


def first_layer(oracle, input_dim: int, seed: int, max_seconds: float = 600.0, keep: int = KEPT_ANSWERS) -> FirstLayer:
  """The victim's first hidden layer with its signs, through the oracle, with a uniform sample of up to `keep` of
  the attack's (input, answer) pairs (they are paid for: `run` fits them beside the learning queries)."""
  from functional_equivalence.deep import attack

  used = oracle.used
  keeping = _Keeping(oracle, keep, np.random.default_rng([seed, 1]))
  # the attack uses only the oracle's calls, `output` and `used`, which _Keeping passes through
  result = attack.extract(
    cast("Oracle", keeping), input_dim, attack.Config(layers=1, max_seconds=max_seconds), seed=seed
  )
  asked, answers = keeping.sample(input_dim)
  return FirstLayer(result.net.weights[0], result.net.biases[0], oracle.used - used, asked, answers)


def learning_queries(pool: np.ndarray, count: int, rng: np.random.Generator, low=0.0, high=1.0) -> np.ndarray:
  """`count` inputs: the pool itself first, then random convex combinations of two pool inputs (clipped)."""
  take = min(count, len(pool))
  x = [pool[rng.permutation(len(pool))[:take]]]
  extra = count - take
  if extra > 0:
    i, j = rng.integers(len(pool), size=(2, extra))
    a = rng.uniform(size=(extra, 1))
    x.append(np.clip(a * pool[i] + (1 - a) * pool[j], low, high))
  return np.concatenate(x)


def init_student(sizes, rng: np.random.Generator, first: tuple | None = None) -> network.DeepNet:
  """He-normal weights, zero biases; with `first` = (w, b) the first layer is that one."""
  ws = [rng.normal(size=(a, b)) * np.sqrt(2.0 / a) for a, b in zip(sizes[:-1], sizes[1:])]
  bs = [np.zeros(b) for b in sizes[1:]]
  if first is not None:
    ws[0], bs[0] = np.asarray(first[0], np.float64), np.asarray(first[1], np.float64)
  return network.DeepNet(tuple(ws), tuple(bs))


def targets(oracle, x: np.ndarray) -> np.ndarray:
  """The oracle's answers at x as fitting targets (`as_targets`)."""
  return as_targets(oracle(x), oracle.output)


def as_targets(answers: np.ndarray, output: str) -> np.ndarray:
  """Answers as fitting targets: logits, or with probabilities the logit differences to class 0 (N, k - 1), rows
  where a probability underflowed to 0 (or below float64's normal range) NaN."""
  y = np.asarray(answers, np.float64)
  if output == "logits":
    return y
  if output != "probabilities":
    raise ValueError(f"hybrid extraction needs oracle output 'logits' or 'probabilities', got {output!r}")
  with np.errstate(divide="ignore", invalid="ignore"):
    out = np.log(y[:, 1:]) - np.log(y[:, :1])
  out[np.any(y < np.finfo(np.float64).tiny, axis=1)] = np.nan
  return out


def distill(
  student: network.DeepNet,
  x: np.ndarray,
  y: np.ndarray,
  steps: int,
  seed: int,
  frozen_first: bool,
  batch: int = 256,
  learning_rate: float = 1e-3,
  differences: bool = False,
  weighted: tuple | None = None,
  share: float | None = 0.5,
  schedule: str = "constant",
) -> network.DeepNet:
  """Minibatch Adam on mean squared logit error (with `differences`, y holds the logit differences to class 0 and
  the student's are fitted to them); the first layer kept fixed when `frozen_first`. With `weighted` = (x2, y2,
  weights), `share` of each batch (rounded; None: in proportion to the two sets' sizes) comes from (x2, y2), each
  row's squared error times its weight. `schedule` (SCHEDULES): the learning rate fixed, or decayed from
  `learning_rate` to 0 over the steps on a cosine (optax.cosine_decay_schedule). Float64 (runs in a scoped
  `jax.enable_x64(True)`)."""
  _check_schedule(schedule)
  import jax
  import jax.numpy as jnp
  import optax

  with jax.enable_x64(True):
    fixed = (jnp.asarray(student.weights[0]), jnp.asarray(student.biases[0]))
    start = 1 if frozen_first else 0
    params = (
      tuple(jnp.asarray(w) for w in student.weights[start:]),
      tuple(jnp.asarray(b) for b in student.biases[start:]),
    )
    rate = optax.cosine_decay_schedule(learning_rate, steps) if schedule == "cosine" else learning_rate
    opt = optax.adam(rate)

    def forward(p, inputs):
      ws, bs = p
      if frozen_first:
        ws, bs = (fixed[0],) + ws, (fixed[1],) + bs
      h = inputs
      for w, b in zip(ws[:-1], bs[:-1]):
        h = jax.nn.relu(h @ w + b)
      z = h @ ws[-1] + bs[-1]
      return z[:, 1:] - z[:, :1] if differences else z

    @jax.jit
    def step(p, state, bx, by, bw):
      loss, grads = jax.value_and_grad(lambda q: jnp.mean(bw[:, None] * (forward(q, bx) - by) ** 2))(p)
      updates, state = opt.update(grads, state, p)
      return optax.apply_updates(p, updates), state, loss

    state = opt.init(params)
    rng = np.random.default_rng(seed)
    xs, ys, row_weights = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), jnp.ones(len(x))
    other = 0
    if weighted is not None:
      other = round(batch * (len(weighted[0]) / (len(x) + len(weighted[0])) if share is None else share))
      other = min(max(other, 1), batch - 1)
      xs = jnp.concatenate([xs, jnp.asarray(weighted[0], jnp.float64)])
      ys = jnp.concatenate([ys, jnp.asarray(weighted[1], jnp.float64)])
      row_weights = jnp.concatenate([row_weights, jnp.asarray(weighted[2], jnp.float64)])
    own = min(batch - other, len(x))
    for _ in range(steps):
      idx = rng.integers(len(x), size=own)
      if weighted is not None:
        idx = np.concatenate([idx, rng.integers(len(x), len(xs), size=other)])
      params, state, loss = step(params, state, xs[idx], ys[idx], row_weights[idx])
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"distillation diverged (loss {float(loss)})")
    ws = tuple(np.asarray(w, np.float64) for w in params[0])
    bs = tuple(np.asarray(b, np.float64) for b in params[1])
  if frozen_first:
    ws, bs = (student.weights[0],) + ws, (student.biases[0],) + bs
  return network.DeepNet(ws, bs)


def _check_schedule(schedule: str) -> None:
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown learning rate schedule {schedule!r} (one of {', '.join(SCHEDULES)})")


def _needs_first(first: FirstLayer | None, method: str) -> FirstLayer:
  """`first` for a method that starts from the recovered first layer, or ValueError when it was not given."""
  if first is None:
    raise ValueError(f"hybrid method {method!r} needs `first` (a FirstLayer from first_layer)")
  return first


def kept_answers(first: FirstLayer, pool: np.ndarray, output: str) -> tuple | None:
  """The first layer attack's kept (inputs, targets, weights) to fit beside the learning queries, or None when none
  has a finite target. Far from the data a ReLU network's logits grow with the distance, so each row's squared error
  is weighted by 1 / max(1, r / r0)^2: r its distance from the pool's mean, r0 the pool's median distance from it
  (a relative error out there, the plain error near the data)."""
  y = as_targets(first.answers, output) if len(first.asked) else np.zeros((0, 0))
  fit = np.all(np.isfinite(y), axis=1) if len(y) else np.zeros(0, bool)
  if not fit.any():
    return None
  centre = pool.mean(axis=0)
  r0 = max(float(np.median(np.linalg.norm(pool - centre, axis=1))), np.finfo(np.float64).tiny)
  r = np.linalg.norm(first.asked[fit] - centre, axis=1)
  return first.asked[fit], y[fit], 1.0 / np.maximum(1.0, r / r0) ** 2


def run(
  oracle,
  pool: np.ndarray,
  hidden,
  queries: int,
  method: str,
  seed: int,
  steps: int,
  first: FirstLayer | None = None,
  reuse: bool = True,
  share: float | None = 0.5,
  schedule: str = "constant",
  learning_rate: float = 1e-3,
) -> tuple[network.DeepNet, dict]:
  """One student by `method` (module docstring) with `queries` oracle queries in total; `first` from `first_layer`
  (its queries count against the total; with `reuse`, its kept answers are fitted too, `share` of every batch, None:
  in proportion to their number, `kept_answers`); `schedule` of Adam's `learning_rate` (`distill`). Returns
  (student, counts)."""
  if method not in METHODS:
    raise ValueError(f"unknown hybrid method {method!r} (one of {', '.join(METHODS)})")
  _check_schedule(schedule)
  rng = np.random.default_rng(seed)
  recovered_first = None if method == "pure" else _needs_first(first, method)
  fe_queries = 0 if recovered_first is None else recovered_first.queries
  if fe_queries >= queries:
    raise ValueError(f"the first layer took {fe_queries} queries, the whole budget is {queries}")
  x = learning_queries(pool, queries - fe_queries, rng)
  y = targets(oracle, x)
  differences = oracle.output == "probabilities"
  k = y.shape[1] + differences
  fit = np.all(np.isfinite(y), axis=1)
  if not fit.any():
    raise ValueError("every learning query's probabilities underflowed: no target to fit")
  weighted = None
  if recovered_first is None:
    student = init_student([pool.shape[1], *hidden, k], rng)
  else:
    sizes = [pool.shape[1], recovered_first.w.shape[1], *hidden[1:], k]
    student = init_student(sizes, rng, (recovered_first.w, recovered_first.b))
    weighted = kept_answers(recovered_first, pool, oracle.output) if reuse else None
  student = distill(
    student,
    x[fit],
    y[fit],
    steps,
    seed,
    frozen_first=method == "frozen",
    differences=differences,
    weighted=weighted,
    share=share,
    schedule=schedule,
    learning_rate=learning_rate,
  )
  kept = 0 if weighted is None else len(weighted[0])
  return student, dict(
    fe_queries=fe_queries, learning_queries=len(x), queries=fe_queries + len(x), fe_answers_fitted=kept
  )
