"""The launcher end to end: flag validation up front, and a tiny quickstart-shaped run."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
  "args,message",
  [
    (["--dataset=mnist"], "unknown --dataset='mnist'"),
    (["--queries=0"], "--queries must be positive integers"),
    (["--queries=5000"], "the attacker's pool has only 1294 inputs (1437 minus --val_size=143)"),
    (["--oracle_output=scores"], "unknown --oracle_output=scores"),
    (["--oracle_output=top_k", "--top_k=10"], "must be smaller than the number of classes (10)"),
    (["--student_model=vgg"], "unknown --student_model='vgg'"),
    (["--method=magic"], "unknown --method=magic"),
    (["--augment_shift=-1"], "--augment_shift must be >= 0 pixels, got -1"),
    (
      ["--augment_shift=8", "--queries=100"],
      "--augment_shift=8: the digits images are 8x8; the shift must be below their side",
    ),
    (["--experiment=nope"], "unknown --experiment='nope'"),
    (["--workdir={tmp}/a_file/workdir"], "is not writable"),
  ],
)
def test_bad_flags_fail_with_one_line(args, message, tmp_path, launcher):
  (tmp_path / "a_file").write_text("")
  args = [f"--workdir={tmp_path}"] + [a.format(tmp=tmp_path) for a in args]
  p = launcher(*args, timeout=120)
  assert p.returncode != 0
  assert message in p.stderr, p.stderr
  assert "Traceback" not in p.stderr


def test_missing_flagfile(launcher):
  p = launcher("--flagfile=nope.flags", "--workdir=/tmp/x", timeout=60)
  assert p.returncode != 0 and "flagfile 'nope.flags' not found" in p.stderr


def test_tiny_end_to_end_run_and_reuse(tmp_path, launcher):
  args = [
    "--flagfile=quickstart.flags",
    f"--workdir={tmp_path}",
    "--victim_model=mlp",
    "--victim_steps=100",
    "--student_steps=30",
    "--queries=20,100",
    "--oracle_output=probabilities,labels",
    "--noise_samples=64",
    "--method=fs",
    "--seeds=1",
  ]
  p = launcher(*args)
  assert p.returncode == 0, p.stderr[-3000:]
  rows = json.loads((tmp_path / "results.json").read_text())
  assert [(r["method"], r["queries"], r["oracle_output"]) for r in rows][1:] == [
    ("fs", 20, "probabilities"),
    ("fs", 100, "probabilities"),
    ("fs", 20, "labels"),
    ("fs", 100, "labels"),
  ]
  for r in rows:
    assert 0 <= r["accuracy"] <= 1 and 0 <= r["fidelity"] <= 1 and r["seed"] == 0 and "jax" in r["versions"]
  assert rows[0]["method"] == "victim" and rows[0]["accuracy"] > 0.6  # 100 steps of an MLP on digits; chance is 0.1
  assert all(r["oracle_used"] == r["queries"] for r in rows[1:])
  assert (tmp_path / "plot.png").stat().st_size > 1000 and "| method |" in (tmp_path / "results.md").read_text()
  # Same flags and seed again: the victim and students are restored from their checkpoints, same numbers.
  p2 = launcher(*args)
  assert p2.returncode == 0 and "victim: step" not in p2.stderr
  rows2 = json.loads((tmp_path / "results.json").read_text())
  assert [(r["accuracy"], r["fidelity"]) for r in rows2] == [(r["accuracy"], r["fidelity"]) for r in rows]
  # And from scratch in a fresh workdir: same flags and seed, same numbers.
  fresh = tmp_path / "fresh"
  p3 = launcher(*[a if not a.startswith("--workdir=") else f"--workdir={fresh}" for a in args])
  assert p3.returncode == 0 and "victim: step" in p3.stderr
  rows3 = json.loads((fresh / "results.json").read_text())
  numbers = lambda rs: [(r["accuracy"], r["fidelity"], r.get("noise_fidelity")) for r in rs]
  assert numbers(rows3) == numbers(rows)


def test_missing_dataset_fails_fast_with_one_line(tmp_path, launcher):
  p = launcher(f"--workdir={tmp_path}", "--dataset=svhn_cropped", f"--data_dir={tmp_path}", timeout=60)
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1].startswith("error: DatasetUnavailable:") and "Traceback" not in p.stderr


CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.flags"))


@pytest.fixture(scope="module")
def parsed_flagfiles(tmp_path_factory):
  """Every flagfile of configs/ (and a broken one) parsed as the launcher's --dry_run does, in one subprocess
  (tests/flagfile_check.py: one start-up of 2 s instead of one per flagfile)."""
  tmp = tmp_path_factory.mktemp("flagfiles")
  (tmp / "broken.flags").write_text(f"--flagfile={REPO / 'configs' / 'quickstart.flags'}\n--queries=0\n")
  names = CONFIGS + [str(tmp / "broken.flags")]
  p = subprocess.run(
    [sys.executable, "-m", "tests.flagfile_check", str(tmp), *names], cwd=REPO, capture_output=True, text=True
  )
  assert p.returncode == 0, p.stderr[-3000:]
  return tmp, json.loads(p.stdout)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_flagfile_is_valid(config, parsed_flagfiles):
  workdir, parsed = parsed_flagfiles
  assert parsed[config]["ok"], parsed[config]
  assert parsed[config]["values"]["workdir"] == str(workdir)


def test_the_one_process_flagfile_check_is_the_launchers_dry_run(parsed_flagfiles, launcher):
  # the check above parses every flagfile in one process; here it gives what the launcher prints for one of them,
  # and fails a flagfile that the launcher refuses
  workdir, parsed = parsed_flagfiles
  p = launcher("--flagfile=quickstart.flags", f"--workdir={workdir}", "--dry_run", timeout=60)
  assert p.returncode == 0 and json.loads(p.stdout) == parsed["quickstart.flags"]["values"]
  broken = parsed[str(workdir / "broken.flags")]
  assert not broken["ok"] and "--queries must be positive integers" in broken["error"], broken


def test_mixmatch_and_rotation_through_the_launcher(tmp_path, launcher):
  p = launcher(
    "--flagfile=quickstart.flags",
    f"--workdir={tmp_path}",
    "--victim_model=mlp",  # 100 steps: accuracy ~0.8 (quickstart's CNN victim at 50 steps: chance), 13 s less compiling
    "--victim_steps=100",
    "--student_steps=10",
    "--queries=40",
    "--method=fs,mixmatch",
    "--rotation_weight=0.5",
    "--noise_samples=32",
    "--seeds=1",
    "--student_model=small_cnn",
    "--oracle_output=top_k",
    "--top_k=3",
  )
  assert p.returncode == 0, p.stderr[-3000:]
  rows = json.loads((tmp_path / "results.json").read_text())
  assert [(r["method"], r["oracle_output"], r["oracle_used"]) for r in rows[1:]] == [
    ("fs+rot", "top_k", 40),
    ("mixmatch+rot", "top_k", 40),
  ]
