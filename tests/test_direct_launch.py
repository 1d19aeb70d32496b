"""The direct_recovery experiment: every attack through the registered function (flags set in-process), the victim
and attack checks as one-line errors, the budget, and the command line with a flagfile."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from sklearn.linear_model import LogisticRegression

from extraction import sklearn_victims as sv
from extraction.oracle import BudgetExceeded
from functional_equivalence import victims
from launch import common, direct, experiments  # noqa: F401 (direct defines the flags set in-process here)

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "launch.run"]


@pytest.fixture
def dr(tmp_path):
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    FLAGS.attack, FLAGS.victim = "equation_solving", "iris:logistic_regression"  # before --experiment
    FLAGS.experiment, FLAGS.workdir, FLAGS.eval_inputs = "direct_recovery", str(tmp_path), 2000
    yield FLAGS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A 6-feature binary linear victim on [-1, 2]^6 (joblib) and a 5-7-3 two-layer net (npz), not shipped data."""
  tmp = tmp_path_factory.mktemp("victims")
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 2, size=(400, 6))
  lin = LogisticRegression().fit(x, (x @ rng.normal(size=6) > 0.3).astype(int))
  return dict(
    linear=str(sv.save_joblib(tmp / "linear.joblib", lin)),
    net=str(victims.save_npz(tmp / "net.npz", victims.random_net(1, 5, 7, 3))),
  )


def _run(tmp_path):
  [row] = experiments.EXPERIMENTS["direct_recovery"](tmp_path)
  assert row["queries"] == row["oracle_used"] and row["eval_inputs"] == 2000
  return row


def test_equation_solving_on_a_built_victim_writes_both_models(dr, tmp_path):
  dr.attack, dr.victim = "equation_solving", "iris:logistic_regression"
  row = _run(tmp_path)
  assert row["queries"] == 5 and row["max_rel_weight_error"] <= 1e-8 and row["agreement"] == 1.0
  assert row["data_agreement"] == 1.0 and row["data_inputs"] == 38 and row["max_answer_error"] <= 1e-9
  victim, rec = sv.load_joblib(tmp_path / "victim.joblib"), sv.load_joblib(tmp_path / "recovered.joblib")
  x = np.random.default_rng(0).uniform(0, 1, size=(100, 4))
  np.testing.assert_allclose(rec.predict_proba(x), victim.predict_proba(x), atol=1e-12)


def test_lowd_meek_and_active_learning_on_a_joblib_victim(dr, tmp_path, files):
  dr.victim, dr.box = files["linear"], ["-1", "2"]
  dr.attack = "lowd_meek"
  lm = _run(tmp_path / "lm")
  dr.attack, dr.direct_epsilon = "active_linear", 1e-5
  al = _run(tmp_path / "al")
  assert lm["max_rel_weight_error"] <= 1e-6 and al["max_rel_weight_error"] <= 1e-4
  assert lm["agreement"] == al["agreement"] == 1.0 and "data_agreement" not in lm
  assert al["queries"] > lm["queries"]


@pytest.mark.parametrize("strategy,missing", [("top_down", "stop"), ("exhaustive", "majority")])
def test_path_finding_finds_every_leaf(dr, tmp_path, strategy, missing):
  dr.attack, dr.victim, dr.path_strategy, dr.tree_missing = "path_finding", "wine:tree", strategy, missing
  row = _run(tmp_path)
  assert row["leaves_found"] == row["true_leaves"] and row["agreement"] == row["data_agreement"] == 1.0
  assert row["max_threshold_error"] <= 1e-6 and row["strategy"] == strategy
  assert sv.kind(sv.load_joblib(tmp_path / "recovered.joblib")) == "tree_classifier"


