"""Serve a victim as a prediction API (FastAPI + uvicorn), with API keys, per-key budgets and defenses.

  python -m launch.serve --victim_workdir=workdirs/quickstart --keys=configs/serve_quickstart.keys.json \
      --init_db --port=8000                       # the first time: creates the key database and its secret
  python -m launch.serve --victim_workdir=workdirs/quickstart --keys=configs/serve_quickstart.keys.json --port=8000
  python -m launch.serve --victim_npz=workdirs/fe/victim.npz --port=0   # 0: any free port
  python -m launch.serve --victim_lm=workdirs/lm --keys=configs/serve_lm.keys.json --init_db   # a language model

--victim_workdir is an experiment workdir of `launch.run` (its victim is in <workdir>/victim) or the victim
directory itself; --victim_npz a two-layer ReLU network answered in float64; --victim_lm the language model of
`--experiment=lm_last_layer` (its workdir or lm_victim directory; prompts in, see service/lm.py). Keys and budgets live in the SQLite
file --db (default: keys.sqlite beside the victim) and its secret <db>.secret; a new database is made only with
--init_db. --keys=FILE adds the keys of a JSON file (or updates their settings, keeping what they spent); with
--sync_keys, keys of the database missing from the file are revoked. `python -m launch.serve_keys` adds, revokes,
lists or resets keys. Endpoints, limits and the threat model: docs/service.md. Prints `serving ... on
http://HOST:PORT` once the socket listens.
"""
from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

import service
from service import keys as keys_lib
from service import keystore, server
from service import lm as lm_api
from service.inputs import shape_text

flags.DEFINE_string("victim_workdir", None, "Experiment workdir of launch.run (victim in <dir>/victim) or a victim "
                    "directory.")
flags.DEFINE_string("victim_npz", None, "Two-layer ReLU victim (npz with w0, b0, w1, b1), served in float64.")
flags.DEFINE_string("victim_lm", None, "Language-model victim: a workdir of --experiment=lm_last_layer or its "
                    "lm_victim directory (prompts in, next-token scores out).")
flags.DEFINE_enum("victim_lm_precision", "float32", ["float32", "float64"], "Precision the LM victim computes in.")
flags.DEFINE_float("max_logit_bias", 100.0, "LM: bound on |logit bias| per token (OpenAI: 100).", lower_bound=1e-9)
flags.DEFINE_integer("max_biased_tokens", 300, "LM: bound on biased tokens per request (OpenAI: 300).",
                     lower_bound=1)
flags.DEFINE_string("keys", None, "JSON file of API keys: {KEY: {label, budget, output, top_k, defenses}}.")
flags.DEFINE_bool("sync_keys", False, "Revoke the keys of the database that --keys does not list.")
flags.DEFINE_string("db", None, "SQLite file of the keys and what they spent (default: keys.sqlite beside the "
                    "victim).")
flags.DEFINE_bool("init_db", False, "Create a new key database (and its secret); refused if --db exists.")
flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on.")
flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port; the one chosen is printed).",
                     lower_bound=0, upper_bound=65535)
flags.DEFINE_integer("max_batch", 4096, "Most inputs per request.", lower_bound=1)
flags.DEFINE_integer("max_bytes", 32 << 20, "Largest request body in bytes.", lower_bound=1)
flags.DEFINE_float("max_abs_input", 1e6, "Float64 victims answer inputs within +-this only.", lower_bound=1e-300)
flags.DEFINE_integer("key_requests", 4, "Requests of one key handled at once (more wait, then 429).", lower_bound=1)
flags.DEFINE_integer("total_requests", 64, "Requests handled at once in all (more wait, then 503).", lower_bound=1)
flags.DEFINE_float("queue_wait", 10.0, "Seconds a request waits for those slots.", lower_bound=0.001)
flags.DEFINE_integer("body_memory", 256 << 20, "Bytes of request bodies held at once (more: 503).", lower_bound=1)
flags.DEFINE_float("body_timeout", 30.0, "Seconds to receive a request body (408 after).", lower_bound=0.001)
flags.DEFINE_integer("workers", 2, "Threads running the victim.", lower_bound=1)
flags.DEFINE_integer("max_connections", 512, "Open connections at most (lowered to fit the open-file limit).",
                     lower_bound=1)
flags.DEFINE_integer("max_connections_per_client", 64, "Open connections from one client address at most.",
                     lower_bound=1)
flags.DEFINE_float("header_timeout", 10.0, "Seconds for a request's headers to arrive.", lower_bound=0.001)
flags.DEFINE_bool("docs", False, "Serve /docs, /redoc and /openapi.json.")
flags.DEFINE_bool("warmup", True, "Compile the Flax victim for every batch size before listening.")
flags.DEFINE_string("log_level", "warning", "uvicorn log level (info logs every request).")

FLAGS = flags.FLAGS


