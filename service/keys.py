"""Key management: what `python -m launch.serve_keys` does to a key store, as plain functions."""
from __future__ import annotations

import json
from typing import Optional

from extraction.defenses import Defenses
from service.keystore import KeySettings, KeyState, KeyStore, label


def settings(output: str, top_k: Optional[int], defenses_json: str, budget: Optional[int]) -> KeySettings:
  """KeySettings from command-line values (defenses as a JSON object); raises ValueError with a one-line message."""
  try:
    defenses = json.loads(defenses_json)
  except json.JSONDecodeError as e:
    raise ValueError(f"--defenses is not valid JSON ({e})") from None
  if not isinstance(defenses, dict):
    raise ValueError("--defenses must be a JSON object")
  out = KeySettings(budget, output, top_k, Defenses.from_dict(defenses))
  out.check()
  return out


def add(store: KeyStore, key: str, key_settings: KeySettings) -> str:
  """Adds the key (or updates its settings, keeping what it spent); returns the line to print."""
  store.put(key, key_settings)
  return f"key {label(key)} set in {store.path}"


def reset(store: KeyStore, key: str) -> str:
  """Sets what the key spent back to 0; returns the line to print."""
  return f"key {label(key)}: " + ("spending reset to 0" if store.reset(key) else "unknown key")


def describe(state: KeyState) -> str:
  """One line of `--list`: label, spending, budget, output mode and defenses."""
  s = state.settings
  return (f"{state.label:12s} used {state.used:>8d} of {'unlimited' if s.budget is None else s.budget:>9}  "
          f"output={s.output}{'' if s.top_k is None else f' top_k={s.top_k}'}  defenses={s.defenses.to_dict()}")
