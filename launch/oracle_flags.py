"""Flags --oracle_url, --api_key, --oracle_timeout, --oracle_retries, and `make_oracle`: a local `Oracle` over the
victim, or with --oracle_url a `RemoteOracle` asking a prediction service (`python -m launch.serve`).

  python -m launch.run --flagfile=configs/quickstart.flags --oracle_url=http://127.0.0.1:8000 --api_key=KEY

With --oracle_url the output mode, top_k and defenses are the key's, set on the server (which discloses the
output mode and top_k, never the defenses): `make_oracle` checks that they are what the experiment asks for
(--oracle_output, --top_k) and ends the run with a one-line error otherwise. The key may also be given in the environment variable EXTRACTION_API_KEY (kept out of flagfiles and
shell history); it is never written to results.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from absl import flags, logging

from extraction.oracle import Backend, Oracle
from extraction.remote import RemoteError, RemoteOracle

API_KEY_ENV = "EXTRACTION_API_KEY"


class OracleMismatch(RemoteError, ValueError):
  """The remote key serves another output mode than the experiment asks for."""


flags.DEFINE_string("oracle_url", None, "Ask the victim through this prediction API (python -m launch.serve) "
                    "instead of locally, e.g. http://127.0.0.1:8000.")
flags.DEFINE_string("api_key", None, f"API key for --oracle_url (default: ${API_KEY_ENV}).")
flags.DEFINE_float("oracle_timeout", 60.0, "Seconds per request to --oracle_url.", lower_bound=0.1)
flags.DEFINE_integer("oracle_retries", 3, "Retries of a request that timed out or got a 5xx.", lower_bound=0)

FLAGS = flags.FLAGS


@flags.multi_flags_validator(["oracle_url", "api_key"], message="bad --oracle_url")
def _remote_settings(values):
  url = values["oracle_url"]
  if url is None:
    return True
  if not url.startswith(("http://", "https://")):
    raise flags.ValidationError(f"--oracle_url={url!r} must start with http:// or https://")
  if not (values["api_key"] or os.environ.get(API_KEY_ENV)):
    raise flags.ValidationError(f"--oracle_url needs --api_key=KEY (or ${API_KEY_ENV})")
  return True


def public_flag_values() -> dict:
  """These flags for results.json, without the API key."""
  return {"oracle_url": FLAGS.oracle_url, "oracle_timeout": FLAGS.oracle_timeout,
          "oracle_retries": FLAGS.oracle_retries}


def make_oracle(local_backend: Optional[Backend], output: str, top_k: Optional[int] = None,
                budget: Optional[int] = None, record_inputs: bool = True) -> Union[Oracle, RemoteOracle]:
  """The oracle of one extraction: local over `local_backend`, or remote when --oracle_url is set.

  Args:
    local_backend: the victim's batched logits function (unused with --oracle_url).
    output, top_k: the output mode the experiment asks for; a remote key must serve exactly this.
    budget: the experiment's query budget (with --oracle_url, a client-side cap on top of the key's budget).
    record_inputs: keep the asked inputs.
  Returns:
    Oracle or RemoteOracle. Raises OracleMismatch (an `extraction.remote.RemoteError`, one line) when the remote
    key serves another output mode.
  """
  if not FLAGS.oracle_url:
    return Oracle(local_backend, output=output, top_k=top_k, budget=budget, record_inputs=record_inputs)
  oracle = RemoteOracle(FLAGS.oracle_url, FLAGS.api_key or os.environ.get(API_KEY_ENV, ""),
                        timeout=FLAGS.oracle_timeout, retries=FLAGS.oracle_retries, budget=budget,
                        record_inputs=record_inputs)
  if oracle.output != output or (output == "top_k" and oracle.top_k != top_k):
    served, asked = _mode_text(oracle.output, oracle.top_k), _mode_text(output, top_k)
    oracle.close()
    raise OracleMismatch(f"--oracle_url={FLAGS.oracle_url}: this API key is served {served} but the experiment "
                         f"asks for {asked}; use a key served {asked} or set the experiment's output to {served}")
  left = oracle.key_state["remaining"]
  logging.info("remote oracle %s: output %s, key budget left %s", FLAGS.oracle_url,
               _mode_text(oracle.output, oracle.top_k), "no limit" if left is None else left)
  return oracle


def oracle_settings(oracle: Union[Oracle, RemoteOracle]) -> dict:
  """What makes a remote oracle's answers differ from the local one's, for names of runs and checkpoints:
  {} for a local oracle (names stay as they were), else the URL and a digest of the key (the service does not
  disclose a key's defenses, so each key names its own runs)."""
  if isinstance(oracle, RemoteOracle):
    return {"oracle_url": oracle.url, "key_id": oracle.key_id}
  return {}


def _mode_text(output: str, top_k: Optional[int]) -> str:
  return output + (f" (top_k={top_k})" if output == "top_k" else "")
