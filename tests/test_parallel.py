"""Data parallelism: the same training steps on 2 and 4 (forced CPU) devices match 1 device, for one student and
for stacked (vmapped) students."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_fs_and_mixmatch_steps_match_across_device_counts():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  p = subprocess.run(
    [sys.executable, "-m", "tests.parallel_check", "fs", "mixmatch", "stacked"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  diffs = json.loads(p.stdout.strip().splitlines()[-1])
  assert diffs.pop("devices") == 4
  assert diffs.pop("serialised") == [False, False, True]
  assert set(diffs) == {"fs_2", "fs_4", "mixmatch_2", "mixmatch_4", "stacked_2", "stacked_4"}
  assert diffs.pop("stacked_2") <= 1e-6  # one whole student per device: the same computation as on one device
  # Data parallel: other reduction orders. MixMatch's gradients with respect to the kernels under batch norm are
  # large (about 1e3 here), so float32 rounding shows at about 1e-4 in the weights after one step.
  assert diffs.pop("stacked_4") <= 1e-4
  for name, d in diffs.items():
    assert d <= 1e-5, (name, d)


def test_mesh_rejects_too_many_devices():
  from extraction import parallel

  with pytest.raises(ValueError, match="device\\(s\\) are available"):
    parallel.make_mesh(10_000)


def test_fe_search_sharded_over_4_devices_finds_the_same_units():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  p = subprocess.run(
    [sys.executable, "-m", "tests.fe_parallel_check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4 and out["units"] == [8, 8]
  assert out["error_sharded"] <= 1e-9 and out["between_runs"] <= 1e-9


def _last_json(text):
  return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.multihost
def test_two_processes_with_jax_distributed_match_one_device():
  """Multi-host path (jax.distributed, gloo on CPU): 2 processes x 2 devices, each feeding its slice of the batch."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  cmd = [sys.executable, "-m", "tests.multihost_check"]
  procs = [
    subprocess.Popen(cmd + [port, str(i)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for i in (0, 1)
  ]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  single = subprocess.run(cmd + ["single"], cwd=REPO, capture_output=True, text=True, timeout=240)
  assert single.returncode == 0, single.stderr[-3000:]
  ref = _last_json(single.stdout)
  for out, _ in outs:
    got = _last_json(out)
    assert got["devices"] == 4 and got["local"] == 2
    assert max(abs(a - b) for a, b in zip(got["params"], ref["params"])) <= 1e-5
