"""`copycat`: Correia-Silva, De Souza, Berriel, Badue, De Souza, Oliveira-Santos, *Copycat CNN: Stealing Knowledge by
Persuading Confession with Random Non-Labeled Data*, IJCNN 2018.

The attacker holds no problem-domain data: it asks the API about random natural images of other domains (a
transfer set, `--transfer_set`) and trains on the top-1 label of each answer only, whatever the API returns
(the paper's attacker sees labels). One round; nothing adaptive.
"""

from __future__ import annotations

from extraction.strategies.random import Random


def make(**_) -> Random:
  return Random(source="transfer", labels_only=True)
