"""The language-model victim: a small decoder-only transformer in Flax, trained briefly on the Python standard
library's sources (`extraction.lm_text`) or left at random initialisation, saved with orbax.

Architecture (GPT-2 style, pre-norm): token and learned position embeddings of width `hidden`; `layers` blocks of
causal multi-head self-attention and a GELU MLP (4 x hidden), each with a LayerNorm before it and a residual
around it; a final LayerNorm; then the unembedding W (vocab x hidden, no bias), untied (its own matrix) or tied
(the token embedding). The next-token logits of a prompt are W @ LN(x_last): the last layer the attack of
Carlini et al. (2024) steals. `unembedding(victim)` returns the true W, for evaluation only.

LayerNorm scales and biases are initialised at 1 + N(0, 0.1^2) and N(0, 0.1^2) rather than exactly 1 and 0, so
that a random victim looks like a trained one in the one way that matters here: with a final-LayerNorm bias of
exactly 0 the logits lie in an (h-1)-dimensional subspace (LayerNorm centres its input) and no attack on the
logits can see the h-th dimension.

Files in the victim directory: `info.json` (config, vocabulary, training record), `params/` (orbax, the served
parameters), `checkpoints/` (orbax training state, resumed if interrupted). Precision: parameters are trained and
stored in float32; `backend(victim, 'float64')` casts them to float64 and computes in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from extraction import lm_text, train

_norm_scale = lambda key, shape, dtype=jnp.float32: 1.0 + 0.1 * jax.random.normal(key, shape, dtype)
_norm_bias = nn.initializers.normal(0.1)


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Shape of the transformer. vocab_size >= 257 (256 byte tokens + pieces); hidden divisible by heads."""

  vocab_size: int = 4096
  hidden: int = 128
  layers: int = 2
  heads: int = 4
  max_len: int = 64
  tied: bool = False

  def check(self) -> None:
    if self.vocab_size <= lm_text.BYTES:
      raise ValueError(f"vocab_size must be > {lm_text.BYTES}, got {self.vocab_size}")
    if self.hidden < 1 or self.layers < 0 or self.heads < 1 or self.max_len < 1:
      raise ValueError(f"hidden, heads and max_len must be >= 1 and layers >= 0: {self}")
    if self.hidden % self.heads:
      raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")


def _layer_norm(dtype, name=None):
  return nn.LayerNorm(dtype=dtype, param_dtype=dtype, scale_init=_norm_scale, bias_init=_norm_bias, name=name)


class Block(nn.Module):
  hidden: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    y = _layer_norm(self.dtype)(x)
    x = x + nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype, param_dtype=self.dtype)(y, mask=mask)
    y = _layer_norm(self.dtype)(x)
    y = nn.Dense(4 * self.hidden, dtype=self.dtype, param_dtype=self.dtype)(y)
    return x + nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.dtype)(nn.gelu(y))


