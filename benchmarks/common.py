"""What every benchmark records: where results go and the machine they ran on."""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import subprocess
import threading

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def machine(*packages: str) -> dict:
  """CPU model, cores, platform, Python, jax backend and devices, the versions of `packages`, and the load average
  at the time of the call (above the core count, the machine was shared and timings are pessimistic)."""
  import jax
  cpu = platform.processor() or platform.machine()
  if os.path.exists("/proc/cpuinfo"):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), cpu)
  out = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
         "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
         "devices": [str(d) for d in jax.devices()], "load_average": [round(x, 2) for x in os.getloadavg()]}
  for p in packages:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      out[p] = None
  return out


def start_serve(cmd: list, timeout: float = 300, **popen_kwargs) -> tuple[subprocess.Popen, str]:
  """Starts a `python -m launch.serve ...` command line; returns (process, URL) once it prints `serving ... on URL`
  (killed after `timeout` seconds without it, then RuntimeError)."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **popen_kwargs)
  timer = threading.Timer(timeout, proc.kill)
  timer.start()
  line = proc.stdout.readline()
  timer.cancel()
  if " on http://" not in line:
    proc.kill()
    raise RuntimeError(f"server did not start ({' '.join(map(str, cmd[:4]))} ...): {line!r}")
  return proc, line.rsplit(" on ", 1)[1].strip()
