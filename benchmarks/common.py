"""What every benchmark records: where results go and the machine they ran on."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import threading

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
LOCK = REPO / "requirements" / "lock.txt"


def lock_file(path: pathlib.Path = LOCK) -> dict:
  """The pinned environment the figures belong to: the lock file's path (relative to the repository), its sha256,
  and the packages whose installed version differs from it (`mismatches`, "name installed (locked)"; empty when the
  environment is the locked one, i.e. the figures can be reproduced with `pip install -c <path> -e .[test]`)."""
  path = pathlib.Path(path)
  if not path.exists():
    return {"path": None, "sha256": None, "mismatches": [f"no lock file at {path}"]}
  text = path.read_text()
  mismatches = []
  for line in text.splitlines():
    line = line.split("#", 1)[0].strip()
    if "==" not in line:
      continue
    name, locked = (part.strip() for part in line.split("==", 1))
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      installed = "missing"
    if installed != locked:
      mismatches.append(f"{name} {installed} ({locked})")
  shown = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
  return {"path": shown, "sha256": hashlib.sha256(text.encode()).hexdigest(), "mismatches": mismatches}


def lock_text(lock: dict) -> str:
  """One line for a results header: `requirements/lock.txt (sha256 1234abcd5678...), installed versions match` or
  the mismatches."""
  if lock["path"] is None:
    return f"environment not pinned ({lock['mismatches'][0]})"
  state = (
    "installed versions match"
    if not lock["mismatches"]
    else f"installed versions differ: {', '.join(lock['mismatches'][:5])}"
    f"{' ...' if len(lock['mismatches']) > 5 else ''} (installed (locked))"
  )
  return f"{lock['path']} (sha256 {lock['sha256'][:16]}), {state}"


NOT_RECORDED = "not recorded (made before requirements/lock.txt)"


def environment_line(machine_dict: dict | None) -> str:
  """The `Environment: ...` line of a results header, from the lock recorded in a benchmark's machine dict when
  it ran (`machine()["lock"]`), so that re-rendering an old JSON does not claim today's environment; a dict from
  before the lock file (no `lock`) gives `Environment: not recorded (...)`."""
  lock = (machine_dict or {}).get("lock")
  return f"Environment: {lock_text(lock) if lock else NOT_RECORDED}"


def report_head(title: str, command_line: str, info: dict, seconds: float, columns) -> list[str]:
  """The first lines of a results file: title, command, machine and load, environment, a table's header."""
  return [
    f"# {title}",
    "",
    command_line,
    "",
    f"Machine: {info['cpu']}, {info['cpu_count']} cores, load average {info['load_average']}; total {seconds:.0f} s.",
    "",
    environment_line(info),
    "",
    "| " + " | ".join(columns) + " |",
    "|" + "---|" * len(columns),
  ]


def machine(*packages: str) -> dict:
  """CPU model, cores, platform, Python, jax backend and devices, the versions of `packages`, the load average
  at the time of the call (above the core count, the machine was shared and timings are pessimistic) and the
  lock file of the environment (`lock`: see lock_file)."""
  import jax

  cpu = platform.processor() or platform.machine()
  if os.path.exists("/proc/cpuinfo"):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), cpu)
  out = {
    "cpu": cpu,
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "load_average": [round(x, 2) for x in os.getloadavg()],
    "lock": lock_file(),
  }
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


def run_launcher(flagfile: str, workdir, extra=(), run: bool = True) -> dict:
  """Runs `python -m launch.run --flagfile=<flagfile> --workdir=<workdir> <extra>` (raising on failure; with
  run=False only reads what an earlier run left in the workdir) and returns its record: launcher_command,
  wall_seconds, rows (without the bulky config and versions), the experiment's notes (the first paragraph of
  results.md) and the machine at the end of the run."""
  import json
  import sys
  import time

  out_dir = REPO / workdir  # a relative workdir is the launcher's, which runs in REPO
  launcher = [sys.executable, "-m", "launch.run", f"--flagfile={flagfile}", f"--workdir={workdir}", *extra]
  t = time.time()
  if run:
    subprocess.run(launcher, cwd=REPO, check=True)
  wall = round(time.time() - t, 1)
  rows = [
    {k: v for k, v in r.items() if k not in ("config", "versions")}
    for r in json.loads((out_dir / "results.json").read_text())
  ]
  return {
    "launcher_command": "python " + " ".join(launcher[1:]),
    "wall_seconds": wall,
    "rows": rows,
    "notes": (out_dir / "results.md").read_text().split("\n\n")[0],
    "machine": machine(),
  }


def set_aside(workdir: pathlib.Path) -> None:
  """--fresh: the workdir moved to <workdir>.previous (replacing an older one), not deleted: a restart with the
  documented command after an interruption once deleted 70 minutes of finished trainings (add --nofresh to reuse
  them; the previous workdir can be moved back)."""
  if workdir.exists():
    previous = workdir.with_name(workdir.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    workdir.rename(previous)


def define_launcher_flags(flagfile: str, workdir: str, name: str) -> None:
  """The flags of a driver around `run_launcher`: --flagfile_name, --workdir, --fresh, --name, --extra (defined
  when the driver runs, not on import: tests import drivers beside the launcher's flags)."""
  from absl import flags

  flags.DEFINE_string("flagfile_name", flagfile, "Flagfile in configs/.")
  flags.DEFINE_string("workdir", workdir, "Launcher workdir.")
  flags.DEFINE_bool(
    "fresh",
    True,
    "Start from an empty workdir, the old one moved to <workdir>.previous (otherwise what it holds is reused and "
    "the wall time counts only what was left to do).",
  )
  flags.DEFINE_string("name", name, "Results file name in benchmarks/results/.")
  flags.DEFINE_list("extra", [], "Extra launcher flags (for every run).")
