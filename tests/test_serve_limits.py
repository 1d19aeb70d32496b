"""The prediction service under hostile clients: budget checked before the body is read, per-key request limits,
round-robin use of the victim between keys, connection caps and timeouts, a bound on the memory of bodies in
flight, JSON nesting, a float input range, a retry cache per key, and nothing leaked to unauthenticated clients."""
import io
import socket
import statistics
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import service  # noqa: E402
from functional_equivalence import victims  # noqa: E402
from tests.conftest import make_key_store, npy_bytes, open_request, response_status  # noqa: E402

A, B, EMPTY = "first-key-0123456789", "second-key-0123456789", "spent-key-0123456789"
NPY = {"Content-Type": "application/x-npy"}


def start(tmp_path, limits=service.Limits(), model=None, connections=None, **app_kwargs):
  """A BackgroundServer of `model` (default: a float64 two-layer net on 5 inputs) to A, B and EMPTY (budget 0)."""
  model = model or service.model_from_npz(victims.save_npz(tmp_path / "v.npz", victims.random_net(0, 5, 4, 3)))
  store = make_key_store(tmp_path / "keys.sqlite", {A: {"output": "logits"}, B: {"output": "logits"},
                                                    EMPTY: {"output": "logits", "budget": 0}})
  kwargs = {} if connections is None else {"connections": connections}
  return store, service.BackgroundServer(service.create_app(model, store, limits, **app_kwargs), **kwargs)


CLIENT = httpx.Client(timeout=30)  # one client: a new one per request costs ~50 ms (TLS context)


def post(url, key, x, **headers):
  return CLIENT.post(url + "/v1/predict", content=npy_bytes(x), headers={"X-API-Key": key, **NPY, **headers})


def test_spent_budget_is_refused_before_the_body_is_read(tmp_path):
  _, server = start(tmp_path)
  with server as url:
    sock = open_request(url, EMPTY, 30_000_000, b"\x93NUMPY")  # a 30 MB body that never comes
    try:
      assert response_status(sock, 5.0) == 429
    finally:
      sock.close()


def test_a_key_over_its_request_limit_waits_then_gets_429_while_others_are_served(tmp_path):
  _, server = start(tmp_path, service.Limits(key_requests=1, queue_wait=0.3))
  with server as url:
    held = open_request(url, A, 10_000, b"\x93NUMPY")  # A's one request in flight, its body held back
    try:
      time.sleep(0.2)
      start_time = time.perf_counter()
      r = post(url, A, np.ones((1, 5)))
      waited = time.perf_counter() - start_time
      assert r.status_code == 429 and r.headers["retry-after"] == "1" and 0.25 < waited < 5, (r.text, waited)
      assert post(url, B, np.ones((1, 5))).status_code == 200
    finally:
      held.close()
    time.sleep(0.2)
    assert post(url, A, np.ones((1, 5))).status_code == 200  # its slot is free again


class SaturatedDevice:
  """A victim on one device that is always busy: calls run one at a time, 2 ms per input."""

  def __init__(self):
    self.lock = threading.Lock()

  def __call__(self, x):
    with self.lock:
      time.sleep(0.002 * len(x))
      return np.tile(np.asarray(x, np.float64)[:, :1], (1, 3))


def test_one_keys_large_batches_do_not_starve_another_key(tmp_path):
  model = service.ServedModel(SaturatedDevice(), (5,), "float64", 3)
  _, server = start(tmp_path, service.Limits(chunk=16), model=model)
  latencies, stop = [], threading.Event()

  def flood():  # A: 4 threads sending batches of 200 (0.4 s of device time each) for the whole test
    while not stop.is_set():
      post(url, A, np.ones((200, 5)))

  with server as url:
    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
      t.start()
    time.sleep(0.5)
    for _ in range(8):
      t0 = time.perf_counter()
      assert post(url, B, np.ones((1, 5))).status_code == 200
      latencies.append(time.perf_counter() - t0)
    stop.set()
    for t in threads:
      t.join(30)
  # B waits for at most A's running chunk (16 inputs, 32 ms), not for A's queued batches (0.4 s each).
  assert statistics.median(latencies) < 0.2, latencies


def test_connections_over_the_cap_push_out_slow_ones_and_slow_headers_are_dropped(tmp_path):
  _, server = start(tmp_path, connections=service.ConnectionLimits(per_client=3, header_timeout=1.5))
  with server as url:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    slow = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3)]
    for s in slow:
      s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # headers that never end
      time.sleep(0.05)
    assert post(url, A, np.ones((1, 5))).status_code == 200  # a fourth connection: the oldest slow one makes room
    assert response_status(slow[0], 2.0) is None  # closed
    busy = [open_request(url, key, 10_000, b"\x93NUMPY") for key in (A, B, A)]  # push out the other idlers
    time.sleep(0.3)
    over = socket.create_connection((host, int(port)), timeout=5)
    assert response_status(over, 3.0) == 503  # all three busy with requests: nothing to push out, refused
    for s in busy + slow[1:]:
      s.close()
    time.sleep(0.3)
    late = socket.create_connection((host, int(port)), timeout=5)
    late.sendall(b"GET /health HTTP/1.1\r\n")
    time.sleep(2.0)
    assert response_status(late, 2.0) is None  # dropped after the header timeout
    assert post(url, A, np.ones((1, 5))).status_code == 200


