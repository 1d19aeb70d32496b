"""Serve a victim as a prediction API (FastAPI + uvicorn), with API keys, per-key budgets and defenses.

  python -m launch.serve --victim_workdir=workdirs/quickstart --keys=configs/serve_quickstart.keys.json --port=8000
  python -m launch.serve --victim_npz=workdirs/fe/victim.npz --keys=keys.json --port=0   # 0: any free port

--victim_workdir is an experiment workdir of `launch.run` (its victim is in <workdir>/victim) or the victim
directory itself; --victim_npz a two-layer ReLU network answered in float64. Keys and budgets live in the SQLite
file --db (default: keys.sqlite beside the victim); --keys=FILE adds the keys of a JSON file to it (or updates
their settings, keeping what they spent), and `python -m launch.serve_keys` adds, lists or resets keys. Endpoints
and errors: service/app.py (docs/service.md). Prints `serving ... on http://HOST:PORT` once the socket listens.
"""
from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

import service
from service import keystore, server

flags.DEFINE_string("victim_workdir", None, "Experiment workdir of launch.run (victim in <dir>/victim) or a victim "
                    "directory.")
flags.DEFINE_string("victim_npz", None, "Two-layer ReLU victim (npz with w0, b0, w1, b1), served in float64.")
flags.DEFINE_string("keys", None, "JSON file of API keys: {KEY: {budget, output, top_k, defenses}}.")
flags.DEFINE_string("db", None, "SQLite file of the keys and what they spent (default: keys.sqlite beside the "
                    "victim).")
flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on.")
flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port; the one chosen is printed).",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("max_batch", 4096, "Most inputs per request.", lower_bound=1)
flags.DEFINE_integer("max_bytes", 32 << 20, "Largest request body in bytes.", lower_bound=1)
flags.DEFINE_bool("warmup", True, "Compile the Flax victim for every batch size before listening.")
flags.DEFINE_string("log_level", "warning", "uvicorn log level (info logs every request).")

FLAGS = flags.FLAGS


@flags.multi_flags_validator(["victim_workdir", "victim_npz"], message="bad victim")
def _one_victim(values):
  workdir, npz = values["victim_workdir"], values["victim_npz"]
  if (workdir is None) == (npz is None):
    raise flags.ValidationError("give exactly one of --victim_workdir=DIR and --victim_npz=PATH")
  if workdir is not None:
    directory = service.resolve_victim_dir(workdir)
    if not (directory / "info.json").is_file():
      raise flags.ValidationError(f"--victim_workdir={workdir!r}: no trained victim there (no info.json in it or "
                                  f"in its victim/); train one with python -m launch.run first")
  else:
    from functional_equivalence import victims
    from functional_equivalence.errors import VictimFileError
    try:
      victims.load_npz(npz)
    except VictimFileError as e:
      raise flags.ValidationError(f"--victim_npz: {e}") from None
  return True


@flags.validator("keys", message="bad --keys")
def _keys_file(path):
  if path is not None:
    try:
      keystore.read_keys_file(path)
    except ValueError as e:
      raise flags.ValidationError(f"--keys: {e}") from None
  return True


def default_db(workdir, npz) -> pathlib.Path:
  """keys.sqlite beside the victim: in the victim directory, or next to the npz file (<name>.keys.sqlite)."""
  if workdir is not None:
    return service.resolve_victim_dir(workdir) / "keys.sqlite"
  npz = pathlib.Path(npz)
  return npz.with_name(npz.stem + ".keys.sqlite")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    if FLAGS.victim_workdir is not None:
      model = service.model_from_victim_dir(FLAGS.victim_workdir)
    else:
      model = service.model_from_npz(FLAGS.victim_npz)
  except (ValueError, OSError) as e:  # an incomplete victim, unreadable files: one line
    sys.exit(f"cannot serve the victim: {type(e).__name__}: {e}")
  store = keystore.KeyStore(FLAGS.db or default_db(FLAGS.victim_workdir, FLAGS.victim_npz))
  if FLAGS.keys:
    keys = keystore.read_keys_file(FLAGS.keys)
    for key, settings in keys.items():
      try:
        settings.check(model.num_classes)
      except ValueError as e:
        sys.exit(f"--keys: key {keystore.label(key)}: {e}")
    store.load(keys)
  if not store.list():
    sys.exit(f"no API keys in {store.path}: give --keys=FILE or add one with python -m launch.serve_keys")
  if FLAGS.warmup and model.input_dtype == "uint8":
    service.warm_up(model, FLAGS.max_batch)
  api = service.create_app(model, store, service.Limits(FLAGS.max_batch, FLAGS.max_bytes))
  sock = server.listen(FLAGS.host, FLAGS.port)
  print(f"serving {model.name}: inputs {service.app.shape_text(model.input_shape)} {model.input_dtype}, "
        f"{model.num_classes} classes, {len(store.list())} keys in {store.path}, on {server.url_of(sock)}",
        flush=True)
  server.serve(api, sock, FLAGS.log_level)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
