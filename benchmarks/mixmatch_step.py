"""The MixMatch train step that the CPU benchmarks time and profile, in JAX (semisup.mixmatch) and the same step
written in PyTorch, on the same host batches (`benchmarks.mixmatch_throughput`, `benchmarks.mixmatch_profile`).

Both frameworks run the same work per step, in float32: batch B labeled + B unlabeled 32x32x3 uint8 images, flip +
4-pixel shift, K=2 augmentations of the unlabeled batch, label guess (K forward passes in training mode, batch-norm
statistics not kept), sharpening, MixUp of the B+2B images, one forward/backward pass on them, Adam with decoupled
weight decay on kernels, EMA of the weights. The models are WRN-28-2 and the small CNN of extraction/models.py,
rebuilt layer for layer in PyTorch below. PyTorch is imported only when a PyTorch runner is built (`pip install
torch`; setup.py deliberately does not list it).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time

import jax
import numpy as np

from benchmarks.common import lock_file
from extraction import models, train
from semisup import mixmatch

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
  3B images of a step: the convolutions' share), 'predict' (eval-mode logits of the 3B images, no gradient: the
  inference that evaluation and the query strategies run). conv: how the model computes its convolutions
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

    if variant == "predict":  # inference only: eval-mode logits of the 3B images (as extraction.predict)

      def step(state, batch):
        x = jax.numpy.concatenate([batch["images"], batch["unlabeled"], batch["unlabeled"]]).astype("float32")
        logits = train.split_heads(model.apply(state.variables(ema=False), x / 127.5 - 1.0, train=False))[0]
        return state, {"loss": logits.sum()}

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
  """The same MixMatch step in PyTorch (eager, float32, NCHW), on the same host batches. mode: 'step' (the whole
  step), 'model' (forward and backward of the model on the step's 3B images, as JaxRunner's 'model' variant) or
  'predict' (eval-mode forward of the 3B images without gradients, as JaxRunner's 'predict')."""

  def __init__(self, name: str, batches: list[dict], mode: str = "step"):
    if mode not in ("step", "model", "predict"):
      raise ValueError(f"mode {mode!r}: step, model or predict")
    self.mode = mode
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
    if self.mode == "predict":  # eval mode, no gradient: as JaxRunner's 'predict'
      x = to_float(torch.cat([batch["images"], batch["unlabeled"], batch["unlabeled"]])).permute(0, 3, 1, 2)
      self.model.eval()
      with torch.inference_mode():
        return self.model(x.contiguous()).sum()
    if self.mode == "model":
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


def result_header(module: str) -> dict:
  """The start of a CPU benchmark's result: its command (shell-quoted), date, machine and load, and no rows yet."""
  return {
    "command": shlex.join(["python", "-m", module] + sys.argv[1:]),
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "machine": machine(),
    "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    "rows": [],
  }
