"""Data parallelism through jax.sharding: a 1-D mesh over the `data` axis, batches split along it, the train
state replicated. The same step function runs on one device or many, on one host or several; only the
shardings differ.

Multi-host: every process builds the same global batch indices (a pure function of seed and step) and gathers
only its own contiguous slice of the examples (`local_slice`), which `jax.make_array_from_process_local_data`
assembles into one global array sharded over all processes' devices.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices of all processes (all devices when None)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"--num_devices={num_devices} but {len(devices)} device(s) are available")
    devices = devices[:num_devices]
  return Mesh(np.array(devices), (DATA_AXIS,))


def data_mesh(num_devices: int | None = None) -> Mesh | None:
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


def serialise_steps(mesh: Mesh | None) -> bool:
  """Whether to wait for each step before dispatching the next: on XLA:CPU with several devices.

  With forced host devices, XLA:CPU launches each device's share of a step on a thread pool and can let one
  device's launch wait on its in-flight semaphore while the other devices sit in the step's all-reduce; the
  process then aborts after 40 s ("Expected 4 threads to join the rendezvous, but only 3 arrived"). Seen with the
  CIFAR-10 small CNN on 4 devices of a 2-core machine, at a random step after 100-300 steps, with and without
  `jax_cpu_enable_async_dispatch` (which covers single-device programs only) and with single-threaded Eigen.
  One step in flight at a time removes the hang (what is computed is unchanged: a 2-device CIFAR-10 training
  rerun with it gave a bit-identical final state); it cost at most ~10% there
  (2.6-2.9 steps/s against 2.9-3.2 before the hang, one run each).
  """
  return mesh is not None and mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"


STACK_MODES = ("vmap", "unroll")


def student_parallel(mesh: Mesh | None, n_students: int) -> bool:
  """Whether a stack of n students can be spread whole over the mesh's devices (one process, n a multiple of
  the devices): then no device ever waits on another."""
  return mesh is not None and jax.process_count() == 1 and n_students % mesh.size == 0


def stack_step(step_fn: Callable, mode: str, mesh: Mesh | None, n_students: int) -> Callable:
  """The step of one student made the step of a stack of students (axis 0 of state and batch).

  mode 'vmap' batches the students' operations (best for dense layers and on accelerators); 'unroll' runs them
  one after the other inside one program. On XLA:CPU, vmapped convolutions become grouped convolutions, several
  times slower than the students' convolutions one by one, and convolutions inside loops (`lax.map`,
  `lax.scan`) are slower still (benchmarks/results/mixmatch_throughput.md), hence unrolling. With student parallelism each device runs
  its own students (`shard_map`); otherwise the students' batches are split over the devices (data parallel).
  """
  if mode not in STACK_MODES:
    raise ValueError(f"unknown stacking mode {mode!r}; choose one of {', '.join(STACK_MODES)}")
  if mode == "vmap":
    many = jax.vmap(step_fn)
  else:

    def many(states, batches):  # the students one after the other, unrolled in one program
      n = jax.tree.leaves(states)[0].shape[0]
      outs = [step_fn(*jax.tree.map(lambda x, i=i: x[i], (states, batches))) for i in range(n)]
      return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *outs)

  if not student_parallel(mesh, n_students):
    return many
  spec = P(DATA_AXIS)
  return jax.shard_map(many, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec), check_vma=False)


def place(step_fn: Callable, state, mesh: Mesh | None, batch_axis: int = 0, stacked: bool = False):
  """Returns (state on device(s), put(host batch) -> device batch, the jitted `step_fn(state, batch)` with the
  state donated).

  Data parallel (the default): the state is replicated and `put` shards axis `batch_axis` of every batch array
  along the data axis (with several processes, only this process's `local_slice` of it is read).
  `batch_axis` is 1 for stacked students (axis 0 indexes the student) and one more for several steps per call.
  Student parallel (`stacked` and `student_parallel`; the step from `stack_step`): each device holds whole
  students, their state and batches sharded along the student axis (axis 0 of the state, `batch_axis - 1` of a
  batch).
  """
  if mesh is None:
    return state, jax.device_put, jax.jit(step_fn, donate_argnums=0)
  by_student = stacked and student_parallel(mesh, jax.tree.leaves(state)[0].shape[0])
  state_spec = P(DATA_AXIS) if by_student else P()
  split_axis = batch_axis - 1 if by_student else batch_axis
  data = NamedSharding(mesh, P(*([None] * split_axis), DATA_AXIS))

  def put(batch):
    out = {}
    for k, v in batch.items():
      n = v.shape[split_axis]
      if n % mesh.size:
        raise ValueError(f"batch {k!r} of {n} does not split over {mesh.size} devices")
      local = v if by_student else v[(slice(None),) * split_axis + (local_slice(n),)]
      out[k] = jax.make_array_from_process_local_data(data, local, v.shape)
    return out

  state_sharding = jax.tree.map(lambda _: NamedSharding(mesh, state_spec), state)
  jitted = jax.jit(
    step_fn,
    in_shardings=(state_sharding, data),
    out_shardings=(state_sharding, NamedSharding(mesh, state_spec)),
    donate_argnums=0,
  )
  return jax.device_put(state, state_sharding), put, jitted
