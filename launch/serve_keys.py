"""Add, revoke, update, list or reset the API keys of a prediction service's key database (see service/keys.py).

  python -m launch.serve_keys --db=workdirs/quickstart/victim/keys.sqlite --init_db     # a new, empty database
  python -m launch.serve_keys --db=... --add --label=alice --budget=1000 --output=labels   # prints a new key
  python -m launch.serve_keys --db=... --add --label=bob --key=KEY --defenses='{"round_decimals": 2}'
  python -m launch.serve_keys --db=... --revoke=KEY          # or --revoke_label=alice
  python -m launch.serve_keys --db=... --keys=keys.json --sync    # load a keys file, revoke keys not in it
  python -m launch.serve_keys --db=... --reset=KEY           # what KEY spent back to 0
  python -m launch.serve_keys --db=... --list

--add generates a key of 32 random bytes unless --key gives one (at least 16 characters); the database keeps only
its HMAC digest, so a generated key is shown once. Revoked keys stay revoked. A running server sees every change
at its next request.
"""
from __future__ import annotations

import sys

from absl import app, flags

from extraction.oracle import OUTPUT_MODES
from service import keys
from service.keystore import KeyStore, StoreError, read_keys_file

flags.DEFINE_string("db", None, "SQLite file of the keys (its secret is <db>.secret).")
flags.DEFINE_bool("init_db", False, "Create a new key database and its secret (refused if --db exists).")
flags.DEFINE_bool("add", False, "Add a key named --label (a new random one, or --key), or update a known --key.")
flags.DEFINE_string("label", None, "The operator's name of the key of --add (never a piece of the key).")
flags.DEFINE_string("key", None, "The key of --add (default: 32 random bytes, printed once); >= 16 characters.")
flags.DEFINE_integer("budget", None, "Budget of --add in inputs (unset: unlimited).", lower_bound=0)
flags.DEFINE_enum("output", "probabilities", list(OUTPUT_MODES), "Output mode of --add.")
flags.DEFINE_integer("top_k", None, "k of --output=top_k.", lower_bound=1)
flags.DEFINE_string("defenses", "{}", "Defenses of --add as JSON (fields of extraction.defenses.Defenses).")
flags.DEFINE_string("revoke", None, "Revoke this key for good.")
flags.DEFINE_string("revoke_label", None, "Revoke the key of this label for good.")
flags.DEFINE_alias("revoke-label", "revoke_label")
flags.DEFINE_string("keys", None, "Load this keys file (adds keys, updates settings, keeps what they spent).")
flags.DEFINE_bool("sync", False, "With --keys: revoke the keys that the file does not list.")
flags.DEFINE_string("reset", None, "Set what this key spent back to 0.")
flags.DEFINE_bool("list", False, "List the keys by label, with budgets and spending.")
flags.mark_flag_as_required("db")

FLAGS = flags.FLAGS


@flags.multi_flags_validator(["output", "top_k", "defenses", "budget"], message="bad key settings")
def _settings_valid(values):
  try:
    keys.settings(values["output"], values["top_k"], values["defenses"], values["budget"])
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None
  return True


@flags.multi_flags_validator(["add", "label", "key", "sync", "keys"], message="bad flags")
def _combinations(values):
  if values["add"] and not values["label"]:
    raise flags.ValidationError("--add needs --label=NAME, the operator's name for the key")
  if (values["label"] or values["key"]) and not values["add"]:
    raise flags.ValidationError("--label and --key belong to --add")
  if values["sync"] and not values["keys"]:
    raise flags.ValidationError("--sync revokes the keys missing from --keys=FILE: give --keys")
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    store = KeyStore(FLAGS.db, create=FLAGS.init_db)
    if FLAGS.keys:
      for line in keys.report(store.load(read_keys_file(FLAGS.keys), sync=FLAGS.sync)):
        print(line)
    if FLAGS.add:
      settings = keys.settings(FLAGS.output, FLAGS.top_k, FLAGS.defenses, FLAGS.budget)
      print(keys.add(store, FLAGS.label, settings, FLAGS.key))
    if FLAGS.revoke:
      print(keys.revoke(store, key=FLAGS.revoke))
    if FLAGS.revoke_label:
      print(keys.revoke(store, label=FLAGS.revoke_label))
    if FLAGS.reset:
      print(keys.reset(store, FLAGS.reset))
  except (StoreError, ValueError) as e:
    sys.exit(f"error: {e}")
  acted = FLAGS.add or FLAGS.revoke or FLAGS.revoke_label or FLAGS.reset or FLAGS.keys or FLAGS.init_db
  if FLAGS.list or not acted:
    for state in store.list():
      print(keys.describe(state))


if __name__ == "__main__":
  app.run(main)
