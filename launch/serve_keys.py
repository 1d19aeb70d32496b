"""Add, update, list or reset the API keys of a prediction service's SQLite file (see service/keys.py).

  python -m launch.serve_keys --db=workdirs/quickstart/victim/keys.sqlite --add=KEY --budget=1000 --output=labels
  python -m launch.serve_keys --db=... --add=KEY2 --output=probabilities --defenses='{"round_decimals": 2}'
  python -m launch.serve_keys --db=... --reset=KEY      # what KEY spent back to 0
  python -m launch.serve_keys --db=... --list

A running server sees the changes at its next request.
"""
from __future__ import annotations

from absl import app, flags

from extraction.oracle import OUTPUT_MODES
from service import keys
from service.keystore import KeyStore

flags.DEFINE_string("db", None, "SQLite file of the keys (created if missing).")
flags.DEFINE_string("add", None, "Add this key, or update its settings (keeping what it spent).")
flags.DEFINE_integer("budget", None, "Budget of --add in inputs (unset: unlimited).", lower_bound=0)
flags.DEFINE_enum("output", "probabilities", list(OUTPUT_MODES), "Output mode of --add.")
flags.DEFINE_integer("top_k", None, "k of --output=top_k.", lower_bound=1)
flags.DEFINE_string("defenses", "{}", "Defenses of --add as JSON (fields of extraction.defenses.Defenses).")
flags.DEFINE_string("reset", None, "Set what this key spent back to 0.")
flags.DEFINE_bool("list", False, "List the keys (first 4 characters), budgets and spending.")
flags.mark_flag_as_required("db")

FLAGS = flags.FLAGS


@flags.multi_flags_validator(["output", "top_k", "defenses"], message="bad key settings")
def _settings_valid(values):
  try:
    keys.settings(values["output"], values["top_k"], values["defenses"], None)
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  store = KeyStore(FLAGS.db)
  if FLAGS.add:
    print(keys.add(store, FLAGS.add, keys.settings(FLAGS.output, FLAGS.top_k, FLAGS.defenses, FLAGS.budget)))
  if FLAGS.reset:
    print(keys.reset(store, FLAGS.reset))
  if FLAGS.list or not (FLAGS.add or FLAGS.reset):
    for state in store.list():
      print(keys.describe(state))


if __name__ == "__main__":
  app.run(main)
