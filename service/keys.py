"""Key management: what `python -m launch.serve_keys` does to a key store, as plain functions returning the lines
to print."""
from __future__ import annotations

import json
from typing import Optional

from service import secret
from service.keystore import KeySettings, KeyState, KeyStore, LoadReport


def settings(output: str, top_k: Optional[int], defenses_json: str, budget: Optional[int]) -> KeySettings:
  """KeySettings from command-line values (defenses as a JSON object); raises ValueError with a one-line message."""
  try:
    defenses = json.loads(defenses_json)
  except (json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"--defenses is not valid JSON ({e})") from None
  if not isinstance(defenses, dict):
    raise ValueError("--defenses must be a JSON object")
  return KeySettings.from_dict({"budget": budget, "output": output, "top_k": top_k, "defenses": defenses})


def add(store: KeyStore, label: str, key_settings: KeySettings, key: Optional[str] = None) -> str:
  """Adds a key named `label` (a new random one unless `key` is given), or updates the settings of a known key
  keeping what it spent. The line printed shows a generated key once: it is stored only as a digest."""
  generated = key is None
  key = secret.generate_key() if generated else key
  added = store.put(key, key_settings, label)
  if generated:
    return f"key {label!r} added to {store.path}: {key}\n(shown once: the database keeps only its HMAC digest)"
  return f"key {label!r} {'added to' if added else 'updated in'} {store.path}"


def reset(store: KeyStore, key: str) -> str:
  """Sets what the key spent back to 0."""
  label = store.reset(key)
  return "unknown key" if label is None else f"key {label!r}: spending reset to 0"


def revoke(store: KeyStore, key: Optional[str] = None, label: Optional[str] = None) -> str:
  """Revokes a key given in clear or by its label."""
  done = store.revoke(key) if key is not None else store.revoke_label(label)
  if done is None:
    return "unknown key" if key is not None else f"no key labelled {label!r}"
  return f"key {done!r} revoked: it is refused from the next request on"


def report(summary: LoadReport) -> list[str]:
  """The lines that say what loading a keys file changed."""
  return [f"{what}: {', '.join(repr(l) for l in labels)}" for what, labels in (
      ("keys added", summary.added), ("keys updated", summary.updated),
      ("keys revoked (not in the keys file)", summary.revoked),
      ("keys in the file but revoked earlier (they stay revoked)", summary.still_revoked)) if labels]


def describe(state: KeyState) -> str:
  """One line of `--list`: label, spending, budget, output mode, defenses, and whether revoked."""
  s = state.settings
  return (f"{state.label:16s} used {state.used:>8d} of {'unlimited' if s.budget is None else s.budget:>9}  "
          f"output={s.output}{'' if s.top_k is None else f' top_k={s.top_k}'}  defenses={s.defenses.to_dict()}"
          f"{'  REVOKED' if state.revoked else ''}")

