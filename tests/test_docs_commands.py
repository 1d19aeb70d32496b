"""The commands of README.md and docs/*.md run as written.

Convention: a fenced block whose info string is `bash run` holds commands that run in about a minute on 2 CPU
cores; it is run here, as one bash script (`set -e`), in a copy of the repository (so runs write their workdirs
into the copy, not the checkout). Blocks of one file run in order in the same copy, as a reader would run them.
Other blocks (`bash`, `json`, ...) are not run: long trainings, servers, placeholders.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

FENCE = re.compile(r"^(```+|~~~+)\s*(.*?)\s*$")
RUN_INFO = "bash run"
TIMEOUT_S = 240  # per block; a block should take ~60 s on 2 cores
COPY_IGNORE = shutil.ignore_patterns(
  ".git", "workdirs", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".jax_cache", "*.egg-info", "build"
)


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
  """(info string, body, line number of the opening fence) of every fenced code block of a Markdown text."""
  blocks, lines, i = [], text.splitlines(), 0
  while i < len(lines):
    m = FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    fence, info, start, body = m.group(1), m.group(2), i + 1, []
    i += 1
    while i < len(lines) and not lines[i].startswith(fence):
      body.append(lines[i])
      i += 1
    blocks.append((info, "\n".join(body) + "\n", start))
    i += 1
  return blocks


def doc_files() -> list[pathlib.Path]:
  return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def runnable(path: pathlib.Path) -> list[tuple[str, int]]:
  return [(body, line) for info, body, line in fenced_blocks(path.read_text()) if info == RUN_INFO]


def test_fenced_blocks_parser():
  text = "intro\n```bash run\necho a \\\n  b\n```\n\n````md\n```bash run\nnot a block\n```\n````\n```json\n{}\n```\n"
  blocks = fenced_blocks(text)
  assert [(info, line) for info, _, line in blocks] == [("bash run", 2), ("md", 7), ("json", 12)]
  assert blocks[0][1] == "echo a \\\n  b\n"
  assert "not a block" in blocks[1][1]  # a fence inside a longer fence is text


def test_some_commands_are_marked_runnable():
  marked = {p.name: len(runnable(p)) for p in doc_files()}
  assert sum(marked.values()) > 0, marked


def _run_file(path: pathlib.Path, tmp_path: pathlib.Path) -> None:
  copy = tmp_path / "repo"
  shutil.copytree(REPO, copy, ignore=COPY_IGNORE)
  env = dict(
    os.environ,
    PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
  )
  for body, line in runnable(path):
    try:
      p = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", body],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
      )
    except subprocess.TimeoutExpired:
      pytest.fail(f"{path.name}:{line}: a `bash run` block took over {TIMEOUT_S} s; unmark it or make it faster")
    assert p.returncode == 0, (
      f"{path.name}:{line}: exit {p.returncode}\n{body}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.relative_to(REPO).as_posix() for p in doc_files() if runnable(p)])
def test_marked_commands_run_as_written(name, tmp_path):
  _run_file(REPO / name, tmp_path)