@flags.multi_flags_validator(["victim_workdir", "victim_npz", "victim_lm"], message="bad victim")
def _one_victim(values):
  workdir, npz, lm_dir = values["victim_workdir"], values["victim_npz"], values["victim_lm"]
  if sum(v is not None for v in (workdir, npz, lm_dir)) != 1:
    raise flags.ValidationError("give exactly one of --victim_workdir=DIR, --victim_npz=PATH and --victim_lm=DIR")
  if lm_dir is not None:
    path = pathlib.Path(lm_dir)
    if not ((path / "info.json").is_file() or (path / "lm_victim" / "info.json").is_file()):
      raise flags.ValidationError(f"--victim_lm={lm_dir!r}: no LM victim there (no info.json in it or in its "
                                  f"lm_victim/); build one with python -m launch.run --experiment=lm_last_layer")
  elif workdir is not None:
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


@flags.multi_flags_validator(["keys", "sync_keys"], message="bad --sync_keys")
def _sync_needs_keys(values):
  if values["sync_keys"] and not values["keys"]:
    raise flags.ValidationError("--sync_keys revokes the keys missing from --keys=FILE: give --keys")
  return True


def default_db(workdir, npz, lm_dir=None) -> pathlib.Path:
  """keys.sqlite beside the victim: in the victim directory, or next to the npz file (<name>.keys.sqlite)."""
  if lm_dir is not None:
    return pathlib.Path(lm_dir) / "keys.sqlite"
  if workdir is not None:
    return service.resolve_victim_dir(workdir) / "keys.sqlite"
  npz = pathlib.Path(npz)
  return npz.with_name(npz.stem + ".keys.sqlite")


def limits() -> service.Limits:
  """The request limits from the flags; exits with one line when they do not fit together."""
  try:
    return service.Limits(max_batch=FLAGS.max_batch, max_bytes=FLAGS.max_bytes, max_abs_input=FLAGS.max_abs_input,
                          key_requests=FLAGS.key_requests, total_requests=FLAGS.total_requests,
                          queue_wait=FLAGS.queue_wait, body_memory=FLAGS.body_memory,
                          body_timeout=FLAGS.body_timeout, workers=FLAGS.workers)
  except ValueError as e:
    sys.exit(f"bad limits: {e}")


def open_store() -> keystore.KeyStore:
  """The key store (a new one with --init_db), the keys file loaded into it; exits with one line on a problem."""
  try:
    store = keystore.KeyStore(FLAGS.db or default_db(FLAGS.victim_workdir, FLAGS.victim_npz, FLAGS.victim_lm),
                              create=FLAGS.init_db)
    if FLAGS.keys:
      for line in keys_lib.report(store.load(keystore.read_keys_file(FLAGS.keys), sync=FLAGS.sync_keys)):
        print(line, file=sys.stderr, flush=True)  # stdout's first line stays the `serving ... on URL` line
  except (keystore.StoreError, ValueError) as e:
    sys.exit(f"{'--keys: ' if isinstance(e, ValueError) else ''}{e}")
  if not any(not k.revoked for k in store.list()):
    sys.exit(f"no usable API keys in {store.path}: give --keys=FILE or add one with python -m launch.serve_keys")
  return store


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  request_limits = limits()
  store = open_store()
  try:
    if FLAGS.victim_lm is not None:
      model = lm_api.model_from_lm_dir(FLAGS.victim_lm, FLAGS.victim_lm_precision, FLAGS.max_logit_bias,
                                       FLAGS.max_biased_tokens)
    elif FLAGS.victim_workdir is not None:
      model = service.model_from_victim_dir(FLAGS.victim_workdir)
    else:
      model = service.model_from_npz(FLAGS.victim_npz)
  except (ValueError, OSError) as e:  # an incomplete victim, unreadable files: one line
    sys.exit(f"cannot serve the victim: {type(e).__name__}: {e}")
  for state in (k for k in store.list() if not k.revoked):
    try:
      state.settings.check(model.num_classes)
      lm_api.check_key_for_model(state.settings, model)
    except ValueError as e:
      sys.exit(f"key {state.label!r}: {e}")
  if FLAGS.warmup and model.input_dtype == "uint8":
    service.warm_up(model, FLAGS.max_batch)
  api = service.create_app(model, store, request_limits, docs=FLAGS.docs)
  connections = server.fit_to_open_files(server.ConnectionLimits(
      FLAGS.max_connections, FLAGS.max_connections_per_client, FLAGS.header_timeout))
  sock = server.listen(FLAGS.host, FLAGS.port)
  print(f"serving {model.name}: inputs {shape_text(model.input_shape)} {model.input_dtype}, "
        f"{model.num_classes} classes, {sum(not k.revoked for k in store.list())} keys in {store.path}, "
        f"at most {connections.max_connections} connections, on {server.url_of(sock)}", flush=True)
  server.serve(api, sock, connections, FLAGS.log_level)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
