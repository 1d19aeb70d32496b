"""Fully connected ReLU networks of any depth in float64: the victims of the deep attack and what it recovers.

Convention (victims, recovered networks and npz files alike), generalising the two-layer one of victims.py:
  w0 (d, n0), b0 (n0,), w1 (n0, n1), b1 (n1,), ..., wL (n_{L-1}, k), bL (k,);
  h_0 = x,  h_{i+1} = relu(h_i @ w_i + b_i) for i < L,  logits = h_L @ wL + bL.
L is the number of hidden layers (`depth`); depth 1 is the two-layer network of victims.py (`to_two_layer`).

Besides the forward pass, the attack needs from a (recovered) prefix of layers, at a batch of points: every hidden
layer's pre-activations and the local Jacobian dh_i/dx of the features entering layer i (`features`). Everything is
float64 numpy; the victims trained here (`train`) are trained in float64 inside a scoped `jax.enable_x64(True)`.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from functional_equivalence.errors import VictimFileError
from functional_equivalence.victims import TwoLayerNet, adam_full_batch, read_npz


class DeepNet(NamedTuple):
  """Weights (w0 (d, n0), ..., wL (n_{L-1}, k)) and biases (b0 (n0,), ..., bL (k,)), float64."""

  weights: tuple
  biases: tuple

  @property
  def depth(self) -> int:
    """Number of hidden layers L."""
    return len(self.weights) - 1

  @property
  def sizes(self) -> tuple:
    """(d, n0, ..., n_{L-1}, k)."""
    return (self.weights[0].shape[0],) + tuple(w.shape[1] for w in self.weights)

  @property
  def shape_text(self) -> str:
    return "-".join(map(str, self.sizes))

  def prefix(self, layers: int) -> DeepNet:
    """The first `layers` layers (hidden layers 0..layers-1); its `features` are h_layers."""
    return DeepNet(tuple(self.weights[:layers]), tuple(self.biases[:layers]))


def from_two_layer(net: TwoLayerNet) -> DeepNet:
  return DeepNet((net.w0, net.w1), (net.b0, net.b1))


def to_two_layer(net: DeepNet) -> TwoLayerNet:
  if net.depth != 1:
    raise ValueError(f"a network with {net.depth} hidden layers is not a two-layer network")
  return TwoLayerNet(net.weights[0], net.biases[0], net.weights[1], net.biases[1])


def logits(net: DeepNet, x) -> np.ndarray:
  """Float64 logits (N, k) at inputs x (N, d)."""
  h = np.asarray(x, np.float64).reshape(len(x), -1)
  for w, b in zip(net.weights[:-1], net.biases[:-1]):
    h = np.maximum(h @ w + b, 0.0)
  return h @ net.weights[-1] + net.biases[-1]


def answers(net: DeepNet, x, differences: bool = False) -> np.ndarray:
  """The outputs as the oracle answers them: logits, or with `differences` (a probabilities oracle) the logits minus
  class 0's (N, k - 1)."""
  y = logits(net, x)
  return y[:, 1:] - y[:, :1] if differences else y


def backend(net: DeepNet, dtype=np.float64) -> Callable[[np.ndarray], np.ndarray]:
  """A batched oracle backend x (N, d) -> logits (N, k); `dtype=np.float32` simulates a float32 deployment."""
  if dtype == np.float64:
    return lambda x: logits(net, x)
  net32 = DeepNet(tuple(np.asarray(w, dtype) for w in net.weights), tuple(np.asarray(b, dtype) for b in net.biases))

  def answer(x):
    h = np.asarray(x, dtype).reshape(len(x), -1)
    for w, b in zip(net32.weights[:-1], net32.biases[:-1]):
      h = np.maximum(h @ w + b, 0)
    return h @ net32.weights[-1] + net32.biases[-1]

  return answer


def preactivations(net: DeepNet, x) -> list:
  """Pre-activations (N, n_i) of every hidden layer of `net` (all its layers are taken as hidden)."""
  h, out = np.asarray(x, np.float64), []
  for w, b in zip(net.weights, net.biases):
    p = h @ w + b
    out.append(p)
    h = np.maximum(p, 0.0)
  return out


class Features(NamedTuple):
  """What a recovered prefix says about points x (N, d): h (N, n) the features entering the next layer, their
  Jacobian jac = dh/dx (N, d, n) on the points' linear regions, and per prefix layer the pre-activations (N, n_i)
  and the norms of their input gradients (N, n_i)."""

  h: np.ndarray
  jac: np.ndarray
  pre: list
  pre_grad: list


