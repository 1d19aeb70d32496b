"""Writes an experiment's rows: results.json (a list of rows, each with the seed, the flags and package
versions), results.md (the same rows as a Markdown table, without the bulky columns) and plot.png (accuracy
and fidelity against queries, one line per method and oracle output)."""
from __future__ import annotations

import importlib.metadata
import json
import pathlib
import platform

import numpy as np

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
_BULKY = ("config", "versions")


def versions() -> dict:
  out = {"python": platform.python_version()}
  for p in _PACKAGES:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def markdown_table(rows: list[dict]) -> str:
  """Rows as a Markdown table over the union of their (non-bulky) keys, in first-seen order."""
  cols = []
  for r in rows:
    cols += [k for k in r if k not in cols and k not in _BULKY]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: pathlib.Path) -> bool:
  """Accuracy and fidelity against queries; returns False (and writes nothing) when rows have no such data."""
  rows = [r for r in rows if "fidelity" in r and "queries" in r and r.get("method") != "victim"]
  if not rows:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  groups = sorted({(r["method"], r.get("oracle_output", "")) for r in rows})
  for ax, metric in zip(axes, ("accuracy", "fidelity")):
    for method, output in groups:
      pts = sorted((r["queries"], r[metric]) for r in rows if (r["method"], r.get("oracle_output", "")) == (method, output))
      q, v = np.array(pts).T
      ax.plot(q, 100 * v, marker="o", label=f"{method} ({output})" if output else method)
    ax.set_xscale("log")
    ax.set_xlabel("queries")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def write(workdir: pathlib.Path, rows: list[dict], config: dict) -> list[pathlib.Path]:
  """Writes results.json, results.md and (when it applies) plot.png into workdir; returns their paths."""
  workdir = pathlib.Path(workdir)
  meta = {"seed": config.get("seed"), "config": config, "versions": versions()}
  full = [{**r, **meta} for r in rows]
  paths = [workdir / "results.json", workdir / "results.md"]
  paths[0].write_text(json.dumps(full, indent=2, default=str))
  paths[1].write_text(markdown_table(rows))
  if plot(rows, workdir / "plot.png"):
    paths.append(workdir / "plot.png")
  return paths
