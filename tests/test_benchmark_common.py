"""benchmarks/common.py: the `Environment: ...` line of every results header comes from the lock recorded when the
benchmark ran (environment_line), never from today's environment."""

import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys

from benchmarks.common import REPO, environment_line, lock_file

# A results Markdown file written by a benchmark: `(... / "x.md").write_text(`, `open(... ".md", "w")` or a
# `.with_suffix(".md")` path.
WRITES_MARKDOWN = re.compile(r'\.md"\)\.write_text\(|\.md",\s*"w"|with_suffix\("\.md"\)')


def _lock(tmp_path, text: str) -> dict:
  path = tmp_path / "lock.txt"
  path.write_text(text)
  return lock_file(path)


def test_environment_line_names_the_recorded_lock(tmp_path):
  text = f"# pinned\nabsl-py=={importlib.metadata.version('absl-py')}\n"
  machine = {"cpu": "x", "lock": _lock(tmp_path, text)}
  sha = hashlib.sha256(text.encode()).hexdigest()
  assert (
    environment_line(machine) == f"Environment: {tmp_path / 'lock.txt'} (sha256 {sha[:16]}), installed versions match"
  )


def test_environment_line_reports_mismatches_of_the_recorded_lock(tmp_path):
  machine = {"lock": _lock(tmp_path, "absl-py==0.0.0-not-installed\n")}
  line = environment_line(machine)
  assert line.startswith(f"Environment: {tmp_path / 'lock.txt'} (sha256 ")
  assert "installed versions differ: absl-py " in line and "(0.0.0-not-installed)" in line


def test_environment_line_without_a_recorded_lock():
  sentence = "Environment: not recorded (made before requirements/lock.txt)"
  assert environment_line({"cpu": "x", "cpu_count": 2}) == sentence
  assert environment_line({"lock": None}) == sentence
  assert environment_line(None) == sentence


def test_an_old_results_json_does_not_claim_todays_environment(tmp_path):
  """Re-rendering a header from a machine dict made before the lock file says so, and names no lock; with a
  recorded lock, the header names that lock (not the repository's). In a subprocess: importing a benchmark
  defines its flags, which may clash with the launcher's already imported by other tests."""
  recorded = _lock(tmp_path, "absl-py==0.0.0-then\n")
  script = (
    "import json, sys\n"
    "from benchmarks import lm_last_layer\n"
    "old = lm_last_layer.markdown([], 'cmd', {'cpu': 'x', 'cpu_count': 2}, 1.0)\n"
    "then = lm_last_layer.markdown([], 'cmd', {'lock': json.loads(sys.argv[1])}, 1.0)\n"
    "print(json.dumps([old, then]))\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", script, json.dumps(recorded)], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  old, then = json.loads(out.stdout.strip().splitlines()[-1])
  today = lock_file()["sha256"]
  assert "\nEnvironment: not recorded (made before requirements/lock.txt)" in old
  assert today is None or today[:16] not in old
  assert f"\nEnvironment: {tmp_path / 'lock.txt'} (sha256 {recorded['sha256'][:16]})" in then


def test_every_benchmark_that_writes_markdown_uses_environment_line():
  sources = {p.stem: p.read_text() for p in (REPO / "benchmarks").glob("*.py") if p.stem != "common"}
  writers = {name for name, text in sources.items() if WRITES_MARKDOWN.search(text)}
  assert {"data_parallel", "table1_direct", "mixmatch_throughput", "table2"} <= writers  # the pattern finds both styles
  # environment_line itself, or report_head, which writes it
  uses = ("environment_line(", "report_head(")
  assert sorted(name for name in writers if not any(u in sources[name] for u in uses)) == []
  # one way to write the line: no benchmark formats the lock itself
  assert sorted(name for name, text in sources.items() if "lock_text(" in text) == []


def test_every_results_file_names_its_environment():
  """Each committed results Markdown says which pinned environment made its figures (or that none was recorded)."""
  missing = [
    p.name for p in sorted((REPO / "benchmarks" / "results").glob("*.md")) if "\nEnvironment: " not in p.read_text()
  ]
  assert missing == []


def test_fresh_sets_the_old_workdir_aside_not_deleted(tmp_path):
  from benchmarks.common import set_aside

  work = tmp_path / "limits"
  (work / "runs" / "done").mkdir(parents=True)
  (work / "runs" / "done" / "state.msgpack").write_bytes(b"70 minutes of training")
  (tmp_path / "limits.previous").mkdir()  # an older one is replaced
  set_aside(work)
  assert not work.exists()
  assert (tmp_path / "limits.previous" / "runs" / "done" / "state.msgpack").read_bytes() == b"70 minutes of training"
  set_aside(work)  # nothing there: nothing to do
  assert (tmp_path / "limits.previous").exists()


def test_benchmarks_imported_by_tests_define_no_flag_the_launcher_defines():
  """The suite imports some benchmark modules beside the launcher in one process (pytest-xdist workers): a flag
  defined at import by both (say --seeds) fails collection. Imports them all together in a fresh process."""
  imported = set()
  for path in (REPO / "tests").glob("test_*.py"):
    imported |= set(re.findall(r"^from benchmarks import ([\w, ]+)$", path.read_text(), re.M))
  modules = sorted({m.strip() for line in imported for m in line.split(",")} - {"common"})
  assert "fe_dead_sides" in modules
  script = "import launch.run\n" + "".join(f"import benchmarks.{m}\n" for m in modules)
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