def features(prefix: DeepNet, x) -> Features:
  """`Features` of an (all hidden) prefix at points x (N, d); with an empty prefix, h = x and jac = I."""
  x = np.asarray(x, np.float64)
  n, d = x.shape
  h, jac, pre, grad = x, np.broadcast_to(np.eye(d), (n, d, d)), [], []
  for i, (w, b) in enumerate(zip(prefix.weights, prefix.biases)):
    p = h @ w + b
    # I @ w is w itself: broadcast, not an (N, d, d) product (the cost of high-dimensional inputs)
    jp = np.broadcast_to(w, (n,) + w.shape) if i == 0 else np.einsum("ndk,kj->ndj", jac, w)
    pre.append(p)
    grad.append(np.linalg.norm(jp, axis=1))
    h = np.maximum(p, 0.0)
    jac = jp * (p > 0)[:, None, :]
  return Features(h, np.asarray(jac), pre, grad)


def feature_values(prefix: DeepNet, x) -> np.ndarray:
  """`Features.h` alone (N, n): the features entering the next layer, without the Jacobian (offline searches)."""
  h = np.asarray(x, np.float64)
  for w, b in zip(prefix.weights, prefix.biases):
    h = np.maximum(h @ w + b, 0.0)
  return h


def along(prefix: DeepNet, x, v) -> list:
  """Forward-mode derivatives of every prefix pre-activation along directions v (N, d) at x (N, d): list of (N, n_i)."""
  h, dh, out = np.asarray(x, np.float64), np.asarray(v, np.float64), []
  for w, b in zip(prefix.weights, prefix.biases):
    p, dp = h @ w + b, dh @ w
    out.append(dp)
    h, dh = np.maximum(p, 0.0), dp * (p > 0)
  return out


def check_net(net: DeepNet, source: str = "victim") -> DeepNet:
  """`net` as float64 arrays, or VictimFileError (one line) for wrong ranks, shapes or non-finite values."""
  ws: list[np.ndarray] = []
  bs: list[np.ndarray] = []
  for i, (w, b) in enumerate(zip(net.weights, net.biases)):
    for name, a in ((f"w{i}", w), (f"b{i}", b)):
      a = np.asarray(a)
      if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise VictimFileError(f"{source}: array {name!r} has non-numeric dtype {a.dtype}")
      if not np.all(np.isfinite(a)):
        raise VictimFileError(f"{source}: array {name!r} holds {int(np.sum(~np.isfinite(a)))} NaN/inf values")
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[1]:
      raise VictimFileError(f"{source}: expected w{i} (n_in, n_out) and b{i} (n_out,), got {w.shape} and {b.shape}")
    if ws and ws[-1].shape[1] != w.shape[0]:
      raise VictimFileError(f"{source}: w{i - 1} has {ws[-1].shape[1]} outputs but w{i} takes {w.shape[0]} inputs")
    if min(w.shape) < 1:
      raise VictimFileError(f"{source}: empty dimension in w{i} {w.shape}")
    ws.append(w)
    bs.append(b)
  if len(ws) < 2:
    raise VictimFileError(f"{source}: a ReLU network needs at least w0, b0, w1, b1 (got {len(ws)} layer(s))")
  return DeepNet(tuple(ws), tuple(bs))


def load_any_npz(path):
  """A victim npz of any depth: a TwoLayerNet (victims.load_npz, its messages) when it holds exactly w0, b0, w1,
  b1, else a DeepNet (`load_npz`). VictimFileError (one line) for a bad file."""
  from functional_equivalence import victims

  names = victims.read_npz(path, lambda f, _: set(f.files))
  if any(re.fullmatch(r"[wb]([2-9]|\d\d+)", n) for n in names):
    return load_npz(path)
  return victims.load_npz(path)


def as_deep(net) -> DeepNet:
  """A TwoLayerNet as a DeepNet of depth 1; a DeepNet as it is."""
  return net if isinstance(net, DeepNet) else from_two_layer(net)


