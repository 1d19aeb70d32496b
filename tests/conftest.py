"""Shared test setup: CPU, a persistent compilation cache shared with launcher subprocesses, small fixtures."""

import os
import pathlib
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One BLAS thread per process: the suite runs on 2 pytest-xdist workers (README's command), and the attacks' numpy
# work is small matrices, where a second thread per worker only oversubscribes the cores (set before numpy loads:
# this conftest is read at start-up, and the workers and launcher subprocesses inherit it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/jax_cache_model_extraction_tests")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


def run_launcher(*args, timeout=300):
  """Runs `python -m launch.run ARGS` from the repo root; returns the CompletedProcess (text)."""
  return subprocess.run(
    [sys.executable, "-m", "launch.run", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
  )


@pytest.fixture
def launcher():
  """`launcher(*args, timeout=300)` runs the launcher in a subprocess (see run_launcher)."""
  return run_launcher


@pytest.fixture(scope="session")
def digits():
  from extraction import datasets

  return datasets.load_digits()


def make_key_store(path, keys: dict):
  """A new key database at `path` (with its secret) holding `keys` ({key: settings as in a keys file, without
  label}), labelled key0, key1, ... in order."""
  from service import keystore

  store = keystore.KeyStore(path, create=True)
  store.load({k: (f"key{i}", keystore.KeySettings.from_dict(v)) for i, (k, v) in enumerate(keys.items())})
  return store


def npy_bytes(x) -> bytes:
  """x as the body of a .npy request."""
  import io

  import numpy as np

  buf = io.BytesIO()
  np.save(buf, np.asarray(x))
  return buf.getvalue()


def open_request(url: str, key: str, length: int, sent: bytes = b"", content_type: str = "application/x-npy"):
  """A raw socket to `url` that sent the headers of POST /v1/predict with Content-Length `length` and the first
  bytes `sent` of its body, and holds the rest back (a slow or stalled client)."""
  import socket

  host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
  sock = socket.create_connection((host, int(port)), timeout=10)
  sock.sendall(
    f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Type: {content_type}\r\n"
    f"Content-Length: {length}\r\n\r\n".encode()
    + sent
  )
  return sock


def response_status(sock, timeout: float):
  """The HTTP status the server sent on a raw socket within `timeout` s; None if it closed or sent nothing."""
  sock.settimeout(timeout)
  try:
    head = sock.recv(65536)
  except (TimeoutError, ConnectionError):
    return None
  return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
