"""The prediction service against real uvicorn servers on 127.0.0.1: extraction through HTTP equals extraction
through the local oracle (FS and FE), malformed requests, budgets under concurrency and across restarts, and the
per-key defenses."""
import io
import json
import pathlib
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")  # the service's packages: pip install -e .[serve]
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from extraction import defenses as D
from extraction import metrics, supervised, victim as victim_lib
from extraction.oracle import BudgetExceeded, Oracle, softmax
from extraction.predict import predict_logits
from extraction.remote import RemoteOracle
from functional_equivalence import align, attack, victims
import service
from service import keystore
from tests.conftest import make_key_store

REPO = pathlib.Path(__file__).resolve().parent.parent
ROUND = {"round_decimals": 2}
NOISE = {"noise_std": 0.1}
REVERSE = {"reverse_sigmoid_beta": 0.7, "reverse_sigmoid_gamma": 0.4}
IMAGE_KEYS = {
    "fs-key-0123456789": {"budget": 100, "output": "probabilities"},
    "bad-inputs-key-0123456789": {"budget": 50},
    "small-key-0123456789": {"budget": 5, "output": "labels"},
    "hammer-key-0123456789": {"budget": 120, "output": "labels"},
    "replay-key-0123456789": {"budget": 50},
    "round-key-0123456789": {"output": "probabilities", "defenses": ROUND},
    "top2-key-0123456789": {"output": "top_k", "top_k": 2},
    "labels-key-0123456789": {"output": "labels"},
    "noise-key-0123456789": {"output": "logits", "defenses": NOISE},
    "noise-key-again-0123456789": {"output": "logits", "defenses": NOISE},
    "reverse-key-0123456789": {"output": "probabilities", "defenses": REVERSE},
}
LIMITS = service.Limits(max_batch=256, max_bytes=100_000)


def npy(x) -> bytes:
  buf = io.BytesIO()
  np.save(buf, np.asarray(x))
  return buf.getvalue()


def start(model, path, keys, limits=service.Limits()):
  store = make_key_store(path, keys)
  return store, service.BackgroundServer(service.create_app(model, store, limits))


@pytest.fixture(scope="module")
def image_model(digits, tmp_path_factory):
  """A digits MLP victim trained for 200 steps by extraction.victim, restored from its directory as serve does."""
  workdir = tmp_path_factory.mktemp("workdir")
  cfg = victim_lib.VictimConfig(model="mlp", steps=200, batch_size=64, lr=0.01)
  victim_lib.train_victim(digits, cfg, workdir / "victim")
  return service.model_from_victim_dir(workdir)


@pytest.fixture(scope="module")
def image_server(image_model, tmp_path_factory):
  store, server = start(image_model, tmp_path_factory.mktemp("db") / "keys.sqlite", IMAGE_KEYS, LIMITS)
  with server as url:
    yield url, store