def load_npz(path) -> DeepNet:
  """Loads and checks a network from an npz file with arrays w0, b0, ..., wL, bL (any L >= 1).

  Raises:
    VictimFileError: one-line message for a missing/unreadable file, missing or stray arrays, shape mismatches, NaNs.
  """

  def pick(f, path):
    names = set(f.files)
    layers = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"w(\d+)", n)))
    if not layers:
      raise VictimFileError(f"{path}: missing arrays w0, b0, w1, b1 (has {', '.join(sorted(names)) or 'none'})")
    expected = [f"{p}{i}" for i in range(max(layers) + 1) for p in ("w", "b")]
    missing = [n for n in expected if n not in names]
    if missing:
      raise VictimFileError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(sorted(names))})")
    return DeepNet(tuple(f[f"w{i}"] for i in range(max(layers) + 1)), tuple(f[f"b{i}"] for i in range(max(layers) + 1)))

  return check_net(read_npz(path, pick), str(path))


def save_npz(path, net: DeepNet) -> pathlib.Path:
  """Writes `net` as an npz file with arrays w0, b0, ..., wL, bL (float64); returns the path."""
  path = pathlib.Path(path)
  arrays: dict[str, Any] = {}
  for i, (w, b) in enumerate(zip(net.weights, net.biases)):
    arrays[f"w{i}"], arrays[f"b{i}"] = np.asarray(w, np.float64), np.asarray(b, np.float64)
  np.savez(path, **arrays)
  return path


def random_net(seed: int, sizes: Sequence[int], bias_scale: float = 0.5) -> DeepNet:
  """A random Gaussian network of layer sizes (d, n0, ..., k): w_i ~ N(0, 1/n_in), b_i ~ N(0, bias_scale^2)
  (the output bias ~ N(0, 0.1^2)). With inputs ~ N(0, I) pre-activations stay of order 1 in every layer."""
  rng = np.random.default_rng(seed)
  sizes = [int(s) for s in sizes]
  ws = tuple(rng.normal(size=(a, b)) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:]))
  bs = tuple((bias_scale if i < len(ws) - 1 else 0.1) * rng.normal(size=b) for i, b in enumerate(sizes[1:]))
  return DeepNet(ws, bs)


def with_rare_unit(net: DeepNet, fraction: float, points: np.ndarray) -> DeepNet:
  """`net` with unit 0 of its last hidden layer made rarely active: its bias lowered so that it is on at `fraction`
  of `points` (N, d), e.g. 3e-4 of a ball's check points; every other weight as it was. Trained networks have such
  units (digits 64-64-64-10: one on at 0.03% of the ball); the attack meets them at few kinks, far out."""
  z = preactivations(net.prefix(net.depth), points)[-1][:, 0]
  biases = list(net.biases)
  biases[-2] = biases[-2].copy()
  biases[-2][0] -= np.quantile(z, 1 - fraction)
  return DeepNet(net.weights, tuple(biases))


def pruned(net: DeepNet, layer: int, fraction: float) -> DeepNet:
  """`net` with the `fraction` of weights[layer] smallest in magnitude set to 0 (magnitude pruning, as deployed
  networks are pruned); every other weight as it was. A unit left with one input has for surface (if it has one) a
  whole hyperplane parallel to that input unit's, as a unit of the layer before would; units left with no live input
  or no output are inert."""
  w = np.array(net.weights[layer], dtype=np.float64)
  cut = int(round(fraction * w.size))
  if cut:
    order = np.argsort(np.abs(w), axis=None, kind="stable")
    w.flat[order[:cut]] = 0.0
  weights = list(net.weights)
  weights[layer] = w
  return DeepNet(tuple(weights), net.biases)


def cme_net(
  seed: int, sizes: Sequence[int], samples: int = 20, epochs: int = 100, batch: int = 4, learning_rate: float = 3e-4
) -> DeepNet:
  """A victim made as CME's train_models.py makes theirs (Carlini et al. 2020): w ~ N(0, 1) / sqrt(n_out), zero
  biases, then `epochs` passes of Adam (lr 3e-4, batches of 4) on a squared loss memorising `samples` random
  N(0, I) points with random 0/1 targets; float64, our own code (optax), seeded by `seed`."""
  import jax
  import jax.numpy as jnp
  import optax

  rng = np.random.default_rng(seed)
  sizes = [int(s) for s in sizes]
  params = (
    [rng.normal(size=(a, b)) / np.sqrt(b) for a, b in zip(sizes[:-1], sizes[1:])],
    [np.zeros(b) for b in sizes[1:]],
  )
  x = rng.normal(size=(samples, sizes[0]))
  y = (rng.normal(size=samples) > 0).astype(np.float64)
  with jax.enable_x64(True):

    def forward(p, inputs):
      h = inputs
      for i, (w, b) in enumerate(zip(*p)):
        h = h @ w + b
        if i < len(p[0]) - 1:
          h = jax.nn.relu(h)
      return h

    def loss(p, bx, by):
      return jnp.mean((by - forward(p, bx)[:, 0]) ** 2)

    opt = optax.adam(learning_rate)
    params = jax.tree.map(jnp.asarray, params)
    state = opt.init(params)

    @jax.jit
    def step(p, s, bx, by):
      updates, s = opt.update(jax.grad(loss)(p, bx, by), s, p)
      return optax.apply_updates(p, updates), s

    for _ in range(epochs):
      for j in range(0, samples, batch):
        params, state = step(params, state, x[j : j + batch], y[j : j + batch])
    ws, bs = (tuple(np.asarray(a, np.float64) for a in part) for part in params)
  return check_net(DeepNet(ws, bs), "cme victim")


