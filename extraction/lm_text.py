"""Offline text for the language-model victim: the Python standard library's own sources, and a small tokenizer.

The corpus is the `.py` files at the top of the running interpreter's standard library (`sysconfig`'s 'stdlib'
path), read in sorted order: code, docstrings and comments, about 4-5 MB, present on every Python install and never
downloaded. The tokenizer is a word-level vocabulary with a byte fallback: ids 0..255 are the 256 bytes, the other
`vocab_size - 256` ids are the most frequent pieces of the corpus (words with their leading space, numbers, runs of
spaces or newlines, single punctuation characters); a piece outside the vocabulary is spelled as its UTF-8 bytes,
so every text encodes and decodes exactly.
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import re
import sysconfig
from typing import Optional

import numpy as np

PIECE = re.compile(r" ?[A-Za-z_]+| ?[0-9]+| +|\n+|[^A-Za-z_0-9 \n]")
BYTES = 256


def stdlib_text(max_chars: Optional[int] = None, directory: Optional[str] = None) -> str:
  """The concatenated top-level `.py` files of the standard library (sorted by name), cut to `max_chars`.

  Raises:
    FileNotFoundError (one line) when the directory holds no Python sources (a stripped install).
  """
  root = pathlib.Path(directory or sysconfig.get_paths()["stdlib"])
  files = sorted(root.glob("*.py"))
  if not files:
    raise FileNotFoundError(f"no .py files in {root}: the LM victim trains on the standard library's sources; "
                            f"give another directory of text files or use a random victim (--lm_train_steps=0)")
  parts, size = [], 0
  for f in files:
    text = f.read_text(encoding="utf-8", errors="replace")
    parts.append(text)
    size += len(text)
    if max_chars is not None and size >= max_chars:
      break
  text = "\n".join(parts)
  return text if max_chars is None else text[:max_chars]


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """Byte-fallback word vocabulary (module docstring). pieces[i] is the text of id BYTES + i."""
  pieces: tuple

  @property
  def vocab_size(self) -> int:
    return BYTES + len(self.pieces)

  @classmethod
  def fit(cls, text: str, vocab_size: int) -> "Tokenizer":
    """The `vocab_size - 256` most frequent multi-byte pieces of `text` (ties: alphabetical), in that order."""
    if vocab_size <= BYTES:
      raise ValueError(f"vocab_size must be > {BYTES} (the byte tokens), got {vocab_size}")
    counts = collections.Counter(p for p in PIECE.findall(text) if len(p.encode()) > 1)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size - BYTES]
    pieces = tuple(p for p, _ in ranked)
    if len(pieces) < vocab_size - BYTES:
      raise ValueError(f"the text has only {len(pieces)} distinct pieces; cannot fill a vocabulary of {vocab_size}")
    return cls(pieces)

  def encode(self, text: str) -> np.ndarray:
    """Token ids (int32) of `text`."""
    index = {p: BYTES + i for i, p in enumerate(self.pieces)}
    ids = []
    for piece in PIECE.findall(text):
      if piece in index:
        ids.append(index[piece])
      else:
        ids.extend(piece.encode())
    return np.asarray(ids, np.int32)

  def decode(self, ids) -> str:
    out = bytearray()
    for i in np.asarray(ids).tolist():
      out += bytes([i]) if i < BYTES else self.pieces[i - BYTES].encode()
    return out.decode("utf-8", errors="replace")