class TransformerLM(nn.Module):
  """tokens (N, L) int, L <= max_len -> logits (N, L, V), or (N, V) of the last position with last_only=True."""

  config: LMConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, last_only: bool = False):
    cfg = self.config
    embed = nn.Embed(
      cfg.vocab_size,
      cfg.hidden,
      dtype=self.dtype,
      param_dtype=self.dtype,
      embedding_init=nn.initializers.normal(1.0 / np.sqrt(cfg.hidden)),
      name="embed",
    )
    pos = self.param(
      "position", nn.initializers.normal(0.5 / np.sqrt(cfg.hidden)), (cfg.max_len, cfg.hidden), self.dtype
    )
    x = embed(tokens) + pos[: tokens.shape[1]]
    mask = nn.make_causal_mask(tokens)
    for i in range(cfg.layers):
      x = Block(cfg.hidden, cfg.heads, self.dtype, name=f"block{i}")(x, mask)
    if last_only:
      x = x[:, -1]
    x = _layer_norm(self.dtype, name="final_norm")(x)
    if cfg.tied:
      return embed.attend(x)
    return nn.Dense(
      cfg.vocab_size,
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.dtype,
      kernel_init=nn.initializers.normal(1.0 / np.sqrt(cfg.hidden)),
      name="unembed",
    )(x)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Brief next-token training on the standard library (steps=0: the random initialisation is the victim)."""

  steps: int = 0
  batch_size: int = 32
  seq_len: int = 64
  lr: float = 0.003
  weight_decay: float = 0.01
  corpus_chars: int = 2_000_000
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class LMVictim:
  config: LMConfig
  params: Any
  info: dict

  @property
  def model(self) -> TransformerLM:
    return TransformerLM(self.config)


def unembedding(victim: LMVictim) -> np.ndarray:
  """The true W (vocab x hidden) of `victim`, as float64 (evaluation only: an attack never reads it)."""
  p = victim.params
  w = p["embed"]["embedding"] if victim.config.tied else np.asarray(p["unembed"]["kernel"]).T
  return np.asarray(w, np.float64)


def norm_geometry(victim: LMVictim) -> tuple[np.ndarray, float]:
  """The final LayerNorm's output geometry (evaluation only): an orthonormal basis (h x (h-1)) of its output
  directions {gamma * z : sum(z) = 0}, and the offset of that affine subspace from the origin, |u . beta| with u
  the unit normal gamma^-1 / |gamma^-1|, relative to |gamma| (the outputs' typical norm). A small offset makes the
  h-th direction of the logits' span weak (see functional_equivalence/lm/spectrum.py)."""
  p = victim.params["final_norm"]
  gamma, beta = np.asarray(p["scale"], np.float64), np.asarray(p["bias"], np.float64)
  h = len(gamma)
  basis = np.linalg.svd(gamma[:, None] * (np.eye(h) - 1.0 / h), full_matrices=False)[0][:, : h - 1]
  normal = (1.0 / gamma) / np.linalg.norm(1.0 / gamma)
  return basis, float(abs(normal @ beta) / np.linalg.norm(gamma))


def init_params(config: LMConfig, seed: int) -> Any:
  config.check()
  tokens = jnp.zeros((1, config.max_len), jnp.int32)
  return jax.device_get(jax.jit(TransformerLM(config).init)(jax.random.key(seed), tokens)["params"])


def make_lm_step(model: TransformerLM, ema_decay: float = 0.99) -> train.Step:
  """Step on {'tokens': (B, L+1) int32}: mean next-token cross-entropy over the L positions."""

  def loss_fn(params, batch):
    tokens = batch["tokens"]
    logits = cast(jax.Array, model.apply({"params": params}, tokens[:, :-1]))  # flax types apply's output loosely
    labels = jax.nn.one_hot(tokens[:, 1:], logits.shape[-1])
    return train.soft_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1, labels.shape[-1]))

  def step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    return state.apply_update(grads, state.batch_stats, ema_decay), {"loss": loss}

  return step


def build_victim(
  config: LMConfig, tcfg: TrainConfig, directory: pathlib.Path, corpus_dir: str | None = None
) -> LMVictim:
  """Creates (or reuses) the victim of (config, tcfg) in `directory`: random init, then `tcfg.steps` Adam steps
  on the standard library's sources (resumed from its checkpoints if interrupted); saves params and info.json."""
  config.check()
  directory = pathlib.Path(directory)
  info_path = directory / "info.json"
  want = {"config": dataclasses.asdict(config), "train": dataclasses.asdict(tcfg)}
  if info_path.exists():
    old = json.loads(info_path.read_text())
    if {k: old.get(k) for k in want} != want:
      raise ValueError(
        f"{directory} holds an LM victim built with other settings ({old['config']}, {old['train']});"
        f" use another --workdir or delete it"
      )
    return load_victim(directory)
  params = init_params(config, tcfg.seed)
  info: dict[str, Any] = dict(want)
  if tcfg.steps > 0:
    text = lm_text.stdlib_text(tcfg.corpus_chars, corpus_dir)
    tokenizer = lm_text.Tokenizer.fit(text, config.vocab_size)
    ids = tokenizer.encode(text)
    cut = int(0.95 * len(ids))
    params, record = _train(config, tcfg, params, ids[:cut], ids[cut:], directory / "checkpoints")
    info.update(record, vocabulary=list(tokenizer.pieces), corpus_tokens=int(len(ids)))
  directory.mkdir(parents=True, exist_ok=True)
  import orbax.checkpoint as ocp  # here, not at import: orbax adds 0.4 s to every launch

  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save((directory / "params").absolute(), params, force=True)
  info_path.write_text(json.dumps(info, indent=1))
  return LMVictim(config, params, info)


