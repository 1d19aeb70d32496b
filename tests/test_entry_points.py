"""Every command-line entry point starts: `python -m <module> --helpshort` prints its flags (absl exits 1 after the
help) without a traceback, for each benchmark script and each launcher. Importing a module defines its absl flags and those of everything it imports, so a flag defined
twice (e.g. a benchmark's own --seeds beside the launcher's) fails here rather than on a user's first run."""

import concurrent.futures
import subprocess
import sys

from tests.conftest import REPO

BENCHMARKS = sorted(f"benchmarks.{p.stem}" for p in (REPO / "benchmarks").glob("*.py") if "app.run(" in p.read_text())
LAUNCHERS = ["launch.run", "launch.serve", "launch.serve_keys"]


def _help(module: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", module, "--helpshort"], cwd=REPO, capture_output=True, text=True, timeout=180
  )


def test_the_benchmark_list_is_not_empty():
  assert len(BENCHMARKS) >= 10 and "benchmarks.table1_direct" in BENCHMARKS


def test_every_entry_point_parses_its_flags():
  modules = BENCHMARKS + LAUNCHERS
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = dict(zip(modules, pool.map(_help, modules)))
  ok = lambda r: r.returncode in (0, 1) and "Traceback" not in r.stderr and "Try --helpfull" in r.stdout
  failed = {m: r.stderr.strip().splitlines()[-1:] for m, r in results.items() if not ok(r)}
  assert not failed, failed