@pytest.fixture(scope="module")
def fe_server(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("fe")
  net = victims.random_net(0, 10, 6, 3)
  model = service.model_from_npz(victims.save_npz(tmp / "victim.npz", net))
  store, server = start(model, tmp / "keys.sqlite", {"fe-logits-0123456789": {"output": "logits"}, "fe-json-0123456789": {"output": "logits"},
                                                     "fe-small-0123456789": {"output": "logits", "budget": 10}})
  with server as url:
    yield url, net, store


class Recording:
  """An oracle that keeps its answers (to compare them across oracles)."""

  def __init__(self, oracle):
    self.oracle, self.answers = oracle, []

  @property
  def output(self):
    return self.oracle.output

  def __call__(self, x):
    self.answers.append(self.oracle(x))
    return self.answers[-1]


def test_fs_extraction_through_http_equals_local(image_server, image_model, digits):
  url, store = image_server
  cfg = supervised.StudentConfig(model="mlp", steps=40, batch_size=32, lr=0.01)
  victim_test = image_model.backend(digits.test.images)
  runs = []
  for oracle in (Oracle(image_model.backend, "probabilities", budget=100), RemoteOracle(url, "fs-key-0123456789")):
    rec = Recording(oracle)
    model, variables, idx = supervised.extract(rec, digits.train.images, 100, 10, cfg, "digits")
    s_test = predict_logits(model, variables, digits.test.images)
    runs.append(dict(oracle=oracle, answers=rec.answers, variables=variables, idx=idx,
                     accuracy=metrics.top1_accuracy(s_test, digits.test.labels),
                     fidelity=metrics.fidelity(s_test, victim_test)))
  local, remote = runs
  np.testing.assert_array_equal(remote["idx"], local["idx"])
  np.testing.assert_array_equal(remote["oracle"].asked, local["oracle"].asked)
  [a_local], [a_remote] = local["answers"], remote["answers"]
  assert a_remote.dtype == a_local.dtype == np.float32
  np.testing.assert_array_equal(a_remote, a_local)  # the answers bit for bit, hence the targets and the student
  jax.tree_util.tree_map(np.testing.assert_array_equal, remote["variables"], local["variables"])
  assert (remote["accuracy"], remote["fidelity"]) == (local["accuracy"], local["fidelity"])
  assert remote["fidelity"] > 0.5, remote["fidelity"]
  assert remote["oracle"].used == 100 and remote["oracle"].remaining == 0 == store.get("fs-key-0123456789").remaining
  with pytest.raises(BudgetExceeded, match="budget of 100"):
    remote["oracle"](digits.train.images[:1])


def test_fe_extraction_through_http_equals_local(fe_server):
  url, net, _ = fe_server
  local = attack.extract(Oracle(victims.backend(net), "logits", record_inputs=False), 10, seed=0)
  oracle = RemoteOracle(url, "fe-logits-0123456789", record_inputs=False)
  remote = attack.extract(oracle, 10, seed=0)
  for name, a, b in zip(victims.ARRAYS, local.net, remote.net):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-9, err_msg=name)
  assert remote.queries == local.queries == oracle.used and remote.hidden_units_found == 6
  assert align.weight_error(net, remote.net)["max_weight_error"] < 1e-9


