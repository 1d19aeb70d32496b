"""API keys of the prediction service and their query budgets, kept in SQLite (stdlib `sqlite3`).

One row per key: the operator's label, its settings (budget, output mode, top_k, defenses, see service/settings.py),
`used` (the inputs answered so far) and whether it was revoked. Keys are stored as HMAC-SHA256 digests under the
server secret (service/secret.py, `<db>.secret` beside the database, mode 0600), never in clear nor in part.

`reserve` charges a query before it is answered, atomically (`BEGIN IMMEDIATE` + `UPDATE ... WHERE used + n <=
budget`), so that concurrent requests -- from threads or from several server processes on the same file -- can never
be answered past a budget; `refund` gives the inputs back when the answer could not be computed.

Spending is never reset behind the operator's back: a database is created only on request (`create=True`, the
command lines' --init_db), opening checks the file's format, the secret and that it can be written (one-line
`StoreError` otherwise), and every transaction first checks that the file is still the one opened: a database
deleted or replaced while serving raises `StoreUnavailable` (the service answers 503, nothing is charged).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import sqlite3
import threading
from typing import Iterator, Mapping, Optional

from extraction.defenses import Defenses
from service import secret as secret_lib
from service.settings import KeySettings, check_key, check_label, check_label_apart
from service.settings import read_keys_file  # noqa: F401 (re-exported)

FORMAT = 2  # PRAGMA user_version of the databases this module writes (0: the SHA-256 format before it)
SCHEMA = """
CREATE TABLE keys (
  digest TEXT PRIMARY KEY,
  label TEXT NOT NULL UNIQUE,
  budget INTEGER,
  used INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
  output TEXT NOT NULL,
  top_k INTEGER,
  defenses TEXT NOT NULL DEFAULT '{}',
  revoked_at TEXT
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(RuntimeError):
  """The key database cannot be used (missing, corrupt, read-only, another format or secret); one-line message."""


class StoreUnavailable(StoreError):
  """The key database vanished or was replaced while serving: nothing is answered until it is back."""


class UnknownKey(LookupError):
  """No such API key, or a revoked one."""


class BudgetExhausted(RuntimeError):
  """The query would take the key past its budget; nothing of it is answered."""

  def __init__(self, n: int, used: int, budget: int):
    super().__init__(f"query of {n} inputs refused: {used} of the budget of {budget} already used "
                     f"({budget - used} left)")
    self.n, self.used, self.budget = n, used, budget


@dataclasses.dataclass(frozen=True)
class KeyState:
  """A key's label, settings and what it has spent."""
  label: str
  settings: KeySettings
  used: int
  revoked: bool = False

  @property
  def remaining(self) -> Optional[int]:
    return None if self.settings.budget is None else self.settings.budget - self.used


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What loading a keys file changed: labels added, updated, revoked (sync), and revoked ones left revoked."""
  added: tuple = ()
  updated: tuple = ()
  revoked: tuple = ()
  still_revoked: tuple = ()


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class KeyStore:
  """The SQLite file of keys (module docstring). One connection per store, shared by threads under a lock;
  transactions with the write lock taken up front keep `reserve` atomic across processes too.

  Args:
    path: the database file.
    create: make a new database and its secret (refused if either exists); otherwise both must exist.
    timeout: seconds to wait for another process's write lock.
  Raises:
    StoreError (one line) when the database or its secret cannot be used.
  """

  def __init__(self, path, create: bool = False, timeout: float = 30.0):
    self.path = pathlib.Path(path)
    self._lock = threading.Lock()
    secret_file = secret_lib.secret_path(self.path)
    try:
      if create:
        if self.path.exists():
          raise StoreError(f"key database {self.path} already exists; --init_db only creates a new one")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.secret = secret_lib.create_secret(secret_file)
      else:
        if not self.path.is_file():
          raise StoreError(f"no key database at {self.path}; create one with --init_db (every key of a new database "
                           f"starts at 0 spent)")
        self.secret = secret_lib.read_secret(secret_file)
      self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}", uri=True,
                                 timeout=timeout, isolation_level=None, check_same_thread=False)
      self._db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer; persistent in the file
      self._db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across crashes of the process
      if create:
        self._db.executescript(SCHEMA + f"PRAGMA user_version = {FORMAT};")
        self._db.execute("INSERT INTO meta VALUES ('secret_check', ?)", (secret_lib.check_value(self.secret),))
      self._verify()
    except secret_lib.SecretError as e:
      raise StoreError(str(e)) from None
    except sqlite3.DatabaseError as e:
      raise StoreError(f"key database {self.path}: {e} (is it a key database of this service, writable?)") from None
    st = os.stat(self.path)
    self._identity = (st.st_dev, st.st_ino)

  def _verify(self) -> None:
    """Checks the format, that the secret belongs to the database, and that it can be written."""
    version = self._db.execute("PRAGMA user_version").fetchone()[0]
    if version != FORMAT:
      raise StoreError(f"key database {self.path} is in format {version}, not {FORMAT} (made by an older version "
                       f"of the service?); start a new one with --init_db and load the keys file into it")
    row = self._db.execute("SELECT value FROM meta WHERE name = 'secret_check'").fetchone()
    if row is None or row[0] != secret_lib.check_value(self.secret):
      raise StoreError(f"secret file {secret_lib.secret_path(self.path)} does not belong to key database "
                       f"{self.path}")
    self._db.execute("BEGIN IMMEDIATE")
    try:
      self._db.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (_now(),))
    finally:
      self._db.execute("ROLLBACK")

  def _check_file(self) -> None:
    """Raises StoreUnavailable when the file opened is no longer at `path` (deleted, moved or replaced)."""
    try:
      st = os.stat(self.path)
    except OSError:
      raise StoreUnavailable(f"key database {self.path} is gone; nothing is answered until it is restored") from None
    if (st.st_dev, st.st_ino) != self._identity:
      raise StoreUnavailable(f"key database {self.path} was replaced while serving; restart the server")

  @contextlib.contextmanager
  def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
    """The connection inside BEGIN IMMEDIATE (a plain BEGIN for reads), committed on success, rolled back on
    any exception."""
    with self._lock:
      self._check_file()
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

  # --------------------------------------------------------------------------------------------------- keys
  def digest(self, key: str) -> str:
    """What the database stores of `key`: HMAC-SHA256 under the server secret."""
    return secret_lib.key_digest(self.secret, key)

  def noise_key(self, key: str) -> bytes:
    """The key of `key`'s noise (service/secret.py); give it to a local Oracle to answer as this key."""
    return secret_lib.noise_key(self.secret, key)

  def put(self, key: str, settings: KeySettings, label: str) -> bool:
    """Adds a key, or updates the label and settings of a known key keeping what it spent; True if added.

    Raises ValueError (one line) for a key under 16 characters, a label of another key or holding a piece of this
    one, or a revoked key (revoked keys stay revoked: issue a new one).
    """
    check_key(key)
    check_label(label)
    check_label_apart(label, key)
    settings.check()
    d = self.digest(key)
    with self._transaction() as db:
      row = db.execute("SELECT label, revoked_at FROM keys WHERE digest = ?", (d,)).fetchone()
      if row is not None and row[1] is not None:
        raise ValueError(f"key {row[0]!r} was revoked on {row[1]}; revoked keys stay revoked: issue a new key")
      other = db.execute("SELECT 1 FROM keys WHERE label = ? AND digest != ?", (label, d)).fetchone()
      if other is not None:
        raise ValueError(f"label {label!r} already names another key")
      db.execute("INSERT INTO keys (digest, label, budget, output, top_k, defenses) VALUES (?, ?, ?, ?, ?, ?) "
                 "ON CONFLICT(digest) DO UPDATE SET label = excluded.label, budget = excluded.budget, "
                 "output = excluded.output, top_k = excluded.top_k, defenses = excluded.defenses",
                 (d, label, settings.budget, settings.output, settings.top_k, json.dumps(settings.defenses.to_dict())))
      return row is None

  def load(self, keys: Mapping[str, tuple[str, KeySettings]], sync: bool = False) -> LoadReport:
    """`put` for every key of a parsed keys file ({key: (label, settings)}, `read_keys_file`).

    Keys revoked earlier stay revoked (listed in the report). With sync, every key of the database that is not in
    `keys` is revoked: the file becomes the list of the keys that work.
    """
    added, updated, still = [], [], []
    wanted = {self.digest(k) for k in keys}
    for key, (label, settings) in keys.items():
      state = self._state(self.digest(key))
      if state is not None and state.revoked:
        still.append(state.label)
        continue
      (added if self.put(key, settings, label) else updated).append(label)
    revoked = []
    if sync:
      with self._transaction() as db:
        for d, label in db.execute("SELECT digest, label FROM keys WHERE revoked_at IS NULL").fetchall():
          if d not in wanted:
            db.execute("UPDATE keys SET revoked_at = ? WHERE digest = ?", (_now(), d))
            revoked.append(label)
    return LoadReport(tuple(added), tuple(updated), tuple(revoked), tuple(still))

  def revoke(self, key: str) -> Optional[str]:
    """Revokes the key for good (it gets 401 from the next request on); its label, or None if unknown."""
    return self._revoke("digest", self.digest(key))

  def revoke_label(self, label: str) -> Optional[str]:
    """Revokes the key the operator named `label`; the label, or None if no key has it."""
    return self._revoke("label", label)

  def _revoke(self, column: str, value: str) -> Optional[str]:
    with self._transaction() as db:
      row = db.execute(f"SELECT label FROM keys WHERE {column} = ?", (value,)).fetchone()
      if row is not None:
        db.execute(f"UPDATE keys SET revoked_at = COALESCE(revoked_at, ?) WHERE {column} = ?", (_now(), value))
      return None if row is None else row[0]

  # ---------------------------------------------------------------------------------------------- spending
  def get(self, key: str) -> KeyState:
    """The key's settings and spending; raises UnknownKey (also for a revoked key)."""
    state = self._state(self.digest(key))
    if state is None or state.revoked:
      raise UnknownKey("unknown or revoked API key")
    return state

  def _state(self, d: str) -> Optional[KeyState]:
    with self._transaction(write=False) as db:
      return self._row(db, d)

  @staticmethod
  def _row(db: sqlite3.Connection, d: str) -> Optional[KeyState]:
    row = db.execute("SELECT label, budget, used, output, top_k, defenses, revoked_at FROM keys WHERE digest = ?",
                     (d,)).fetchone()
    if row is None:
      return None
    shown, budget, used, output, top_k, defenses, revoked_at = row
    return KeyState(shown, KeySettings(budget, output, top_k, Defenses(**json.loads(defenses))), used,
                    revoked_at is not None)

  def reserve(self, key: str, n: int) -> tuple[KeyState, int]:
    """Charges n inputs to the key before they are answered.

    Returns:
      (the key's state after the charge, offset: how many inputs the key had used before this query).
    Raises:
      UnknownKey (also revoked); BudgetExhausted when used + n > budget (nothing is charged); StoreUnavailable.
    """
    d = self.digest(key)
    with self._transaction() as db:
      cur = db.execute("UPDATE keys SET used = used + ? WHERE digest = ? AND revoked_at IS NULL "
                       "AND (budget IS NULL OR used + ? <= budget)", (n, d, n))
      state = self._row(db, d)
      if state is None or state.revoked:
        raise UnknownKey("unknown or revoked API key")
      if cur.rowcount != 1:
        raise BudgetExhausted(n, state.used, state.settings.budget)
      return state, state.used - n

  def refund(self, key: str, n: int) -> None:
    """Gives back n inputs charged by `reserve` for a query that was not answered."""
    with self._transaction() as db:
      db.execute("UPDATE keys SET used = MAX(used - ?, 0) WHERE digest = ?", (n, self.digest(key)))

  def reset(self, key: str) -> Optional[str]:
    """Sets what the key spent back to 0; its label, or None if the key is unknown."""
    d = self.digest(key)
    with self._transaction() as db:
      row = db.execute("SELECT label FROM keys WHERE digest = ?", (d,)).fetchone()
      db.execute("UPDATE keys SET used = 0 WHERE digest = ?", (d,))
      return None if row is None else row[0]

  def list(self) -> list[KeyState]:
    """Every key, revoked ones included (`KeyState.revoked`), by label."""
    with self._transaction(write=False) as db:
      digests = [r[0] for r in db.execute("SELECT digest FROM keys ORDER BY label")]
      return [self._row(db, d) for d in digests]
