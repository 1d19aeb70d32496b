"""Run in a subprocess by test_limits.py with 4 forced CPU devices: one step of the victim's recipe
(`extraction.victim.fit_recipe`) on 1, 2 and 4 devices, and twice on 1; prints the parameter differences."""

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from extraction import datasets, limits, parallel, victim  # noqa: E402


def main():
  # Random 16x16x3 images (see tests/parallel_check.py: on 8x8 digits the deepest kernels see mostly padding).
  rng = np.random.default_rng(0)
  split = lambda n: datasets.Split(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, n))
  ds = datasets.Dataset("random", split(256), split(16), 10)
  cfg = victim.VictimConfig(model=os.environ.get("LIMITS_CHECK_MODEL", "small_cnn"), steps=1, batch_size=32, lr=0.002)

  def state(n):
    _, s = victim.fit_recipe(ds, cfg, None, parallel.data_mesh(n))
    return jax.device_get({"params": s.params, "ema_params": s.ema_params, "batch_stats": s.batch_stats})

  ref = state(1)
  out = {"devices": len(jax.devices()), "lr": cfg.lr}
  out["again"] = limits.param_difference(ref, state(1))
  for n in (2, 4):
    other = state(n)
    out[f"devices_{n}"] = limits.param_difference(ref, other)
    # How many weights moved apart by more than float32 rounding of a step (1e-6 of the learning rate).
    diffs = np.concatenate(
      [np.abs(a - b).ravel() for a, b in zip(jax.tree.leaves(ref["params"]), jax.tree.leaves(other["params"]))]
    )
    out[f"devices_{n}_share_apart"] = float(np.mean(diffs > 1e-6 * cfg.lr))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
