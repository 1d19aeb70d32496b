"""XLA_FLAGS for several devices on one CPU (no jax import: they must be set before jax starts).

XLA:CPU runs each forced host device's part of a collective (all-reduce of data-parallel gradients) on its own
thread and aborts the process when one of them waits more than 40 s for the others (the default
xla_cpu_collective_call_terminate_timeout_seconds). On a loaded 2-core machine a starved device thread passes that:
a 4-device run of the CIFAR-10 limits study died there ("Termination timeout for all reduce ... of 40 seconds
exceeded") while another job shared the cores. Runs that force devices raise the limit to an hour; the warning
about a stuck collective comes after 2 minutes instead of 20 s.
"""

from __future__ import annotations

DEVICE_FLAG = "--xla_force_host_platform_device_count"
COLLECTIVE_FLAGS = (
  "--xla_cpu_collective_call_terminate_timeout_seconds=3600",
  "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120",
)


def with_devices(current: str, devices: int) -> str:
  """`current` XLA_FLAGS with exactly `devices` CPU devices (replacing an earlier count) and, for more than one,
  the collective timeouts above (unless `current` sets them)."""
  kept = [f for f in current.split() if not f.startswith(DEVICE_FLAG)]
  kept.append(f"{DEVICE_FLAG}={devices}")
  if devices > 1:
    kept += [f for f in COLLECTIVE_FLAGS if f.split("=")[0] not in current]
  return " ".join(kept)
