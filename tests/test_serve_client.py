"""RemoteOracle retries and errors (httpx MockTransport), the key store, --oracle_url/--api_key, and the command
lines' one-line flag errors."""
import io
import subprocess
import sys

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")  # the service's packages: pip install -e .[serve]
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from absl import flags
from absl.testing import flagsaver

from extraction.oracle import BudgetExceeded, Oracle
from extraction.remote import OracleUnavailable, RemoteOracle
import service
from launch import oracle_flags
from service import keystore
from tests.conftest import REPO

FLAGS = flags.FLAGS
HEALTH = {"status": "ok", "input_shape": [3], "input_dtype": "float64", "num_classes": 2, "max_batch": 4,
          "max_bytes": 1000}
KEY = {"budget": 100, "used": 0, "remaining": 100, "output": "logits", "top_k": None}


def npy(x) -> bytes:
  buf = io.BytesIO()
  np.save(buf, x)
  return buf.getvalue()


def mock_oracle(predict, **kwargs):
  """A RemoteOracle whose server is `predict(request, attempt) -> httpx.Response` (GETs answered from HEALTH, KEY)."""
  calls = []

  def handler(request):
    if request.url.path == "/health":
      return httpx.Response(200, json=HEALTH)
    if request.url.path == "/v1/budget":
      return httpx.Response(200, json=KEY)
    calls.append(request)
    return predict(request, len(calls))

  client = httpx.Client(transport=httpx.MockTransport(handler))
  return RemoteOracle("http://test", "k", client=client, backoff=0.001, **kwargs), calls


def answer(request):
  x = np.load(io.BytesIO(request.content))
  return httpx.Response(200, content=npy(x[:, :2] * 2.0), headers={"Content-Type": "application/x-npy"})


def test_retries_timeouts_503_and_busy_429_with_the_same_request_id():
  def flaky(request, attempt):
    if attempt == 1:
      raise httpx.ReadTimeout("slow", request=request)
    if attempt == 2:
      return httpx.Response(503, json={"detail": "overloaded"})
    if attempt == 3:
      return httpx.Response(429, json={"detail": "key busy"}, headers={"Retry-After": "0"})
    return answer(request)

  oracle, calls = mock_oracle(flaky)
  x = np.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(oracle(x), x[:, :2] * 2)
  assert len(calls) == 4 and len({c.headers["x-request-id"] for c in calls}) == 1 and oracle.used == 2


def test_gives_up_after_the_retries():
  oracle, calls = mock_oracle(lambda r, a: httpx.Response(503, json={"detail": "busy"}), retries=2)
  with pytest.raises(OracleUnavailable, match="no answer after 3 attempts .*HTTP 503: busy"):
    oracle(np.zeros((1, 3)))
  assert len(calls) == 3 and oracle.used == 0


@pytest.mark.parametrize("status", [500, 502, 504])
def test_other_5xx_are_not_retried(status):
  """A request the server failed on (e.g. a body it could not handle) would fail again: it is sent once."""
  oracle, calls = mock_oracle(lambda r, a: httpx.Response(status, json={"detail": "boom"}), retries=3)
  with pytest.raises(OracleUnavailable, match=f"HTTP {status} \\(not retried\\): boom"):
    oracle(np.zeros((1, 3)))
  assert len(calls) == 1 and oracle.used == 0


@pytest.mark.parametrize("status,error,match", [(429, BudgetExceeded, "budget"), (401, PermissionError, "nope"),
                                                (422, ValueError, r"HTTP 422\): nope")])
def test_client_errors_are_not_retried(status, error, match):
  oracle, calls = mock_oracle(lambda r, a: httpx.Response(status, json={"detail": f"nope {status} budget"}))
  with pytest.raises(error, match=match):
    oracle(np.zeros((1, 3)))
  assert len(calls) == 1


def test_batches_records_and_client_budget():
  oracle, calls = mock_oracle(lambda r, a: answer(r), budget=10)
  x = np.random.default_rng(0).normal(size=(9, 3))
  np.testing.assert_array_equal(oracle(x), x[:, :2] * 2)
  assert [len(np.load(io.BytesIO(c.content))) for c in calls] == [4, 4, 1]  # max_batch of the server
  np.testing.assert_array_equal(oracle.asked, x)
  with pytest.raises(BudgetExceeded, match="9 of the budget of 10"):
    oracle(x[:2])
  assert oracle.logits(x[:1]).shape == (1, 2) and oracle.remaining == 0


