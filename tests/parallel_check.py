"""Run in a subprocess by test_parallel.py with 4 forced CPU devices: the same steps on 1, 2 and 4 devices."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from extraction import models, parallel, train  # noqa: E402
from semisup import mixmatch  # noqa: E402


def run(method: str, num_devices: int, steps: int = 4):
  # Random 16x16x3 images: on 8x8 digits the deepest 3x3 kernels of small_cnn see mostly padding, their exact
  # gradients are 0, and Adam turns float noise of either sign into +-lr updates on any device count.
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (512, 16, 16, 3), dtype=np.uint8)
  y = rng.integers(0, 10, 512)
  model = models.create_model("small_cnn", 10)
  # SGD, not Adam: Adam divides each gradient entry by its own magnitude, so the float-summation-order noise of
  # near-zero gradients (same math, other reduction order across devices) becomes lr-sized differences.
  tx = optax.sgd(0.05, momentum=0.9)
  state = train.create_state(model, tx, jax.random.key(0), x.shape[1:])
  if method == "fs":
    step = train.make_supervised_step(model, shift=1)
  else:
    step = mixmatch.make_mixmatch_step(model, lambda_u=10.0, rampup_steps=2, flip=False, shift=1)
  one_hot = np.eye(10, dtype=np.float32)

  def make_batch(i):
    idx = train.batch_indices(0, i, len(y), 16)
    b = {"images": x[idx], "targets": one_hot[y[idx]]}
    if method == "mixmatch":
      b["unlabeled"] = x[train.batch_indices(0, i, len(y), 16, salt=1)]
    return b

  mesh = parallel.data_mesh(num_devices)
  state = train.fit(step, state, make_batch, steps, mesh=mesh, log_every=steps)
  return jax.device_get(state.params)


def run_stacked(num_devices: int, steps: int = 1):
  """Two students stacked (extraction.students): on 2 devices one student each (student parallel), on 4 each
  student's batch split over the devices (data parallel)."""
  from extraction import students

  rng = np.random.default_rng(1)
  pool = rng.integers(0, 256, (256, 16, 16, 3), dtype=np.uint8)
  targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
  tasks = [students.StudentTask(np.arange(64), targets, np.arange(64, 256), s) for s in (0, 1)]
  cfg = students.StudentConfig(
    model="small_cnn", steps=steps, batch_size=16, unlabeled_batch_size=16, optimizer="sgd", lr=0.05, weight_decay=0.0
  )
  make = lambda m: mixmatch.make_mixmatch_step(m, lambda_u=10.0, rampup_steps=2, flip=False, shift=1)
  _, variables, _ = students.train_students(
    pool, tasks, 10, cfg, make, needs_unlabeled=True, mesh=parallel.data_mesh(num_devices)
  )
  return variables


def main():
  out = {"devices": len(jax.devices())}
  # fit waits for each step on XLA:CPU with several devices (a launch race deadlocked the all-reduce otherwise)
  out["serialised"] = [parallel.serialise_steps(m) for m in (None, parallel.make_mesh(1), parallel.data_mesh(4))]
  if "stacked" in sys.argv[1:]:
    ref = run_stacked(1)
    for n in (2, 4):
      other = run_stacked(n)
      out[f"stacked_{n}"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(other))
      )
  for method in [m for m in sys.argv[1:] if m != "stacked"]:
    ref = run(method, 1)
    for n in (2, 4):
      other = run(method, n)
      out[f"{method}_{n}"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(other))
      )
  print(json.dumps(out))


if __name__ == "__main__":
  main()