def test_float64_is_exact_over_npy_and_json(fe_server):
  url, net, _ = fe_server
  x = np.random.default_rng(1).normal(size=(50, 10)) * 1e3
  want = victims.logits(net, x)
  for transport, key in (("npy", "fe-logits-0123456789"), ("json", "fe-json-0123456789")):
    got = RemoteOracle(url, key, transport=transport)(x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


BAD = [  # (what, headers, body, status, message part)
    ("no key", {}, None, 401, "missing API key"),
    ("unknown key", {"X-API-Key": "nope"}, None, 401, "unknown or revoked API key"),
    ("wrong shape", None, npy(np.zeros((3, 64), np.uint8)), 422, "expected (N, 8, 8, 1)"),
    ("float pixels", None, npy(np.zeros((3, 8, 8, 1), np.float32)), 422, "expected integer pixel values"),
    ("bool", None, npy(np.zeros((3, 8, 8, 1), bool)), 422, "dtype bool"),
    ("complex", None, npy(np.zeros((3, 8, 8, 1), complex)), 422, "dtype complex128"),
    ("NaN", None, npy(np.full((2, 8, 8, 1), np.nan)), 422, "NaN/inf"),
    ("inf", None, npy(np.full((2, 8, 8, 1), np.inf)), 422, "NaN/inf"),
    ("out of range", {"Content-Type": "application/json"}, json.dumps([[[[300]] * 8] * 8]), 422, "outside 0..255"),
    ("ragged JSON", {"Content-Type": "application/json"}, json.dumps({"inputs": [[1, 2], [3]]}), 422, "rectangular"),
    ("strings", {"Content-Type": "application/json"}, json.dumps([["a"]]), 422, "dtype <U1"),
    ("empty batch", None, npy(np.zeros((0, 8, 8, 1), np.uint8)), 422, "empty batch"),
    ("batch over limit", None, npy(np.zeros((257, 8, 8, 1), np.uint8)), 413, "limit of 256"),
    ("body over limit", None, b"\x93NUMPY" + bytes(120_000), 413, "limit of 100000 bytes"),
    ("not npy", None, b"\x93NUMPY garbage", 400, "not a readable .npy"),
    ("pickled object", None, npy(np.array([{"a": 1}], dtype=object)), 400, "not a readable .npy"),
    ("bad JSON", {"Content-Type": "application/json"}, b"[[1, 2", 400, "not valid JSON"),
    ("text", {"Content-Type": "text/plain"}, b"1 2 3", 415, "unsupported Content-Type"),
]


@pytest.mark.parametrize("what,headers,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_malformed_requests_are_refused_and_not_charged(image_server, what, headers, body, status, message):
  url, store = image_server
  if headers is None:
    headers = {"Content-Type": "application/x-npy"}
  headers = {"X-API-Key": "bad-inputs-key-0123456789", **headers} if "key" not in what else headers
  if body is None:
    body = npy(np.zeros((1, 8, 8, 1), np.uint8))
  r = httpx.post(url + "/v1/predict", content=body, headers=headers)
  assert r.status_code == status, r.text
  assert message in r.json()["detail"]
  assert store.get("bad-inputs-key-0123456789").used == 0


def test_budget_refuses_whole_queries(image_server, digits):
  url, store = image_server
  x = digits.test.images
  oracle = RemoteOracle(url, "small-key-0123456789", batch_size=2)
  with pytest.raises(BudgetExceeded, match="the key has 5 left"):  # 3 requests: refused before any is sent
    oracle(x[:6])
  assert oracle(x[:3]).shape == (3, 10)
  with pytest.raises(BudgetExceeded, match="the key has 2 left"):
    oracle(x[3:6])
  with pytest.raises(BudgetExceeded, match="query of 3 inputs refused: 3 of the budget of 5"):  # one request: 429
    RemoteOracle(url, "small-key-0123456789")(x[3:6])
  r = httpx.post(url + "/v1/predict", content=npy(x[:3]), headers={"X-API-Key": "small-key-0123456789"})
  assert r.status_code == 429 and "2 left" in r.json()["detail"]
  assert oracle(x[3:5]).shape == (2, 10) and oracle.used == 5 and oracle.remaining == 0
  assert store.get("small-key-0123456789").used == 5


def test_eight_threads_get_exactly_the_budget(image_server, digits):
  url, store = image_server
  answered, lock = [], threading.Lock()

  def hammer(seed):
    oracle, rng, n, mine = RemoteOracle(url, "hammer-key-0123456789"), np.random.default_rng(seed), None, 0
    while True:
      n = n or int(rng.choice([1, 2, 5]))
      try:
        mine += len(oracle(digits.test.images[rng.integers(0, 300, n)]))
        n = None
      except BudgetExceeded:
        if n == 1:
          break
        n = 1  # what is left may be less than this batch: finish with single inputs
    with lock:
      answered.append(mine)

  threads = [threading.Thread(target=hammer, args=(s,)) for s in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert len(answered) == 8 and sum(answered) == 120 == store.get("hammer-key-0123456789").used


def test_retried_request_id_is_answered_once_and_charged_once(image_server, digits):
  url, store = image_server
  body = npy(digits.test.images[:4])
  headers = {"X-API-Key": "replay-key-0123456789", "X-Request-Id": "r1", "Accept": "application/x-npy"}
  first, second = (httpx.post(url + "/v1/predict", content=body, headers=headers) for _ in range(2))
  assert first.status_code == second.status_code == 200 and first.content == second.content
  assert store.get("replay-key-0123456789").used == 4
  other = httpx.post(url + "/v1/predict", content=npy(digits.test.images[4:8]), headers=headers)
  assert other.status_code == 409 and store.get("replay-key-0123456789").used == 4


def test_restart_keeps_what_keys_spent(tmp_path):
  """Two server processes (python -m launch.serve) one after the other on the same SQLite file."""
  npz = victims.save_npz(tmp_path / "victim.npz", victims.random_net(1, 5, 4, 3))
  keys = tmp_path / "keys.json"
  keys.write_text(json.dumps({"restart-key-123456": {"label": "restart", "budget": 10, "output": "logits"}}))
  cmd = [sys.executable, "-m", "launch.serve", f"--victim_npz={npz}", f"--keys={keys}", "--port=0",
         f"--db={tmp_path / 'keys.sqlite'}"]
  x = np.random.default_rng(0).normal(size=(10, 5))
  for expected_left, ask in ((10, 7), (3, 3)):
    first = ["--init_db"] if expected_left == 10 else []  # a new database only the first time
    proc = subprocess.Popen(cmd + first, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(60, proc.kill)
    timer.start()
    try:
      line = proc.stdout.readline()
      while line.startswith("keys "):  # what loading the keys file did (stderr)
        line = proc.stdout.readline()
      assert "on http://127.0.0.1:" in line, line + proc.stdout.read()
      oracle = RemoteOracle(line.rsplit(" on ", 1)[1].strip(), "restart-key-123456")
      assert oracle.remaining == expected_left
      if expected_left == 3:
        with pytest.raises(BudgetExceeded):
          oracle(x[:4])
      assert oracle(x[:ask]).shape == (ask, 3)
    finally:
      proc.send_signal(signal.SIGINT)
      proc.wait(20)
      timer.cancel()
  assert keystore.KeyStore(tmp_path / "keys.sqlite").get("restart-key-123456").used == 10


def test_defenses_per_key_equal_the_local_defended_oracle(image_server, image_model, digits):
  url, store = image_server
  x = digits.test.images[:200]
  logits = image_model.backend(x)
  got = {}
  for key in ("round-key-0123456789", "top2-key-0123456789", "labels-key-0123456789", "noise-key-0123456789",
              "noise-key-again-0123456789", "reverse-key-0123456789"):
    s = keystore.KeySettings.from_dict(IMAGE_KEYS[key])
    local = Oracle(image_model.backend, s.output, top_k=s.top_k, defenses=s.defenses, noise_key=store.noise_key(key))
    got[key] = RemoteOracle(url, key)(x)
    np.testing.assert_array_equal(got[key], local(x), err_msg=key)
  probs = softmax(logits)
  np.testing.assert_array_equal(got["round-key-0123456789"], np.round(probs, 2))
  assert np.all((got["top2-key-0123456789"] > 0).sum(1) == 2)
  np.testing.assert_array_equal(got["labels-key-0123456789"], np.eye(10)[logits.argmax(1)])
  # Two keys with the same settings get independent noise (keyed by the server secret and the key).
  assert not np.array_equal(got["noise-key-0123456789"], got["noise-key-again-0123456789"])
  assert abs(np.std(got["noise-key-0123456789"] - logits) - 0.1) < 0.01
  confident = probs.max(1) > 0.5
  assert confident.sum() > 20 and np.allclose(got["reverse-key-0123456789"].sum(1), 1)
  np.testing.assert_array_equal(got["reverse-key-0123456789"][confident].argmax(1), probs[confident].argmax(1))
  assert np.abs(got["reverse-key-0123456789"] - probs).max() > 0.05
  assert RemoteOracle(url, "reverse-key-0123456789").defenses is None  # never disclosed


def test_answer_format_by_query_parameter_and_health(fe_server):
  url, net, _ = fe_server
  x, headers = np.ones((2, 10)), {"X-API-Key": "fe-small-0123456789", "Content-Type": "application/json"}
  body = json.dumps({"inputs": x.tolist()})
  r = httpx.post(url + "/v1/predict?format=npy", content=body, headers=headers)
  assert r.headers["content-type"] == "application/x-npy" and r.headers["x-queries-remaining"] == "8"
  np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), victims.logits(net, x))
  r = httpx.post(url + "/v1/predict?format=xml", content=body, headers=headers)
  assert r.status_code == 406 and "npy or json" in r.json()["detail"]
  health = httpx.get(url + "/health").json()
  assert (health["input_shape"], health["input_dtype"], health["num_classes"]) == ([10], "float64", 3)
  assert httpx.get(url + "/v1/budget", headers={"X-API-Key": "fe-small-0123456789"}).json()["remaining"] == 8
