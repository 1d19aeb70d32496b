"""A language model served over HTTP (service/lm.py) and attacked through `RemoteLMOracle` exactly as locally:
same answers, h found, budgets and bias bounds enforced by the server, keys that do not fit the model refused."""
import json

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")  # the service's packages: pip install -e .[serve]
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import service
from extraction import lm_victim
from extraction.lm_oracle import LMOracle, LogitBias
from extraction.lm_remote import RemoteLMOracle
from extraction.oracle import BudgetExceeded
from extraction.remote import QueryRefused
from functional_equivalence.lm import attack
from service import lm as lm_api
from service.settings import KeySettings
from tests.conftest import make_key_store

KEYS = {"lm-logits-key-0123456789": {"output": "logits"},
        "lm-bias-key-0123456789": {"output": "top_k_bias", "top_k": 5},
        "lm-topk-key-0123456789": {"output": "top_k", "top_k": 3, "budget": 4},
        "lm-argmax-key-0123456789": {"output": "argmax"}}


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory):
  directory = tmp_path_factory.mktemp("lm") / "lm_victim"
  cfg = lm_victim.LMConfig(vocab_size=512, hidden=32, layers=1, heads=4, max_len=16)
  victim = lm_victim.build_victim(cfg, lm_victim.TrainConfig(steps=0, seed=4), directory)
  model = lm_api.model_from_lm_dir(directory.parent, "float64", max_bias=100.0, max_biased_tokens=8)
  store = make_key_store(directory.parent / "keys.sqlite", KEYS)
  with service.BackgroundServer(service.create_app(model, store, service.Limits(max_batch=512))) as url:
    yield url, victim, store


def remote(url, key, **kwargs):
  return RemoteLMOracle(url, key, backoff=0.01, **kwargs)


def test_served_answers_equal_the_local_oracle(lm_server):
  url, victim, _ = lm_server
  prompts = np.random.default_rng(0).integers(0, 512, (6, 5))
  for key, (output, k) in [("lm-logits-key-0123456789", ("logits", None)),
                           ("lm-argmax-key-0123456789", ("argmax", None))]:
    local = LMOracle(lm_victim.backend(victim, "float64"), output=output, top_k=k, vocab_size=512)
    with remote(url, key) as o:
      np.testing.assert_array_equal(o(prompts), local(prompts))
  bias = LogitBias(np.tile([3, 9, -1], (6, 1)), np.tile([40.0, -2.5, 0.0], (6, 1)))
  local = LMOracle(lm_victim.backend(victim, "float64"), output="top_k_bias", top_k=5, vocab_size=512)
  with remote(url, "lm-bias-key-0123456789") as o:
    got, want = o(prompts, bias), local(prompts, bias)
    assert (o.vocab_size, o.max_len, o.max_bias, o.max_biased_tokens) == (512, 16, 100.0, 8)
  np.testing.assert_array_equal(got.ids, want.ids)
  np.testing.assert_array_equal(got.logprobs, want.logprobs)


@pytest.mark.parametrize("key,output", [("lm-logits-key-0123456789", "logits"),
                                        ("lm-bias-key-0123456789", "top_k_bias")])
def test_attack_through_http_finds_h(lm_server, key, output):
  url, _, store = lm_server
  before = store.get(key).used
  with remote(url, key) as o:
    result = attack.steal_last_layer(o, attack.Config(prompt_len=6), seed=2)
    assert result.hidden_size == 32 and o.output == output
    assert store.get(key).used - before == o.used == result.queries and o.tokens == 6 * result.queries


def test_server_enforces_budget_and_bias_bounds(lm_server):
  url, _, _ = lm_server
  with remote(url, "lm-bias-key-0123456789") as o:
    for bias, message in [(LogitBias(np.array([[1]]), np.array([[150.0]])), "<= 100"),
                          (LogitBias(np.arange(9)[None], np.ones((1, 9))), "at most 8")]:
      with pytest.raises(QueryRefused, match=message):
        o(np.zeros((1, 4), np.int64), bias)
    assert o.used == 0
  with remote(url, "lm-logits-key-0123456789") as o:
    with pytest.raises(QueryRefused, match="accepts no logit bias"):
      o(np.zeros((1, 4), np.int64), LogitBias(np.array([[1]]), np.array([[1.0]])))
    with pytest.raises(QueryRefused, match="1 <= L <= 16"):
      o(np.zeros((1, 17), np.int64))
  with remote(url, "lm-topk-key-0123456789") as o:
    o(np.zeros((4, 3), np.int64))
    with pytest.raises(BudgetExceeded):
      o(np.zeros((1, 3), np.int64))
    assert o.used == 4


def test_keys_must_fit_the_model():
  lm_model = service.ServedModel(lambda x: x, (8,), "int32", 100, lm=lm_api.LMApi(8))
  image_model = service.ServedModel(lambda x: x, (4,), "float64", 3)
  for settings, model, message in [
      (KeySettings(output="probabilities"), lm_model, "not served by a language model"),
      (KeySettings(output="top_k_bias", top_k=5), image_model, "language models only"),
      (KeySettings(output="argmax"), image_model, "language models only")]:
    with pytest.raises(ValueError, match=message):
      lm_api.check_key_for_model(settings, model)
  with pytest.raises(ValueError, match="takes no defenses"):
    KeySettings.from_dict({"output": "top_k_bias", "top_k": 5, "defenses": {"round_decimals": 2}})
  with pytest.raises(ValueError, match="top_k >= 1"):
    KeySettings.from_dict({"output": "top_k_bias"})


def test_health_describes_the_lm(lm_server):
  url = lm_server[0]
  health = httpx.get(url + "/health").json()
  assert health["lm"] == {"max_len": 16, "max_bias": 100.0, "max_biased_tokens": 8} and health["num_classes"] == 512
  r = httpx.post(url + "/v1/predict", headers={"X-API-Key": "lm-logits-key-0123456789"},
                 content=json.dumps({"inputs": [[1, 2, 600]]}))
  assert r.status_code == 422 and "0..511" in r.json()["detail"]
