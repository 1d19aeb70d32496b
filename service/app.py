"""The victim as a prediction service: a FastAPI app (`create_app`) over a `ServedModel` and a `KeyStore`.

Endpoints (the API key goes in the `X-API-Key` header, or `Authorization: Bearer KEY`):
  GET  /health        no key; the model's input shape and dtype, classes and the request limits (nothing else).
  GET  /v1/budget     the key's budget, used, remaining, output mode and top_k (never its defenses).
  POST /v1/predict    a batch of inputs (N, *input_shape) as a `.npy` body (Content-Type: application/x-npy) or
                      as JSON ({"inputs": [[...], ...]} or a bare array); answers (N, C) in the key's output mode,
                      after its defenses, as `.npy` (Accept: application/x-npy or ?format=npy) or as JSON
                      ({"outputs": [[...]], ...}; floats written exactly, float64 round-trips). Headers
                      X-Output-Mode, X-Queries-Used and X-Queries-Remaining tell the key's state after the query.
                      A header X-Request-Id makes a retry of the same request (same inputs) answered again
                      without being charged again (for each key's last 16 such requests in this process).
/docs, /redoc and /openapi.json exist only with `create_app(..., docs=True)` (launch.serve --docs).
A language model (`ServedModel.lm` set) takes prompts and, for 'top_k_bias' keys, a logit bias per prompt; its
answers and checks are service/lm.py's.

A request goes: key known and not revoked (401), budget not spent (429, before the body is read), a slot of its
key and of the service (service/sharing.py: waits, then 429 / 503 with Retry-After), body read within
`body_timeout` (408) and within the memory bound (503), parsed and validated in a worker thread (400 / 413 / 415 /
422, service/inputs.py), charged (atomically, service/keystore.py; 429 past the budget), answered by the victim in
turn with the other keys (service/sharing.py), defended, sent. A query that fails after its charge is refunded.
A key database that vanished while serving gives 503 (nothing answered). Errors are JSON {"detail": message}; an
error answered before a body of more than 64 KB was read closes the connection instead of reading the body in
vain (a client still sending it may then see the connection reset rather than the answer).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from extraction.defenses import apply_defenses, keyed_normal
from extraction.oracle import transform_logits
from service import inputs
from service import lm as lm_api
from service.inputs import NPY, NPY_TYPES, ApiError
from service.keystore import BudgetExhausted, KeySettings, KeyStore, StoreUnavailable, UnknownKey
from service.model import ServedModel
from service.replay import ReplayCache
from service.sharing import Admission, FairScheduler

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
SMALL_BODY = 1 << 16  # a request refused before its body is read closes its connection when the body is larger


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the service accepts and how it shares the victim (launch.serve has a flag for each).

  Attributes:
    max_batch: most inputs per request.
    max_bytes: largest request body in bytes.
    max_abs_input: float inputs are answered only within +-max_abs_input (uint8 images: 0..255).
    key_requests: requests of one key past admission at once (more wait, then 429 with Retry-After).
    total_requests: requests past admission at once in all (more wait, then 503 with Retry-After).
    queue_wait: seconds a request waits for those slots.
    body_memory: bytes of request bodies read or parsed at once (more: 503 with Retry-After); >= max_bytes.
    body_timeout: seconds to receive a request body (408 after).
    workers: threads running the victim.
    chunk: inputs per victim call, the unit of round robin between keys.
    replay_per_key: answers kept per key for retries with the same X-Request-Id.
  """
  max_batch: int = 4096
  max_bytes: int = 32 << 20
  max_abs_input: float = 1e6
  key_requests: int = 4
  total_requests: int = 64
  queue_wait: float = 10.0
  body_memory: int = 256 << 20
  body_timeout: float = 30.0
  workers: int = 2
  chunk: int = 1024
  replay_per_key: int = 16

  def __post_init__(self):
    for name in ("max_batch", "max_bytes", "key_requests", "total_requests", "workers", "chunk", "replay_per_key"):
      if getattr(self, name) < 1:
        raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")
    if self.body_memory < self.max_bytes:
      raise ValueError(f"Limits.body_memory ({self.body_memory}) must hold one body of max_bytes ({self.max_bytes})")
    if not (self.max_abs_input > 0 and self.queue_wait > 0 and self.body_timeout > 0):
      raise ValueError("Limits.max_abs_input, queue_wait and body_timeout must be > 0")


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


