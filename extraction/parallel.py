"""Data parallelism through jax.sharding: a 1-D mesh over the `data` axis, batches split along it, the train
state replicated. The same step function runs on one device or many; only the shardings differ."""
from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all devices when None)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"--num_devices={num_devices} but {len(devices)} device(s) are available")
    devices = devices[:num_devices]
  return Mesh(np.array(devices), (DATA_AXIS,))


def data_mesh(num_devices: Optional[int] = None) -> Optional[Mesh]:
  """`make_mesh(num_devices)`, or None (plain single-device jit) when that would hold one device."""
  mesh = make_mesh(num_devices)
  return mesh if mesh.size > 1 else None


def place(step_fn: Callable, state, mesh: Optional[Mesh]):
  """Returns (state on device(s), put(batch) for host batches, the jitted step with donated state)."""
  if mesh is None:
    return state, jax.device_put, jax.jit(step_fn, donate_argnums=0)
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P(DATA_AXIS))
  n = mesh.size

  def put(batch):
    for k, v in batch.items():
      if v.shape[0] % n:
        raise ValueError(f"batch {k!r} of {v.shape[0]} does not split over {n} devices")
    return jax.device_put(batch, data)

  jitted = jax.jit(step_fn, in_shardings=(replicated, data, replicated), out_shardings=(replicated, replicated),
                   donate_argnums=0)
  return jax.device_put(state, replicated), put, jitted
