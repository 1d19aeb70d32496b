"""Query strategies at the launcher, counted by a recording backend (tests/test_protocol.py's): the hard budget of
every extraction across rounds, the evaluation data (validation and test splits) never asked, no unlabeled input
ever asked, transfer sets drawn from another domain, one-line errors, and a finished run reused without asking."""

import numpy as np
import pytest

from launch import common
from tests.test_protocol import _never_asked_unlabeled, _random_dataset, _run_in_process, recorded  # noqa: F401

ARGS = [
  "--experiment=extraction",
  "--dataset=cifar10",
  "--victim_model=mlp",
  "--victim_steps=5",
  "--student_model=mlp",
  "--student_steps=4",
  "--queries=20,60",
  "--seeds=1",
  "--noise_samples=8",
  "--gauss_sigmas=16",
  "--eval_every=2",
  "--batch_size=8",
  "--rounds=2",
  "--candidates=50",
]


def _data(tmp_path):
  _random_dataset(tmp_path / "data")
  load = lambda split: np.load(tmp_path / "data" / "cifar10" / f"{split}.npz")["image"]
  return load("train"), load("test"), [f"--data_dir={tmp_path / 'data'}", f"--workdir={tmp_path / 'w'}"]


def test_pool_strategies_ask_their_budget_and_never_the_evaluation_data(tmp_path, recorded):  # noqa: F811 (the fixture imported above)
  train, test, paths = _data(tmp_path)
  args = ARGS + ["--method=mixmatch", "--strategy=kcenter,dfal,typiclust"] + paths
  rows = _run_in_process(args)
  assert [len(r) for r in recorded] == [20, 60] * 3  # each extraction's oracle: exactly its budget
  _never_asked_unlabeled(recorded, tmp_path / "w", train, test)  # pool inputs only; no val, no test, no unlabeled
  assert [(r["strategy"], r["queries"], r["oracle_used"]) for r in rows[1:]] == [
    (s, q, q) for s in ("kcenter", "dfal", "typiclust") for q in (20, 60)
  ]
  recorded.clear()
  again = _run_in_process(args)  # a finished run of rounds is reused: the oracle is not asked again
  assert sum(len(r) for r in recorded) == 0
  assert [r["fidelity"] for r in again[1:]] == [r["fidelity"] for r in rows[1:]]
  assert [r["oracle_used"] for r in again[1:]] == [20, 60] * 3
  recorded.clear()
  _run_in_process(args + ["--dfme_lr=0.01", "--jbda_tau=5"])  # other strategies' flags: same runs, nothing asked
  assert sum(len(r) for r in recorded) == 0
  _run_in_process(args + ["--dfal_classes=2"])  # DFAL's own flag: a new DFAL run; k-center's is reused
  assert [len(r) for r in recorded if len(r)] == [20, 60]
  recorded.clear()
  _run_in_process(args + ["--typiclust_dims=4"])  # TypiClust's own flag: a new TypiClust run only
  assert [len(r) for r in recorded if len(r)] == [20, 60]


def test_synthesising_and_transfer_strategies_never_ask_the_evaluation_data(tmp_path, recorded):  # noqa: F811 (the fixture imported above)
  train, test, paths = _data(tmp_path)
  rows = _run_in_process(
    ARGS
    + [
      "--method=fs",
      "--strategy=jbda,copycat,knockoff_adaptive,dfme",
      "--transfer_set=digits",
      "--dfme_batch=4",
      "--oracle_output=labels",
    ]
    + paths
  )
  assert [len(r) for r in recorded] == [20, 60] * 4
  split = np.load(tmp_path / "w" / "split.npz")
  forbidden = {img.tobytes() for img in test} | {train[i].tobytes() for i in split["val"]}
  pool = {train[i].tobytes() for i in split["pool"]}
  for i, rec in enumerate(recorded):
    assert not forbidden & set(rec), f"oracle {i} was asked evaluation data"
    if i >= 2:  # copycat, knockoff, dfme: nothing of the victim's domain
      assert not pool & set(rec), f"oracle {i} asked the attacker's pool"
  jbda = recorded[1]
  assert 0 < len(pool & set(jbda)) < 60  # a seed set of the pool, the rest synthesised
  assert [(r["strategy"], r["oracle_used"]) for r in rows[1:]] == [
    (s, q) for s in ("jbda", "copycat", "knockoff_adaptive", "dfme") for q in (20, 60)
  ]


@pytest.mark.parametrize(
  "extra, message",
  [
    (["--strategy=dfme", "--method=mixmatch"], "synthesises every query"),
    (["--strategy=copycat", "--transfer_set=cifar10"], "victim's own domain"),
    (["--strategy=copycat", "--transfer_set=digits", "--transfer_size=30"], "more than the transfer set's"),
  ],
)
def test_strategy_misconfigurations_are_config_errors(tmp_path, extra, message):
  _, _, paths = _data(tmp_path)
  with pytest.raises(common.ConfigError, match=message):
    _run_in_process(ARGS + paths + extra)


def test_one_round_queries_are_saved_and_a_rerun_or_a_new_method_asks_nothing(tmp_path, recorded):  # noqa: F811 (the fixture imported above)
  """Random (and every one-round strategy) asks once per launcher run for all methods; saved under queries/, a
  re-run and a further method on the same queries ask the oracle nothing, and a new query seed asks again."""
  train, test, paths = _data(tmp_path)
  args = ARGS + ["--strategy=random"] + paths
  rows = _run_in_process(args + ["--method=fs"])
  assert [len(r) for r in recorded] == [20, 60]
  first = list(recorded)
  recorded.clear()
  again = _run_in_process(args + ["--method=fs,mixmatch"])
  assert sum(len(r) for r in recorded) == 0
  assert [r["fidelity"] for r in again[1:3]] == [r["fidelity"] for r in rows[1:]]
  assert [(r["method"], r["oracle_used"]) for r in again[1:]] == [
    ("fs", 20),
    ("fs", 60),
    ("mixmatch", 20),
    ("mixmatch", 60),
  ]
  _never_asked_unlabeled(first, tmp_path / "w", train, test)  # MixMatch trains on the first run's queries
  recorded.clear()
  _run_in_process(args + ["--method=fs", "--query_seed=5"])
  assert [len(r) for r in recorded] == [20, 60]
