"""Query strategies, keyed by the `--strategy` flag string: which inputs an extraction asks the oracle.

Each module holds one strategy (two for Knockoff Nets' policies) and cites its paper; `base.py` says the
interface. `make(name, **params)` builds one from the experiment's parameters (each strategy takes the ones it
knows). Attack code here only ever calls `oracle(x)`, through `Round.ask`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from extraction.strategies import copycat, dfal, dfme, jbda, kcenter, knockoff, typiclust, uncertainty
from extraction.strategies.base import Asked, Round, RoundBudgetExceeded, Student  # noqa: F401
from extraction.strategies.random import Random

STRATEGIES: dict[str, Callable[..., Any]] = {
  "random": lambda **_: Random(),
  "jbda": jbda.make,
  "knockoff_random": knockoff.make_random,
  "knockoff_adaptive": knockoff.make_adaptive,
  "copycat": copycat.make,
  "uncertainty": uncertainty.make,
  "kcenter": kcenter.make,
  "dfal": dfal.make,
  "dfme": dfme.make,
  "typiclust": typiclust.make,
}

PAPERS = {
  "random": "uniform choice from the attacker's pool (Jagielski et al. 2020's protocol)",
  "jbda": "Papernot et al., AsiaCCS 2017",
  "knockoff_random": "Orekondy et al., CVPR 2019 (random policy)",
  "knockoff_adaptive": "Orekondy et al., CVPR 2019 (adaptive policy)",
  "copycat": "Correia-Silva et al., IJCNN 2018",
  "uncertainty": "Pal et al., AAAI 2020 (ActiveThief, uncertainty)",
  "kcenter": "Pal et al., AAAI 2020 (ActiveThief, k-center)",
  "dfal": "Pal et al., AAAI 2020 (ActiveThief, DFAL)",
  "dfme": "Truong et al., CVPR 2021",
  "typiclust": "Hacohen et al., ICML 2022 (TypiClust)",
}


def make(name: str, **params):
  """The strategy `name` (see STRATEGIES) with its parameters."""
  if name not in STRATEGIES:
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
  return STRATEGIES[name](**params)


def params_of(name: str) -> tuple[str, ...]:
  """The parameters strategy `name` takes (those of its `make`): the ones that can change its queries."""
  signature = inspect.signature(STRATEGIES[name])
  return tuple(p.name for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD)
