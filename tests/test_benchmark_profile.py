"""benchmarks/mixmatch_profile.py's reading of XLA's profile: each compiled op named by its source (convolution
forward, input and kernel gradients, convolutions as matrix products, the rest), and op durations read back from
a real jax.profiler trace."""

import jax
import jax.numpy as jnp

from benchmarks.mixmatch_profile import category, op_sources, trace_ops
from extraction import models, train


def _categories(fn, *args, kernel_shapes):
  sources = op_sources(jax.jit(fn).lower(*args).compile().as_text())
  return sources, {name: category(name, *src, kernel_shapes) for name, src in sources.items()}


def _conv_loss(x, w):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.tanh(y).sum()


def test_xla_convolutions_are_named_forward_input_grad_and_kernel_grad():
  x, w = jnp.ones((5, 8, 8, 2)), jnp.ones((3, 3, 2, 4))
  sources, cats = _categories(jax.value_and_grad(_conv_loss, argnums=(0, 1)), x, w, kernel_shapes={(2, 3, 3, 4)})
  convs = {cats[n] for n, (_, opcode, _) in sources.items() if opcode == "convolution"}
  assert convs == {"conv forward", "conv input grad", "conv kernel grad"}
  assert "other" in cats.values()  # tanh, the sums
  # the forward pass alone has one convolution, a forward one
  sources, cats = _categories(_conv_loss, x, w, kernel_shapes={(2, 3, 3, 4)})
  assert [cats[n] for n, (_, opcode, _) in sources.items() if opcode == "convolution"] == ["conv forward"]


def test_convolutions_as_matrix_products_are_conv_gemms_and_the_dense_head_is_not():
  model = models.create_model("small_cnn", 10, conv="matmul")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  x = jnp.ones((2, 32, 32, 3))
  loss = lambda p: train.forward(model, p, variables.get("batch_stats", {}), x)[0].sum()
  kernels = {tuple(sorted(k.shape)) for k in jax.tree_util.tree_leaves(variables["params"]) if k.ndim == 4}
  sources, cats = _categories(jax.grad(loss), variables["params"], kernel_shapes=kernels)
  assert not any(opcode == "convolution" for _, opcode, _ in sources.values())
  dots = {cats[n] for n, (_, opcode, _) in sources.items() if opcode == "dot"}
  assert "conv GEMM" in dots and "matrix product" in dots  # the classifier head is a plain matrix product
  concats = {cats[n] for n, (op_name, opcode, _) in sources.items() if opcode == "concatenate" and op_name}
  assert concats == {"conv other ops"}  # the im2col of the shifted views


def test_trace_ops_reads_the_durations_of_the_compiled_ops(tmp_path):
  f = jax.jit(lambda a: jnp.tanh(a @ a).sum())
  a = jnp.ones((256, 256))
  f(a).block_until_ready()
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    f(a).block_until_ready()
  sources = op_sources(f.lower(a).compile().as_text())
  ops = [(name, sec) for name, sec in trace_ops(str(tmp_path)) if name in sources]
  assert ops and all(sec >= 0 for _, sec in ops)
  assert any(sources[name][1] in ("dot", "fusion") for name, _ in ops)


def test_the_table_has_one_cell_a_column_in_every_row():
  from benchmarks.mixmatch_profile import CATEGORIES, to_markdown

  machine = {"cores": 2, "cpu": "x", "jax": "0", "torch": "0", "torch_threads": 2, "lock": None}
  jax_row = {"model": "m", "framework": "jax", "conv": "xla", "wall_s_per_step": 1.0, "op_s_per_step": 1.0}
  jax_row |= {"categories": dict.fromkeys(CATEGORIES, 0.1), "top_ops": [["other", "op [1]", 0.1]]}
  torch_row = {"model": "m", "framework": "torch", "conv": "oneDNN", "wall_s_per_step": 1.0, "other_s_per_step": 0.5}
  torch_row["categories"] = {"conv forward": 0.2, "conv input+kernel grad": 0.3}
  result = {"command": "c", "date": "d", "machine": machine, "loadavg_before": [], "loadavg_after": []}
  table = [line for line in to_markdown({**result, "rows": [jax_row, torch_row]}).splitlines() if line.startswith("|")]
  assert len(table) == 4 and len({line.count("|") for line in table}) == 1
  assert table[3].endswith("| 50% |")  # torch: (0.2 + 0.3) / 1.0 s of wall time in convolutions
