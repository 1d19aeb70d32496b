"""The victim as a prediction service: a FastAPI app (`create_app`) over a `ServedModel` and a `KeyStore`.

Endpoints (the API key goes in the `X-API-Key` header, or `Authorization: Bearer KEY`):
  GET  /health        no key; the model's input shape and dtype, classes and the request limits.
  GET  /v1/budget     the key's budget, used, remaining, output mode, top_k and defenses.
  POST /v1/predict    a batch of inputs (N, *input_shape) as a `.npy` body (Content-Type: application/x-npy) or
                      as JSON ({"inputs": [[...], ...]} or a bare array); answers (N, C) in the key's output mode,
                      after its defenses, as `.npy` (Accept: application/x-npy or ?format=npy) or as JSON
                      ({"outputs": [[...]], ...}; floats written exactly, float64 round-trips). Headers
                      X-Output-Mode, X-Queries-Used and X-Queries-Remaining tell the key's state after the query.
                      A header X-Request-Id makes a retry of the same request (same inputs) answered again
                      without being charged again (for the last 64 requests of this process).

Errors are JSON {"detail": message}: 400 malformed body, 401 missing or unknown key, 406 unknown format, 409 a
request id reused with other inputs, 413 body or batch over the limits, 415 unsupported Content-Type, 422 inputs of
the wrong shape or dtype or with NaN/inf, 429 the query would pass the key's budget (nothing of it is answered).
A query is charged before it is answered (atomically, see service/keystore.py) and refunded if it fails.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import io
import json
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from extraction.defenses import apply_defenses, noise_rng
from extraction.oracle import transform_logits
from service.keystore import BudgetExhausted, KeyStore, UnknownKey
from service.model import ServedModel

NPY = "application/x-npy"
NPY_TYPES = (NPY, "application/octet-stream")


@dataclasses.dataclass(frozen=True)
class Limits:
  """Largest batch (inputs per request) and body (bytes) the service accepts."""
  max_batch: int = 4096
  max_bytes: int = 32 << 20


class ApiError(Exception):
  """An error answered as JSON {"detail": message} with an HTTP status."""

  def __init__(self, status: int, message: str, headers: Optional[dict] = None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers


def shape_text(shape) -> str:
  """'(N, 8, 8, 1)' for a per-input shape (8, 8, 1)."""
  return "(N, " + ", ".join(str(s) for s in shape) + ")"


def validate_inputs(x: np.ndarray, model: ServedModel, limits: Limits) -> np.ndarray:
  """Checks a parsed batch against the model and the limits; returns it in the model's input dtype.

  Raises:
    ApiError 422 (wrong dtype or shape, empty batch, values out of range, NaN/inf) or 413 (batch too large).
  """
  want = np.dtype(model.input_dtype)
  if x.dtype.kind not in "uif" or x.dtype.itemsize > 8:
    raise ApiError(422, f"inputs have dtype {x.dtype}; expected {want} numbers")
  if x.ndim != len(model.input_shape) + 1 or tuple(x.shape[1:]) != tuple(model.input_shape):
    raise ApiError(422, f"inputs have shape {tuple(x.shape)}; expected {shape_text(model.input_shape)}")
  if len(x) == 0:
    raise ApiError(422, "empty batch: send at least one input")
  if len(x) > limits.max_batch:
    raise ApiError(413, f"batch of {len(x)} inputs is over the limit of {limits.max_batch} per request")
  if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
    raise ApiError(422, f"inputs hold {int(np.sum(~np.isfinite(x)))} NaN/inf values")
  if want.kind == "u":
    if x.dtype.kind == "f":
      raise ApiError(422, f"inputs have dtype {x.dtype}; expected integer pixel values ({want})")
    info = np.iinfo(want)
    if x.size and (x.min() < info.min or x.max() > info.max):
      raise ApiError(422, f"inputs hold values outside {info.min}..{info.max} ({want} pixels)")
  return x.astype(want, copy=False)


def parse_body(body: bytes, content_type: str) -> np.ndarray:
  """The batch in a request body: a .npy array (no pickles) or JSON. Raises ApiError 400 / 415."""
  kind = content_type.split(";")[0].strip().lower()
  if not kind:
    kind = NPY if body.startswith(b"\x93NUMPY") else "application/json"
  if kind in NPY_TYPES:
    try:
      return np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as e:  # bad magic, truncated data, object arrays...
      raise ApiError(400, f"body is not a readable .npy array ({type(e).__name__}: {e})") from None
  if kind != "application/json":
    raise ApiError(415, f"unsupported Content-Type {kind!r}; send {NPY} or application/json")
  try:
    data = json.loads(body)
  except (ValueError, UnicodeDecodeError) as e:
    raise ApiError(400, f"body is not valid JSON ({e})") from None
  if isinstance(data, dict):
    if "inputs" not in data:
      raise ApiError(400, 'JSON body must be an array or an object with "inputs"')
    data = data["inputs"]
  try:
    return np.asarray(data)
  except (ValueError, TypeError, OverflowError):
    raise ApiError(422, "JSON inputs are not a rectangular array of numbers") from None


def answer_format(request: Request, fmt: Optional[str]) -> str:
  """'npy' or 'json', from ?format= or else the Accept header (JSON by default)."""
  if fmt is not None:
    if fmt not in ("npy", "json"):
      raise ApiError(406, f"format must be npy or json, got {fmt!r}")
    return fmt
  accept = request.headers.get("accept", "").lower()
  return "npy" if any(t in accept for t in NPY_TYPES) else "json"


def _state_headers(state) -> dict:
  s = state.settings
  h = {"X-Output-Mode": s.output, "X-Queries-Used": str(state.used)}
  if s.budget is not None:
    h["X-Queries-Remaining"] = str(state.remaining)
  if s.top_k is not None:
    h["X-Top-K"] = str(s.top_k)
  return h


def encode_answers(answers: np.ndarray, fmt: str, state) -> Response:
  """The answers as .npy or JSON, with the key's state in headers (and in the JSON)."""
  headers = _state_headers(state)
  if fmt == "npy":
    buf = io.BytesIO()
    np.save(buf, answers, allow_pickle=False)
    return Response(buf.getvalue(), media_type=NPY, headers=headers)
  body = {"outputs": answers.tolist(), "dtype": str(answers.dtype), "output": state.settings.output,
          "used": state.used, "remaining": state.remaining}
  return Response(json.dumps(body), media_type="application/json", headers=headers)


