"""Two-layer ReLU victims f(x) = relu(x @ w0 + b0) @ w1 + b1: from an npz file, random, or trained on digits.

Convention (the same for victims and recovered networks, and for the npz files):
  w0 (d, h), b0 (h,), w1 (h, k), b1 (k,);  logits = relu(x @ w0 + b0) @ w1 + b1.

Precision: every array here is float64 and every forward pass is a float64 numpy computation, so a backend from
`backend` is an exact-to-rounding float64 oracle whatever the jax x64 setting is. `train_digits` trains in float64
inside a scoped `jax.enable_x64(True)`.
"""

from __future__ import annotations

import pathlib
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from functional_equivalence.errors import VictimFileError

ARRAYS = ("w0", "b0", "w1", "b1")


class TwoLayerNet(NamedTuple):
  """Weights of a two-layer ReLU network (float64): w0 (d, h), b0 (h,), w1 (h, k), b1 (k,)."""

  w0: np.ndarray
  b0: np.ndarray
  w1: np.ndarray
  b1: np.ndarray

  @property
  def shape(self) -> tuple[int, int, int]:
    """(inputs d, hidden units h, outputs k)."""
    return self.w0.shape[0], self.w0.shape[1], self.w1.shape[1]


def logits(net: TwoLayerNet, x) -> np.ndarray:
  """Float64 logits (N, k) of `net` at inputs x (N, d) (x is cast to float64)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return np.maximum(x @ net.w0 + net.b0, 0.0) @ net.w1 + net.b1


def backend(net: TwoLayerNet, dtype=np.float64) -> Callable[[np.ndarray], np.ndarray]:
  """A batched oracle backend x (N, d) -> logits (N, k). `dtype=np.float32` simulates a float32 deployment
  (weights, inputs and arithmetic in float32), the case the attack must refuse with a clear error."""
  if dtype == np.float64:
    return lambda x: logits(net, x)
  net32 = TwoLayerNet(*(np.asarray(a, dtype) for a in net))
  return lambda x: np.maximum(np.asarray(x, dtype) @ net32.w0 + net32.b0, 0) @ net32.w1 + net32.b1


def sharded_backend(net: TwoLayerNet, mesh) -> Callable[[np.ndarray], np.ndarray]:
  """A float64 backend that evaluates each query batch with jax, split along the batch over `mesh`'s data axis.

  The critical-point search asks for all lines' points of a level in one batch, so this spreads the search's
  batch of lines over the devices. Needs float64 in jax (call inside `jax.enable_x64(True)`); answers agree
  with `backend(net)` to float64 rounding (the summation order may differ).
  """
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from extraction.parallel import DATA_AXIS

  if not jax.config.read("jax_enable_x64"):
    raise RuntimeError("sharded_backend needs float64 in jax: call it inside jax.enable_x64(True)")
  data, replicated = NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P())
  params = jax.device_put(tuple(np.asarray(a, np.float64) for a in net), replicated)
  forward = jax.jit(
    lambda p, x: jax.numpy.maximum(x @ p[0] + p[1], 0.0) @ p[2] + p[3],
    in_shardings=(replicated, data),
    out_shardings=replicated,
  )

  def call(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    n = len(x)
    size = max(mesh.size, 1 << max(n - 1, 0).bit_length())  # power-of-two buckets: few compiles
    xp = np.concatenate([x, np.zeros((size - n, x.shape[1]))]) if size > n else x
    return np.asarray(forward(params, jax.device_put(xp, data)))[:n]

  return call


def check_net(net: TwoLayerNet, source: str = "victim") -> TwoLayerNet:
  """Returns `net` as float64 arrays, or raises VictimFileError with a one-line message when the four arrays do
  not form a two-layer network (wrong ranks, inconsistent shapes, NaN/inf)."""
  arrays = {}
  for name, a in zip(ARRAYS, net):
    a = np.asarray(a)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
      raise VictimFileError(f"{source}: array {name!r} has non-numeric dtype {a.dtype}")
    arrays[name] = a.astype(np.float64)
  w0, b0, w1, b1 = (arrays[n] for n in ARRAYS)
  if w0.ndim != 2 or w1.ndim != 2 or b0.ndim != 1 or b1.ndim != 1:
    raise VictimFileError(
      f"{source}: expected w0 (d,h), b0 (h,), w1 (h,k), b1 (k,); got shapes "
      f"{w0.shape}, {b0.shape}, {w1.shape}, {b1.shape}"
    )
  d, h = w0.shape
  if b0.shape != (h,) or w1.shape[0] != h or b1.shape != (w1.shape[1],):
    raise VictimFileError(
      f"{source}: shape mismatch: w0 {w0.shape}, b0 {b0.shape}, w1 {w1.shape}, b1 {b1.shape} "
      f"(need w0 (d,h), b0 (h,), w1 (h,k), b1 (k,))"
    )
  if min(d, h, w1.shape[1]) < 1:
    raise VictimFileError(f"{source}: empty dimension in shapes {w0.shape}, {w1.shape}")
  for name, a in arrays.items():
    if not np.all(np.isfinite(a)):
      raise VictimFileError(f"{source}: array {name!r} holds {int(np.sum(~np.isfinite(a)))} NaN/inf values")
  return TwoLayerNet(w0, b0, w1, b1)


def load_npz(path) -> TwoLayerNet:
  """Loads and checks a victim from an npz file with arrays w0, b0, w1, b1 (see module docstring).

  Raises:
    VictimFileError: one-line message for a missing/unreadable file, a missing array, a shape mismatch or NaNs.
  """

  def pick(f, path):
    missing = [n for n in ARRAYS if n not in f.files]
    if missing:
      raise VictimFileError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(f.files) or 'none'})")
    return TwoLayerNet(*(f[n] for n in ARRAYS))

  return check_net(read_npz(path, pick), str(path))


def read_npz(path, pick):
  """pick(opened npz, path) on the npz file at `path`; VictimFileError (one line) for a missing, non-zip or
  unreadable file (and whatever VictimFileError pick raises)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise VictimFileError(f"victim file {str(path)!r} does not exist")
  if not zipfile.is_zipfile(path):
    raise VictimFileError(f"{path}: not an npz file (not a zip archive)")
  try:
    with np.load(path, allow_pickle=False) as f:
      return pick(f, path)
  except VictimFileError:
    raise
  except Exception as e:  # truncated, pickled objects...
    raise VictimFileError(f"{path}: not a readable npz file ({type(e).__name__}: {e})") from None


