"""The limits study (extraction/limits.py, launch/limits.py): pairs that vary exactly one source, bit-identical
runs when nothing varies, bounded differences across device counts, and the ground-truth targets path of the
extraction launcher, which asks the oracle nothing (counted at the victim's backend, not by the oracle)."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from extraction import limits
from tests.test_protocol import _random_dataset, _run_in_process

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parent.parent


def _changed(a: limits.Run, b: limits.Run) -> set:
  return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def test_each_source_varies_exactly_one_thing():
  pairs = limits.plan(list(limits.SOURCES), seed=5, repeats=3, device_counts=[1, 2, 4], base_devices=2)
  expected = {
    "nothing": {"repeat"},
    "deterministic_ops": {"repeat"},
    "init": {"init_seed"},
    "data": {"data_seed"},
    "all": {"init_seed", "data_seed"},
    "devices": {"devices"},
    "precision": {"precision"},
  }
  for source, ps in pairs.items():
    assert len(ps) >= 3, source
    assert len(set(ps)) == len(ps), source  # no pair counted twice
    for a, b in ps:
      assert _changed(a, b) == expected[source], (source, a, b)
      assert a.name != b.name
      untouched = {f.name for f in dataclasses.fields(a)} - expected[source] - {"deterministic_ops", "repeat"}
      for field in untouched:  # everything else at the base settings or the pair's own seed
        if field == "devices":
          assert a.devices == 2
        if field == "precision":
          assert a.precision == b.precision == "float32"
    if source == "all":
      assert all(a.init_seed == a.data_seed and b.init_seed == b.data_seed for a, b in ps)
  assert all(a.deterministic_ops and b.deterministic_ops for a, b in pairs["deterministic_ops"])
  assert not any(r.deterministic_ops for s, ps in pairs.items() if s != "deterministic_ops" for p in ps for r in p)
  # The base run (seed 5 twice, 2 devices, float32) is shared by init, data, all, devices, precision and nothing.
  base = limits.Run(5, 5, 2)
  assert all(any(base in p for p in pairs[s]) for s in ("nothing", "init", "data", "all", "devices", "precision"))
  default = {s: pairs[s] for s in ("nothing", "init", "data", "all", "devices", "precision")}
  assert len(limits.unique_runs(default)) == 15  # 1 base + 2 + 2 + 2 + 2 + 3 bfloat16 + 3 repeats
  with pytest.raises(ValueError, match="unknown source 'cosmic_rays'"):
    limits.plan(["cosmic_rays"], 0, 3, [1, 2], 1)
  with pytest.raises(ValueError, match="at least 2 repeats"):
    limits.plan(["init"], 0, 1, [1, 2], 1)
  with pytest.raises(ValueError, match="at least 2 device counts"):
    limits.plan(["devices"], 0, 3, [2, 2], 2)


def test_compare_and_param_difference():
  a = {"w": np.array([1.0, -2.0], np.float32), "b": {"c": np.zeros(3, np.float32)}}
  assert limits.param_difference(a, a) == (0.0, True)
  b = {"w": np.nextafter(a["w"], np.float32(9)), "b": {"c": np.zeros(3, np.float32)}}  # one ulp apart
  worst, same = limits.param_difference(a, b)
  assert not same and 0 < worst < 1e-6
  with pytest.raises(ValueError, match="different structures"):
    limits.param_difference(a, {"w": a["w"]})
  rng = np.random.default_rng(0)
  la = {"test": rng.normal(size=(50, 10)), "noise": np.tile(np.eye(10)[3], (20, 1)), "gauss8": rng.normal(size=(9, 10))}
  labels = la["test"].argmax(-1)
  same_pair = limits.compare(la, la, labels, 10)
  assert same_pair["fidelity"] == same_pair["gauss8_fidelity"] == same_pair["noise_fidelity"] == 1.0
  assert same_pair["max_logit_diff"] == 0.0 and same_pair["accuracy"] == 1.0 and same_pair["noise_top_share"] == 1.0
  lb = {k: v + 0.5 for k, v in la.items()}  # a common shift: same predictions, logits 0.5 apart
  lb["test"] = lb["test"].copy()
  lb["test"][:10] = -lb["test"][:10]  # the first 10 predictions change
  other = limits.compare(la, lb, labels, 10)
  assert other["fidelity"] == pytest.approx(0.8) and other["max_logit_diff"] > 0.5
  assert other["noise_max_logit_diff"] == pytest.approx(0.5) and other["accuracy"] == pytest.approx(0.9)


def test_one_step_on_1_2_4_devices_differs_within_tolerance_and_repeats_bit_identically():
  """One step of the recipe (Adam, lr 0.002; an MLP victim to keep the test fast) on 1, 2 and 4 forced CPU
  devices: the same global batch, other reduction orders. Stated tolerance: no weight, EMA weight or batch
  statistic more than lr / 10 apart, and at most 5% of the weights apart by more than 1e-6 lr (Adam's first
  update is about lr * sign(gradient), so a weight whose gradient is float noise can move by up to 2 lr; on
  these inputs about 1% of them do, by far less than that). The same run twice on one device: bit-identical."""
  env = {**os.environ, "LIMITS_CHECK_MODEL": "mlp"}
  p = subprocess.run(
    [sys.executable, "-m", "tests.limits_check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4
  assert out["again"] == [0.0, True]
  for n in (2, 4):
    worst, same = out[f"devices_{n}"]
    assert not same and 0 < worst <= out["lr"] / 10, (n, worst)
    assert 0 < out[f"devices_{n}_share_apart"] <= 0.05


def test_limits_experiment_end_to_end(tmp_path):
  """Digits, an MLP recipe of 4 steps: nothing varied (two processes) is bit-identical, two device counts are not;
  runs are reused on a second call; the attack and functionally-equivalent rows come out beside them."""
  args = [
    "--experiment=limits",
    f"--workdir={tmp_path}",
    "--dataset=digits",
    "--victim_model=mlp",
    "--victim_steps=4",
    "--victim_batch_size=32",
    "--limits_sources=nothing,devices",
    "--limits_repeats=1",
    "--limits_devices=1,2",
    "--limits_base_devices=1",
    "--queries=40",
    "--student_model=mlp",
    "--student_steps=4",
    "--eval_every=2",
    "--noise_samples=32",
    "--gauss_sigmas=16",
    "--fe_hidden=8",
    "--fe_train_steps=30",
    "--seed=3",
  ]
  rows = _run_in_process(args)
  by = {r["source"]: r for r in rows}
  assert [r["source"] for r in rows] == ["victim", "nothing", "devices", "attack", "functional_equivalence"]
  assert by["nothing"]["params_identical"] and by["nothing"]["max_param_diff"] == 0.0
  assert by["nothing"]["fidelity"] == 1.0 and by["nothing"]["max_logit_diff"] == 0.0 and by["nothing"]["pairs"] == 1
  assert not by["devices"]["params_identical"] and 0 < by["devices"]["max_param_diff"] < 0.01
  assert by["devices"]["per_pair"][0]["a"] == "init3_data3_dev1_float32"
  assert by["attack"]["oracle_used"] == 40 and 0 <= by["attack"]["fidelity"] <= 1
  fe = by["functional_equivalence"]
  assert fe["fidelity"] == 1.0 and fe["max_logit_diff"] < 1e-6 and fe["oracle_used"] == fe["queries"] > 0
  runs = sorted((tmp_path / "runs").glob("recipe_*/*/done.json"))
  assert [p.parent.name for p in runs] == [
    "init3_data3_dev1_float32",
    "init3_data3_dev1_float32_repeat1",
    "init3_data3_dev2_float32",
  ]
  assert [len(json.loads(p.read_text())["devices"]) for p in runs] == [1, 1, 2]  # each process its own devices
  assert (tmp_path / "plot.png").stat().st_size > 1000
  stamps = [p.stat().st_mtime_ns for p in runs]
  again = _run_in_process(args + ["--limits_attacks=false", "--limits_fe=false"])
  assert [p.stat().st_mtime_ns for p in runs] == stamps  # every run reused, none trained again
  assert again[1]["per_pair"] == by["nothing"]["per_pair"] and again[2]["per_pair"] == by["devices"]["per_pair"]


def test_queries_as_pool_fractions():
  from launch import learning

  assert learning.budgets_of(["10%", "100%"], 1294) == [129, 1294]
  assert learning.budgets_of(["0.01%", "50", "50%", "647"], 1294) == [1, 50, 647]  # at least one; duplicates once
  assert learning.budgets_of(["12.5%"], 48000) == [6000]


def test_bad_limits_and_targets_flags_fail_up_front():
  for arg, message in (
    ("--limits_sources=init,cosmic_rays", "unknown --limits_sources"),
    ("--limits_devices=1,x", "--limits_devices must be positive integers"),
    ("--targets=oracle,labels", "unknown --targets=oracle,labels"),
    ("--queries=10%,150%", "percentages of the pool in"),
    ("--queries=0%", "percentages of the pool in"),
    ("--queries=ten", "positive integers or percentages"),
  ):
    FLAGS.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError, match=message):
      FLAGS(["launch.run", "--workdir=/tmp", arg])
  FLAGS.unparse_flags()


@pytest.fixture
def backend_calls(monkeypatch):
  """Every input that reaches the victim's backend (the API), counted at the backend; the evaluator labels its
  sets with the victim directly and is not counted."""
  from extraction import oracle as oracle_lib

  calls = []
  real = oracle_lib.model_backend

  def counting(model, variables, **kw):
    backend = real(model, variables, **kw)
    return lambda x: (calls.append(len(x)), backend(x))[1]

  monkeypatch.setattr(oracle_lib, "model_backend", counting)
  return calls


def test_ground_truth_targets_ask_the_oracle_nothing(tmp_path, backend_calls):
  _random_dataset(tmp_path / "data")
  base = [
    "--experiment=extraction",
    "--dataset=cifar10",
    f"--data_dir={tmp_path / 'data'}",
    "--victim_model=mlp",
    "--victim_steps=3",
    "--student_model=mlp",
    "--student_steps=2",
    "--eval_every=1",
    "--queries=20,60",
    "--seeds=2",
    "--noise_samples=8",
    "--gauss_sigmas=16",
    "--oracle_output=probabilities,top_k",
    "--top_k=3",
    "--eval_top_k=3",
  ]
  rows = _run_in_process(base + [f"--workdir={tmp_path / 'gt'}", "--targets=ground_truth"])
  assert sum(backend_calls) == 0  # not one input reached the victim's API
  assert [(r["method"], r["queries"], r["targets"], r["oracle_used"]) for r in rows[1:]] == [
    ("fs", 20, "ground_truth", 0),
    ("fs", 60, "ground_truth", 0),
  ]
  assert all(p["oracle_used"] == 0 for r in rows[1:] for p in r["per_seed"])
  assert "top3_fidelity" in rows[1] and "top5_fidelity" not in rows[1]
  rows = _run_in_process(base + [f"--workdir={tmp_path / 'both'}", "--targets=ground_truth,oracle"])
  assert sum(backend_calls) == 2 * 2 * (20 + 60)  # two outputs, two repetitions, both budgets: the oracle rows only
  assert [(r["targets"], r["oracle_output"], r["oracle_used"]) for r in rows[1:]] == [
    ("ground_truth", "-", 0),
    ("ground_truth", "-", 0),
    ("oracle", "probabilities", 20),
    ("oracle", "probabilities", 60),
    ("oracle", "top_k", 20),
    ("oracle", "top_k", 60),
  ]
  # The ground-truth students learn from the pool's labels of the very inputs the oracle rows query.
  groups = {p.parent.name.split("_")[1]: np.load(p) for p in (tmp_path / "both" / "students").glob("*/tasks.npz")}
  assert set(groups) == {"ground", "probabilities", "top"}
  for i in range(4):
    np.testing.assert_array_equal(groups["ground"][f"labeled_{i}"], groups["probabilities"][f"labeled_{i}"])


def test_benchmark_readings_come_from_the_rows():
  """The sentences of benchmarks/limits.md and table2.md are computed from the rows: change a row, the reading
  changes."""
  from benchmarks import limits as bench_limits
  from benchmarks import table2

  pair = lambda source, fid, **kw: {
    "source": source,
    "varied": source,
    "pairs": 3,
    "fidelity": fid,
    "fidelity_std": 0.01,
    "noise_fidelity": fid - 0.3,
    "noise_fidelity_std": 0.02,
    "gauss64_fidelity": fid - 0.1,
    "max_param_diff": 0.1,
    "params_identical": False,
    **kw,
  }
  rows = [
    {"source": "victim", "varied": "the base run x", "accuracy": 0.98, "run_accuracy": {}},
    pair("nothing", 1.0, max_param_diff=0.0, params_identical=True),
    pair("init", 0.95),
    pair("devices", 0.97),
    {
      "source": "attack",
      "method": "fs",
      "oracle_output": "probabilities",
      "queries": 1294,
      "fidelity": 0.96,
      "fidelity_std": 0.01,
      "noise_fidelity": 0.5,
    },
  ]
  text = bench_limits.reading(rows)
  assert text[0].startswith("nothing varied: bit-identical")
  assert "most first: init 0.0500" in text[1] and text[1].index("init") < text[1].index("devices")
  assert "below devices (0.9700, uniform noise 0.6700 vs the attack's" in text[-1]
  rows.insert(2, pair("all", 0.94))
  assert "at or above all (0.9400" in bench_limits.reading(rows)[-1]
  rows[1]["params_identical"] = False
  assert "NOT bit-identical" in bench_limits.reading(rows)[0]
  cell = lambda t, rot, fid, **kw: {
    "student_model": "small_cnn",
    "pool_fraction": 0.1,
    "method": "fs+rot" if rot else "fs",
    "oracle_output": t if t != "ground_truth" else "-",
    **({"targets": "ground_truth"} if t == "ground_truth" else {}),
    "accuracy": fid,
    "fidelity": fid,
    "fidelity_std": 0.01,
    "top3_accuracy": 0.99,
    "top3_fidelity": 0.99,
    **kw,
  }
  t2 = [
    cell("ground_truth", False, 0.80),
    cell("probabilities", False, 0.90),
    cell("top_k", False, 0.85),
    cell("probabilities", True, 0.905),
  ]
  lines = table2.layout(t2, 3)
  assert (
    "| small_cnn | 10% | 80.00 / 80.00 ± 1.00 | 90.00 / 90.00 ± 1.00 | 85.00 / 85.00 ± 1.00 | n/a | 90.50"
    in "\n".join(lines)
  )
  assert "n/a" in "\n".join(lines)  # no ground-truth + Rot row
  verdict = table2.verdict(t2, 3)
  assert "small_cnn at 10%: probabilities - ground truth: fidelity +10.00" in verdict[0]
  assert any(
    v.startswith("small_cnn at 10%: probabilities + Rot - probabilities: fidelity +0.50 (tie") for v in verdict
  )
