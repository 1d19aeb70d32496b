"""The one entry point: `python -m launch.run --flagfile=configs/<name>.flags`.

Parses and validates every flag before any work starts (a bad flag ends with a one-line error and exit code 1),
picks the experiment by `--experiment`, runs it in `--workdir` and writes results.json, results.md and plot.png
there. A bare `--flagfile=NAME.flags` that does not exist is looked up in `configs/`.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import app, flags, logging

from launch import common  # noqa: F401  (defines --experiment, --workdir, --seed)
from launch import experiments, results
from launch import learning  # noqa: F401  (registers the learning-based experiments)
from launch import fe  # noqa: F401  (registers functional_equivalence)
from launch import direct  # noqa: F401  (registers direct_recovery)
from launch import lm  # noqa: F401  (registers lm_last_layer)

from extraction.datasets import DatasetUnavailable
from extraction.oracle import BudgetExceeded
from extraction.remote import RemoteError
from extraction.victim import VictimMismatch
from functional_equivalence.errors import ExtractionError, VictimFileError

FLAGS = flags.FLAGS
USER_ERRORS = (common.ConfigError, DatasetUnavailable, BudgetExceeded, ExtractionError, VictimFileError,
               FileNotFoundError, RemoteError, VictimMismatch)
CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def resolve_flagfiles(argv: list[str]) -> list[str]:
  """Rewrites `--flagfile=X` to `configs/X` when X does not exist as given but does there."""
  out = []
  for arg in argv:
    if arg.startswith("--flagfile="):
      path = arg.split("=", 1)[1]
      if not os.path.exists(path) and (CONFIGS / path).exists():
        arg = f"--flagfile={CONFIGS / path}"
      elif not os.path.exists(path):
        sys.exit(f"flagfile {path!r} not found (also looked in {CONFIGS})")
    out.append(arg)
  return out


class _QuietLibraries:
  """Drops INFO records of chatty libraries (orbax logs every checkpoint operation) from our log output."""

  def filter(self, record) -> bool:
    return record.levelno > logging.converter.STANDARD_INFO or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.dry_run:
    print(json.dumps(common.flag_values(), indent=2, default=str))
    return
  common.configure_cpu_devices()
  common.initialize_distributed()
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  log_file = logging.logging.FileHandler(workdir / "log.txt")
  log_file.setFormatter(logging.PythonFormatter())
  logging.get_absl_logger().addHandler(log_file)
  for handler in (log_file, logging.get_absl_handler()):
    handler.addFilter(_QuietLibraries())
  logging.info("experiment %s in %s", FLAGS.experiment, workdir)
  try:
    rows = experiments.EXPERIMENTS[FLAGS.experiment](workdir)
  except USER_ERRORS as e:  # bad input or an attack that stopped for a stated reason: one line, no traceback
    sys.exit(f"error: {type(e).__name__}: {e}")
  if common.process_index() != 0:  # multi-host: one process writes the results
    return
  notes = experiments.NOTES.get(FLAGS.experiment, str)()
  paths = results.write(workdir, rows, config=common.flag_values(), notes=notes)
  for p in paths:
    print(f"wrote {p}")


def run():
  app.run(main, argv=resolve_flagfiles(sys.argv))


if __name__ == "__main__":
  run()
