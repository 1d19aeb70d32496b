"""CME's file formats and printed output (google-research/cryptanalytic-model-extraction), for fe_cme_reference.

Their victim file models/SEED_SIZES.npy is what their train_models.py saves, `np.save(path, [A, B])` with A the
weight matrices (n_in, n_out) and B the bias vectors, as numpy < 1.24 stored that ragged list: a (2, L) object
array. Their extract.py pickles what it recovers as [weights, biases] in the same convention (x @ w + b, ReLU on all
but the last layer), the last bias of shape (k,). Both are our DeepNet convention (deep/network.py) unchanged.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import re

import numpy as np

from functional_equivalence.deep.network import DeepNet, check_net


def victim_path(workdir, net: DeepNet, seed: int) -> pathlib.Path:
  """Where their global_vars.py looks for the victim run as `extract.py SIZES SEED` from `workdir`."""
  return pathlib.Path(workdir) / "models" / f"{seed}_{net.shape_text}.npy"


def export_victim(workdir, net: DeepNet, seed: int) -> pathlib.Path:
  """Writes `net` (float64) as their victim file for `seed`; returns its path."""
  path = victim_path(workdir, net, seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  arr = np.empty((2, net.depth + 1), dtype=object)
  for i, (w, b) in enumerate(zip(net.weights, net.biases)):
    arr[0, i], arr[1, i] = np.asarray(w, np.float64), np.asarray(b, np.float64)
  np.save(path, arr, allow_pickle=True)
  return path


def load_victim(path) -> DeepNet:
  """A victim file read back as their code reads it (`A, B = np.load(path, allow_pickle=True)`)."""
  a, b = np.load(path, allow_pickle=True)
  return check_net(DeepNet(tuple(a), tuple(b)), str(path))


def load_extracted(path) -> DeepNet:
  """The network their extract.py pickled (`[At, Bt]`), as a DeepNet (VictimFileError if malformed)."""
  with open(path, "rb") as f:
    ws, bs = pickle.load(f)
  return check_net(DeepNet(tuple(np.asarray(w) for w in ws), tuple(np.reshape(b, -1) for b in bs)), str(path))


_NUMBER = r"([-+0-9.eE]+|nan|inf)"


def parse_output(text: str) -> dict:
  """What their extract.py prints (with cme_compat.py's last line), as numbers.

  Returns a dict: finished (they printed "fin"), timed_out (their alarm handler's "Timed out."),
  their_max_logit_loss ("Maximum logit loss on the unit sphere": their own check on 100,000 N(0, I) inputs),
  their_query_count (the last "Query count N" extract.py prints, its global counter, which stays 0: issue #3 of
  their repository), their_saved_queries (the "Total query count" printed just before "Solving on",
  len(SAVED_QUERIES), when the last two layers are solved together), final_solve ("final two": brute force over 2^K
  sign patterns, or "final layer": least squares), our_queries and our_queries_at_save (cme_compat's own count; None
  if absent).
  """
  out: dict = dict(finished=bool(re.search(r"^fin$", text, re.M)), timed_out="Timed out." in text)
  m = re.findall(r"^Maximum logit loss on the unit sphere\s+" + _NUMBER, text, re.M)
  out["their_max_logit_loss"] = float(m[-1]) if m else None
  m = re.findall(r"^Query count\s+(\d+)$", text, re.M)
  out["their_query_count"] = int(m[-1]) if m else None
  m = re.findall(r"^Total query count\s+(\d+)\nSolving on", text, re.M)
  out["their_saved_queries"] = int(m[-1]) if m else None
  out["final_solve"] = (
    "final two"
    if re.search(r"^Solve final two$", text, re.M)
    else "final layer"
    if "Just solve final layer" in text
    else None
  )
  out["our_queries"] = out["our_queries_at_save"] = None
  for line in text.splitlines():
    if line.startswith("CME_REFERENCE "):
      counted = json.loads(line[len("CME_REFERENCE ") :])
      out["our_queries"], out["our_queries_at_save"] = counted["queries"], counted["at_save"]
  return out


def last_error(text: str) -> str | None:
  """The last line of the last Python traceback in `text` (the exception), or None."""
  if "Traceback (most recent call last)" not in text:
    return None
  tail = text[text.rindex("Traceback (most recent call last)") :].splitlines()
  for line in tail[1:]:
    if line and not line.startswith(" "):
      return line.strip()
  return tail[-1].strip()
