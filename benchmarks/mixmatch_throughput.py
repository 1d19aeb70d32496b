"""Throughput of the MixMatch train step on this CPU: JAX (semisup.mixmatch) against the same step in PyTorch.

Run: `python -m benchmarks.mixmatch_throughput` (about 15 minutes on a quiet 2-core CPU; needs `pip install torch`,
which setup.py deliberately does not list). Writes benchmarks/results/mixmatch_throughput.{json,md}. Besides the
plain jitted step it times the variants in VARIANTS (several CPU devices, XLA flags, the step inside lax.scan, the
model alone), each in its own process.

Both frameworks run the same work per step, in float32: batch B=64 labeled + U=64 unlabeled 32x32x3 uint8
images, flip + 4-pixel shift, K=2 augmentations of the unlabeled batch, label guess (K forward passes in
training mode, batch-norm statistics not kept), sharpening, MixUp of the 64+128 images, one forward/backward
pass on them, Adam with decoupled weight decay on kernels, EMA of the weights. A step counts 64 + 2*64 = 192
images. The models are WRN-28-2 and the small CNN of extraction/models.py, rebuilt layer for layer in PyTorch
below (parameter counts are compared in the output). JAX and PyTorch steps are timed in alternating rounds
in the same process, so that load from other processes falls on both alike; each reports the median step time.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import jax
from absl import app, flags

from benchmarks.common import environment_line
from benchmarks.mixmatch_step import JaxRunner, K, TorchRunner, make_batches, result_header

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["small_cnn", "wrn28_2"], "Models to time (names of extraction.models.MODELS).")
flags.DEFINE_integer("batch", 64, "Labeled batch B; the unlabeled batch is B too, augmented K=2 times.")
flags.DEFINE_integer("rounds", 4, "Alternating JAX / PyTorch timing rounds per model.")
flags.DEFINE_string("steps_per_round", "small_cnn=5,wrn28_2=1", "Timed steps per round, per model (default 2).")
flags.DEFINE_string("out_dir", "benchmarks/results", "Where NAME.{json,md} go.")
flags.DEFINE_string("name", "mixmatch_throughput", "File name of the results (without extension).")
flags.DEFINE_list(
  "variants",
  ["jit", "2 CPU devices", "4 CPU devices", "onednn", "lax.scan", "model fwd+bwd", "matmul conv"],
  "JAX variants timed for the first model (names of VARIANTS).",
)
flags.DEFINE_list("other_variants", ["jit", "matmul conv"], "JAX variants timed for the other models.")
flags.DEFINE_string("child", None, "Internal: time MODEL:VARIANT in this process and print its row.")


def _known_variants(names: list) -> bool:
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    raise flags.ValidationError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
  return True


# ---------------------------------------------------------------------------------------------------- main
def time_model(name: str, b: int, rounds: int, steps: int, variant: str = "jit", conv: str = "xla") -> dict:
  """Warms up both runners (compile excluded), then times `rounds` alternating rounds of `steps` steps."""
  batches = make_batches(2, b)
  runners = {
    "jax": JaxRunner(name, batches, variant, conv),
    "torch": TorchRunner(name, batches, variant if variant in ("model", "predict") else "step"),
  }
  times = {k: [] for k in runners}
  for k, r in runners.items():
    t0 = time.perf_counter()
    r.run(1)
    print(f"{name} {k}: first step (warm-up, compile) {time.perf_counter() - t0:.1f}s", flush=True)
  for i in range(rounds):
    for k, r in runners.items():
      t0 = time.perf_counter()
      r.run(steps)
      times[k].append((time.perf_counter() - t0) / steps)
      print(f"{name} {k}: round {i + 1}/{rounds}  {times[k][-1]:.3f} s/step", flush=True)
  images = b + K * b
  row = {
    "model": name,
    "variant": variant,
    "conv": conv,
    "jax_devices": len(jax.devices()),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "batch": f"{b}+{K}x{b}",
    "images_per_step": images,
    "timed_steps": rounds * steps,
  }
  for k, r in runners.items():
    med = statistics.median(times[k])
    row.update(
      {
        f"{k}_params": r.params,
        f"{k}_s_per_step": med,
        f"{k}_images_per_s": images / med,
        f"{k}_s_per_step_rounds": times[k],
      }
    )
  row["ratio_jax_over_torch"] = row["jax_images_per_s"] / row["torch_images_per_s"]
  return row


VARIANTS = {  # name -> (XLA_FLAGS of the child process, JaxRunner variant, convolutions: extraction.conv.CONVS)
  "jit": ("", "jit", "xla"),
  "2 CPU devices": ("--xla_force_host_platform_device_count=2", "devices", "xla"),
  "4 CPU devices": ("--xla_force_host_platform_device_count=4", "devices", "xla"),
  "onednn": ("--xla_cpu_use_onednn=true", "jit", "xla"),
  "lax.scan": ("", "scan", "xla"),
  "model fwd+bwd": ("", "model", "xla"),
  "matmul conv": ("", "jit", "matmul"),
  "matmul conv lax.scan": ("", "scan", "matmul"),
  "matmul conv model fwd+bwd": ("", "model", "matmul"),
  "matmul_grad conv": ("", "jit", "matmul_grad"),
  "matmul_grad conv lax.scan": ("", "scan", "matmul_grad"),
  "matmul_grad conv model fwd+bwd": ("", "model", "matmul_grad"),
  "predict": ("", "predict", "xla"),
  "matmul conv predict": ("", "predict", "matmul"),
  "matmul_grad conv predict": ("", "predict", "matmul_grad"),
}


def to_markdown(result: dict) -> str:
  m = result["machine"]
  lines = [
    "# MixMatch train-step throughput, JAX vs PyTorch (CPU)",
    "",
    f"Command: `{result['command']}`  ",
    f"Date: {result['date']}  ",
    f"Machine: {m['cores']}-core CPU ({m['cpu']}, {m['platform']}), Python {m['python']}, jax {m['jax']} "
    f"({m['jax_backend']}), torch {m['torch']} ({m['torch_threads']} threads)  ",
    f"{environment_line(m)}  ",
    f"Load average before / after: {result['loadavg_before']} / {result['loadavg_after']} "
    "(JAX and PyTorch rounds alternate in one process so both see the same load)",
    "",
    "Step: B labeled + K=2 x B unlabeled 32x32x3 images (all counted), float32, median over rounds, "
    "warm-up/compile excluded. Each JAX variant runs in its own process (its XLA_FLAGS) against the same PyTorch "
    "step: `jit` one XLA device; `matmul conv` the model's convolutions as shifted slices and one matrix "
    "product (`--conv=matmul`, extraction/conv.py) instead of XLA's convolution, `matmul_grad conv` XLA's "
    "convolution forward and the matrix products backward (`--conv=matmul_grad`); `N CPU devices` the batch split over N XLA CPU devices (data parallel, as the "
    "launcher's --cpu_devices=N does); `onednn` XLA's oneDNN flag; `lax.scan` the step inside a scan (as "
    "--steps_per_call runs it); `model fwd+bwd` only the forward and backward pass of the model on the 3B "
    "images, in both frameworks (the convolutions' share of the step); `predict` only the eval-mode forward pass "
    "of the 3B images without gradients, in both frameworks (what evaluation and query strategies run).",
    "",
    "| model | variant | params (JAX / torch) | timed steps | JAX s/step | JAX images/s | torch s/step "
    "| torch images/s | JAX / torch |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['model']} | {r['variant']} | {r['jax_params']:,} / {r['torch_params']:,} | {r['timed_steps']} "
      f"| {r['jax_s_per_step']:.3f} | {r['jax_images_per_s']:.1f} | {r['torch_s_per_step']:.3f} "
      f"| {r['torch_images_per_s']:.1f} | {r['ratio_jax_over_torch']:.2f} |"
    )
  return "\n".join(lines) + "\n" + result.get("notes", "")


def main(argv):
  del argv
  import torch

  torch.set_num_threads(os.cpu_count())
  per_model = dict(kv.split("=") for kv in FLAGS.steps_per_round.split(",") if kv)
  if FLAGS.child:  # one (model, variant) in this process: print its row
    name, variant = FLAGS.child.split(":", 1)
    steps = int(per_model.get(name, 2))
    _, runner_variant, conv = VARIANTS[variant]
    if runner_variant == "scan":
      steps = 1  # a scan of convolutions is far slower on XLA:CPU: one step a round is plenty
    row = time_model(name, FLAGS.batch, FLAGS.rounds, steps, runner_variant, conv)
    print("ROW " + json.dumps({**row, "variant": variant, "runner": runner_variant}))
    return
  result = result_header("benchmarks.mixmatch_throughput")
  for name in FLAGS.models:
    for variant in FLAGS.variants if name == FLAGS.models[0] else FLAGS.other_variants:
      xla_flags = VARIANTS[variant][0]
      env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
      args = [
        sys.executable,
        "-m",
        "benchmarks.mixmatch_throughput",
        f"--child={name}:{variant}",
        f"--batch={FLAGS.batch}",
        f"--rounds={FLAGS.rounds}",
        f"--steps_per_round={FLAGS.steps_per_round}",
      ]
      p = subprocess.run(args, env=env, capture_output=True, text=True)
      if p.returncode:
        raise RuntimeError(f"{name} {variant}: {p.stderr[-2000:]}")
      result["rows"].append(json.loads(next(l for l in p.stdout.splitlines() if l.startswith("ROW "))[4:]))
      print(
        result["rows"][-1]["model"], variant, f"JAX/torch {result['rows'][-1]['ratio_jax_over_torch']:.2f}", flush=True
      )
  result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
  out = pathlib.Path(FLAGS.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{FLAGS.name}.json").write_text(json.dumps(result, indent=2) + "\n")
  (out / f"{FLAGS.name}.md").write_text(to_markdown(result))
  print(to_markdown(result))


if __name__ == "__main__":
  flags.register_validator("variants", _known_variants)
  flags.register_validator("other_variants", _known_variants)
  app.run(main)
