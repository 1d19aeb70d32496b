"""The launcher against a served victim (--oracle_url/--api_key): the same rows as with the local oracle."""
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from functional_equivalence import victims  # noqa: E402
import service  # noqa: E402
from tests.conftest import make_key_store  # noqa: E402


def _serve(model, db, keys):
  return service.BackgroundServer(service.create_app(model, make_key_store(db, keys)))


def test_fs_through_http_gives_the_local_rows(tmp_path, launcher):
  args = ["--flagfile=quickstart.flags", f"--workdir={tmp_path}", "--victim_model=mlp", "--victim_steps=100",
          "--student_model=mlp", "--student_steps=40", "--queries=30,120", "--oracle_output=probabilities",
          "--noise_samples=64"]
  local = launcher(*args)
  assert local.returncode == 0, local.stderr[-3000:]
  local_rows = json.loads((tmp_path / "results.json").read_text())
  with _serve(service.model_from_victim_dir(tmp_path), tmp_path / "keys.sqlite",
              {"launcher-key-0123456789": {"output": "probabilities", "budget": 150}}) as url:
    remote = launcher(*args, f"--oracle_url={url}", "--api_key=launcher-key-0123456789")
    assert remote.returncode == 0, remote.stderr[-3000:]
    remote_rows = json.loads((tmp_path / "results.json").read_text())
    # The key's budget (150) is spent by the two extractions: the next query is refused with a one-line error.
    over = launcher(*args, "--queries=30", f"--oracle_url={url}", "--api_key=launcher-key-0123456789")
  keep = ("method", "queries", "accuracy", "fidelity", "noise_fidelity", "oracle_used")
  assert [{k: r.get(k) for k in keep} for r in remote_rows] == [{k: r.get(k) for k in keep} for r in local_rows]
  assert "api_key" not in json.dumps(remote_rows)  # the key never lands in results
  assert over.returncode == 1 and "error: BudgetExceeded" in over.stderr and "Traceback" not in over.stderr


def test_fe_through_http_recovers_the_served_network(tmp_path, launcher):
  net = victims.random_net(1, 10, 6, 3)
  path = victims.save_npz(tmp_path / "net.npz", net)
  with _serve(service.model_from_npz(path), tmp_path / "keys.sqlite", {"fe-launcher-key-0123456789": {"output": "logits"}}) as url:
    p = launcher("--experiment=functional_equivalence", f"--workdir={tmp_path / 'w'}", f"--victim_npz={path}",
                 f"--oracle_url={url}", "--api_key=fe-launcher-key-0123456789", "--fe_eval_inputs=10000")
  assert p.returncode == 0, p.stderr[-3000:]
  row = json.loads((tmp_path / "w" / "results.json").read_text())[0]
  assert row["hidden_units_found"] == 6 and row["max_weight_error"] <= 1e-9 and row["agreement"] == 1.0
