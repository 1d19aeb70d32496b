"""Where the MixMatch step's time goes on this CPU, op by op: JAX (jax.profiler) against PyTorch (torch.profiler).

  python -m benchmarks.mixmatch_profile [--models=small_cnn,wrn28_2] [--convs=xla,matmul_grad] [--steps=3]

The step is `benchmarks.mixmatch_step`'s, as `benchmarks.mixmatch_throughput` times it (same batches, models,
hyper-parameters). For each model and each way of computing the JAX convolutions (`extraction.conv.CONVS`) it runs
`--steps` warm steps under `jax.profiler.trace` (with a Perfetto trace, which is JSON and needs no TensorBoard),
reads every XLA:CPU op's duration and names its source through the compiled HLO's `op_name` metadata: a
convolution forward, its gradient with respect to the input or to the kernel (the op's output has a kernel's
shape), a copy made for a convolution, a matrix product inside a convolution layer (`--conv=matmul`/`matmul_grad`:
the convolution's GEMM), any other op inside a convolution layer (their im2col: shifted slices and their
concatenation; the bias), another matrix product (the dense head), or anything else (augmentation, MixUp, softmax,
batch norm, Adam, EMA, and the few fusions whose metadata XLA dropped). The same steps of the PyTorch runner run
under `torch.profiler`: `aten::convolution` (forward) and `aten::convolution_backward` (input and kernel gradients
together, one oneDNN call). Times are seconds per step; op times are summed over XLA's threads (which can overlap),
so the column of "op seconds" is set beside the step's wall time. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.common import RESULTS, environment_line
from benchmarks.mixmatch_step import JaxRunner, TorchRunner, make_batches, result_header
from extraction.conv import CONVS

FLAGS = flags.FLAGS

CATEGORIES = (
  "conv forward",
  "conv input grad",
  "conv kernel grad",
  "conv layout copies",
  "conv GEMM",
  "conv other ops",
  "matrix product",
  "other",
)
CONV_CATEGORIES = CATEGORIES[:6]


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


def op_sources(hlo_text: str) -> dict[str, tuple[str, str, tuple[int, ...]]]:
  """Each HLO instruction's name -> (its `op_name` metadata or '', its opcode, its (first) output shape), from
  compiled HLO text (XLA drops the metadata of some instructions, e.g. a kernel gradient's convolution)."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, rest = m.groups()
    if rest.startswith("("):  # a tuple shape: up to its closing parenthesis
      depth = np.cumsum([{"(": 1, ")": -1}.get(ch, 0) for ch in rest])
      end = int(np.argmax(depth == 0)) + 1
      shape_text, rest = rest[:end], rest[end:]
    else:
      shape_text, _, rest = rest.partition(" ")
    opcode = re.match(r"\s*([\w\-]+)\(", rest)
    dims = re.search(r"\[([\d,]*)\]", shape_text)
    meta = re.search(r'op_name="([^"]*)"', rest)
    shape = tuple(int(d) for d in dims.group(1).split(",") if d) if dims else ()
    out[name] = (meta.group(1) if meta else "", opcode.group(1) if opcode else "", shape)
  return out


def category(name: str, op_name: str, opcode: str, shape: tuple[int, ...], kernel_shapes: set) -> str:
  """Which of CATEGORIES the HLO instruction `name` of this source, opcode and output shape belongs to: a copy or
  transpose made for a convolution is a layout copy; a convolution's output of a kernel's shape (its dimensions
  in any order) is the kernel's gradient; one inside a transpose (JAX's backward pass) the input's; else the
  forward pass. A matrix product inside a convolution layer's scope is a convolution computed as one (`--conv=
  matmul`, `matmul_grad`), any other op there is its im2col (the shifted slices and their concatenation) or the
  bias."""
  primitive = op_name.rsplit("/", 1)[-1]
  if opcode == "convolution" or primitive.startswith("conv_general_dilated"):
    if opcode in ("copy", "transpose", "bitcast") or "copy" in name or "transpose" in name:
      return "conv layout copies"
    if tuple(sorted(shape)) in kernel_shapes:
      return "conv kernel grad"
    return "conv input grad" if "transpose(" in op_name or not op_name else "conv forward"
  in_conv = re.search(r"(^|/)Conv(_\d+)?/", op_name) is not None  # a flax Conv module's scope
  if opcode == "dot" or primitive.startswith("dot_general"):
    return "conv GEMM" if in_conv else "matrix product"
  return "conv other ops" if in_conv else "other"


def trace_ops(trace_dir: str) -> list[tuple[str, float]]:
  """(name, seconds) of every complete event of the Perfetto trace that jax.profiler wrote in trace_dir."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  return [(e["name"], e.get("dur", 0) / 1e6) for e in events if e.get("ph") == "X"]


def profile_jax(name: str, batches: list[dict], conv: str, steps: int) -> dict:
  """Seconds per step of each category and the top ops, from one traced run of `steps` warm steps."""
  runner = JaxRunner(name, batches, "jit", conv)
  runner.run(2)
  sources = op_sources(runner.step.lower(runner.state, runner.batches[0]).compile().as_text())
  kernel_shapes = {tuple(sorted(p.shape)) for p in jax.tree_util.tree_leaves(runner.state.params) if p.ndim == 4}
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      t0 = time.perf_counter()
      runner.run(steps)
      wall = time.perf_counter() - t0
    events = trace_ops(d)
  per_cat: dict[str, float] = collections.Counter()
  per_op: dict[tuple[str, str], float] = collections.Counter()
  for ev, sec in events:
    if ev in sources:
      op_name, opcode, shape = sources[ev]
      cat = category(ev, op_name, opcode, shape, kernel_shapes)
      per_cat[cat] += sec / steps
      per_op[(cat, "/".join((op_name or opcode).split("/")[-3:]) + f" {list(shape)}")] += sec / steps
  return {
    "framework": "jax",
    "conv": conv,
    "wall_s_per_step": wall / steps,
    "op_s_per_step": sum(per_cat.values()),
    "categories": {c: per_cat.get(c, 0.0) for c in CATEGORIES},
    "top_ops": [[c, op, s] for (c, op), s in sorted(per_op.items(), key=lambda kv: -kv[1])[:8]],
  }


def profile_torch(name: str, batches: list[dict], steps: int) -> dict:
  """PyTorch's step under torch.profiler: convolution forward and backward, the rest, per step."""
  import torch

  runner = TorchRunner(name, batches)
  runner.run(2)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    runner.run(steps)
    wall = time.perf_counter() - t0
  totals = {e.key: e.cpu_time_total / 1e6 / steps for e in prof.key_averages()}
  forward, backward = totals.get("aten::convolution", 0.0), totals.get("aten::convolution_backward", 0.0)
  return {
    "framework": "torch",
    "conv": "oneDNN",
    "wall_s_per_step": wall / steps,
    "categories": {"conv forward": forward, "conv input+kernel grad": backward},
    "other_s_per_step": wall / steps - forward - backward,
  }


def to_markdown(result: dict) -> str:
  m = result["machine"]
  lines = [
    "# Where the MixMatch step's time goes: JAX (jax.profiler) against PyTorch (torch.profiler), CPU",
    "",
    f"Command: `{result['command']}`  ",
    f"Date: {result['date']}  ",
    f"Machine: {m['cores']}-core CPU ({m['cpu']}), jax {m['jax']}, torch {m['torch']} ({m['torch_threads']} threads)  ",
    f"{environment_line(m)}  ",
    f"Load average before / after: {result['loadavg_before']} / {result['loadavg_after']}",
    "",
    __doc__.split("\n\n", 2)[2].strip().replace("\n", " "),
    "",
    "| model | framework | conv | wall s/step | op s/step | " + " | ".join(CATEGORIES) + " | convolutions' share |",
    "|---|---|---|---|---|" + "---|" * len(CATEGORIES) + "---|",
  ]
  for r in result["rows"]:
    c = r["categories"]
    if r["framework"] == "jax":
      share = sum(c[k] for k in CONV_CATEGORIES) / max(r["op_s_per_step"], 1e-12)
      lines.append(
        f"| {r['model']} | jax | {r['conv']} | {r['wall_s_per_step']:.3f} | {r['op_s_per_step']:.3f} | "
        + " | ".join(f"{c[k]:.3f}" for k in CATEGORIES)
        + f" | {share:.0%} |"
      )
    else:
      both = c["conv input+kernel grad"]
      share = (c["conv forward"] + both) / r["wall_s_per_step"]
      lines.append(
        f"| {r['model']} | torch | {r['conv']} | {r['wall_s_per_step']:.3f} | - | {c['conv forward']:.3f} | "
        + " | ".join(
          [f"{both:.3f} (both)"] + [""] * (len(CATEGORIES) - 3) + [f"{r['other_s_per_step']:.3f} (wall - conv)"]
        )
        + f" | {share:.0%} |"
      )
  lines += ["", "Top JAX ops (seconds per step, op_name's last segments and output shape):", ""]
  for r in result["rows"]:
    if r["framework"] == "jax":
      lines.append(f"- {r['model']}, {r['conv']}: " + "; ".join(f"{op} ({c}) {s:.3f}" for c, op, s in r["top_ops"]))
  return "\n".join(lines) + "\n" + result.get("notes", "")


def define_flags() -> None:
  """The flags of this benchmark (defined when run as a program, so that tests can import it beside others)."""
  flags.DEFINE_list("models", ["small_cnn", "wrn28_2"], "Models (names of extraction.models.MODELS).")
  flags.DEFINE_list("convs", ["xla", "matmul_grad"], f"JAX convolutions to profile: {', '.join(CONVS)}.")
  flags.DEFINE_integer("batch", 64, "Labeled batch B (unlabeled B, augmented K=2 times).", lower_bound=1)
  flags.DEFINE_integer("steps", 3, "Profiled steps per model and framework (after 2 warm-up steps).", lower_bound=1)
  flags.DEFINE_string("name", "mixmatch_profile", "Results file name in benchmarks/results/.")
  flags.register_validator(
    "convs", lambda c: all(x in CONVS for x in c), f"--convs must name {', '.join(CONVS)}", flag_values=FLAGS
  )


def main(argv):
  del argv
  import torch

  torch.set_num_threads(os.cpu_count())
  result = result_header("benchmarks.mixmatch_profile")
  for name in FLAGS.models:
    batches = make_batches(2, FLAGS.batch)
    for conv in FLAGS.convs:
      result["rows"].append({"model": name, **profile_jax(name, batches, conv, FLAGS.steps)})
      print(json.dumps(result["rows"][-1]), flush=True)
    result["rows"].append({"model": name, **profile_torch(name, batches, FLAGS.steps)})
    print(json.dumps(result["rows"][-1]), flush=True)
  result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{FLAGS.name}.json").write_text(json.dumps(result, indent=2))
  (RESULTS / f"{FLAGS.name}.md").write_text(to_markdown(result))
  print(to_markdown(result))


if __name__ == "__main__":
  define_flags()
  app.run(main)
