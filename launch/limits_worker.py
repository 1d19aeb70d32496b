"""One training run of the limits study in a process of its own: `python -m launch.limits_worker SPEC.json`.

XLA fixes the number of CPU devices when jax starts, so every run of the study (`launch.limits`) is trained in a
fresh process whose XLA_FLAGS force exactly the devices the run asks for (and, for the deterministic_ops source,
add --xla_gpu_deterministic_ops=true); nothing else differs between the processes. SPEC.json holds the dataset
(`dataset`, `data_dir`, `tfds_data_dir`), the recipe (`recipe`: an `extraction.victim.VictimConfig` as a dict) and
the run (`run`: an `extraction.limits.Run` as a dict). The process trains the recipe with the run's seeds,
precision and devices, resuming from the checkpoints in SPEC.json's directory, then writes there `state.msgpack`
(flax serialization of the final params, EMA params and batch statistics: exact bytes) and `done.json` (the
devices it ran on, the seconds it took). Logs go to stderr.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

DEVICE_FLAG = "--xla_force_host_platform_device_count"
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"


def xla_flags(current: str, devices: int, deterministic_ops: bool) -> str:
  """`current` XLA_FLAGS with the device count (and GPU deterministic ops) of the run, replacing earlier ones."""
  kept = [f for f in current.split() if not f.startswith((DEVICE_FLAG, DETERMINISTIC_FLAG))]
  kept.append(f"{DEVICE_FLAG}={devices}")
  if deterministic_ops:
    kept.append(f"{DETERMINISTIC_FLAG}=true")
  return " ".join(kept)


def main(spec_path: str) -> None:
  spec_file = pathlib.Path(spec_path)
  spec = json.loads(spec_file.read_text())
  run_spec = spec["run"]
  os.environ["XLA_FLAGS"] = xla_flags(
    os.environ.get("XLA_FLAGS", ""), run_spec["devices"], run_spec["deterministic_ops"]
  )
  import jax  # only now: the flags above decide the devices
  from absl import logging
  from flax import serialization

  from extraction import datasets, limits, parallel, victim

  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  run = limits.Run(**run_spec)
  out = spec_file.parent
  ds = datasets.load(spec["dataset"], spec.get("data_dir"), spec.get("tfds_data_dir"))
  mesh = parallel.data_mesh(run.devices)
  used = mesh.size if mesh is not None else 1
  if used != run.devices:
    raise SystemExit(f"run {run.name} asks for {run.devices} devices but {used} are in use")
  t0 = time.time()
  _, state = victim.fit_recipe(
    ds,
    victim.VictimConfig(**spec["recipe"]),
    out / "checkpoints",
    mesh,
    init_seed=run.init_seed,
    data_seed=run.data_seed,
    precision=run.precision,
    name=run.name,
  )
  state = jax.device_get({"params": state.params, "ema_params": state.ema_params, "batch_stats": state.batch_stats})
  (out / "state.msgpack").write_bytes(serialization.msgpack_serialize(serialization.to_state_dict(state)))
  (out / "done.json").write_text(
    json.dumps(
      {
        "spec": spec,
        "seconds": round(time.time() - t0, 1),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in (mesh.devices.flat if mesh is not None else jax.devices()[:1])],
        "xla_flags": os.environ["XLA_FLAGS"],
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python -m launch.limits_worker SPEC.json")
  main(sys.argv[1])
