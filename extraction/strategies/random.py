"""`random`: a uniform random choice of natural inputs, asked in one round (the project's original choice).

From the attacker's pool (source 'pool') this is `extraction.supervised.choose_queries`, bit for bit: the first n
of a permutation drawn from the query stream, so that budgets nest. Copycat and Knockoff Nets' random policy are
the same choice from a transfer set (`copycat.py`, `knockoff.py`).
"""

from __future__ import annotations

import dataclasses

from extraction.strategies.base import OneRound, Round, sample_unasked


@dataclasses.dataclass(frozen=True)
class Random(OneRound):
  def select(self, state, rnd: Round, n: int):
    rnd.ask(indices=sample_unasked(rnd, n))
    return state