def test_key_store_keeps_spending_when_settings_change(tmp_path):
  store = keystore.KeyStore(tmp_path / "k.sqlite", create=True)
  store.put("alpha-key-0123456789", keystore.KeySettings(budget=5), "first")
  state, offset = store.reserve("alpha-key-0123456789", 3)
  assert (state.used, state.remaining, offset) == (3, 2, 0)
  with pytest.raises(keystore.BudgetExhausted, match="3 of the budget of 5"):
    store.reserve("alpha-key-0123456789", 3)
  store.put("alpha-key-0123456789", keystore.KeySettings(budget=8, output="labels"), "first")
  again = keystore.KeyStore(tmp_path / "k.sqlite").get("alpha-key-0123456789")
  assert (again.used, again.remaining, again.settings.output, again.label) == (3, 5, "labels", "first")
  store.refund("alpha-key-0123456789", 3)
  assert store.get("alpha-key-0123456789").used == 0
  with pytest.raises(keystore.UnknownKey):
    store.reserve("beta-key-0123456789", 1)
  assert not any(b"alpha" in f.read_bytes() for f in tmp_path.glob("k.sqlite*"))  # digests only


K = '"a-long-enough-api-key"'


@pytest.mark.parametrize("content,match", [
    ("{", "not valid JSON"), ("[]", "non-empty JSON object"),
    (K + ': {"label": "a", "output": "scores"}}', "unknown oracle output"),
    (K + ': {"label": "a", "budget": -1}}', "budget must be"),
    (K + ': {"label": "a", "top_k": 2, "output": "top_k", "x": 1}}', "unknown key"),
    (K + ': {"label": "a", "output": "labels", "defenses": {"round_decimals": 2}}}', "do nothing")])
def test_bad_keys_files(tmp_path, content, match):
  (tmp_path / "keys.json").write_text("{" + content if content.startswith(K) else content)
  with pytest.raises(ValueError, match=match):
    keystore.read_keys_file(tmp_path / "keys.json")


def test_example_keys_file_is_valid():
  keys = keystore.read_keys_file(REPO / "configs" / "serve_quickstart.keys.json")
  assert {s.output for _, s in keys.values()} == {"probabilities", "labels", "top_k", "logits"}


@pytest.fixture
def parsed_flags():
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    yield FLAGS


def test_make_oracle_local_and_remote(parsed_flags, tmp_path):
  backend = lambda x: np.asarray(x, np.float64)[:, :2]
  assert isinstance(oracle_flags.make_oracle(backend, "logits", budget=3), Oracle)
  store = keystore.KeyStore(tmp_path / "k.sqlite", create=True)
  store.put("flags-key-0123456789", keystore.KeySettings(budget=50, output="logits"), "flags")
  model = service.ServedModel(backend, (3,), "float64", 2)
  with service.BackgroundServer(service.create_app(model, store)) as url:
    parsed_flags.api_key, parsed_flags.oracle_url = "flags-key-0123456789", url
    remote = oracle_flags.make_oracle(None, "logits", budget=3)
    assert isinstance(remote, RemoteOracle) and remote.remaining == 3
    np.testing.assert_array_equal(remote(np.ones((2, 3))), np.ones((2, 2)))
    with pytest.raises(ValueError, match="served logits but the experiment asks for probabilities"):
      oracle_flags.make_oracle(None, "probabilities")
  assert "api_key" not in oracle_flags.public_flag_values()


@pytest.mark.parametrize("args,match", [
    (["--victim_npz=/nonexistent.npz"], "does not exist"),
    ([], "exactly one of --victim_workdir"),
    (["--victim_workdir=/tmp"], "no trained victim"),
])
def test_serve_flags_fail_with_one_line(args, match):
  r = subprocess.run([sys.executable, "-m", "launch.serve", *args], cwd=REPO, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 1 and match in r.stderr, r.stderr
  assert "Traceback" not in r.stderr


def test_two_stores_on_one_file_never_pass_the_budget(tmp_path):
  """Two connections (as two server processes would have), 4 threads each, charging 1-3 inputs at a time."""
  import threading
  stores = [keystore.KeyStore(tmp_path / "k.sqlite", create=True)]
  stores.append(keystore.KeyStore(tmp_path / "k.sqlite"))
  stores[0].put("shared-key-0123456789", keystore.KeySettings(budget=200), "shared")
  charged, lock = [], threading.Lock()

  def spend(store, seed):
    rng, mine = np.random.default_rng(seed), 0
    for _ in range(200):
      n = int(rng.integers(1, 4))
      try:
        store.reserve("shared-key-0123456789", n)
        mine += n
      except keystore.BudgetExhausted:
        pass
    with lock:
      charged.append(mine)

  threads = [threading.Thread(target=spend, args=(stores[i % 2], i)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert sum(charged) == stores[1].get("shared-key-0123456789").used <= 200 and sum(charged) >= 198
