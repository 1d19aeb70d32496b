"""API keys of the prediction service and their query budgets, kept in SQLite (stdlib `sqlite3`).

One row per key: its settings (budget, output mode, top_k, defenses) and `used`, the inputs answered so far. Keys
are stored as SHA-256 digests, never in clear. `reserve` charges a query before it is answered, atomically
(`BEGIN IMMEDIATE` + `UPDATE ... WHERE used + n <= budget`), so that concurrent requests -- from threads or from
several server processes on the same file -- can never be answered past a budget; `refund` gives the inputs back
when the answer could not be computed. `used` survives restarts: loading a keys file again updates the settings of
known keys and keeps what they spent.

Keys file (JSON): {"KEY": {"budget": 1000, "output": "probabilities", "top_k": null, "defenses": {...}}, ...};
`budget` null means unlimited, `output` defaults to 'probabilities', `defenses` holds `extraction.defenses.Defenses`
fields.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import sqlite3
import threading
from typing import Iterator, Mapping, Optional

from extraction.defenses import Defenses
from extraction.oracle import validate_output_mode

SCHEMA = """CREATE TABLE IF NOT EXISTS keys (
  digest TEXT PRIMARY KEY,
  label TEXT NOT NULL,
  budget INTEGER,
  used INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
  output TEXT NOT NULL,
  top_k INTEGER,
  defenses TEXT NOT NULL DEFAULT '{}'
)"""


class UnknownKey(LookupError):
  """No such API key."""


class BudgetExhausted(RuntimeError):
  """The query would take the key past its budget; nothing of it is answered."""

  def __init__(self, n: int, used: int, budget: int):
    super().__init__(f"query of {n} inputs refused: {used} of the budget of {budget} already used "
                     f"({budget - used} left)")
    self.n, self.used, self.budget = n, used, budget


@dataclasses.dataclass(frozen=True)
class KeySettings:
  """What one key may ask and how it is answered."""
  budget: Optional[int] = None
  output: str = "probabilities"
  top_k: Optional[int] = None
  defenses: Defenses = Defenses()

  def check(self, num_classes: Optional[int] = None) -> None:
    """Raises ValueError (one line) for an invalid combination."""
    if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                    or self.budget < 0):
      raise ValueError(f"budget must be an integer >= 0 or null, got {self.budget!r}")
    validate_output_mode(self.output, self.top_k, num_classes)
    self.defenses.check(self.output)

  def to_dict(self) -> dict:
    return {"budget": self.budget, "output": self.output, "top_k": self.top_k, "defenses": self.defenses.to_dict()}

  @classmethod
  def from_dict(cls, d: Mapping) -> "KeySettings":
    if not isinstance(d, Mapping):
      raise ValueError(f"key settings must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {"budget", "output", "top_k", "defenses"})
    if unknown:
      raise ValueError(f"unknown key setting(s) {', '.join(unknown)}; known: budget, output, top_k, defenses")
    out = cls(budget=d.get("budget"), output=d.get("output", "probabilities"), top_k=d.get("top_k"),
              defenses=Defenses.from_dict(d.get("defenses")))
    out.check()
    return out


@dataclasses.dataclass(frozen=True)
class KeyState:
  """A key's settings and what it has spent."""
  label: str
  settings: KeySettings
  used: int

  @property
  def remaining(self) -> Optional[int]:
    return None if self.settings.budget is None else self.settings.budget - self.used


def digest(key: str) -> str:
  """SHA-256 hex digest of an API key (what the database stores)."""
  return hashlib.sha256(key.encode()).hexdigest()


def label(key: str) -> str:
  """How a key is shown (listings, /v1/budget): its first and last 4 characters, or 2 of a short key."""
  return f"{key[:4]}...{key[-4:]}" if len(key) >= 12 else f"{key[:2]}..."


