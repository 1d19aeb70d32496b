"""The fair protocol at the launcher: what the oracle was asked, counted by a recording backend (not by the
oracle); seeds; the validation split; the evaluator's figures."""

import json

import numpy as np
import pytest
from absl import flags

from extraction import evaluation
from launch import experiments
from launch import run as run_module

FLAGS = flags.FLAGS


def _random_dataset(root, n_train=240, n_test=40, shape=(8, 8, 3), seed=0):
  rng = np.random.default_rng(seed)
  (root / "cifar10").mkdir(parents=True)
  for split, n in (("train", n_train), ("test", n_test)):
    np.savez(
      root / "cifar10" / f"{split}.npz",
      image=rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
      label=rng.integers(0, 10, n),
    )


def _run_in_process(args):
  FLAGS.unparse_flags()
  FLAGS(["launch.run"] + run_module.resolve_flagfiles(list(args)))
  try:
    return experiments.EXPERIMENTS[FLAGS.experiment](__import__("pathlib").Path(FLAGS.workdir))
  finally:
    FLAGS.unparse_flags()


@pytest.fixture
def recorded(monkeypatch):
  """For every oracle the launcher makes, the inputs that reach the victim's backend through it, recorded as they
  arrive (bytes of each row): counted at the backend, independently of the oracle's own accounting."""
  from launch import oracle_flags

  records = []
  real = oracle_flags.make_oracle

  def recording_make_oracle(local_backend, *args, **kwargs):
    asked = []
    records.append(asked)

    def backend(x):
      asked.extend(np.asarray(x[i]).tobytes() for i in range(len(x)))
      return local_backend(x)

    return real(backend, *args, **kwargs)

  monkeypatch.setattr(oracle_flags, "make_oracle", recording_make_oracle)
  return records


def _never_asked_unlabeled(records: list, workdir, train_images, test_images):
  """Checks what each oracle answered against the launcher's saved split and tasks: every student's queried
  inputs are exactly what one oracle was asked, and none of its unlabeled inputs was asked of that oracle.
  Returns the number of inputs asked in all."""
  index = {img.tobytes(): i for i, img in enumerate(train_images)}
  assert len(index) == len(train_images)  # random images: no duplicates to confuse the check
  asked = []
  for rec in records:
    idx = [index.get(a) for a in rec]
    assert None not in idx, "the oracle was asked an input outside the training split"
    assert len(set(idx)) == len(idx), "an oracle was asked the same input twice"
    asked.append(set(idx))
  split = np.load(workdir / "split.npz")
  everything = set().union(*asked)
  assert not everything & set(split["val"].tolist()), "a validation input was queried"
  assert not set().union(*records) & {img.tobytes() for img in test_images}
  groups = sorted((workdir / "students").glob("*/tasks.npz"))
  assert groups
  for path in groups:
    tasks = np.load(path)
    pool = tasks["pool"]
    for i in range(sum(k.startswith("labeled_") for k in tasks.files)):
      labeled, unlabeled = set(pool[tasks[f"labeled_{i}"]].tolist()), set(pool[tasks[f"unlabeled_{i}"]].tolist())
      answered_by = [a for a in asked if a == labeled]
      assert answered_by, f"student {i} of {path.parent.name} trains on inputs no oracle was asked"
      leaked = unlabeled & answered_by[0]
      assert not leaked, f"{len(leaked)} unlabeled input(s) of student {i} of {path.parent.name} were queried"
  return sum(len(r) for r in records)


ARGS = [
  "--experiment=extraction",
  "--dataset=cifar10",
  "--victim_model=mlp",
  "--victim_steps=5",
  "--student_model=mlp",
  "--student_steps=4",
  "--queries=20,60",
  "--seeds=2",
  "--noise_samples=16",
  "--gauss_sigmas=16",
  "--eval_every=2",
  "--method=fs,mixmatch,fixmatch",
  "--rotation_weight=0.5",
  "--batch_size=8",
  "--mu=2",
  "--oracle_output=probabilities",
]


