"""What one API key may ask and how it is answered (`KeySettings`), and the keys file that lists them.

Keys file (JSON), one entry per key, the key itself as the name:
  {"KEY": {"label": "alice", "budget": 1000, "output": "probabilities", "top_k": null, "defenses": {...}}, ...}
`label` (required) is the operator's name for the key, unique, never a piece of it; `budget` null means unlimited;
`output` defaults to 'probabilities'; `defenses` holds `extraction.defenses.Defenses` fields except noise_seed
(the service's noise comes from its secret, see service/secret.py). Keys have at least 16 characters
(`python -m launch.serve_keys --add` generates 32 random bytes).

Every value is checked with its type and bounds: integers where integers are meant (never booleans or 2.5),
numbers finite and within the bounds below, so that no setting can make every answer NaN or overflow SQLite.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Mapping, Optional

from extraction.defenses import Defenses
from extraction.lm_oracle import LM_ONLY_OUTPUTS, validate_lm_output
from extraction.oracle import OUTPUT_MODES, validate_output_mode
from service.secret import MIN_KEY_LENGTH

MAX_BUDGET = 10 ** 15
MAX_LABEL = 64
BOUNDS = {  # defense setting -> (kind, lowest, highest, lowest excluded)
    "round_decimals": ("integer", 0, 15, False),
    "noise_std": ("number", 0.0, 1e6, False),
    "reverse_sigmoid_beta": ("number", 0.0, 1e3, True),
    "reverse_sigmoid_gamma": ("number", 0.0, 1e3, True),
}


def check_integer(name: str, value, lowest: int, highest: int) -> None:
  """Raises ValueError unless value is an int (not a bool) in [lowest, highest]."""
  if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
    raise ValueError(f"{name} must be an integer in {lowest}..{highest}, got {value!r}")


def check_number(name: str, value, lowest: float, highest: float, open_low: bool = False) -> None:
  """Raises ValueError unless value is a finite int or float (not a bool) in [lowest, highest] ((lowest, ...])."""
  ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
  if not ok or not (lowest < value if open_low else lowest <= value) or value > highest:
    raise ValueError(f"{name} must be a number in {'(' if open_low else '['}{lowest:g}, {highest:g}], got {value!r}")


def check_label(value) -> str:
  """The operator's name of a key: 1 to 64 printable characters without outer spaces."""
  if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL or not value.isprintable() or value != value.strip():
    raise ValueError(f"label must be 1 to {MAX_LABEL} printable characters without outer spaces, got {value!r}")
  return value


def check_key(key) -> str:
  """An API key: printable, no outer spaces, at least 16 characters."""
  if not isinstance(key, str) or not key.isprintable() or key != key.strip() or not key:
    raise ValueError("API keys must be printable strings without outer spaces")
  if len(key) < MIN_KEY_LENGTH:
    raise ValueError(f"API keys need at least {MIN_KEY_LENGTH} characters (this one has {len(key)}); "
                     f"let python -m launch.serve_keys --add generate one")
  return key


def check_label_apart(label: str, key: str, span: int = 8) -> None:
  """Raises ValueError when the label holds `span` or more consecutive characters of the key."""
  if any(key[i:i + span] in label for i in range(max(1, len(key) - span + 1))):
    raise ValueError(f"label {label!r} holds a piece of its key; name keys by whom or what they are for")


