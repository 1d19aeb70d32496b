"""The prediction service: a victim behind an HTTP API with API keys, per-key budgets, output modes and defenses.

Modules (one concept each):
  model.py     `ServedModel` (the victim behind the API) and the loaders of the victims `launch.serve` serves;
  secret.py    the server secret beside the database, and what is derived from it (key digests, noise keys);
  settings.py  `KeySettings` (checked with types and bounds) and the keys file;
  keystore.py  the SQLite file of API keys, what they spent, revocation (`KeyStore`);
  keys.py      key management (what `python -m launch.serve_keys` does);
  inputs.py    request bodies to input batches: parsing and validation;
  sharing.py   fair sharing between keys: admission limits, round-robin use of the victim;
  replay.py    answers kept per key for retries (X-Request-Id);
  app.py       the FastAPI app (`create_app`): endpoints and the path of a request;
  server.py    serving over TCP with guarded connections (`serve`, `BackgroundServer` for tests and notebooks).

Floors: this package imports `extraction/` (and `functional_equivalence/` for its victims), never `launch/`;
`launch/serve.py` and `launch/serve_keys.py` are the command lines over it. See docs/service.md.
"""
import importlib

_EXPORTS = {"ApiError": "service.inputs", "Limits": "service.app", "create_app": "service.app",
            "KeySettings": "service.settings", "KeyStore": "service.keystore", "ServedModel": "service.model",
            "model_from_npz": "service.model", "model_from_victim_dir": "service.model",
            "resolve_victim_dir": "service.model", "warm_up": "service.model", "BackgroundServer": "service.server",
            "ConnectionLimits": "service.server", "listen": "service.server"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  """The package's main names, imported on first use (key management does not load the web framework)."""
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'service' has no attribute {name!r}")