@dataclasses.dataclass
class _Replay:
  fingerprint: str
  done: asyncio.Event
  response: Optional[Response] = None


class ReplayCache:
  """Answers of the last `size` requests by (key, X-Request-Id): a retry is answered again, not charged again."""

  def __init__(self, size: int = 64):
    self.size, self.items = size, collections.OrderedDict()

  async def run(self, ident, fingerprint: str, make) -> Response:
    """`await make()` once per ident (None: always); later calls with the same ident get its response."""
    if ident is None:
      return await make()
    entry = self.items.get(ident)
    if entry is not None:
      if entry.fingerprint != fingerprint:
        raise ApiError(409, "X-Request-Id already used for other inputs; use a fresh id per request")
      await entry.done.wait()
      if entry.response is not None:
        return entry.response
    entry = self.items[ident] = _Replay(fingerprint, asyncio.Event())
    while len(self.items) > self.size:
      self.items.popitem(last=False)
    try:
      entry.response = await make()
      return entry.response
    except BaseException:
      self.items.pop(ident, None)
      raise
    finally:
      entry.done.set()


def _api_key(request: Request) -> str:
  key = request.headers.get("x-api-key")
  auth = request.headers.get("authorization", "")
  if key is None and auth.lower().startswith("bearer "):
    key = auth[7:].strip()
  if not key:
    raise ApiError(401, "missing API key: send it in the X-API-Key header", {"WWW-Authenticate": "Bearer"})
  return key


async def _read_body(request: Request, max_bytes: int) -> bytes:
  length = request.headers.get("content-length")
  if length is not None and length.isdigit() and int(length) > max_bytes:
    raise ApiError(413, f"body of {length} bytes is over the limit of {max_bytes} bytes")
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > max_bytes:
      raise ApiError(413, f"body is over the limit of {max_bytes} bytes")
    chunks.append(chunk)
  return b"".join(chunks)


def create_app(model: ServedModel, store: KeyStore, limits: Limits = Limits()) -> FastAPI:
  """The FastAPI app serving `model` to the keys of `store` (see module docstring)."""
  app = FastAPI(title=f"prediction API: {model.name}", version="1")
  replay = ReplayCache()

  @app.exception_handler(ApiError)
  async def _api_error(request: Request, e: ApiError):
    return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)

  @app.exception_handler(Exception)
  async def _internal_error(request: Request, e: Exception):  # the query was refunded (see `answer`)
    return JSONResponse({"detail": f"internal error ({type(e).__name__}); nothing was charged"}, status_code=500)

  async def key_state(request: Request):
    key = _api_key(request)
    try:
      return key, await run_in_threadpool(store.get, key)
    except UnknownKey:
      raise ApiError(401, "unknown API key", {"WWW-Authenticate": "Bearer"}) from None

  def answer(key: str, x: np.ndarray):
    """Charges the key, asks the victim, applies the key's output mode and defenses (runs in a worker thread)."""
    try:
      state, offset = store.reserve(key, len(x))
    except BudgetExhausted as e:
      raise ApiError(429, str(e), {"X-Queries-Remaining": str(e.budget - e.used)}) from None
    try:
      s = state.settings
      logits = np.asarray(model.backend(x))
      answers = transform_logits(logits, s.output, s.top_k)
      answers = apply_defenses(answers, logits, s.defenses, noise_rng(s.defenses, offset), output=s.output,
                               top_k=s.top_k)
    except BaseException:
      store.refund(key, len(x))
      raise
    return answers, state

  @app.get("/health")
  async def health():
    return {"status": "ok", "model": model.name, "input_shape": list(model.input_shape),
            "input_dtype": model.input_dtype, "num_classes": model.num_classes, "max_batch": limits.max_batch,
            "max_bytes": limits.max_bytes}

  @app.get("/v1/budget")
  async def budget(request: Request):
    _, state = await key_state(request)
    return {"key": state.label, **state.settings.to_dict(), "used": state.used, "remaining": state.remaining}

  @app.post("/v1/predict")
  async def predict(request: Request, format: Optional[str] = None):  # noqa: A002 (the query parameter's name)
    key, _ = await key_state(request)
    fmt = answer_format(request, format)
    body = await _read_body(request, limits.max_bytes)
    x = validate_inputs(parse_body(body, request.headers.get("content-type", "")), model, limits)
    fingerprint = hashlib.sha256(repr((x.shape, x.dtype.str)).encode() + x.tobytes()).hexdigest()
    ident = request.headers.get("x-request-id")

    async def make():
      answers, state = await run_in_threadpool(answer, key, x)
      return encode_answers(answers, fmt, state)

    return await replay.run(None if ident is None else (hashlib.sha256(key.encode()).hexdigest(), ident, fmt),
                            fingerprint, make)

  return app
