"""Hybrid extraction (proposed by Jagielski et al. 2020): the first hidden layer recovered exactly by the
critical-point method (its hyperplanes are kinks of the whole network), the rest learned by distillation from the
oracle's logits, against learning the whole network with the same total number of queries.

The student is an MLP d-n0-(hidden...)-k. Its first layer is the recovered one (the deep attack stopped after
layer 0 with its signs, `attack.Config(layers=1)`), either `frozen` or used as the `init`ialisation of a trainable
layer; `pure` learning starts from He-normal weights. The learning queries are the attacker's unlabeled pool
(inputs it may ask about) and random convex combinations of pairs of them; every answer comes from the Oracle's
__call__. Training: minibatch Adam (optax) on the squared logit error, float64; through a probabilities oracle on
the squared error of the logit differences to class 0 (log p_i - log p_0, all that probabilities determine; inputs
whose probabilities underflow are asked and counted but not fitted), the first layer recovered through the same
oracle (deep/attack.py works on the ball where no probability underflows). The caller measures fidelity
(launch/hybrid.py: top-1 agreement on the digits test split and on uniform points of the input box).
"""

from __future__ import annotations

import numpy as np

from functional_equivalence.deep import network

METHODS = ("pure", "frozen", "init")


def first_layer(oracle, input_dim: int, seed: int, max_seconds: float = 600.0):
  """The victim's first hidden layer with its signs, through the oracle: (w (d, n0), b (n0,), queries)."""
  from functional_equivalence.deep import attack

  used = oracle.used
  result = attack.extract(oracle, input_dim, attack.Config(layers=1, max_seconds=max_seconds), seed=seed)
  return result.net.weights[0], result.net.biases[0], oracle.used - used


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
  """The oracle's answers at x as fitting targets: logits, or with probabilities the logit differences to class 0
  (N, k - 1), rows where a probability underflowed to 0 (or below float64's normal range) NaN."""
  y = np.asarray(oracle(x), np.float64)
  if oracle.output == "logits":
    return y
  if oracle.output != "probabilities":
    raise ValueError(f"hybrid extraction needs oracle output 'logits' or 'probabilities', got {oracle.output!r}")
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
) -> network.DeepNet:
  """Minibatch Adam on mean squared logit error (with `differences`, y holds the logit differences to class 0 and
  the student's are fitted to them); the first layer kept fixed when `frozen_first`. Float64 (runs in a scoped
  `jax.enable_x64(True)`)."""
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
    opt = optax.adam(learning_rate)

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
    def step(p, state, bx, by):
      loss, grads = jax.value_and_grad(lambda q: jnp.mean((forward(q, bx) - by) ** 2))(p)
      updates, state = opt.update(grads, state, p)
      return optax.apply_updates(p, updates), state, loss

    state = opt.init(params)
    rng = np.random.default_rng(seed)
    xs, ys = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
    for _ in range(steps):
      idx = rng.integers(len(x), size=min(batch, len(x)))
      params, state, loss = step(params, state, xs[idx], ys[idx])
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"distillation diverged (loss {float(loss)})")
    ws = tuple(np.asarray(w, np.float64) for w in params[0])
    bs = tuple(np.asarray(b, np.float64) for b in params[1])
  if frozen_first:
    ws, bs = (student.weights[0],) + ws, (student.biases[0],) + bs
  return network.DeepNet(ws, bs)


def _needs_first(first: tuple | None, method: str) -> tuple:
  """`first` for a method that starts from the recovered first layer, or ValueError when it was not given."""
  if first is None:
    raise ValueError(f"hybrid method {method!r} needs `first` = (w, b, fe queries) from first_layer")
  return first


def run(
  oracle, pool: np.ndarray, hidden, queries: int, method: str, seed: int, steps: int, first: tuple | None = None
) -> tuple[network.DeepNet, dict]:
  """One student by `method` (module docstring) with `queries` oracle queries in total; `first` = (w, b, fe
  queries) from `first_layer` (its queries count against the total). Returns (student, counts)."""
  if method not in METHODS:
    raise ValueError(f"unknown hybrid method {method!r} (one of {', '.join(METHODS)})")
  rng = np.random.default_rng(seed)
  recovered_first = None if method == "pure" else _needs_first(first, method)
  fe_queries = 0 if recovered_first is None else recovered_first[2]
  if fe_queries >= queries:
    raise ValueError(f"the first layer took {fe_queries} queries, the whole budget is {queries}")
  x = learning_queries(pool, queries - fe_queries, rng)
  y = targets(oracle, x)
  differences = oracle.output == "probabilities"
  k = y.shape[1] + differences
  fit = np.all(np.isfinite(y), axis=1)
  if not fit.any():
    raise ValueError("every learning query's probabilities underflowed: no target to fit")
  if recovered_first is None:
    student = init_student([pool.shape[1], *hidden, k], rng)
  else:
    student = init_student([pool.shape[1], recovered_first[0].shape[1], *hidden[1:], k], rng, recovered_first[:2])
  student = distill(student, x[fit], y[fit], steps, seed, frozen_first=method == "frozen", differences=differences)
  return student, dict(fe_queries=fe_queries, learning_queries=len(x), queries=fe_queries + len(x))
