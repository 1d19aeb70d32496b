"""A language model behind the prediction API: prompts in, next-token scores out (`extraction.lm_oracle`'s modes).

An LM is a `ServedModel` with `lm` set (`LMApi`: longest prompt, the bounds of a logit bias). Its requests:
  * a `.npy` body: prompts (N, L) of int token ids, 1 <= L <= max_len, every id in 0..V-1;
  * a JSON body {"inputs": [[ids]], "logit_bias": {"ids": [[...]], "values": [[...]]}}: the same prompts and, for
    keys served 'top_k_bias', one bias row per prompt (-1 pads a row; |value| <= max_bias; at most
    max_biased_tokens tokens per row), checked before anything is charged (422 otherwise).
Its keys are served one of 'logits' ((N, V) as a classifier's answers), 'argmax' ((N,) token ids), 'top_k' or
'top_k_bias' (JSON {"ids": [[...]], "logprobs": [[...]], "dtype": ...}, best first). The bias bounds are the
service's (as OpenAI's 100 and 300), not a key's; LM keys take no defenses. GET /health shows {"lm": {...}}.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
from fastapi.responses import Response

from extraction.lm_oracle import (LM_ONLY_OUTPUTS, LM_OUTPUT_MODES, BiasRefused, LogitBias, check_bias, lm_answers,
                                  validate_lm_output)
from service.inputs import ApiError, InputLimits, parse_body
from service.model import ServedModel


@dataclasses.dataclass(frozen=True)
class LMApi:
  """What an LM API accepts beyond a classifier's: the longest prompt and the logit-bias bounds."""
  max_len: int
  max_bias: float = 100.0
  max_biased_tokens: int = 300

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def model_from_lm_dir(path, precision: str = "float32", max_bias: float = 100.0,
                      max_biased_tokens: int = 300) -> ServedModel:
  """The LM victim of `python -m launch.run --experiment=lm_last_layer` (its <workdir>/lm_victim, or that
  directory itself), answered in `precision`."""
  from extraction import lm_victim  # jax: imported only to serve a Flax LM
  path = pathlib.Path(path)
  directory = path / "lm_victim" if (path / "lm_victim" / "info.json").is_file() else path
  v = lm_victim.load_victim(directory)
  cfg = v.config
  name = f"{directory} (LM: V={cfg.vocab_size}, {precision})"
  return ServedModel(lm_victim.backend(v, precision), (cfg.max_len,), "int32", cfg.vocab_size, name,
                     lm=LMApi(cfg.max_len, max_bias, max_biased_tokens))


def check_settings(settings, vocab_size: int) -> None:
  """Raises ValueError (one line) unless a key's settings are an LM output without defenses."""
  if settings.output not in LM_OUTPUT_MODES:
    raise ValueError(f"output {settings.output!r} is not served by a language model; choose one of "
                     f"{', '.join(LM_OUTPUT_MODES)}")
  validate_lm_output(settings.output, settings.top_k, vocab_size)
  if settings.defenses.active:
    raise ValueError("a language model's keys take no defenses")


def _prompts(x: np.ndarray, model: ServedModel, limits: InputLimits) -> np.ndarray:
  if x.dtype.kind not in "iu" or x.ndim != 2:
    raise ApiError(422, f"prompts must be integer token ids (N, L), got {x.dtype} {tuple(x.shape)}")
  n, length = x.shape
  if n == 0 or not 1 <= length <= model.lm.max_len:
    raise ApiError(422, f"prompts have shape {tuple(x.shape)}; expected (N, L) with N >= 1, 1 <= L <= "
                        f"{model.lm.max_len}")
  if n > limits.max_batch:
    raise ApiError(413, f"batch of {n} prompts is over the limit of {limits.max_batch} per request")
  if x.min() < 0 or x.max() >= model.num_classes:
    raise ApiError(422, f"prompt token ids must lie in 0..{model.num_classes - 1}")
  return np.ascontiguousarray(x.astype(np.int32))


def parse_request(body: bytes, content_type: str, model: ServedModel, limits: InputLimits):
  """(prompts (N, L) int32, LogitBias or None) of a request body (module docstring); ApiError otherwise."""
  kind = content_type.split(";")[0].strip().lower()
  bias = None
  if kind == "application/json" or (not kind and not body.startswith(b"\x93NUMPY")):
    try:
      data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
      raise ApiError(400, f"body is not valid JSON ({str(e)[:200]})") from None
    if isinstance(data, dict) and isinstance(data.get("logit_bias"), dict):
      b = data["logit_bias"]
      try:
        bias = LogitBias(np.asarray(b.get("ids"), np.int64), np.asarray(b.get("values"), np.float64))
      except (ValueError, TypeError, OverflowError):
        raise ApiError(422, 'logit_bias must be {"ids": [[int]], "values": [[number]]}, one row per prompt') from None
    elif isinstance(data, dict) and data.get("logit_bias") is not None:
      raise ApiError(422, 'logit_bias must be {"ids": [[int]], "values": [[number]]}')
    body = json.dumps(data["inputs"] if isinstance(data, dict) and "inputs" in data else data).encode()
  prompts = _prompts(parse_body(body, kind or "application/json", model, limits), model, limits)
  return prompts, bias


def fingerprint_bias(bias) -> bytes:
  """Bytes that tell two requests' biases apart (for X-Request-Id replays)."""
  if bias is None:
    return b""
  return np.asarray(bias.ids, np.int64).tobytes() + np.asarray(bias.values, np.float64).tobytes()


def answer(logits: np.ndarray, settings, bias, model: ServedModel):
  """The key's answers to prompts whose next-token logits are `logits` (module docstring)."""
  logits = np.asarray(logits)
  if not np.all(np.isfinite(logits)):
    raise ApiError(422, "the victim's logits for these prompts are not finite; nothing was charged")
  return lm_answers(logits, settings.output, settings.top_k, bias)


def check_request_bias(bias, n: int, settings, model: ServedModel):
  """The request's bias checked against the key's mode and the service's bounds (422 before any charge)."""
  if bias is None:
    return None
  if settings.output != "top_k_bias":
    raise ApiError(422, f"this key (output {settings.output!r}) accepts no logit bias")
  try:
    return check_bias(bias, n, model.num_classes, model.lm.max_bias, model.lm.max_biased_tokens)
  except BiasRefused as e:
    raise ApiError(422, str(e)) from None


def encode_top_k(answers, state, headers: dict) -> Response:
  """Top-k answers as JSON {"ids", "logprobs", "dtype", "output", "used", "remaining"}."""
  body = {"ids": answers.ids.tolist(), "logprobs": answers.logprobs.tolist(), "dtype": str(answers.logprobs.dtype),
          "output": state.settings.output, "used": state.used, "remaining": state.remaining}
  return Response(json.dumps(body), media_type="application/json", headers=headers)


def check_key_for_model(settings, model: ServedModel) -> None:
  """Raises ValueError (one line) when a key's output does not fit the kind of model served."""
  if model.lm is not None:
    check_settings(settings, model.num_classes)
  elif settings.output in LM_ONLY_OUTPUTS:
    raise ValueError(f"output {settings.output!r} is served by language models only")
