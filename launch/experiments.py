"""Registry of experiments keyed by the `--experiment` flag string (scenic-style).

An experiment is a function `run(workdir: pathlib.Path) -> list[dict]` that reads the absl flags it defined at
import, does its work through library code, and returns result rows; `launch.run` writes them out
(results.json, results.md, plot.png). Adding an experiment is adding one registered function and importing its
module in `launch/run.py`.
"""
from __future__ import annotations

import pathlib
from typing import Callable

Experiment = Callable[[pathlib.Path], list]
EXPERIMENTS: dict[str, Experiment] = {}


def register(name: str) -> Callable[[Experiment], Experiment]:
  def wrap(fn: Experiment) -> Experiment:
    if name in EXPERIMENTS:
      raise ValueError(f"experiment {name!r} registered twice")
    EXPERIMENTS[name] = fn
    return fn
  return wrap
