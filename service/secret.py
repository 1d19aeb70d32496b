"""The server secret: 32 random bytes in a file beside the key database, readable by its owner only.

Everything secret the service derives comes from it with HMAC-SHA256, one label per use:
  * `key_digest`  what the database stores of an API key (a stolen database gives no way to test guesses of the
                  key without the secret, unlike a plain hash);
  * `noise_key`   the per-key key of the noise defense (`extraction.defenses.keyed_normal`): the noise of an input
                  is a function of (secret, API key, input bytes) and never leaves the server;
  * `check_value` stored in the database, to refuse a secret file that does not belong to it.
"""
from __future__ import annotations

import hmac
import os
import pathlib
import secrets
import stat

SECRET_BYTES = 32
MIN_KEY_LENGTH = 16


class SecretError(RuntimeError):
  """The secret file is missing, unreadable, readable by others or of the wrong size (one-line message)."""


def secret_path(db_path) -> pathlib.Path:
  """Where the secret of a key database lives: beside it, `<db>.secret`."""
  db_path = pathlib.Path(db_path)
  return db_path.with_name(db_path.name + ".secret")


def create_secret(path) -> bytes:
  """Writes a new random secret to `path` (mode 0600; refuses to overwrite) and returns it."""
  value = secrets.token_bytes(SECRET_BYTES)
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  except FileExistsError:
    raise SecretError(f"secret file {path} already exists; remove it only together with its database") from None
  with os.fdopen(fd, "wb") as f:
    f.write(value)
  return value


def read_secret(path) -> bytes:
  """The secret in `path`; raises SecretError if it is missing, readable by group or others, or not 32 bytes."""
  path = pathlib.Path(path)
  try:
    mode = path.stat().st_mode
    value = path.read_bytes()
  except OSError as e:
    raise SecretError(f"secret file {path}: {e.strerror}") from None
  if mode & (stat.S_IRWXG | stat.S_IRWXO):
    raise SecretError(f"secret file {path} is open to group or others (mode {stat.S_IMODE(mode):04o}); "
                      f"chmod 600 {path}")
  if len(value) != SECRET_BYTES:
    raise SecretError(f"secret file {path} holds {len(value)} bytes, not {SECRET_BYTES}")
  return value


def _mac(secret: bytes, label: bytes, message: bytes) -> bytes:
  return hmac.digest(secret, label + b"\x00" + message, "sha256")


def key_digest(secret: bytes, key: str) -> str:
  """HMAC-SHA256 of an API key under the secret, in hex: what the database stores."""
  return _mac(secret, b"api-key", key.encode()).hex()


def noise_key(secret: bytes, key: str) -> bytes:
  """The key of an API key's noise (`extraction.defenses.keyed_normal`; a local `Oracle(noise_key=...)`)."""
  return _mac(secret, b"noise", key.encode())


def check_value(secret: bytes) -> str:
  """A value stored in the database that tells whether a secret file belongs to it."""
  return _mac(secret, b"check", b"").hex()


def generate_key() -> str:
  """A new API key: 32 random bytes, URL-safe base64 (43 characters)."""
  return secrets.token_urlsafe(SECRET_BYTES)
