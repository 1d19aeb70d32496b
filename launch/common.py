"""Flags shared by every experiment, and helpers to validate flags up front."""

from __future__ import annotations

import os
import pathlib
import tempfile

from absl import flags

from launch import experiments

flags.DEFINE_string("experiment", "extraction", "Which registered experiment to run (see launch/experiments.py).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results (created if missing).")
flags.DEFINE_integer("seed", 0, "Seed of every random choice of the experiment.")
flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize (auto-detects TPU pods, SLURM).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (jax.distributed).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (jax.distributed).")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process (jax.distributed).")
flags.DEFINE_integer("num_devices", None, "Data-parallel devices (default: all devices).")
flags.DEFINE_integer(
  "cpu_devices",
  1,
  "On a CPU host, run this many XLA CPU devices, so that data- or "
  "student-parallel training can use every core. Default 1 (XLA's single CPU device): on a "
  "loaded machine a collective across forced CPU devices can miss XLA's 40 s rendezvous timeout "
  "and abort the run. Has no effect on GPU/TPU runs.",
  lower_bound=1,
)
flags.DEFINE_bool("dry_run", False, "Validate the flags, print them and exit without running.")
flags.mark_flag_as_required("workdir")

FLAGS = flags.FLAGS


class ConfigError(ValueError):
  """Flags that are valid one by one but do not fit the data (e.g. more queries than the pool holds)."""


@flags.validator("experiment", message="unknown --experiment")
def _known_experiment(name):
  if name not in experiments.EXPERIMENTS:
    raise flags.ValidationError(
      f"unknown --experiment={name!r}; choose one of {', '.join(sorted(experiments.EXPERIMENTS))}"
    )
  return True


@flags.validator("workdir")
def _writable_workdir(path):
  """Creates the workdir and writes a probe file in it: catches read-only places and paths through files."""
  if path is None:
    return True
  try:
    pathlib.Path(path).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise flags.ValidationError(f"--workdir={path!r} is not writable: {e.strerror}") from e
  return True


def configure_cpu_devices() -> None:
  """Splits the CPU into --cpu_devices XLA devices; must run before jax's first computation.

  Several devices can use idle cores on the small convolutions of these models (benchmarks/results/
  data_parallel.md); the default is one device. `extraction.train.fit` runs one step at a time on several CPU
  devices (`parallel.serialise_steps`: XLA:CPU's launches otherwise deadlocked an all-reduce). Results do not
  depend on the count (tests/test_parallel.py).
  """
  count = FLAGS.cpu_devices
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if count > 1 and "xla_force_host_platform_device_count" not in xla_flags:
    os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_force_host_platform_device_count={count}".strip()


def initialize_distributed() -> None:
  """Joins a multi-host run with --distributed or --coordinator_address (unset values are auto-detected)."""
  if FLAGS.distributed or FLAGS.coordinator_address:
    import jax

    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def process_index() -> int:
  import jax

  return jax.process_index()


def flag_values() -> dict:
  """The values of every flag defined by this project's modules, for results.json."""
  out = {}
  from launch import oracle_flags  # its --api_key must not land in results: public values only

  for module in (
    "launch.common",
    "launch.learning",
    "launch.strategy_flags",
    "launch.fe",
    "launch.direct",
    "launch.lm",
    "launch.limits",
  ):
    for f in FLAGS.get_flags_for_module(module):
      out[f.name] = f.value
  out.update(oracle_flags.public_flag_values())
  return out
