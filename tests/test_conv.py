"""extraction.conv.matmul_conv against XLA's convolution, and the models and victims that use it."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from extraction import conv, models
from extraction import victim as victim_lib

CASES = [  # (input NHWC, kernel HWIO, strides, padding)
  ((2, 9, 7, 3), (3, 3, 3, 5), (1, 1), "SAME"),
  ((2, 9, 7, 3), (3, 3, 3, 5), (2, 2), "SAME"),
  ((1, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID"),
  ((3, 6, 10, 2), (3, 2, 2, 4), (1, 3), "VALID"),
  ((2, 5, 5, 1), (3, 3, 1, 2), (2, 1), ((2, 0), (1, 3))),
]


@pytest.mark.parametrize("impl", ["matmul", "matmul_grad"])
@pytest.mark.parametrize("lhs_shape,rhs_shape,strides,padding", CASES)
def test_matmul_convolutions_are_xla_conv_and_so_are_their_gradients(impl, lhs_shape, rhs_shape, strides, padding):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    lhs = jnp.asarray(rng.normal(size=lhs_shape) * 100.0)  # far from the origin too
    rhs = jnp.asarray(rng.normal(size=rhs_shape))
    dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, ("NHWC", "HWIO", "NHWC"))
    ref = lambda a, b: lax.conv_general_dilated(a, b, strides, padding, dimension_numbers=dn)
    ours = lambda a, b: conv.CONVS[impl](a, b, strides, padding, dimension_numbers=dn)
    np.testing.assert_allclose(ours(lhs, rhs), ref(lhs, rhs), rtol=1e-12, atol=1e-10)
    cot = jnp.asarray(rng.normal(size=ref(lhs, rhs).shape))
    g_ref = jax.vjp(ref, lhs, rhs)[1](cot)
    g_ours = jax.vjp(ours, lhs, rhs)[1](cot)
    for a, b in zip(g_ours, g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"rhs_dilation": (2, 2)}, "dilation"),
    ({"lhs_dilation": (2, 1)}, "dilation"),
    ({"feature_group_count": 2}, "feature or batch groups"),
    ({"batch_group_count": 2}, "feature or batch groups"),
    ({"dimension_numbers": ("NCHW", "OIHW", "NCHW")}, "NHWC"),
  ],
)
@pytest.mark.parametrize("impl", ["matmul", "matmul_grad"])
def test_matmul_convolutions_refuse_what_they_do_not_compute(impl, kwargs, message):
  lhs, rhs = jnp.zeros((1, 6, 6, 4)), jnp.zeros((3, 3, 4, 4))
  with pytest.raises(ValueError, match=message):
    conv.CONVS[impl](lhs, rhs, (1, 1), "SAME", **kwargs)


NETS = {  # name -> (model of a convolution, input shape): a WRN of one block a scale (strided and 1x1 convolutions)
  "small_cnn": (lambda c: models.create_model("small_cnn", 10, conv=c), (16, 16, 3)),
  "wrn": (lambda c: models.WideResNet(10, filters=8, repeat=1, conv=c), (8, 8, 3)),
}


@pytest.mark.parametrize("name", NETS)
def test_models_with_matmul_convolutions_have_the_same_parameters_outputs_and_gradients(name):
  make, shape = NETS[name]
  x = jax.random.normal(jax.random.key(1), (4,) + shape)
  nets = {c: make(c) for c in conv.CONVS}
  shapes = {c: jax.eval_shape(lambda k, m=m: m.init(k, x, train=False), jax.random.key(0)) for c, m in nets.items()}
  assert all(shapes[c] == shapes["xla"] for c in nets)  # the same parameters: checkpoints serve every convolution
  v = nets["xla"].init(jax.random.key(0), x, train=False)

  def loss(params, c):
    out, _ = nets[c].apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
    return (out**2).sum(), out

  grads = {c: jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)(v["params"], c) for c in nets}
  for c in ("matmul", "matmul_grad"):
    np.testing.assert_allclose(grads[c][1], grads["xla"][1], rtol=1e-4, atol=1e-4)  # the outputs
    scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(grads["xla"][0]))
    for a, b in zip(jax.tree.leaves(grads[c][0]), jax.tree.leaves(grads["xla"][0])):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)  # biases before batch norm: grads ~0
  jaxpr = lambda c: str(jax.make_jaxpr(lambda v, x: nets[c].apply(v, x))(v, x))
  assert "conv_general_dilated" not in jaxpr("matmul")  # the matmul path really runs
  assert "conv_general_dilated" in jaxpr("xla") and "custom_vjp" in jaxpr("matmul_grad")


def test_unknown_convolution_is_refused():
  with pytest.raises(ValueError, match="unknown convolution 'fft'; choose one of xla, matmul, matmul_grad"):
    models.create_model("small_cnn", 10, conv="fft")


def test_victim_convolution_is_part_of_its_recipe(digits, tmp_path):
  cfg = victim_lib.VictimConfig(model="tiny_cnn", steps=2, batch_size=8)
  victim_lib.train_victim(digits, cfg, tmp_path / "victim")
  info_path = tmp_path / "victim" / "info.json"
  info = json.loads(info_path.read_text())
  assert info["config"]["conv"] == "xla"
  del info["config"]["conv"]  # a victim written before the field existed is the xla one
  info_path.write_text(json.dumps(info))
  victim_lib.train_victim(digits, cfg, tmp_path / "victim")
  with pytest.raises(victim_lib.VictimMismatch, match="other settings"):
    victim_lib.train_victim(
      digits, victim_lib.VictimConfig(model="tiny_cnn", steps=2, batch_size=8, conv="matmul"), tmp_path / "victim"
    )
  restored = victim_lib.load_victim(tmp_path / "victim")
  assert restored.model.conv == "xla"


def test_run_names_leave_the_default_convolution_out():
  from extraction import students
  from launch import learning

  assert "conv" not in learning.config_settings(students.StudentConfig())
  assert "conv" not in learning.config_settings(victim_lib.VictimConfig())
  assert learning.config_settings(victim_lib.VictimConfig(conv="matmul"))["conv"] == "matmul"
  names = {
    learning.run_name("fs", {"config": learning.config_settings(students.StudentConfig(conv=c))}) for c in conv.CONVS
  }
  assert len(names) == len(conv.CONVS)  # matmul students never resume from xla students' checkpoints


def test_conv_flags_reach_the_students_and_the_victim_and_bad_names_are_refused():
  from absl import flags
  from absl.testing import flagsaver

  from launch import learning

  FLAGS = flags.FLAGS
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(conv="matmul_grad", victim_conv="matmul"):
    assert learning.method_settings("fs")[0].conv == "matmul_grad"
    assert learning.method_settings("mixmatch")[0].conv == "matmul_grad"
    assert learning.victim_config().conv == "matmul"
  with flagsaver.flagsaver(), pytest.raises(flags.IllegalFlagValueError, match=re.escape("<xla|matmul|matmul_grad>")):
    FLAGS["conv"].parse("fft")  # as --conv=fft on the command line
