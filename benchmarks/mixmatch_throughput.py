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
import platform
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.common import environment_line, lock_file
from extraction import models, train
from semisup import mixmatch

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


K, CLASSES, SHAPE = 2, 10, (32, 32, 3)
LR, WD, EMA, LAMBDA_U, T, ALPHA, SHIFT = 0.002, 0.02, 0.999, 75.0, 0.5, 0.75, 4


def make_batches(n: int, b: int, seed: int = 0) -> list[dict]:
  """n host batches of random uint8 images and Dirichlet targets (float32)."""
  r = np.random.default_rng(seed)
  return [
    {
      "images": r.integers(0, 256, (b,) + SHAPE, dtype=np.uint8),
      "targets": r.dirichlet(np.ones(CLASSES), b).astype(np.float32),
      "unlabeled": r.integers(0, 256, (b,) + SHAPE, dtype=np.uint8),
    }
    for _ in range(n)
  ]


# ----------------------------------------------------------------------------------------------------- JAX
class JaxRunner:
  """The jitted semisup.mixmatch step with donated state; `run(n)` does n steps and waits for them.

  variant: 'jit' (one device), 'devices' (the batch split over every XLA device: data parallel), 'scan' (the step
  inside `lax.scan`, as `--steps_per_call` runs it), 'model' (only forward and backward of the model on the
  3B images of a step: the convolutions' share). conv: how the model computes its convolutions
  (`extraction.conv.CONVS`).
  """

  def __init__(self, name: str, batches: list[dict], variant: str = "jit", conv: str = "xla"):
    from extraction import parallel

    model = models.create_model(name, CLASSES, conv=conv)
    tx = train.make_optimizer(LR, WD, 10_000)
    self.state = train.create_state(model, tx, jax.random.key(0), SHAPE)
    self.params = sum(x.size for x in jax.tree_util.tree_leaves(self.state.params))
    step = mixmatch.make_mixmatch_step(
      model,
      lambda_u=LAMBDA_U,
      rampup_steps=1000,
      temperature=T,
      alpha=ALPHA,
      k=K,
      ema_decay=EMA,
      flip=True,
      shift=SHIFT,
    )
    if variant == "model":

      def step(state, batch):
        x = jax.numpy.concatenate([batch["images"], batch["unlabeled"], batch["unlabeled"]]).astype("float32")
        loss = lambda p: train.forward(model, p, state.batch_stats, x / 127.5 - 1.0)[0].sum()
        return state.replace(
          params=jax.tree.map(lambda p, g: p - 1e-9 * g, state.params, jax.grad(loss)(state.params))
        ), {"loss": loss(state.params)}

    if variant == "scan":
      one = step

      def step(state, batch):  # the state comes out whole, the metrics of the last step
        state, metrics = jax.lax.scan(one, state, jax.tree.map(lambda a: a[None], batch))
        return state, jax.tree.map(lambda m: m[-1], metrics)

    mesh = parallel.data_mesh() if variant == "devices" else None
    self.state, put, self.step = parallel.place(step, self.state, mesh)
    self.batches = [put(b) for b in batches]
    self.i = 0

  def run(self, n: int) -> float:
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batches[self.i % len(self.batches)])
      self.i += 1
    loss = float(metrics["loss"])  # waits for the last step
    if not np.isfinite(loss):
      raise FloatingPointError(f"JAX loss {loss}")
    return loss


# ------------------------------------------------------------------------------------------------- PyTorch
def torch_modules():
  """Builds the PyTorch twins of WRN-28-2 and the small CNN (imported lazily: torch is optional)."""
  from torch import nn

  bn = lambda c: nn.BatchNorm2d(c, momentum=0.001, eps=1e-3)  # Flax momentum 0.999
  leaky = lambda x: nn.functional.leaky_relu(x, 0.1)

  class Residual(nn.Module):
    def __init__(self, cin, f, stride=1, activate_before_residual=False):
      super().__init__()
      self.abr = activate_before_residual
      self.bn1, self.conv1 = bn(cin), nn.Conv2d(cin, f, 3, stride, 1)
      self.bn2, self.conv2 = bn(f), nn.Conv2d(f, f, 3, 1, 1)
      self.shortcut = nn.Conv2d(cin, f, 1, stride) if cin != f else None

    def forward(self, x0):
      x = leaky(self.bn1(x0))
      if self.abr:
        x0 = x
      x = self.conv2(leaky(self.bn2(self.conv1(x))))
      return (self.shortcut(x0) if self.shortcut is not None else x0) + x

  class WideResNet(nn.Module):
    def __init__(self, num_classes, filters=32, repeat=4, scales=3):
      super().__init__()
      layers, cin = [nn.Conv2d(3, 16, 3, 1, 1)], 16
      for s in range(scales):
        f = filters << s
        layers.append(Residual(cin, f, 2 if s else 1, activate_before_residual=s == 0))
        layers += [Residual(f, f) for _ in range(repeat - 1)]
        cin = f
      self.body, self.bn, self.fc = nn.Sequential(*layers), bn(cin), nn.Linear(cin, num_classes)

    def forward(self, x):
      return self.fc(leaky(self.bn(self.body(x))).mean((2, 3)))

  class SmallCNN(nn.Module):
    def __init__(self, num_classes, widths=(32, 64, 128)):
      super().__init__()
      layers, cin = [], 3
      for i, w in enumerate(widths):
        for _ in range(2):
          layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), bn(w), nn.LeakyReLU(0.1)]
          cin = w
        if i < len(widths) - 1:
          layers.append(nn.MaxPool2d(2))
      self.body, self.fc = nn.Sequential(*layers), nn.Linear(cin, num_classes)

    def forward(self, x):
      return self.fc(self.body(x).mean((2, 3)))

  return {"wrn28_2": WideResNet, "small_cnn": SmallCNN}


