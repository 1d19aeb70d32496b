"""The functional_equivalence experiment: the registered function with flags set in-process, and the command line
(flag validation and attack failures as one-line errors, results files), the domain flags, independent random
streams, and the pure black-box attack on a served network."""
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
from launch import common, experiments, fe

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


def _tiny(flags_, d=10, h=7, k=4):
  flags_.fe_victim, flags_.fe_input_dim, flags_.fe_hidden, flags_.fe_outputs = "random", d, h, k
  flags_.fe_eval_inputs, flags_.fe_domain_eval_inputs, flags_.seed = 3000, 2000, 0


def test_experiment_end_to_end_tiny_random(fe_flags, tmp_path):
  _tiny(fe_flags)
  [row] = experiments.EXPERIMENTS["functional_equivalence"](tmp_path)
  assert row["hidden_units_found"] == 7 and row["shape"] == "10-7-4" and row["queries"] > 0
  assert row["max_weight_error"] <= 2.0 ** -32 and row["agreement"] == 1.0 and row["max_logit_error"] < 1e-9
  assert row["eval_inputs"] == 3000 and row["seconds"] >= 0
  # the domain, the queries of every stage, the final check and per-array errors are in the row
  assert row["domain"] == "ball R=1000" and row["domain_agreement"] == 1.0 and row["domain_eval_inputs"] == 2000
  stages = [k for k in row if k.startswith("queries_") and k != "queries_log2"]
  assert {"queries_search", "queries_gradients", "queries_check"} <= set(stages)
  assert sum(row[k] for k in stages) == row["queries"]
  assert row["check_error"] < 1e-9 and max(row[f"max_error_{a}"] for a in ("w0", "b0", "w1", "b1")) == row[
      "max_weight_error"]
  assert row["found_max_logit_diff"] <= row["certified_max_logit_diff"] < 1e-6
  assert len({row["victim_seed"], row["attack_seed"], row["eval_seed"]}) == 3
  units = json.loads((tmp_path / "units.json").read_text())
  assert units["kind"] == ["unit"] * 7 and max(units["row_error"]) == row["max_unit_row_error"] < 1e-9
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


def test_victim_attack_and_evaluation_draw_independent_streams(fe_flags, tmp_path):
  _tiny(fe_flags)
  runs = {}
  for name, attack_seed, eval_seed in (("a", None, None), ("b", 5, None), ("c", None, 6)):
    fe_flags.fe_attack_seed, fe_flags.fe_eval_seed = attack_seed, eval_seed
    [runs[name]] = fe.run(tmp_path / name)
  victim = [(tmp_path / n / "victim.npz").read_bytes() for n in "abc"]
  assert victim[0] == victim[1] == victim[2]                         # the victim depends on --seed only
  a, b, c = runs["a"], runs["b"], runs["c"]
  assert a["queries"] != b["queries"] and a["queries"] == c["queries"]   # the attack on its own stream
  assert a["domain_max_logit_error"] == b["domain_max_logit_error"] or a["max_weight_error"] != b["max_weight_error"]
  assert a["domain_max_logit_error"] != c["domain_max_logit_error"]   # the evaluation on its own stream
  # the attack's first inputs are not the victim's random numbers (they once were: one seed for both)
  net = victims.random_net(0, 10, 7, 4)
  first = np.random.default_rng(a["attack_seed"]).normal(size=(16, 10))
  assert not np.isclose(first.ravel()[:7], net.w0[0] * np.sqrt(10)).any()


@pytest.mark.parametrize("flag,value,domain", [("fe_box", ["0", "1"], "box [0, 1]"), ("fe_radius", 50.0, "ball R=50")])
def test_domain_flags(fe_flags, tmp_path, flag, value, domain):
  _tiny(fe_flags)
  setattr(fe_flags, flag, value)
  [row] = fe.run(tmp_path)
  assert row["domain"] == domain and row["domain_agreement"] == 1.0 and row["certified_max_logit_diff"] < 1e-8


def test_black_box_attack_on_a_served_network(fe_flags, tmp_path):
  pytest.importorskip("fastapi")
  pytest.importorskip("uvicorn")
  import service
  from tests.conftest import make_key_store
  net = victims.random_net(4, 12, 9, 3)
  path = victims.save_npz(tmp_path / "served.npz", net)
  store = make_key_store(tmp_path / "keys.sqlite", {"fe-black-box-key-0123": {"output": "logits"}})
  with service.BackgroundServer(service.create_app(service.model_from_npz(path), store)) as url:
    fe_flags.api_key, fe_flags.oracle_url, fe_flags.fe_domain_eval_inputs = "fe-black-box-key-0123", url, 2000
    [row] = fe.run(tmp_path / "blind")                               # no npz: d from the service
    fe_flags["fe_input_dim"].parse("11")
    with pytest.raises(common.ConfigError, match="--fe_input_dim=11 but --oracle_url=.* takes inputs of dimension 12"):
      fe.run(tmp_path / "bad")
    fe_flags["fe_input_dim"].parse("12")
    fe_flags.victim_npz = str(path)
    [known] = fe.run(tmp_path / "known")                             # the same attack, evaluated
  assert row["victim"] == "remote" and row["recovered_shape"] == "12-9-3" and row["domain"] == "ball R=1000"
  assert row["queries"] > 0 and row["check_error"] < 1e-9 and row["seconds"] >= 0
  assert "max_weight_error" not in row and "agreement" not in row and not (tmp_path / "blind" / "victim.npz").exists()
  assert known["victim"] == "npz" and known["queries"] == row["queries"] and known["max_weight_error"] <= 2.0 ** -32
  rec = victims.load_npz(tmp_path / "blind" / "recovered.npz")
  x = np.random.default_rng(0).normal(size=(100, 12)) * 300
  np.testing.assert_allclose(victims.logits(rec, x), victims.logits(net, x), rtol=0, atol=1e-7)


def test_bad_domain_flags_are_refused_on_assignment(fe_flags):
  with pytest.raises(flags.IllegalFlagValueError, match="--fe_box needs finite LOW < HIGH"):
    fe_flags.fe_box = ["1", "0"]
  fe_flags.fe_box = ["0", "1"]
  with pytest.raises(flags.IllegalFlagValueError, match="--fe_box and --fe_radius both give the domain"):
    fe_flags.fe_radius = 3.0


def test_oracle_url_with_a_local_victim_is_refused(fe_flags):
  fe_flags.experiment, fe_flags.api_key, fe_flags.oracle_url = "functional_equivalence", "k", "http://127.0.0.1:1"
  with pytest.raises(flags.IllegalFlagValueError, match="--fe_victim=random cannot be used with it"):
    fe_flags.fe_victim = "random"


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
