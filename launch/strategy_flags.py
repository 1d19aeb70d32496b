"""Flags of the query strategies of `--experiment=extraction` (`extraction/strategies/`): which inputs each
extraction asks, in how many rounds, from which transfer set, and each strategy's own parameters.

  python -m launch.run --flagfile=configs/quickstart.flags --strategy=random,kcenter,knockoff_adaptive --rounds=4
"""

from __future__ import annotations

from collections.abc import Callable

from absl import flags

from extraction import strategies, transfer

flags.DEFINE_list(
  "strategy", ["random"], f"Query strategies (one row per strategy): {', '.join(strategies.STRATEGIES)}."
)
flags.DEFINE_integer(
  "rounds",
  4,
  "Adaptive strategies ask each budget in this many rounds (split evenly), the "
  "students trained between rounds; random, copycat and knockoff_random ask in one round.",
)
flags.DEFINE_enum(
  "round_training",
  "finetune",
  ["finetune", "retrain"],
  "Between rounds: 'finetune' trains the "
  "same students on, a share of --student_steps per round (same total as one round); 'retrain' "
  "trains fresh students of --round_steps on each round's data to choose the next queries, and "
  "the final students from scratch on everything.",
)
flags.DEFINE_integer(
  "round_steps",
  None,
  "Steps of the intermediate students with --round_training=retrain (default --student_steps).",
  lower_bound=1,
)
flags.DEFINE_list(
  "transfer_set",
  ["photos"],
  f"Natural non-problem-domain images for copycat and knockoff_*: "
  f"{', '.join(transfer.TRANSFER_SETS)} (comma-separated: a union, one branch of Knockoff's "
  f"hierarchy each).",
)
flags.DEFINE_integer("transfer_size", 20000, "Images drawn into the transfer set.", lower_bound=1)
flags.DEFINE_integer(
  "candidates",
  0,
  "uncertainty, kcenter, dfal: choose among a random subset of this many unasked inputs per round (0: all).",
  lower_bound=0,
)
flags.DEFINE_float(
  "jbda_lambda", 0.1, "JBDA step, in units of the input range (0.1: 25.5 pixel levels).", lower_bound=0.0
)
flags.DEFINE_integer("jbda_tau", 3, "JBDA flips the sign of its step every this many rounds.", lower_bound=1)
flags.DEFINE_enum("knockoff_reward", "all", list(strategies.knockoff.REWARDS), "Knockoff adaptive reward.")
flags.DEFINE_float("knockoff_lr", 0.1, "Knockoff adaptive: step size of the gradient bandit.", lower_bound=0.0)
flags.DEFINE_integer("knockoff_batch", 8, "Knockoff adaptive: queries per bandit update.", lower_bound=1)
flags.DEFINE_integer("dfal_max_iter", 10, "DFAL: DeepFool iterations at most.", lower_bound=1)
flags.DEFINE_integer(
  "dfal_classes", 0, "DFAL: DeepFool linearises the top this many classes of each input (0: all).", lower_bound=0
)
flags.DEFINE_integer("dfme_batch", 64, "DFME: generated images per generator step.", lower_bound=1)
flags.DEFINE_integer("dfme_directions", 1, "DFME: random directions of the forward-difference gradient.", lower_bound=1)
flags.DEFINE_float("dfme_epsilon", 2.0, "DFME: forward-difference step, in pixel levels.", lower_bound=1.0)
flags.DEFINE_float("dfme_lr", 5e-4, "DFME: generator learning rate (Adam).", lower_bound=0.0)

flags.DEFINE_integer(
  "typiclust_dims", 32, "TypiClust: principal components of the pixels it clusters (0: raw pixels).", lower_bound=0
)
flags.DEFINE_integer("typiclust_neighbours", 20, "TypiClust: nearest neighbours of its typicality.", lower_bound=1)
flags.DEFINE_integer("typiclust_clusters", 500, "TypiClust: k-means clusters at most (the paper's cap).", lower_bound=1)

FLAGS = flags.FLAGS


def _names_in(flag: str, registry) -> Callable:
  """A validator of a list flag whose every name is a key of `registry`."""

  def check(names):
    if not names or any(n not in registry for n in names):
      raise flags.ValidationError(f"unknown --{flag}={','.join(names)}; choose from {', '.join(registry)}")
    return True

  return check


flags.register_validator("strategy", _names_in("strategy", strategies.STRATEGIES))
flags.register_validator("transfer_set", _names_in("transfer_set", transfer.TRANSFER_SETS))


@flags.validator("rounds")
def _positive_rounds(v):
  if v < 1:
    raise flags.ValidationError(f"--rounds must be >= 1, got {v}")
  return True


def make(name: str):
  """The strategy `name` with its flags."""
  return strategies.make(name, **{p: getattr(FLAGS, p) for p in strategies.params_of(name)})


def settings(name: str, strategy) -> dict:
  """What changes a strategy's queries, for run names: its own parameters only (another strategy's flag leaves its
  runs' names alone); empty for `random`, whose runs keep the names they had before strategies existed."""
  if name == "random":
    return {}
  out = {"strategy": name, "params": {p: getattr(FLAGS, p) for p in strategies.params_of(name)}}
  if strategy.adaptive:
    out.update(rounds=FLAGS.rounds, round_training=FLAGS.round_training, round_steps=FLAGS.round_steps)
  if strategy.source == "transfer":
    out.update(transfer=[FLAGS.transfer_set, FLAGS.transfer_size])
  return out