def save_npz(path, net: TwoLayerNet) -> pathlib.Path:
  """Writes `net` as an npz file with arrays w0, b0, w1, b1 (float64); returns the path."""
  path = pathlib.Path(path)
  arrays: dict[str, Any] = {n: np.asarray(a, np.float64) for n, a in zip(ARRAYS, net)}
  np.savez(path, **arrays)
  return path


def random_net(seed: int, input_dim: int, hidden: int, outputs: int = 10) -> TwoLayerNet:
  """A random Gaussian victim: w0 ~ N(0, 1/d), b0 ~ N(0, 0.5^2), w1 ~ N(0, 1/h), b1 ~ N(0, 0.1^2) (float64).

  With inputs ~ N(0, I) every pre-activation is ~ N(0, 1.25): each unit is active on about half the inputs.
  """
  rng = np.random.default_rng(seed)
  return TwoLayerNet(
    rng.normal(size=(input_dim, hidden)) / np.sqrt(input_dim),
    0.5 * rng.normal(size=hidden),
    rng.normal(size=(hidden, outputs)) / np.sqrt(hidden),
    0.1 * rng.normal(size=outputs),
  )


def digits_data(seed: int = 0, test_fraction: float = 0.25):
  """scikit-learn digits (d=64, 10 classes) scaled to [0, 1], split into (x_train, y_train, x_test, y_test)."""
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = x.astype(np.float64) / 16.0
  perm = np.random.default_rng(seed).permutation(len(x))
  n_test = int(round(test_fraction * len(x)))
  test, train = perm[:n_test], perm[n_test:]
  return x[train], y[train], x[test], y[test]


def adam_full_batch(loss_fn, params, steps: int, learning_rate: float):
  """`steps` jitted full-batch Adam (optax) steps on loss_fn(params); FloatingPointError if the loss ends
  non-finite. Call inside `jax.enable_x64(True)` for float64 training."""
  import jax
  import optax

  opt = optax.adam(learning_rate)

  @jax.jit
  def step(p, state):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  state, loss = opt.init(params), np.nan
  for _ in range(steps):
    params, state, loss = step(params, state)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"training diverged (loss {float(loss)})")
  return params


def train_two_layer(
  x, y, hidden: int, seed: int = 0, steps: int = 300, learning_rate: float = 1e-2, num_classes: int | None = None
) -> TwoLayerNet:
  """Trains a two-layer ReLU net with full-batch Adam (optax) on softmax cross-entropy, in float64.

  Args:
    x: (N, d) inputs; y: (N,) integer labels; hidden: number of hidden units; steps: Adam steps.
  Returns:
    The trained TwoLayerNet (float64 numpy arrays). Runs in a scoped `jax.enable_x64(True)`.
  """
  import jax
  import jax.numpy as jnp
  import optax

  k = int(num_classes or (int(np.max(y)) + 1))
  with jax.enable_x64(True):
    key0, key1 = jax.random.split(jax.random.key(seed))
    d = x.shape[1]
    params = {
      "w0": jax.random.normal(key0, (d, hidden), jnp.float64) * jnp.sqrt(2.0 / d),
      "b0": jnp.zeros(hidden, jnp.float64),
      "w1": jax.random.normal(key1, (hidden, k), jnp.float64) / jnp.sqrt(hidden),
      "b1": jnp.zeros(k, jnp.float64),
    }
    xs, ys = jnp.asarray(x, jnp.float64), jnp.asarray(y)

    def loss_fn(p):
      out = jax.nn.relu(xs @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"]
      return optax.softmax_cross_entropy_with_integer_labels(out, ys).mean()

    params = adam_full_batch(loss_fn, params, steps, learning_rate)
    return check_net(TwoLayerNet(*(np.asarray(params[n], np.float64) for n in ARRAYS)), "trained victim")


def digits_net(seed: int = 0, hidden: int = 32, steps: int = 300):
  """The digits victim: a 64-`hidden`-10 net trained on scikit-learn digits. Returns (net, data) with data =
  (x_train, y_train, x_test, y_test) as from `digits_data`."""
  data = digits_data(seed)
  return train_two_layer(data[0], data[1], hidden, seed=seed, steps=steps, num_classes=10), data
