"""`knockoff_random` and `knockoff_adaptive`: Orekondy, Schiele, Fritz, *Knockoff Nets: Stealing Functionality of
Black-Box Models*, CVPR 2019.

The attacker asks natural images of a transfer set (`--transfer_set`, other domains than the victim's) and trains
on the answers (soft, as the API returns them). The random policy samples the transfer set uniformly (one round).
The adaptive policy is a gradient bandit (Sutton & Barto, Sec. 2.8) over a hierarchy of kinds of input (here:
transfer source, then the source's own class or photograph): each query walks from the root, choosing a child at
each level with probability softmax(H) over its children (children with no unasked input left are skipped), asks a
random unasked input of the leaf reached, and, given the reward R_t of the answer, updates every level of the path

    H(a) += lr (R_t - mean R) (1 - pi(a)),   H(b) -= lr (R_t - mean R) pi(b) for the siblings b of a.

Rewards (the paper's): certainty (margin of the answer's two top probabilities), diversity (how much the answer
exceeds the mean of the last 25 answers, summed over classes), loss (cross-entropy of the current student against
the answer), or all three, each standardised by its running mean and variance and averaged (ART's combination; the
authors' adaptive code was never released). The paper updates the student after every query; here the student is
the one trained between rounds (`--rounds`), and the bandit updates after each of its mini-batches of queries.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from extraction.strategies.base import Round
from extraction.strategies.random import Random

REWARDS = ("cert", "div", "loss", "all")
DIVERSITY_WINDOW = 25


def gradient_bandit_update(
  h: np.ndarray, probs: np.ndarray, action: int, reward: float, baseline: float, lr: float
) -> np.ndarray:
  """One gradient-bandit step: the chosen action's preference moves by lr (R - baseline)(1 - pi), the others' by
  -lr (R - baseline) pi."""
  onehot = np.zeros_like(h)
  onehot[action] = 1.0
  return h + lr * (reward - baseline) * (onehot - probs)


def softmax_available(h: np.ndarray, available: np.ndarray) -> np.ndarray:
  """softmax(h) over the available entries, 0 elsewhere."""
  z = np.where(available, h, -np.inf)
  e = np.exp(z - z[available].max())
  return e / e.sum()


def certainty(answer: np.ndarray) -> float:
  top = np.sort(answer)[-2:]
  return float(top[1] - top[0])


def diversity(answer: np.ndarray, recent: np.ndarray) -> float:
  if not len(recent):
    return 0.0
  return float(np.maximum(answer - recent.mean(0), 0.0).sum())


def loss(answer: np.ndarray, student_probs: np.ndarray) -> float:
  return float(-(answer * np.log(np.clip(student_probs, 1e-12, 1.0))).sum())


@dataclasses.dataclass
class BanditState:
  """Preferences H per node of the hierarchy (node: the path prefix; H over its children), the leaves' unasked
  inputs (queues in random order), the running reward statistics and the last answers."""

  children: dict
  h: dict
  queues: dict
  reward_mean: float = 0.0
  count: int = 0
  stats_mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
  stats_var: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
  recent: list = dataclasses.field(default_factory=list)


def build_hierarchy(kinds: np.ndarray, unasked: np.ndarray, rng: np.random.Generator) -> BanditState:
  """The tree of kinds (each input's path (source, class, ...)) with a queue of unasked inputs per leaf."""
  children: dict[tuple, list] = {}
  queues: dict[tuple, list] = {}
  for i in rng.permutation(unasked):
    path = tuple(int(k) for k in kinds[i])
    for d in range(len(path)):
      kids = children.setdefault(path[:d], [])
      if path[d] not in kids:
        kids.append(path[d])
    queues.setdefault(path, []).append(int(i))
  children = {k: sorted(v) for k, v in children.items()}
  return BanditState(children, {k: np.zeros(len(v)) for k, v in children.items()}, queues)


def _available(state: BanditState, node: tuple) -> bool:
  if node in state.queues:
    return bool(state.queues[node])
  return any(_available(state, node + (c,)) for c in state.children.get(node, []))


def sample_path(state: BanditState, rng: np.random.Generator) -> list:
  """[(node, child position, policy over the node's children)] from the root to a leaf with unasked inputs."""
  node: tuple = ()
  steps: list = []
  while node not in state.queues:
    kids = state.children[node]
    available = np.array([_available(state, node + (c,)) for c in kids])
    probs = softmax_available(state.h[node], available)
    a = int(rng.choice(len(kids), p=probs))
    steps.append((node, a, probs))
    node = node + (kids[a],)
  return steps


@dataclasses.dataclass(frozen=True)
class KnockoffAdaptive:
  reward: str = "all"
  lr: float = 0.1
  batch: int = 8
  source: str = "transfer"
  labels_only: bool = False
  adaptive: bool = True

  def init(self, rnd: Round) -> BanditState:
    if rnd.kinds is None:
      raise ValueError("knockoff_adaptive needs the kinds of the transfer set's inputs")
    return build_hierarchy(rnd.kinds, rnd.unasked(), rnd.rng)

  def _reward(self, state: BanditState, answer: np.ndarray, student_probs: np.ndarray) -> float:
    recent = np.asarray(state.recent[-DIVERSITY_WINDOW:]).reshape(-1, len(answer))
    raw = np.array([certainty(answer), diversity(answer, recent), loss(answer, student_probs)])
    state.recent.append(answer)
    if self.reward != "all":
      return float(raw[REWARDS.index(self.reward)])
    n = state.count + 1
    state.stats_mean = state.stats_mean + (raw - state.stats_mean) / n
    state.stats_var = state.stats_var + ((raw - state.stats_mean) ** 2 - state.stats_var) / n
    if n == 1:
      return float(np.clip(raw, 0, 1).mean())
    return float(((raw - state.stats_mean) / np.sqrt(np.maximum(state.stats_var, 1e-12))).mean())

  def select(self, state: BanditState, rnd: Round, n: int) -> BanditState:
    from extraction.supervised import oracle_targets

    done = 0
    while done < n:
      paths, picks = [], []
      for _ in range(min(self.batch, n - done)):
        path = sample_path(state, rnd.rng)
        node, a, _ = path[-1]
        leaf = node + (state.children[node][a],)
        picks.append(state.queues[leaf].pop())
        paths.append(path)
      answers = oracle_targets(rnd.ask(indices=np.asarray(picks)), rnd.output)
      student = (
        rnd.student.probabilities(rnd.natural[picks])
        if rnd.student is not None
        else np.full(answers.shape, 1.0 / answers.shape[-1])
      )
      for path, answer, s in zip(paths, answers, student):
        r = self._reward(state, answer, s)
        state.count += 1
        for node, a, probs in path:
          state.h[node] = gradient_bandit_update(state.h[node], probs, a, r, state.reward_mean, self.lr)
        state.reward_mean += (r - state.reward_mean) / state.count
      done += len(picks)
    return state


def make_random(**_) -> Random:
  return Random(source="transfer")


def make_adaptive(
  knockoff_reward: str = "all", knockoff_lr: float = 0.1, knockoff_batch: int = 8, **_
) -> KnockoffAdaptive:
  if knockoff_reward not in REWARDS:
    raise ValueError(f"unknown knockoff reward {knockoff_reward!r}; choose one of {', '.join(REWARDS)}")
  return KnockoffAdaptive(reward=knockoff_reward, lr=knockoff_lr, batch=knockoff_batch)
