"""Writes an experiment's rows: results.json (a list of rows, each with the seed, the flags and package
versions), results.md (the same rows as a Markdown table, without the bulky columns, after the experiment's
notes), plot.png (accuracy and fidelity against queries, one line per method and oracle output, error bars of one
standard deviation over seeds) and, where rows carry learning curves, curves.png (fidelity against steps)."""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import platform

import numpy as np

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
_BULKY = ("config", "versions", "per_seed")


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


def _cell(row: dict, col: str) -> str:
  """A value, as 'mean ± std' where the row also has `<col>_std`."""
  if col not in row:
    return ""
  if f"{col}_std" in row:
    return f"{row[col]:.4f} ± {row[col + '_std']:.4f}"
  return _fmt(row[col])


def markdown_table(rows: list[dict]) -> str:
  """Rows as a Markdown table over the union of their (non-bulky, non-list) keys, in first-seen order; a figure
  with a `<name>_std` beside it shows as 'mean ± std'."""
  cols = []
  for r in rows:
    cols += [
      k
      for k, v in r.items()
      if k not in cols
      and k not in _BULKY
      and not isinstance(v, (list, dict))
      and not (k.endswith("_std") and k[:-4] in r)
    ]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(_cell(r, c) for c in cols) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def _targets(row: dict) -> str:
  """What a row's students trained on: the oracle's output mode, or 'ground_truth' (--targets)."""
  return "ground_truth" if row.get("targets") == "ground_truth" else row.get("oracle_output", "")


def plot(rows: list[dict], path: pathlib.Path) -> bool:
  """Accuracy and fidelity against queries; returns False (and writes nothing) when rows have no such data."""
  rows = [
    r for r in rows if "fidelity" in r and "queries" in r and r.get("method") != "victim" and "source" not in r
  ]  # the limits study's rows: its own plot
  if not rows:
    return False
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  groups = sorted({(r["method"], _targets(r)) for r in rows})
  for ax, metric in zip(axes, ("accuracy", "fidelity")):
    for method, output in groups:
      pts = sorted(
        (r["queries"], r[metric], r.get(f"{metric}_std", 0.0))
        for r in rows
        if (r["method"], _targets(r)) == (method, output) and metric in r
      )
      if not pts:
        continue
      q, v, sd = np.array(pts).T
      ax.errorbar(q, 100 * v, yerr=100 * sd, marker="o", capsize=3, label=f"{method} ({output})" if output else method)
    ax.set_xscale("log")
    ax.set_xlabel("queries")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
  if axes[0].get_legend_handles_labels()[0]:
    axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def plot_curves(rows: list[dict], path: pathlib.Path) -> bool:
  """Test fidelity against student steps (mean over seeds), one line per method, output and budget; returns False
  (and writes nothing) when no row has learning curves."""
  rows = [r for r in rows if r.get("per_seed") and r["per_seed"][0].get("curve")]
  if not rows:
    return False
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    curves = [run["curve"] for run in r["per_seed"]]
    steps = [c["step"] for c in curves[0]]
    mean = np.mean([[c["fidelity"] for c in curve] for curve in curves], axis=0)
    ax.plot(steps, 100 * mean, marker=".", label=f"{r['method']} {_targets(r)} {r['queries']}")
  ax.set_xlabel("student steps")
  ax.set_ylabel("test fidelity (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def write(workdir: pathlib.Path, rows: list[dict], config: dict, notes: str = "") -> list[pathlib.Path]:
  """Writes results.json, results.md (with `notes` above the table) and, when they apply, plot.png and
  curves.png into workdir; returns their paths."""
  workdir = pathlib.Path(workdir)
  meta = {"seed": config.get("seed"), "config": config, "versions": versions()}
  full = [{**meta, **r} for r in rows]  # a row's own seed (e.g. one of several) is kept
  paths = [workdir / "results.json", workdir / "results.md"]
  paths[0].write_text(json.dumps(full, indent=2, default=str))
  paths[1].write_text((notes.strip() + "\n\n" if notes else "") + markdown_table(rows))
  if plot(rows, workdir / "plot.png"):
    paths.append(workdir / "plot.png")
  if plot_curves(rows, workdir / "curves.png"):
    paths.append(workdir / "curves.png")
  return paths