def test_bodies_in_flight_are_bounded_in_memory_and_time(tmp_path):
  limits = service.Limits(max_bytes=400_000, body_memory=1_000_000, body_timeout=1.0)
  _, server = start(tmp_path, limits)
  with server as url:
    first = open_request(url, A, 390_000, b"\x93NUMPY")
    second = open_request(url, B, 390_000, b"\x93NUMPY")
    time.sleep(0.3)
    third = open_request(url, B, 390_000, b"\x93NUMPY")  # would hold 1.17 MB > 1 MB
    try:
      assert response_status(third, 3.0) == 503
      assert response_status(first, 5.0) == 408 and response_status(second, 5.0) == 408  # body timeout
    finally:
      for s in (first, second, third):
        s.close()
    assert post(url, A, np.ones((1, 5))).status_code == 200


@pytest.mark.parametrize("depth", [30, 1_000, 100_000])
def test_deeply_nested_json_is_a_400(tmp_path, depth):
  store, server = start(tmp_path)
  with server as url:
    r = httpx.post(url + "/v1/predict", content="[" * depth + "]" * depth,
                   headers={"X-API-Key": A, "Content-Type": "application/json"})
  assert r.status_code == 400 and "nested" in r.json()["detail"], r.text
  assert store.get(A).used == 0


def test_float_inputs_outside_the_range_are_refused_and_not_charged(tmp_path):
  store, server = start(tmp_path, service.Limits(max_abs_input=100.0))
  with server as url:
    for value in (1e300, 101.0):
      r = post(url, A, np.full((2, 5), value))
      assert r.status_code == 422 and "within +-100" in r.json()["detail"], r.text
    assert post(url, A, np.full((2, 5), -100.0)).status_code == 200
  assert store.get(A).used == 2


def test_the_retry_cache_is_per_key(tmp_path):
  store, server = start(tmp_path)
  with server as url:
    headers = {"X-Request-Id": "b-1", "Accept": "application/x-npy"}
    first = post(url, B, np.ones((3, 5)), **headers)
    for i in range(100):  # another key's retried requests cannot push B's answer out
      post(url, A, np.ones((1, 5)), **{"X-Request-Id": f"a-{i}"})
    again = post(url, B, np.ones((3, 5)), **headers)
  assert first.status_code == again.status_code == 200 and first.content == again.content
  assert store.get(B).used == 3 and store.get(A).used == 100


def test_unauthenticated_clients_learn_nothing_about_the_victim(tmp_path):
  path = victims.save_npz(tmp_path / "secret-victim-dir.npz", victims.random_net(0, 5, 4, 3))
  model = service.model_from_npz(path)
  _, server = start(tmp_path, model=model)
  with server as url:
    health = httpx.get(url + "/health")
    assert set(health.json()) == {"status", "input_shape", "input_dtype", "num_classes", "max_batch", "max_bytes"}
    assert "secret-victim-dir" not in health.text and str(tmp_path) not in health.text
    assert [httpx.get(url + p).status_code for p in ("/docs", "/redoc", "/openapi.json")] == [404, 404, 404]
  _, server = start(tmp_path / "docs", model=model, docs=True)
  with server as url:
    docs = httpx.get(url + "/openapi.json")
    assert docs.status_code == 200 and "secret-victim-dir" not in docs.text


def test_a_large_json_body_is_read_without_stalling_other_requests(tmp_path):
  """8 MB of JSON numbers (4M values) parsed while another client polls /health: numpy reads the numbers with the
  interpreter lock released, so the polls keep being answered; the answers equal those of the .npy body."""
  model = service.ServedModel(lambda x: np.asarray(x, np.float64)[:, :3] * 2.0, (1000,), "float64", 3)
  limits = service.Limits(max_batch=4000, max_bytes=16 << 20, body_memory=16 << 20)
  store, server = start(tmp_path, limits, model=model)
  row = b"[" + b"7," * 999 + b"-3]"
  body = b'{"inputs": [' + b",".join([row] * 4000) + b"]}"
  gaps, done = [], threading.Event()
  with server as url:
    def poll():
      with httpx.Client() as client:
        while not done.is_set():
          t0 = time.perf_counter()
          client.get(url + "/health")
          gaps.append(time.perf_counter() - t0)
          time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    r = CLIENT.post(url + "/v1/predict", content=body, headers={"X-API-Key": A, "Content-Type": "application/json",
                                                                "Accept": "application/x-npy"})
    done.set()
    poller.join(10)
    assert max(gaps) < 0.3, sorted(gaps)[-5:]
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), np.full((4000, 3), 14.0))
    big_other = b'{"inputs": [' + b",".join([row] * 600) + b'], "note": "x"}'  # not a plain array, > 1 MB
    r = CLIENT.post(url + "/v1/predict", content=big_other, headers={"X-API-Key": A, "Content-Type": "application/json"})
    assert r.status_code == 400 and "send .npy" in r.json()["detail"]
  assert store.get(A).used == 4000
