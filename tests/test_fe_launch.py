"""The functional_equivalence experiment: the registered function with flags set in-process, and the command line
(flag validation and attack failures as one-line errors, results files)."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from functional_equivalence import victims
from functional_equivalence.errors import OraclePrecisionError
from launch import experiments, fe

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent
# launch.run with launch.fe imported first, whether or not launch/run.py imports it itself
CLI = [sys.executable, "-c", "from launch import fe; from launch import run; run.run()"]


@pytest.fixture
def fe_flags():
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    yield FLAGS


def test_experiment_end_to_end_tiny_random(fe_flags, tmp_path):
  fe_flags.fe_victim, fe_flags.fe_input_dim, fe_flags.fe_hidden, fe_flags.fe_outputs = "random", 10, 7, 4
  fe_flags.fe_eval_inputs, fe_flags.seed = 3000, 0
  [row] = experiments.EXPERIMENTS["functional_equivalence"](tmp_path)
  assert row["hidden_units_found"] == 7 and row["shape"] == "10-7-4" and row["queries"] > 0
  assert row["max_weight_error"] <= 1e-9 and row["agreement"] == 1.0 and row["max_logit_error"] < 1e-9
  assert row["eval_inputs"] == 3000 and row["seconds"] >= 0
  victim, rec = victims.load_npz(tmp_path / "victim.npz"), victims.load_npz(tmp_path / "recovered.npz")
  x = np.random.default_rng(0).normal(size=(50, 10))
  np.testing.assert_allclose(victims.logits(rec, x), victims.logits(victim, x), atol=1e-9)


def test_experiment_reads_victim_npz_and_probabilities(fe_flags, tmp_path):
  path = victims.save_npz(tmp_path / "given.npz", victims.random_net(9, 6, 5, 3))
  fe_flags.victim_npz, fe_flags.fe_victim = str(path), None
  fe_flags.fe_oracle_output, fe_flags.fe_eval_inputs = "probabilities", 1000
  [row] = fe.run(tmp_path / "out")
  assert row["victim"] == "npz" and row["shape"] == "6-5-3" and row["oracle_output"] == "probabilities"
  assert row["max_weight_error"] <= 1e-9 and row["agreement"] == 1.0


def test_bad_victim_npz_flag_is_refused_on_assignment(fe_flags, tmp_path):
  np.savez(tmp_path / "bad.npz", w0=np.ones((3, 2)), b0=np.ones(2), w1=np.ones((2, 4)))
  with pytest.raises(flags.IllegalFlagValueError, match="missing array\\(s\\) b1"):
    fe_flags.victim_npz = str(tmp_path / "bad.npz")


def test_float32_victim_raises_a_clear_error(fe_flags, tmp_path):
  fe_flags.fe_victim, fe_flags.fe_input_dim, fe_flags.fe_hidden = "random", 6, 4
  fe_flags.fe_oracle_precision = "float32"
  with pytest.raises(OraclePrecisionError, match="the oracle answers in float32"):
    fe.run(tmp_path)


def _cli(*args):
  return subprocess.run(CLI + list(args), cwd=REPO, capture_output=True, text=True, timeout=120)


def test_command_line_run_writes_results(tmp_path):
  p = _cli("--experiment=functional_equivalence", f"--workdir={tmp_path}", "--fe_victim=random",
           "--fe_input_dim=6", "--fe_hidden=9", "--fe_outputs=3", "--fe_eval_inputs=1000")
  assert p.returncode == 0, p.stderr[-2000:]
  [row] = json.loads((tmp_path / "results.json").read_text())
  assert row["method"] == "functional_equivalence" and row["hidden_units_found"] == 9 and row["agreement"] == 1.0
  assert "| functional_equivalence |" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "recovered.npz").exists()


@pytest.mark.parametrize("args,message", [
    (["--victim_npz={tmp}/missing.npz"], "does not exist"),
    (["--victim_npz={tmp}/nan.npz"], "array 'w0' holds 1 NaN/inf values"),
    (["--victim_npz={tmp}/shape.npz"], "shape mismatch"),
    (["--fe_victim=npz"], "--fe_victim=npz needs --victim_npz=PATH"),
    (["--fe_hidden=0"], "fe_hidden"),
    (["--fe_oracle_precision=float32"], "error: OraclePrecisionError: the oracle answers in float32"),
])
def test_command_line_bad_flags_fail_with_one_line(tmp_path, args, message):
  w0 = np.ones((3, 2))
  w0[1, 1] = np.nan
  np.savez(tmp_path / "nan.npz", w0=w0, b0=np.ones(2), w1=np.ones((2, 4)), b1=np.ones(4))
  np.savez(tmp_path / "shape.npz", w0=np.ones((3, 2)), b0=np.ones(3), w1=np.ones((2, 4)), b1=np.ones(4))
  p = _cli("--experiment=functional_equivalence", f"--workdir={tmp_path}/w", *[a.format(tmp=tmp_path) for a in args])
  assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
  assert not (tmp_path / "w" / "results.json").exists()