def _train(config, tcfg, params, train_ids, held_ids, checkpoint_dir):
  model = TransformerLM(config)
  tx = train.make_optimizer(tcfg.lr, tcfg.weight_decay, tcfg.steps, schedule="cosine")
  state = train.TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=tx,
    batch_stats={},
    ema_params=jax.tree.map(jnp.copy, params),
    rng=jax.random.key_data(jax.random.key(tcfg.seed)),
  )
  length = min(tcfg.seq_len, config.max_len)

  def windows(ids, seed, step, size):
    start = train.batch_indices(seed, step, len(ids) - length - 1, size)
    return {"tokens": ids[start[:, None] + np.arange(length + 1)]}

  state = train.fit(
    make_lm_step(model),
    state,
    lambda i: windows(train_ids, tcfg.seed, i, tcfg.batch_size),
    tcfg.steps,
    checkpoint_dir=checkpoint_dir,
    name="lm_victim",
    log_every=max(1, min(100, tcfg.steps // 5)),
  )
  params = jax.device_get(state.ema_params)
  loss_fn = jax.jit(
    lambda p, t: train.soft_cross_entropy(
      cast(jax.Array, model.apply({"params": p}, t[:, :-1])).reshape(-1, config.vocab_size),
      jax.nn.one_hot(t[:, 1:], config.vocab_size).reshape(-1, config.vocab_size),
    )
  )
  held = float(np.mean([loss_fn(params, windows(held_ids, tcfg.seed + 1, i, 64)["tokens"]) for i in range(4)]))
  return params, {"held_out_loss": held, "unigram_entropy": _unigram_entropy(train_ids, config.vocab_size)}


def _unigram_entropy(ids, vocab_size) -> float:
  """Cross-entropy (nats/token) of the best context-free model: what training must beat to have learned anything."""
  p = np.bincount(ids, minlength=vocab_size) / len(ids)
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def load_victim(directory: pathlib.Path) -> LMVictim:
  """Restores a victim saved by `build_victim` from its directory."""
  directory = pathlib.Path(directory)
  info_path = directory / "info.json"
  if not info_path.exists():
    raise FileNotFoundError(
      f"no LM victim in {directory} (missing info.json); build one with "
      f"python -m launch.run --experiment=lm_last_layer first"
    )
  info = json.loads(info_path.read_text())
  config = LMConfig(**info["config"])
  template = init_params(config, 0)
  import orbax.checkpoint as ocp  # here, not at import: orbax adds 0.4 s to every launch

  with ocp.StandardCheckpointer() as ckpt:
    params = ckpt.restore((directory / "params").absolute(), template)
  return LMVictim(config, jax.device_get(params), info)


@functools.cache
def _forward(config: LMConfig, dtype: str) -> Callable:
  model = TransformerLM(config, dtype=jnp.float64 if dtype == "float64" else jnp.float32)
  return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens, last_only=True))


def backend(victim: LMVictim, dtype: str = "float32", batch_size: int = 256) -> Callable[[np.ndarray], np.ndarray]:
  """The victim's next-token logits as an oracle backend: prompts (N, L) int, 1 <= L <= max_len -> (N, V).

  Identical prompts in a batch are computed once (a server-side cache: the answers and their count do not change).
  dtype 'float32' (as trained) or 'float64' (parameters cast, every operation in float64 under jax x64).
  """
  if dtype not in ("float32", "float64"):
    raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
  cfg = victim.config
  np_dtype = np.float64 if dtype == "float64" else np.float32
  params = jax.tree.map(lambda a: np.asarray(a, np_dtype), victim.params)
  fwd = _forward(cfg, dtype)

  def logits(prompts) -> np.ndarray:
    prompts = np.asarray(prompts)
    if prompts.ndim != 2 or not 1 <= prompts.shape[1] <= cfg.max_len:
      raise ValueError(f"prompts must be (N, L) token ids with 1 <= L <= {cfg.max_len}, got {prompts.shape}")
    if prompts.size and (prompts.min() < 0 or prompts.max() >= cfg.vocab_size):
      raise ValueError(f"prompt token ids must lie in 0..{cfg.vocab_size - 1}")
    unique, inverse = np.unique(prompts.astype(np.int32), axis=0, return_inverse=True)
    out = np.empty((len(unique), cfg.vocab_size), np_dtype)
    with jax.enable_x64(dtype == "float64"):
      for i in range(0, len(unique), batch_size):
        chunk = unique[i : i + batch_size]
        size = min(batch_size, 1 << max(len(chunk) - 1, 0).bit_length())  # few shapes, few compilations
        padded = np.concatenate([chunk, np.zeros((size - len(chunk), chunk.shape[1]), np.int32)])
        out[i : i + len(chunk)] = np.asarray(fwd(params, padded))[: len(chunk)]
    return out[inverse.reshape(-1)]

  return logits