def _api_key(request: Request) -> str:
  key = request.headers.get("x-api-key")
  auth = request.headers.get("authorization", "")
  if key is None and auth.lower().startswith("bearer "):
    key = auth[7:].strip()
  if not key:
    raise ApiError(401, "missing API key: send it in the X-API-Key header", UNAUTHORIZED)
  return key


def _declared_length(request: Request, max_bytes: int) -> Optional[int]:
  length = request.headers.get("content-length")
  if length is None:
    return None
  if not length.isdigit():
    raise ApiError(400, "Content-Length is not a number")
  if int(length) > max_bytes:
    raise ApiError(413, f"body of {length} bytes is over the limit of {max_bytes} bytes")
  return int(length)


async def _read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
  async def read() -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
      size += len(chunk)
      if size > max_bytes:
        raise ApiError(413, f"body is over the limit of {max_bytes} bytes")
      chunks.append(chunk)
    return b"".join(chunks)

  try:
    return await asyncio.wait_for(read(), timeout)
  except asyncio.TimeoutError:
    raise ApiError(408, f"body not received within {timeout:g} s") from None
  except ClientDisconnect:
    raise ApiError(400, "the client left before sending the whole body") from None


def defend(logits: np.ndarray, x: np.ndarray, settings: KeySettings, noise_key: bytes) -> np.ndarray:
  """The key's answers to x: its output mode, then its defenses (noise keyed by each input, see secret.py)."""
  logits = np.asarray(logits)
  if not np.all(np.isfinite(logits)):
    raise ApiError(422, "the victim's answers to these inputs are not finite (inputs too large?); nothing was "
                        "charged")
  answers = transform_logits(logits, settings.output, settings.top_k)
  normal = None
  if settings.defenses.noise_std > 0:
    normal = keyed_normal(noise_key, x, answers.shape[-1])
  return apply_defenses(answers, logits, settings.defenses, None, output=settings.output, top_k=settings.top_k,
                        normal=normal)


