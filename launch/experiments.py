"""Registry of experiments keyed by the `--experiment` flag string (scenic-style).

An experiment is a function `run(workdir: pathlib.Path) -> list[dict]` that reads the absl flags it defined at
import, does its work through library code, and returns result rows; `launch.run` writes them out
(results.json, results.md, plot.png). Adding an experiment is adding one registered function and importing its
module in `launch/run.py`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

Experiment = Callable[[pathlib.Path], list]
EXPERIMENTS: dict[str, Experiment] = {}
NOTES: dict[str, Callable[[], str]] = {}


def register(name: str, notes: Callable[[], str] | None = None) -> Callable[[Experiment], Experiment]:
  """Registers an experiment; `notes()` (optional) returns the text that results.md states above the table
  (how the figures were obtained)."""

  def wrap(fn: Experiment) -> Experiment:
    if name in EXPERIMENTS:
      raise ValueError(f"experiment {name!r} registered twice")
    EXPERIMENTS[name] = fn
    if notes is not None:
      NOTES[name] = notes
    return fn

  return wrap
