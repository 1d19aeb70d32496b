"""Data parallelism through jax.sharding: a 1-D mesh over the `data` axis, batches split along it, the train
state replicated. The same step function runs on one device or many, on one host or several; only the
shardings differ.

Multi-host: every process builds the same global batch indices (a pure function of seed and step) and gathers
only its own contiguous slice of the examples (`local_slice`), which `jax.make_array_from_process_local_data`
assembles into one global array sharded over all processes' devices.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices of all processes (all devices when None)."""
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


def local_slice(global_size: int) -> slice:
  """This process's contiguous share of a global batch dimension."""
  n, i = jax.process_count(), jax.process_index()
  if global_size % n:
    raise ValueError(f"global batch of {global_size} does not split over {n} processes")
  per = global_size // n
  return slice(i * per, (i + 1) * per)


def place(step_fn: Callable, state, mesh: Optional[Mesh]):
  """Returns (state on device(s), put(host batch) -> device batch, the jitted step with donated state).

  With a mesh, `put` takes the global host batch (or, with several processes, any array whose leading axis is
  the global batch: only `local_slice` of it is read) and shards it along the data axis.
  """
  if mesh is None:
    return state, jax.device_put, jax.jit(step_fn, donate_argnums=0)
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P(DATA_AXIS))

  def put(batch):
    out = {}
    for k, v in batch.items():
      if v.shape[0] % mesh.size:
        raise ValueError(f"batch {k!r} of {v.shape[0]} does not split over {mesh.size} devices")
      out[k] = jax.make_array_from_process_local_data(data, v[local_slice(v.shape[0])], v.shape)
    return out

  jitted = jax.jit(step_fn, in_shardings=(replicated, data, replicated), out_shardings=(replicated, replicated),
                   donate_argnums=0)
  return jax.device_put(state, replicated), put, jitted