def read_keys_file(path) -> dict[str, KeySettings]:
  """Parses and checks a keys file (module docstring); raises ValueError with a one-line message."""
  path = pathlib.Path(path)
  try:
    raw = json.loads(path.read_text())
  except OSError as e:
    raise ValueError(f"keys file {str(path)!r}: {e.strerror}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"keys file {path}: not valid JSON ({e})") from None
  if not isinstance(raw, dict) or not raw:
    raise ValueError(f"keys file {path}: expected a non-empty JSON object mapping key -> settings")
  out = {}
  for key, settings in raw.items():
    if not key or not key.isprintable() or key != key.strip():
      raise ValueError(f"keys file {path}: API keys must be non-empty printable strings without outer spaces")
    try:
      out[key] = KeySettings.from_dict(settings)
    except (ValueError, TypeError) as e:
      raise ValueError(f"keys file {path}: key {label(key)}: {e}") from None
  return out


class KeyStore:
  """The SQLite file of keys. One connection per store, shared by threads under a lock; transactions with the
  write lock taken up front keep `reserve` atomic across processes too."""

  def __init__(self, path, timeout: float = 30.0):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._lock = threading.Lock()
    self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
    self._db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer; persistent in the file
    self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across crashes of the process
    with self._transaction() as db:
      db.execute(SCHEMA)

  @contextlib.contextmanager
  def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
    """The connection inside BEGIN IMMEDIATE (a plain BEGIN for reads), committed on success, rolled back on
    any exception."""
    with self._lock:
      self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
      try:
        yield self._db
      except BaseException:
        self._db.execute("ROLLBACK")
        raise
      self._db.execute("COMMIT")

  def close(self) -> None:
    with self._lock:
      self._db.close()

  def put(self, key: str, settings: KeySettings) -> None:
    """Adds a key, or updates the settings of a known key keeping what it spent."""
    settings.check()
    with self._transaction() as db:
      db.execute("INSERT INTO keys (digest, label, budget, output, top_k, defenses) VALUES (?, ?, ?, ?, ?, ?) "
                 "ON CONFLICT(digest) DO UPDATE SET budget = excluded.budget, output = excluded.output, "
                 "top_k = excluded.top_k, defenses = excluded.defenses",
                 (digest(key), label(key), settings.budget, settings.output, settings.top_k,
                  json.dumps(settings.defenses.to_dict())))

  def load(self, keys: Mapping[str, KeySettings]) -> None:
    """`put` for every key of a parsed keys file."""
    for key, settings in keys.items():
      self.put(key, settings)

  def get(self, key: str) -> KeyState:
    """The key's settings and spending; raises UnknownKey."""
    with self._transaction(write=False) as db:
      return self._get(db, digest(key))

  def _get(self, db: sqlite3.Connection, d: str) -> KeyState:
    row = db.execute("SELECT label, budget, used, output, top_k, defenses FROM keys WHERE digest = ?", (d,)).fetchone()
    if row is None:
      raise UnknownKey("unknown API key")
    shown, budget, used, output, top_k, defenses = row
    return KeyState(shown, KeySettings(budget, output, top_k, Defenses(**json.loads(defenses))), used)

  def reserve(self, key: str, n: int) -> tuple[KeyState, int]:
    """Charges n inputs to the key before they are answered.

    Returns:
      (the key's state after the charge, offset: how many inputs the key had used before this query).
    Raises:
      UnknownKey; BudgetExhausted when used + n > budget (nothing is charged).
    """
    d = digest(key)
    with self._transaction() as db:
      cur = db.execute("UPDATE keys SET used = used + ? WHERE digest = ? AND (budget IS NULL OR used + ? <= budget)",
                       (n, d, n))
      state = self._get(db, d)
      if cur.rowcount != 1:
        raise BudgetExhausted(n, state.used, state.settings.budget)
      return state, state.used - n

  def refund(self, key: str, n: int) -> None:
    """Gives back n inputs charged by `reserve` for a query that was not answered."""
    with self._transaction() as db:
      db.execute("UPDATE keys SET used = MAX(used - ?, 0) WHERE digest = ?", (n, digest(key)))

  def reset(self, key: str) -> bool:
    """Sets what the key spent back to 0; False if the key is unknown."""
    with self._transaction() as db:
      return db.execute("UPDATE keys SET used = 0 WHERE digest = ?", (digest(key),)).rowcount == 1

  def list(self) -> list[KeyState]:
    """Every key (shown by `label`)."""
    with self._transaction(write=False) as db:
      digests = [r[0] for r in db.execute("SELECT digest FROM keys ORDER BY label")]
      return [self._get(db, d) for d in digests]