def test_launcher_never_queries_the_unlabeled_pool(tmp_path, recorded):
  _random_dataset(tmp_path / "data")
  rows = _run_in_process(ARGS + [f"--data_dir={tmp_path / 'data'}", f"--workdir={tmp_path / 'w'}"])
  ds = np.load(tmp_path / "data" / "cifar10" / "train.npz")["image"]
  test = np.load(tmp_path / "data" / "cifar10" / "test.npz")["image"]
  n = _never_asked_unlabeled(recorded, tmp_path / "w", ds, test)
  assert n == 2 * (20 + 60)  # two repetitions of both budgets, asked once and shared by the three methods
  assert [(r["method"], r["queries"]) for r in rows[1:]] == [
    (m, q) for m in ("fs+rot", "mixmatch+rot", "fixmatch+rot") for q in (20, 60)
  ]
  for r in rows[1:]:
    assert r["seeds"] == 2 and [p["student_seed"] for p in r["per_seed"]] == [0, 1]
    assert r["oracle_used"] == r["queries"] and r["fidelity_std"] >= 0
    assert len(r["per_seed"][0]["curve"]) == 2  # steps 2 and 4
    np.testing.assert_allclose(r["fidelity"], np.mean([p["fidelity"] for p in r["per_seed"]]))


def test_the_check_fails_when_one_unlabeled_input_was_queried(tmp_path, recorded, monkeypatch):
  """The same run with a planted bug (one queried input also handed to the student as unlabeled): the check
  above must catch it."""
  from launch import learning

  real = learning.students.StudentTask

  def leaky(labeled, targets, unlabeled, seed):
    return real(labeled, targets, np.append(unlabeled, labeled[:1]) if len(unlabeled) else unlabeled, seed)

  monkeypatch.setattr(learning.students, "StudentTask", leaky)
  _random_dataset(tmp_path / "data")
  _run_in_process(
    ARGS
    + [
      "--method=mixmatch",
      "--rotation_weight=0",
      "--oracle_output=labels",
      f"--data_dir={tmp_path / 'data'}",
      f"--workdir={tmp_path / 'w'}",
    ]
  )
  ds = np.load(tmp_path / "data" / "cifar10" / "train.npz")["image"]
  test = np.load(tmp_path / "data" / "cifar10" / "test.npz")["image"]
  with pytest.raises(AssertionError, match="unlabeled input"):
    _never_asked_unlabeled(recorded, tmp_path / "w", ds, test)


def test_nothing_left_unlabeled_is_a_one_line_error(tmp_path, launcher):
  # digits: 1437 training inputs, 143 held out for validation: a pool of 1294
  p = launcher(f"--workdir={tmp_path}", "--queries=1294", "--method=fs,mixmatch", timeout=120)
  assert p.returncode == 1 and "Traceback" not in p.stderr
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ConfigError:") and "mixmatch needs unlabeled inputs" in last, last
  p = launcher(f"--workdir={tmp_path}", "--queries=1295", timeout=120)
  assert p.returncode == 1 and "the attacker's pool has only 1294 inputs" in p.stderr


def test_split_pool_is_disjoint_and_seeded():
  pool, val = evaluation.split_pool(100, 10, 0)
  assert len(pool) == 90 and len(val) == 10 and not set(pool) & set(val)
  assert (evaluation.split_pool(100, 10, 0)[1] == val).all() and not (evaluation.split_pool(100, 10, 1)[1] == val).all()
  with pytest.raises(ValueError, match="does not fit"):
    evaluation.split_pool(10, 10, 0)


def test_evaluator_metrics_and_noise_histograms():
  rng = np.random.default_rng(0)
  test = rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
  w = rng.normal(size=(16, 10))
  victim = lambda x: x.reshape(len(x), -1).astype(np.float64) @ w
  ev = evaluation.Evaluator.build(
    victim, test, victim(test).argmax(-1), 10, val_images=test[:10], noise_samples=40, gauss_sigmas=(0.0, 64.0), seed=3
  )
  out = ev(victim)
  assert out["fidelity"] == out["accuracy"] == out["val_fidelity"] == out["noise_fidelity"] == 1.0
  assert out["gauss0_fidelity"] == 1.0 and out["gauss64_fidelity"] == 1.0  # the victim against itself
  constant = lambda x: np.tile(np.eye(10)[3], (len(x), 1))  # always class 3
  out = ev(constant)
  assert out["noise_hist"][3] == 1.0 and sum(out["noise_hist"]) == pytest.approx(1.0)
  victim_hist = ev.victim_row()["noise_victim_hist"]
  assert out["noise_fidelity"] == pytest.approx(victim_hist[3])  # the victim's share of class 3, as documented
  assert not (ev.sets["gauss64"] == test).all() and (ev.sets["gauss0"] == test).all()


