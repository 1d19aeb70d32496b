"""Run by test_parallel.py: two processes x 2 CPU devices joined by jax.distributed run the same FS steps as one
process on one device. Usage: python -m tests.multihost_check PORT PROCESS_ID, or `single` alone for the one-process reference; each prints
a sample of the trained params as the last JSON line."""

import json
import os
import sys

from tests import parallel_check  # noqa: E402  (sets 4 host devices; jax reads XLA_FLAGS at first use, below)

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main():
  if sys.argv[1] == "single":
    pid, params = -1, parallel_check.run("fs", 1)
  else:
    port, pid = sys.argv[1], int(sys.argv[2])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    params = parallel_check.run("fs", None)  # a mesh over all 4 devices of both processes
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
  print(
    json.dumps(
      {
        "process": pid,
        "devices": len(jax.devices()),
        "local": len(jax.local_devices()),
        "params": flat[:: max(len(flat) // 2000, 1)].tolist(),
      }
    )
  )


if __name__ == "__main__":
  main()