class TorchRunner:
  """The same MixMatch step in PyTorch (eager, float32, NCHW), on the same host batches (`model_only`: forward and
  backward of the model on the step's 3B images, as JaxRunner's 'model' variant)."""

  def __init__(self, name: str, batches: list[dict], model_only: bool = False):
    self.model_only = model_only
    import torch

    self.torch = torch
    torch.manual_seed(0)
    self.model = torch_modules()[name](CLASSES)
    self.params = sum(p.numel() for p in self.model.parameters())
    kernels = [p for p in self.model.parameters() if p.ndim > 1]
    others = [p for p in self.model.parameters() if p.ndim <= 1]
    self.opt = torch.optim.AdamW(
      [{"params": kernels, "weight_decay": WD}, {"params": others, "weight_decay": 0.0}], lr=LR
    )
    self.ema = [p.detach().clone() for p in self.model.parameters()]
    self.bns = [m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    self.batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]
    self.beta = torch.distributions.Beta(torch.tensor(ALPHA), torch.tensor(ALPHA))
    self.i = 0
    self.model.train()

  def augment(self, x):
    """Flip then reflect-pad-and-crop shift, per example, on float NHWC; returns contiguous NCHW."""
    torch = self.torch
    n, h, w, _ = x.shape
    flip = torch.rand(n, 1, 1, 1) < 0.5
    x = torch.where(flip, x.flip(2), x)
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (SHIFT,) * 4, mode="reflect")
    off = torch.randint(0, 2 * SHIFT + 1, (n, 2))
    rows = (off[:, :1] + torch.arange(h))[:, :, None]
    cols = (off[:, 1:] + torch.arange(w))[:, None, :]
    out = padded[torch.arange(n)[:, None, None], :, rows, cols]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()

  def step(self, batch):
    torch = self.torch
    to_float = lambda u8: u8.float() / 127.5 - 1.0
    if self.model_only:
      x = to_float(torch.cat([batch["images"], batch["unlabeled"], batch["unlabeled"]])).permute(0, 3, 1, 2)
      loss = self.model(x.contiguous()).sum()
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      return loss.detach()
    x = self.augment(to_float(batch["images"]))
    u = to_float(batch["unlabeled"])
    u_aug = [self.augment(u) for _ in range(K)]
    with torch.no_grad():  # label guess in training mode; momentum 0 keeps the running statistics unchanged
      for m in self.bns:
        m.momentum = 0.0
      p = torch.stack([torch.softmax(self.model(ui), 1) for ui in u_aug]).mean(0)
      for m in self.bns:
        m.momentum = 0.001
      guess = torch.softmax(torch.log(p) / T, 1)
    inputs = torch.cat([x] + u_aug)
    targets = torch.cat([batch["targets"]] + [guess] * K)
    n, b = inputs.shape[0], x.shape[0]
    lam = self.beta.sample((n,))
    lam = torch.maximum(lam, 1 - lam)
    perm = torch.randperm(n)
    mixed = lam[:, None, None, None] * inputs + (1 - lam[:, None, None, None]) * inputs[perm]
    mixed_t = lam[:, None] * targets + (1 - lam[:, None]) * targets[perm]
    logits = self.model(mixed)
    loss_x = -(mixed_t[:b] * torch.log_softmax(logits[:b], 1)).sum(1).mean()
    loss_u = (torch.softmax(logits[b:], 1) - mixed_t[b:]).square().mean()
    loss = loss_x + LAMBDA_U * min(self.i / 1000, 1.0) * loss_u
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, list(self.model.parameters()), 1.0 - EMA)
    self.i += 1
    return loss.detach()

  def run(self, n: int) -> float:
    for _ in range(n):
      loss = float(self.step(self.batches[self.i % len(self.batches)]))
    if not np.isfinite(loss):
      raise FloatingPointError(f"PyTorch loss {loss}")
    return loss


# ---------------------------------------------------------------------------------------------------- main
def time_model(name: str, b: int, rounds: int, steps: int, variant: str = "jit", conv: str = "xla") -> dict:
  """Warms up both runners (compile excluded), then times `rounds` alternating rounds of `steps` steps."""
  batches = make_batches(2, b)
  runners = {"jax": JaxRunner(name, batches, variant, conv), "torch": TorchRunner(name, batches, variant == "model")}
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


def machine() -> dict:
  import torch

  return {
    "cpu": platform.processor() or platform.machine(),
    "cores": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jax_backend": jax.default_backend(),
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "lock": lock_file(),
  }


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
    "images, in both frameworks (the convolutions' share of the step).",
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
  result = {
    "command": " ".join(["python", "-m", "benchmarks.mixmatch_throughput"] + sys.argv[1:]),
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "machine": machine(),
    "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    "rows": [],
  }
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
