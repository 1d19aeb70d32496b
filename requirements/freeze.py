"""Writes requirements/lock.txt: the exact versions, installed here, of everything the project needs.

Usage (from the repository root, in the environment whose versions are to be pinned):
  python requirements/freeze.py > requirements/lock.txt

It reads the requirements (install_requires and the extras named by --extras, default `test`) from setup.py,
follows their dependencies through the installed packages' metadata (environment markers evaluated here) and
prints `name==version` for each, sorted: `pip freeze` restricted to what the project pulls in (no editable
install, nothing unrelated that happens to be installed, e.g. torch for the PyTorch comparison benchmark).
CI installs with it as a constraints file: pip install -c requirements/lock.txt -e ".[test]".
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import pathlib
import platform
import runpy
import sys
from unittest import mock

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMAND = "python requirements/freeze.py > requirements/lock.txt"


def setup_requirements(extras: list[str]) -> list[Requirement]:
  """install_requires + the given extras of setup.py (read by running it with setuptools.setup stubbed)."""
  with mock.patch("setuptools.setup") as setup:
    runpy.run_path(str(ROOT / "setup.py"))
  kwargs = setup.call_args.kwargs
  lines = list(kwargs.get("install_requires", []))
  for extra in extras:
    if extra not in kwargs.get("extras_require", {}):
      raise SystemExit(f"setup.py has no extra {extra!r}; it has {', '.join(kwargs.get('extras_require', {}))}")
    lines += kwargs["extras_require"][extra]
  return [Requirement(line) for line in lines]


def closure(roots: list[Requirement]) -> dict[str, str]:
  """{distribution name: installed version} of the roots and everything they need, transitively."""
  found: dict[str, str] = {}
  todo = [(r, frozenset()) for r in roots]
  while todo:
    req, parent_extras = todo.pop()
    env_ok = any(req.marker is None or req.marker.evaluate({"extra": e}) for e in (parent_extras or {""}))
    if not env_ok:
      continue
    try:
      dist = md.distribution(req.name)
    except md.PackageNotFoundError:
      message = f"{req.name} (needed by the project) is not installed here: pip install -e '.[test]' first"
      raise SystemExit(message) from None
    name = canonicalize_name(dist.metadata["Name"])
    key = f"{name}[{','.join(sorted(req.extras))}]"
    if key in found:
      continue
    found[key] = dist.version
    for line in dist.requires or []:
      todo.append((Requirement(line), frozenset(req.extras)))
  pins: dict[str, str] = {}
  for key, version in found.items():
    pins[key.split("[")[0]] = version
  return pins


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--extras", default="test", help="comma-separated extras of setup.py to include")
  args = parser.parse_args()
  pins = closure(setup_requirements([e for e in args.extras.split(",") if e]))
  print(
    f"# The project's pinned environment (pip constraints): every package the project and its [{args.extras}] "
    f"extra need,\n# at the versions installed when it was written. Made with: {COMMAND}\n"
    f"# on Python {platform.python_version()}, {sys.platform} {platform.machine()}. "
    f'Install: pip install -c requirements/lock.txt -e ".[{args.extras}]"'
  )
  for name in sorted(pins):
    print(f"{name}=={pins[name]}")


if __name__ == "__main__":
  main()
