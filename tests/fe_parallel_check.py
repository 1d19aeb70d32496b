"""Run by test_parallel.py in a subprocess with 4 forced CPU devices: FE extraction with the victim's query
batches sharded over 4 devices against the plain float64 numpy backend."""

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

from extraction import parallel  # noqa: E402
from extraction.oracle import Oracle  # noqa: E402
from functional_equivalence import align, attack, victims  # noqa: E402


def main():
  net = victims.random_net(3, 12, 8, 4)
  with jax.enable_x64(True):
    runs = {}
    for name, backend in (
      ("numpy", victims.backend(net)),
      ("sharded4", victims.sharded_backend(net, parallel.make_mesh(4))),
    ):
      runs[name] = attack.extract(Oracle(backend, output="logits", record_inputs=False), 12, seed=0)
  a, b = runs["numpy"].net, runs["sharded4"].net
  out = {
    "devices": len(jax.devices()),
    "units": [runs["numpy"].hidden_units_found, runs["sharded4"].hidden_units_found],
    "error_numpy": align.weight_error(net, a)["max_weight_error"],
    "error_sharded": align.weight_error(net, b)["max_weight_error"],
    "between_runs": align.weight_error(a, b)["max_weight_error"],
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
