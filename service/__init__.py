"""The prediction service: a victim behind an HTTP API with API keys, per-key budgets, output modes and defenses.

Modules (one concept each):
  model.py     `ServedModel` (the victim behind the API) and the loaders of the victims `launch.serve` serves;
  keystore.py  the SQLite file of API keys and what they spent (`KeyStore`, `KeySettings`);
  keys.py      key management (what `python -m launch.serve_keys` does);
  app.py       the FastAPI app (`create_app`): endpoints, request parsing and validation, answers;
  server.py    serving an app over TCP (`listen`, `serve`, `BackgroundServer` for tests and notebooks).

Floors: this package imports `extraction/` (and `functional_equivalence/` for its victims), never `launch/`;
`launch/serve.py` and `launch/serve_keys.py` are the command lines over it. See docs/service.md.
"""
from service.app import ApiError, Limits, create_app
from service.keystore import KeySettings, KeyStore
from service.model import ServedModel, model_from_npz, model_from_victim_dir, resolve_victim_dir, warm_up
from service.server import BackgroundServer, listen

__all__ = ["ApiError", "BackgroundServer", "KeySettings", "KeyStore", "Limits", "ServedModel", "create_app",
           "listen", "model_from_npz", "model_from_victim_dir", "resolve_victim_dir", "warm_up"]