def test_summarize_median_of_last_and_aggregate():
  history = [
    {"step": s, "fidelity": f, "noise_hist": [f, 1 - f]} for s, f in ((10, 0.1), (20, 0.9), (30, 0.5), (40, 0.7))
  ]
  s = evaluation.summarize(history[::-1], 3)  # order does not matter
  assert s["fidelity"] == 0.7 and s["noise_hist"] == pytest.approx([0.7, 0.3])
  agg = evaluation.aggregate([{"fidelity": 0.5, "h": [1.0, 0.0]}, {"fidelity": 0.7, "h": [0.0, 1.0]}])
  assert agg["seeds"] == 2 and agg["fidelity"] == pytest.approx(0.6) and agg["fidelity_std"] == pytest.approx(0.1)
  assert agg["h"] == [0.5, 0.5]


def test_results_show_mean_and_std(tmp_path):
  from launch import results

  rows = [
    {
      "method": "fs",
      "queries": 10,
      "fidelity": 0.5,
      "fidelity_std": 0.1,
      "per_seed": [{"curve": [{"step": 1, "fidelity": 0.5}]}],
    }
  ]
  paths = results.write(tmp_path, rows, {"seed": 0}, notes="How the figures were made.")
  md = (tmp_path / "results.md").read_text()
  assert md.startswith("How the figures were made.") and "0.5000 ± 0.1000" in md and "fidelity_std" not in md
  assert json.loads((tmp_path / "results.json").read_text())[0]["per_seed"]
  assert {p.name for p in paths} >= {"plot.png", "curves.png"}


def test_results_json_keeps_each_rows_own_seed(tmp_path):
  from launch import results

  rows = [{"method": "pure", "seed": s, "fidelity": 0.9} for s in range(3)] + [{"method": "pure (mean of 3)"}]
  results.write(tmp_path, rows, {"seed": 7})
  written = json.loads((tmp_path / "results.json").read_text())
  assert [r["seed"] for r in written] == [0, 1, 2, 7] and all(r["config"] == {"seed": 7} for r in written)


def test_the_students_augmentation_follows_the_flags_and_the_victims_its_own(tmp_path, monkeypatch):
  # --augment_shift / --augment_flip reach every method's step factory (and the rotation loss); the victim trains
  # with the dataset's augmentation whatever they say; the run's name changes with them, so nothing resumes across
  from extraction import train, victim
  from launch import learning

  seen, victim_seen = [], []
  real_factory, real_step = learning.make_step_factory, train.make_supervised_step

  def factory(name, params, augmentation, extra=None):
    seen.append((name, augmentation))
    return real_factory(name, params, augmentation, extra)

  def victim_step(model, **kwargs):
    victim_seen.append((kwargs["flip"], kwargs["shift"]))
    return real_step(model, **kwargs)

  monkeypatch.setattr(learning, "make_step_factory", factory)
  monkeypatch.setattr(victim.train, "make_supervised_step", victim_step)
  _random_dataset(tmp_path / "data")
  args = ARGS + [f"--data_dir={tmp_path / 'data'}", "--queries=20", "--seeds=1", "--method=fs,mixmatch"]
  _run_in_process(args + ["--augment_shift=0", f"--workdir={tmp_path / 'w'}", "--augment_flip=false"])
  assert seen == [("fs", (False, 0)), ("mixmatch", (False, 0))]
  assert victim_seen == [(True, 4), (False, 0)]  # the victim first, then the FS students' step (the same factory)
  seen.clear()
  _run_in_process(args + [f"--workdir={tmp_path / 'w'}"])  # the victim reused, the students trained again
  assert seen == [("fs", (True, 4)), ("mixmatch", (True, 4))]
  assert len(list((tmp_path / "w" / "students").iterdir())) == 4  # two augmentations x two methods
