"""Request bodies to input batches: parsing (.npy without pickles, or JSON) and validation against the model.

Pure functions of bytes and arrays, run by the app in a worker thread (never on the event loop). Every refusal is
an `ApiError` with the HTTP status and a one-line message. A JSON body is checked before it is parsed: its nesting
depth (at most the model's input dimensions plus the batch and an {"inputs": ...} object) and its count of values
(at most max_batch inputs), so that deep or huge bodies are refused cheaply with 400 / 413. A JSON array of
numbers of the model's input shape is then read by numpy (`read_json_array`: no Python object per number, and the
interpreter lock released while the numbers are parsed, so a large body does not stall the other requests);
anything else goes through `json.loads` only up to 1 MB (`JSON_LOADS_BYTES`).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import warnings
from typing import Optional

import numpy as np

from service.model import ServedModel

NPY = "application/x-npy"
NPY_TYPES = (NPY, "application/octet-stream")
_SCAN = 1 << 20  # bytes per step of the JSON depth scan
JSON_LOADS_BYTES = 1 << 20  # JSON bodies that are not a plain array of numbers are parsed only up to this size
_WRAPPER = re.compile(rb'\s*\{\s*"inputs"\s*:\s*')
_NUMBER_CHARS = b"0123456789+-.eE \t\r\n"


class ApiError(Exception):
  """An error answered as JSON {"detail": message} with an HTTP status."""

  def __init__(self, status: int, message: str, headers: Optional[dict] = None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers


@dataclasses.dataclass(frozen=True)
class InputLimits:
  """Largest batch (inputs per request) and largest magnitude of float inputs the service answers."""
  max_batch: int = 4096
  max_abs_input: float = 1e6


def shape_text(shape) -> str:
  """'(N, 8, 8, 1)' for a per-input shape (8, 8, 1)."""
  return "(N, " + ", ".join(str(s) for s in shape) + ")"


def json_depth(body: bytes) -> int:
  """The deepest nesting of [ and { in a JSON text (brackets inside strings count too: a bound, not a parse)."""
  depth = deepest = 0
  for start in range(0, len(body), _SCAN):
    c = np.frombuffer(body, np.uint8, count=min(_SCAN, len(body) - start), offset=start)
    step = (c == ord("[")).astype(np.int32) + (c == ord("{")) - (c == ord("]")) - (c == ord("}"))
    run = np.cumsum(step) + depth
    deepest, depth = max(deepest, int(run.max())), int(run[-1])
  return deepest


def _skeleton(n: int, shape: tuple) -> bytes:
  """The brackets and commas of a JSON array of shape (n, *shape), numbers and spaces left out."""
  inner = b""
  for size in reversed(shape):
    inner = b"[" + b",".join([inner] * size) + b"]"
  return b"[" + b",".join([inner] * n) + b"]"


def read_json_array(body: bytes, shape: tuple) -> Optional[np.ndarray]:
  """The (N, *shape) array of a JSON body holding one array of numbers (optionally as {"inputs": [...]}), read by
  numpy with the interpreter lock released; None when the body is anything else (json.loads decides then).

  Numbers are read as float64 (correctly rounded, as json.loads), and as int64 when none has a '.' or exponent.
  """
  start, end = body.find(b"["), body.rfind(b"]")
  if start < 0 or end < start:
    return None
  head, tail = body[:start], body[end + 1:].strip()
  if head.strip() and not (_WRAPPER.fullmatch(head) and tail == b"}") or (not head.strip() and tail):
    return None
  array = body[start:end + 1]
  skeleton = array.translate(None, _NUMBER_CHARS)
  per_input = math.prod(shape)
  values = skeleton.count(b",") + 1
  if values % per_input or skeleton != _skeleton(values // per_input, tuple(shape)):
    return None
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # np.fromstring in text mode: the parser wanted here
    try:
      numbers = np.fromstring(array.translate(None, b"[]"), dtype=np.float64, sep=",")
    except ValueError:  # an empty or malformed number
      return None
  if len(numbers) != values:
    return None
  if not any(c in array for c in (b".", b"e", b"E")) and np.all(np.abs(numbers) <= 2 ** 53):
    numbers = numbers.astype(np.int64)
  return numbers.reshape((values // per_input,) + tuple(shape))


def parse_json(body: bytes, model: ServedModel, limits: InputLimits) -> np.ndarray:
  """The batch of a JSON body ({"inputs": [...]} or a bare array). Raises ApiError 400 / 413 / 422."""
  most = len(model.input_shape) + 2  # the batch, each input's dimensions, an {"inputs": ...} object
  deepest = json_depth(body)
  if deepest > most:
    raise ApiError(400, f"JSON body nested {deepest} deep; inputs {shape_text(model.input_shape)} need at most "
                        f"{most}")
  most_values = limits.max_batch * math.prod(model.input_shape)
  if body.count(b",") + 1 > most_values + 64:
    raise ApiError(413, f"JSON body holds more than the {most_values} values of {limits.max_batch} inputs, the "
                        f"limit per request")
  fast = read_json_array(body, tuple(model.input_shape))
  if fast is not None:
    return fast
  if len(body) > JSON_LOADS_BYTES:
    raise ApiError(400, f"a JSON body over {JSON_LOADS_BYTES >> 20} MB must be one array of numbers "
                        f"{shape_text(model.input_shape)} (or {{\"inputs\": ...}}); send .npy otherwise")
  try:
    data = json.loads(body)
  except (ValueError, UnicodeDecodeError, RecursionError) as e:
    raise ApiError(400, f"body is not valid JSON ({str(e)[:200]})") from None
  if isinstance(data, dict):
    if "inputs" not in data:
      raise ApiError(400, 'JSON body must be an array or an object with "inputs"')
    data = data["inputs"]
  try:
    return np.asarray(data)
  except (ValueError, TypeError, OverflowError, RecursionError):
    raise ApiError(422, "JSON inputs are not a rectangular array of numbers") from None


def parse_body(body: bytes, content_type: str, model: ServedModel, limits: InputLimits) -> np.ndarray:
  """The batch in a request body: a .npy array (no pickles) or JSON. Raises ApiError 400 / 413 / 415 / 422."""
  kind = content_type.split(";")[0].strip().lower()
  if not kind:
    kind = NPY if body.startswith(b"\x93NUMPY") else "application/json"
  if kind in NPY_TYPES:
    try:
      return np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as e:  # bad magic, truncated data, object arrays...
      raise ApiError(400, f"body is not a readable .npy array ({type(e).__name__}: {str(e)[:200]})") from None
  if kind != "application/json":
    raise ApiError(415, f"unsupported Content-Type {kind!r}; send {NPY} or application/json")
  return parse_json(body, model, limits)


def validate_inputs(x: np.ndarray, model: ServedModel, limits: InputLimits) -> np.ndarray:
  """Checks a parsed batch against the model and the limits; returns it in the model's input dtype, contiguous.

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
    if x.min() < info.min or x.max() > info.max:
      raise ApiError(422, f"inputs hold values outside {info.min}..{info.max} ({want} pixels)")
  elif np.abs(x).max() > limits.max_abs_input:
    raise ApiError(422, f"inputs hold values of magnitude up to {float(np.abs(x).max()):.3g}; this service answers "
                        f"inputs within +-{limits.max_abs_input:g}")
  return np.ascontiguousarray(x.astype(want, copy=False))