def train(
  x,
  y,
  hidden: Sequence[int],
  seed: int = 0,
  steps: int = 300,
  learning_rate: float = 1e-2,
  num_classes: int | None = None,
) -> DeepNet:
  """Trains a ReLU network d-hidden...-k with full-batch Adam (optax) on softmax cross-entropy, in float64.

  Args:
    x: (N, d) inputs; y: (N,) integer labels; hidden: widths of the hidden layers; steps: Adam steps.
  Returns:
    The trained DeepNet (float64). He-normal weights, zero biases; runs in a scoped `jax.enable_x64(True)`.
  """
  import jax
  import jax.numpy as jnp
  import optax

  k = int(num_classes or (int(np.max(y)) + 1))
  sizes = [x.shape[1], *[int(h) for h in hidden], k]
  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
    params = (
      [jax.random.normal(kk, (a, b), jnp.float64) * jnp.sqrt(2.0 / a) for kk, a, b in zip(keys, sizes[:-1], sizes[1:])],
      [jnp.zeros(b, jnp.float64) for b in sizes[1:]],
    )
    xs, ys = jnp.asarray(x, jnp.float64), jnp.asarray(y)

    def loss_fn(p):
      h = xs
      for w, b in zip(p[0][:-1], p[1][:-1]):
        h = jax.nn.relu(h @ w + b)
      return optax.softmax_cross_entropy_with_integer_labels(h @ p[0][-1] + p[1][-1], ys).mean()

    params = adam_full_batch(loss_fn, params, steps, learning_rate)
    ws, bs = (tuple(np.asarray(a, np.float64) for a in part) for part in params)
  return check_net(DeepNet(ws, bs), "trained victim")


def digits_data(seed: int = 0, side: int = 8):
  """scikit-learn digits scaled to [0, 1] as (x_train, y_train, x_test, y_test); side=28 upsamples the 8x8 images
  bilinearly to 28x28 (784 inputs, MNIST's size)."""
  from functional_equivalence.victims import digits_data as digits64

  data = list(digits64(seed))
  if side != 8:
    import scipy.ndimage

    for i in (0, 2):
      imgs = data[i].reshape(-1, 8, 8)
      data[i] = np.clip(scipy.ndimage.zoom(imgs, (1, side / 8, side / 8), order=1), 0, 1).reshape(len(imgs), -1)
  return tuple(data)


def digits_net(seed: int = 0, hidden: Sequence[int] = (64, 64), side: int = 8, steps: int = 300):
  """A digits-trained victim with inputs side^2 (64, or 784 with side=28). Returns (net, data)."""
  data = digits_data(seed, side)
  return train(data[0], data[1], hidden, seed=seed, steps=steps, num_classes=10), data


def tabular_net(
  name: str, seed: int = 0, hidden: Sequence[int] = (32, 16, 8), steps: int = 500, scaling: str = "minmax"
):
  """A victim trained on one of scikit-learn's classification datasets (extraction.tabular: breast_cancer, wine,
  iris, digits; its training split drawn with `seed`), its features min-max scaled to [0, 1] (`scaling`
  "minmax") or standardised by the training split's mean and deviation ("standard"). Returns (net, data), data in
  the victim's input scaling."""
  from extraction import tabular

  if scaling not in ("minmax", "standard"):
    raise ValueError(f"scaling is 'minmax' or 'standard', got {scaling!r}")
  data = tabular.load(name, seed)
  if data.task != "classification":
    raise ValueError(f"{name!r} is a regression dataset; a ReLU classifier victim needs a classification one")
  if scaling == "standard":
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    data = data._replace(x_train=(data.x_train - mean) / std, x_test=(data.x_test - mean) / std)
  return train(data.x_train, data.y_train, hidden, seed=seed, steps=steps, num_classes=data.num_classes), data