def create_app(model: ServedModel, store: KeyStore, limits: Limits = Limits(), docs: bool = False) -> FastAPI:
  """The FastAPI app serving `model` to the keys of `store` (see module docstring)."""
  scheduler = FairScheduler(model.backend, limits.workers, limits.chunk)
  parsers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="parse")
  admission = Admission(limits.key_requests, limits.total_requests, limits.body_memory, limits.queue_wait)
  replay = ReplayCache(limits.replay_per_key)
  input_limits = inputs.InputLimits(limits.max_batch, limits.max_abs_input)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    yield
    scheduler.close()
    parsers.shutdown(wait=False)

  app = FastAPI(title="prediction API", version="1", lifespan=lifespan, docs_url="/docs" if docs else None,
                redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)

  @app.exception_handler(ApiError)
  async def _api_error(request: Request, e: ApiError):
    return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)

  @app.exception_handler(Exception)
  async def _internal_error(request: Request, e: Exception):  # the query was refunded (see `answer`)
    return JSONResponse({"detail": f"internal error ({type(e).__name__}); nothing was charged"}, status_code=500)

  async def in_thread(fn, *args):
    """fn(*args) in a worker thread; the key store's errors as HTTP errors."""
    try:
      return await run_in_threadpool(fn, *args)
    except UnknownKey:
      raise ApiError(401, "unknown or revoked API key", UNAUTHORIZED) from None
    except StoreUnavailable as e:
      raise ApiError(503, f"the key database is unavailable ({e}); nothing was answered or charged") from None
    except BudgetExhausted as e:
      raise ApiError(429, str(e), {"X-Queries-Remaining": str(e.budget - e.used)}) from None

  def parse(body: bytes, content_type: str):
    if model.lm is not None:  # prompts, and a logit bias (service/lm.py)
      x, bias = lm_api.parse_request(body, content_type, model, input_limits)
    else:
      x, bias = inputs.validate_inputs(inputs.parse_body(body, content_type, model, input_limits), model,
                                       input_limits), None
    digest = hashlib.sha256(repr((x.shape, x.dtype.str)).encode() + x.tobytes() + lm_api.fingerprint_bias(bias))
    return x, bias, digest.hexdigest()

  async def answer(key: str, owner: str, x: np.ndarray, bias=None):
    """Charges the key, asks the victim in turn with the other keys, applies the key's mode and defenses."""
    state, _ = await in_thread(store.reserve, key, len(x))
    try:
      logits = await scheduler.logits(owner, x)
      if model.lm is not None:
        answers = await in_thread(lm_api.answer, logits, state.settings, bias, model)
      else:
        answers = await in_thread(defend, logits, x, state.settings, store.noise_key(key))
    except BaseException:
      store.refund(key, len(x))  # here, not in a thread: runs even when the request is cancelled
      raise
    return answers, state

  @app.get("/health")
  async def health():
    out = {"status": "ok", "input_shape": list(model.input_shape), "input_dtype": model.input_dtype,
           "num_classes": model.num_classes, "max_batch": limits.max_batch, "max_bytes": limits.max_bytes}
    if model.lm is not None:
      out["lm"] = model.lm.to_dict()
    return out

  @app.get("/v1/budget")
  async def budget(request: Request):
    state = await in_thread(store.get, _api_key(request))
    s = state.settings
    return {"budget": s.budget, "used": state.used, "remaining": state.remaining, "output": s.output,
            "top_k": s.top_k}

  @app.post("/v1/predict")
  async def predict(request: Request, format: Optional[str] = None):  # noqa: A002 (the query parameter's name)
    body_read = []
    try:
      return await predict_one(request, format, body_read)
    except ApiError as e:
      length = request.headers.get("content-length", "")
      if not body_read and not (length.isdigit() and int(length) <= SMALL_BODY):
        e.headers = {**(e.headers or {}), "Connection": "close"}  # refused before a large body: not read in vain
      raise

  async def predict_one(request: Request, fmt: Optional[str], body_read: list):
    key = _api_key(request)
    state = await in_thread(store.get, key)
    if state.remaining is not None and state.remaining <= 0:  # refused before reading a byte of the body
      raise ApiError(429, f"this key's budget of {state.settings.budget} is spent", {"X-Queries-Remaining": "0"})
    fmt = answer_format(request, fmt)
    length = _declared_length(request, limits.max_bytes)
    owner = store.digest(key)
    async with admission.request(owner):
      with admission.memory(limits.max_bytes if length is None else length):
        body = await _read_body(request, limits.max_bytes, limits.body_timeout)
        body_read.append(True)
        x, bias, fingerprint = await asyncio.wrap_future(parsers.submit(parse, body,
                                                                        request.headers.get("content-type", "")))
        del body
        if model.lm is not None:
          bias = lm_api.check_request_bias(bias, len(x), state.settings, model)

        async def make():
          answers, state = await answer(key, owner, x, bias)
          if hasattr(answers, "logprobs"):  # an LM's top-k answers
            return lm_api.encode_top_k(answers, state, _state_headers(state))
          return await run_in_threadpool(encode_answers, answers, fmt, state)

        ident = request.headers.get("x-request-id")
        return await replay.run(owner, None if ident is None else (ident, fmt), fingerprint, make)

  return app
