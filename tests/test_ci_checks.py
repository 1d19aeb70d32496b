"""The static checks CI runs (.ci/check: ruff lint, ruff format --check, mypy, configured in pyproject.toml) fail on
a lint error, a format difference and a type error, each alone, and pass clean code written in the project's style."""

import shutil
import subprocess

import pytest

from tests.conftest import REPO

CHECK = REPO / ".ci" / "check"

pytestmark = pytest.mark.skipif(
  not (shutil.which("ruff") and shutil.which("mypy")), reason="ruff and mypy come with the [test] extra"
)

CLEAN = '''"""A module in the project's style: two-space indentation, double quotes, sorted imports, typed."""

import math


def norm(x: float, y: float) -> float:
  return math.sqrt(x * x + y * y)
'''

# Each differs from CLEAN by one fault that exactly one of the three tools reports.
FAULTS = {
  "lint": (CLEAN.replace("import math\n", "import math\nimport os\n"), "F401"),
  "format": (CLEAN.replace("x * x + y * y", "x*x + y*y"), "would be reformatted"),
  "types": (CLEAN.replace("-> float:", "-> str:"), "Incompatible return value type"),
}
TOOL_OUTPUT = {"lint": "F401", "format": "would be reformatted", "types": "error:"}


def run_check(tmp_path, source: str) -> subprocess.CompletedProcess:
  path = tmp_path / "module.py"
  path.write_text(source)
  return subprocess.run([str(CHECK), str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_clean_code_passes(tmp_path):
  p = run_check(tmp_path, CLEAN)
  assert p.returncode == 0, p.stdout + p.stderr
  for tool in ("ruff check", "ruff format --check", "mypy"):
    assert f"+ {tool} " in p.stdout  # all three ran


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_check_fails_on_each_kind_of_fault(tmp_path, fault):
  source, message = FAULTS[fault]
  p = run_check(tmp_path, source)
  out = p.stdout + p.stderr
  assert p.returncode == 1, out
  assert message in out
  for other, marker in TOOL_OUTPUT.items():
    if other != fault:
      assert marker not in out, f"{other} also failed on the {fault} fault:\n{out}"


def test_readme_test_command_runs_the_checks_before_the_tests():
  """README's test command is .ci/run's (which enforces it on every CI run), and it checks, then tests."""
  run = (REPO / ".ci" / "run").read_text()
  cmd = next(line for line in run.splitlines() if line.startswith("cmd="))[len("cmd='") : -1]
  lines = (REPO / "README.md").read_text().splitlines()
  marker = lines.index("<!-- test-command -->")
  assert lines[marker + 2] == cmd
  assert "-c requirements/lock.txt" in cmd
  assert cmd.index(".ci/check") < cmd.index("pytest")