@dataclasses.dataclass(frozen=True)
class KeySettings:
  """What one key may ask and how it is answered."""
  budget: Optional[int] = None
  output: str = "probabilities"
  top_k: Optional[int] = None
  defenses: Defenses = Defenses()

  def check(self, num_classes: Optional[int] = None) -> None:
    """Raises ValueError (one line) for a value of the wrong type, out of its bounds, or an invalid combination."""
    if self.budget is not None:
      check_integer("budget", self.budget, 0, MAX_BUDGET)
    if self.output in LM_ONLY_OUTPUTS:  # a language model's outputs (service/lm.py checks them against the model)
      if self.top_k is not None:
        check_integer("top_k", self.top_k, 1, (num_classes or 10 ** 6 + 1) - 1)
      validate_lm_output(self.output, self.top_k, num_classes)
      if self.defenses.active:
        raise ValueError(f"output {self.output!r} (a language model's) takes no defenses")
      return
    if self.output not in OUTPUT_MODES:
      raise ValueError(f"unknown oracle output {self.output!r}; choose one of "
                       f"{', '.join(OUTPUT_MODES + LM_ONLY_OUTPUTS)}")
    if self.top_k is not None:
      if self.output != "top_k":
        raise ValueError(f"top_k is a setting of output 'top_k', not of {self.output!r}")
      check_integer("top_k", self.top_k, 1, (num_classes or 10 ** 6 + 1) - 1)
    validate_output_mode(self.output, self.top_k, num_classes)
    d = self.defenses
    if not isinstance(d, Defenses):
      raise ValueError(f"defenses must be extraction.defenses.Defenses, got {type(d).__name__}")
    if d.noise_seed != Defenses().noise_seed:
      raise ValueError("noise_seed is not a setting of the service: its noise is drawn from the server secret, "
                       "the key and each input; drop it")
    for name, (kind, low, high, open_low) in BOUNDS.items():
      value = getattr(d, name)
      if value is None:
        continue
      if kind == "integer":
        check_integer(name, value, low, high)
      else:
        check_number(name, value, low, high, open_low)
    d.check(self.output)

  def to_dict(self) -> dict:
    return {"budget": self.budget, "output": self.output, "top_k": self.top_k, "defenses": self.defenses.to_dict()}

  @classmethod
  def from_dict(cls, d: Mapping) -> "KeySettings":
    """Settings from a JSON object (a keys file entry without its label); raises ValueError (one line)."""
    if not isinstance(d, Mapping):
      raise ValueError(f"key settings must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {"budget", "output", "top_k", "defenses"})
    if unknown:
      raise ValueError(f"unknown key setting(s) {', '.join(unknown)}; known: label, budget, output, top_k, defenses")
    defenses = d.get("defenses")
    if defenses is not None and not isinstance(defenses, Mapping):
      raise ValueError(f"defenses must be a JSON object, got {type(defenses).__name__}")
    try:
      out = cls(budget=d.get("budget"), output=d.get("output", "probabilities"), top_k=d.get("top_k"),
                defenses=Defenses(**dict(defenses or {})))
    except TypeError:  # an unknown defense field
      names = [f.name for f in dataclasses.fields(Defenses) if f.name != "noise_seed"]
      unknown = sorted(set(defenses) - {f.name for f in dataclasses.fields(Defenses)})
      raise ValueError(f"unknown defense setting(s) {', '.join(unknown)}; known: {', '.join(names)}") from None
    out.check()
    return out


def read_keys_file(path) -> dict[str, tuple[str, KeySettings]]:
  """Parses and checks a keys file (module docstring): {key: (label, settings)}; raises ValueError (one line)."""
  path = pathlib.Path(path)
  try:
    raw = json.loads(path.read_text())
  except OSError as e:
    raise ValueError(f"keys file {str(path)!r}: {e.strerror}") from None
  except (json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"keys file {path}: not valid JSON ({e})") from None
  if not isinstance(raw, dict) or not raw:
    raise ValueError(f"keys file {path}: expected a non-empty JSON object mapping key -> settings")
  out, labels = {}, set()
  for number, (key, entry) in enumerate(raw.items(), 1):
    where = f"keys file {path}: entry {number}"
    try:
      check_key(key)
      if not isinstance(entry, Mapping) or "label" not in entry:
        raise ValueError('each key needs a "label": the operator\'s name for it (not a piece of the key)')
      name = check_label(entry["label"])
      where = f"keys file {path}: key {name!r}"
      check_label_apart(name, key)
      if name in labels:
        raise ValueError("label used twice; labels name one key each")
      labels.add(name)
      out[key] = (name, KeySettings.from_dict({k: v for k, v in entry.items() if k != "label"}))
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
  return out