def test_gradient_recovery_on_an_npz_victim(dr, tmp_path, files):
  dr.attack, dr.victim, dr.box = "gradient_recovery", files["net"], ["-2", "2"]
  row = _run(tmp_path)
  assert row["max_weight_error"] <= 1e-8 and row["matched_units"] == row["true_units"] == 7
  assert row["agreement"] == 1.0 and victims.load_npz(tmp_path / "recovered.npz").w0.shape == (5, 7)


def test_the_budget_ends_the_run(dr, tmp_path):
  dr.attack, dr.victim, dr.queries = "equation_solving", "iris:logistic_regression", ["4"]
  with pytest.raises(BudgetExceeded, match="query of 5 inputs refused"):
    experiments.EXPERIMENTS["direct_recovery"](tmp_path)


@pytest.mark.parametrize(
  "attack,victim,extra,message",
  [
    (
      "path_finding",
      "iris:logistic_regression",
      {},
      "path_finding needs a DecisionTreeClassifier or DecisionTreeRegressor; the victim is LogisticRegression",
    ),
    ("gradient_recovery", "wine:tree", {}, "gradient_recovery needs a two-layer ReLU network"),
    ("lowd_meek", "iris:logistic_regression", {}, "LogisticRegression with 3 classes"),
    ("equation_solving", "wine:linear_svc", {}, "it has no probabilities"),
    ("equation_solving", "NET", {}, "give --mlp_hidden=H"),
    ("path_finding", "iris:tree", {"tree_missing": "majority"}, "needs an API that stops"),
  ],
)
def test_a_victim_the_attack_cannot_handle_is_refused_before_any_query(
  dr, tmp_path, files, attack, victim, extra, message
):
  dr.attack, dr.victim = attack, files["net"] if victim == "NET" else victim
  for k, v in extra.items():
    setattr(dr, k, v)
  with pytest.raises(common.ConfigError, match=message) as e:
    experiments.EXPERIMENTS["direct_recovery"](tmp_path)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "name,value,message",
  [
    ("box", ["1", "0"], "finite LOW < HIGH"),
    ("box", ["0"], "LOW,HIGH"),
    ("victim", "iris:forest", "DATASET:MODEL"),
    ("victim", "diabetes:linear_svc", "regression dataset"),
    ("victim", "/nonexistent/v.joblib", "does not exist"),
    ("queries", ["10", "20"], "one hard budget"),
    ("direct_output", "leaf", None),
    ("oracle_url", "http://127.0.0.1:1", "not supported"),
  ],
)
def test_bad_flags_are_refused_on_assignment(dr, name, value, message):
  dr.api_key = "key"  # so that --oracle_url meets this experiment's check, not the missing key's
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    setattr(dr, name, value)


def test_command_line_runs_a_flagfile(tmp_path):
  p = subprocess.run(
    CLI
    + [
      "--flagfile=table1_equation_solving.flags",
      f"--workdir={tmp_path}/ok",
      "--victim=wine:logistic_regression",
      "--eval_inputs=1000",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-2000:]
  [row] = json.loads((tmp_path / "ok" / "results.json").read_text())
  assert row["attack"] == "equation_solving" and row["queries"] == 14 and row["agreement"] == 1.0
  assert (
    row["config"]["attack"] == "equation_solving"
    and "| equation_solving |" in (tmp_path / "ok" / "results.md").read_text()
  )


def test_the_launcher_ends_a_mismatched_run_with_one_line(dr, tmp_path):
  from absl import logging

  from launch import run

  dr.attack, dr.victim = "path_finding", "iris:linear_svc"
  try:
    with pytest.raises(SystemExit) as e:
      run.main(["launch.run"])
  finally:  # main logs to <workdir>/log.txt: detach that file
    for h in [h for h in logging.get_absl_logger().handlers if str(tmp_path) in getattr(h, "baseFilename", "")]:
      logging.get_absl_logger().removeHandler(h)
      h.close()
  assert str(e.value.code).startswith("error: ConfigError: path_finding needs a DecisionTree")
  assert "\n" not in str(e.value.code) and not (tmp_path / "results.json").exists()
