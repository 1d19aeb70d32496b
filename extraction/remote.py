"""`RemoteOracle`: the victim behind an HTTP prediction API (`launch.serve`), with the local `Oracle`'s interface.

  oracle = RemoteOracle("http://127.0.0.1:8000", api_key="...")
  y = oracle(x)                       # (N, C) in the key's output mode, after the key's defenses
  oracle.output, oracle.top_k                     # the key's output mode, as the server reports it
  oracle.used, oracle.remaining, oracle.asked     # inputs answered through this client; the key's remaining

Inputs travel as `.npy` bodies by default (float64 exactly, as functionally-equivalent extraction needs; JSON with
transport='json' is exact too). Large queries are split into requests of `batch_size` inputs. A request that
times out or cannot connect, or that the server asks to retry later (503, or 429 with Retry-After: the service or
the key is busy), is retried `retries` times, waiting the Retry-After or an exponential backoff, under the same
X-Request-Id, so that the server answers a retry without charging it twice; any other 5xx is not retried (the
same request would fail again) and raises `OracleUnavailable`. A 429 without Retry-After (the key's budget) raises
`extraction.oracle.BudgetExceeded`, a 401 `KeyRefused`, another 4xx `QueryRefused` (with the server's message).
The service does not disclose a key's defenses: `defenses` is None unless the server reports them.
A query that needs several requests is refused whole, before any request, when the key has fewer inputs left
than it asks (another client of the same key can still take them meanwhile).
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from typing import Optional

import httpx
import numpy as np

from extraction.oracle import BudgetExceeded

NPY = "application/x-npy"


class RemoteError(RuntimeError):
  """Base of the errors of a remote oracle (a launcher reports them in one line)."""


class OracleUnavailable(RemoteError):
  """The server did not answer (connection errors, timeouts, busy) after every retry, or failed (other 5xx)."""


class KeyRefused(RemoteError, PermissionError):
  """401/403: a missing or unknown API key."""


class QueryRefused(RemoteError, ValueError):
  """Another 4xx: the server refused the request (shape, dtype, limits...); its message says why."""


def _detail(response: httpx.Response) -> str:
  try:
    return str(response.json()["detail"])
  except (ValueError, KeyError, TypeError):
    return response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> Optional[float]:
  """Seconds of a Retry-After header given in seconds (None: absent or a date)."""
  try:
    return max(0.0, float(response.headers["retry-after"]))
  except (KeyError, ValueError):
    return None


class RemoteOracle:
  """An oracle whose backend is a prediction API (see module docstring).

  Args:
    url: the server, e.g. http://127.0.0.1:8000.
    api_key: the key; its output mode, top_k, budget and defenses are set on the server.
    batch_size: inputs per request (capped at the server's max_batch).
    timeout: seconds per request.
    retries: extra attempts after a timeout, a connection error, a 503 or a 429 with Retry-After.
    backoff: seconds before the first retry, doubled for each next one (a Retry-After, capped at max_wait, wins).
    max_wait: longest wait before a retry, in seconds.
    budget: optional client-side cap on the inputs this client asks (like `Oracle.budget`); None: only the key's.
    record_inputs: keep every answered input (`asked`).
    transport: 'npy' (default) or 'json'.
    client: an httpx.Client to use instead of a new one (tests: a MockTransport).
  """

  def __init__(self, url: str, api_key: str, batch_size: int = 1024, timeout: float = 30.0, retries: int = 3,
               backoff: float = 0.2, budget: Optional[int] = None, record_inputs: bool = True,
               transport: str = "npy", client: Optional[httpx.Client] = None, max_wait: float = 30.0):
    if transport not in ("npy", "json"):
      raise ValueError(f"transport must be 'npy' or 'json', got {transport!r}")
    if not api_key:
      raise ValueError("RemoteOracle needs an API key")
    if budget is not None and budget < 0:
      raise ValueError(f"budget must be >= 0 or None, got {budget}")
    self.url, self.retries, self.backoff, self.transport = url.rstrip("/"), retries, backoff, transport
    self.max_wait = max_wait
    self.budget, self.record_inputs, self.used = budget, record_inputs, 0
    self._asked: list = []
    self._client = client or httpx.Client(timeout=timeout)
    self._client.headers["X-API-Key"] = api_key
    self.key_id = hashlib.sha256(b"remote-oracle-key\x00" + api_key.encode()).hexdigest()[:16]  # names runs
    self.info = self._get("/health")
    key = self._get("/v1/budget")
    self.output, self.top_k, self.defenses = key["output"], key["top_k"], key.get("defenses")
    self.num_classes = int(self.info["num_classes"])
    self.input_shape = tuple(self.info["input_shape"])
    self.batch_size = max(1, min(batch_size, int(self.info["max_batch"])))

  # ------------------------------------------------------------------------------------------------ HTTP
  def _send(self, method: str, path: str, request_id: Optional[str] = None, **kwargs) -> httpx.Response:
    """One request with retries on timeouts, connection errors and 5xx; returns the first other response."""
    headers = dict(kwargs.pop("headers", {}))
    if request_id is not None:
      headers["X-Request-Id"] = request_id
    problem, wait = "", None
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(min(self.max_wait, self.backoff * 2 ** (attempt - 1) if wait is None else wait))
      try:
        response = self._client.request(method, self.url + path, headers=headers, **kwargs)
      except httpx.TransportError as e:  # timeouts, refused or dropped connections
        problem, wait = f"{type(e).__name__}: {e}", None
        continue
      status, wait = response.status_code, _retry_after(response)
      if status == 503 or (status == 429 and wait is not None):  # busy: asked to come back
        problem = f"HTTP {status}: {_detail(response)}"
        continue
      if status >= 500:
        raise OracleUnavailable(f"{self.url}{path}: HTTP {status} (not retried): {_detail(response)}")
      return response
    raise OracleUnavailable(f"{self.url}{path}: no answer after {self.retries + 1} attempts ({problem})")

  def _check(self, response: httpx.Response) -> httpx.Response:
    status = response.status_code
    if status == 429:
      raise BudgetExceeded(f"the server's budget of this key: {_detail(response)}")
    if status in (401, 403):
      raise KeyRefused(f"{self.url}: {_detail(response)}")
    if status >= 400:
      raise QueryRefused(f"{self.url} refused the query (HTTP {status}): {_detail(response)}")
    return response

  def _get(self, path: str) -> dict:
    return self._check(self._send("GET", path)).json()

  def _predict(self, x: np.ndarray) -> np.ndarray:
    """Answers of one request of at most batch_size inputs."""
    if self.transport == "npy":
      buf = io.BytesIO()
      np.save(buf, x, allow_pickle=False)
      kwargs = dict(content=buf.getvalue(), headers={"Content-Type": NPY, "Accept": NPY})
    else:
      kwargs = dict(content=json.dumps({"inputs": x.tolist()}),
                    headers={"Content-Type": "application/json", "Accept": "application/json"})
    response = self._check(self._send("POST", "/v1/predict", request_id=uuid.uuid4().hex, **kwargs))
    if self.transport == "npy":
      answers = np.load(io.BytesIO(response.content), allow_pickle=False)
    else:
      body = response.json()
      answers = np.asarray(body["outputs"], dtype=body["dtype"])
    if answers.shape != (len(x), self.num_classes):
      raise OracleUnavailable(f"{self.url}: answers of shape {answers.shape} for {len(x)} inputs")
    return answers

  # ---------------------------------------------------------------------------------------- Oracle interface
  @property
  def key_state(self) -> dict:
    """The key's state on the server: budget, used, remaining, output, top_k."""
    return self._get("/v1/budget")

  @property
  def remaining(self) -> Optional[int]:
    """Inputs this client may still ask: the key's remaining on the server, capped by `budget` (None: no limit)."""
    left = [v for v in (self.key_state["remaining"], None if self.budget is None else self.budget - self.used)
            if v is not None]
    return min(left) if left else None

  @property
  def asked(self) -> np.ndarray:
    """Every input answered through this client, in order (empty if none or recording is off)."""
    return np.concatenate(self._asked, axis=0) if self._asked else np.zeros((0,))

  def __call__(self, x) -> np.ndarray:
    """Answers (N, C) for inputs x (N, *input_shape) in the key's output mode; raises BudgetExceeded."""
    x = np.asarray(x)
    n = len(x)
    if self.budget is not None and self.used + n > self.budget:
      raise BudgetExceeded(f"query of {n} inputs refused: {self.used} of the budget of {self.budget} already used "
                           f"({self.budget - self.used} left)")
    if n == 0:
      return np.zeros((0, self.num_classes))
    if n > self.batch_size:
      left = self.key_state["remaining"]
      if left is not None and left < n:
        raise BudgetExceeded(f"query of {n} inputs refused: the key has {left} left on the server")
    outs = []
    for i in range(0, n, self.batch_size):
      chunk = x[i:i + self.batch_size]
      try:
        answers = self._predict(chunk)
      except BudgetExceeded as e:
        if i == 0:
          raise
        raise BudgetExceeded(f"{e} (the first {i} inputs of this query of {n} were answered and charged)") from e
      self.used += len(chunk)
      if self.record_inputs:
        self._asked.append(np.array(chunk, copy=True))
      outs.append(answers)
    return np.concatenate(outs, axis=0)

  def logits(self, x) -> np.ndarray:
    """Logits for x, when the key serves logits (the server decides what a key may see)."""
    if self.output != "logits":
      raise ValueError(f"this key is served {self.output!r}, not logits; ask the server's operator for a logits key")
    return self(x)

  def close(self) -> None:
    self._client.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
