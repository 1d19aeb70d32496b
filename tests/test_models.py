import jax
import jax.numpy as jnp
import pytest

from extraction import models


def _params(v):
  return sum(x.size for x in jax.tree.leaves(v["params"]))


@pytest.mark.parametrize(
  "name,shape,n_params",
  [
    ("wrn28_2", (32, 32, 3), (1.4e6, 1.55e6)),
    ("small_cnn", (32, 32, 3), (0.28e6, 0.30e6)),
    ("mlp", (8, 8, 1), (9610, 9610)),
  ],
)
def test_shapes_and_sizes(name, shape, n_params):
  m = models.create_model(name, 10)
  x = jnp.zeros((2,) + shape)
  v = m.init(jax.random.key(0), x)
  assert m.apply(v, x).shape == (2, 10)
  assert n_params[0] <= _params(v) <= n_params[1]


def test_rotation_head():
  m = models.create_model("small_cnn", 7, rotation_head=True)
  x = jnp.zeros((3, 16, 16, 1))
  logits, rot = m.apply(m.init(jax.random.key(0), x), x)
  assert logits.shape == (3, 7) and rot.shape == (3, 4)


def test_unknown_model():
  with pytest.raises(ValueError, match="unknown model 'resnet'"):
    models.create_model("resnet", 10)
