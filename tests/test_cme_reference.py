"""benchmarks/cme_format.py: CME's victim and output files, and their printed results, without their checkout."""

import pickle
import subprocess
import sys

import numpy as np

from benchmarks import cme_format
from functional_equivalence.deep import network
from tests.conftest import REPO

# Lines of their extract.py's output on cme_net(0, 10-10-10-1) (through benchmarks/cme_compat.py), in order.
SAMPLE = """START EXTRACTION ATTACK
Query count after that search: 0
Query count 0
Total query count 0
Solve final two
Solve final two
Total query count 48984
Solving on 101
K IS 10
Attempts at solution: 1 out of 1024
SAVING /tmp/extracted-10-10-10-1.p
0



Finally we are done.

Maximum logit loss on the unit sphere 3.4275915439252458e-12

fin
CME_REFERENCE {"queries": 49085, "at_save": 49085}
"""

FAILED = """Got NaN, need more data 0.07142857142857142 0.1
CME_REFERENCE {"queries": 23684, "at_save": null}
Traceback (most recent call last):
  File "/tmp/cme/src/layer_recovery.py", line 272, in graph_solve
    raise AcceptableFailure(partial_solution=(np.array(resulting_rows), np.array(resulting_examples)))
                                                                        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ValueError: setting an array element with a sequence. The requested array has an inhomogeneous shape.
"""


def their_forward(a, b, x):
  """Their src/utils.py `run`: x @ a_i + b_i, ReLU on all but the last layer."""
  for i, (w, bias) in enumerate(zip(a, b)):
    x = np.dot(x, w) + bias
    if i < len(a) - 1:
      x = x * (x > 0)
  return x


def test_victim_file_reads_back_as_their_code_reads_it(tmp_path):
  net = network.random_net(3, [7, 5, 4, 2])
  path = cme_format.export_victim(tmp_path, net, 1234)
  assert path == tmp_path / "models" / "1234_7-5-4-2.npy"
  a, b = np.load(path, allow_pickle=True)  # src/global_vars.py: __cheat_A, __cheat_B = np.load(...)
  assert len(a) == len(b) == 3
  for w, w_true, bias, b_true in zip(a, net.weights, b, net.biases):
    np.testing.assert_array_equal(w, w_true)
    np.testing.assert_array_equal(bias, b_true)
  x = np.random.default_rng(0).normal(size=(50, 7)) * 100
  np.testing.assert_array_equal(their_forward(a, b, x), network.logits(net, x))
  assert cme_format.load_victim(path).sizes == net.sizes


def test_extracted_pickle_becomes_the_same_function(tmp_path):
  net = network.random_net(4, [6, 5, 3, 1])
  # their solve_final_layer: At = known_T.A + [vector[:-1]], Bt = known_T.B + [vector[-1]] with vector (n + 1, 1)
  weights = list(net.weights)
  biases = list(net.biases[:-1]) + [net.biases[-1].reshape(1)]
  path = tmp_path / "extracted-6-5-3-1.p"
  with open(path, "wb") as f:
    pickle.dump([weights, biases], f)
  rec = cme_format.load_extracted(path)
  x = np.random.default_rng(1).normal(size=(40, 6))
  np.testing.assert_allclose(network.logits(rec, x), their_forward(weights, biases, x), rtol=0, atol=1e-12)
  assert rec.sizes == (6, 5, 3, 1)


def test_parse_their_output():
  out = cme_format.parse_output(SAMPLE)
  assert out["finished"] and not out["timed_out"]
  assert out["their_max_logit_loss"] == 3.4275915439252458e-12
  assert out["their_query_count"] == 0  # their issue #3: extract.py's global counter never moves
  assert out["their_saved_queries"] == 48984
  assert out["our_queries"] == out["our_queries_at_save"] == 49085
  assert out["final_solve"] == "final two"
  assert cme_format.last_error(SAMPLE) is None


def test_parse_failure_and_timeout():
  out = cme_format.parse_output(FAILED)
  assert not out["finished"] and out["their_max_logit_loss"] is None
  assert out["our_queries"] == 23684 and out["our_queries_at_save"] is None
  assert cme_format.last_error(FAILED).startswith("ValueError: setting an array element")
  timed = cme_format.parse_output("Query count 0\nTimed out.\nI assume something bad happened. Did it?\n")
  assert timed["timed_out"] and not timed["finished"] and timed["our_queries"] is None


def test_missing_checkout_is_one_line_with_how_to_get_it(tmp_path):
  r = subprocess.run(
    [sys.executable, "-m", "benchmarks.fe_cme_reference", f"--cme_dir={tmp_path}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode != 0
  assert "git clone https://github.com/google-research/cryptanalytic-model-extraction" in r.stderr
  assert "Traceback" not in r.stderr


def test_verdict_names_exact_close_equivalent_and_wrong():
  """deep.align.verdict (the benchmarks' verdict column): the issue's 2^-30 target, agreement, and a width found
  that is not the victim's."""
  from functional_equivalence.deep import align

  net = network.random_net(0, [6, 4, 3, 1])
  fields = dict(max_weight_error=2.0**-31, agreement=1.0, domain_agreement=1.0)
  assert align.verdict(net, net, fields) == "exact"
  assert align.verdict(net, net, dict(fields, max_weight_error=1e-8)) == "close"
  assert align.verdict(net, net, dict(fields, max_weight_error=1.2)) == "wrong: error 1.2"
  assert align.verdict(net, net, dict(fields, domain_agreement=0.99995)).startswith("wrong: agreement 0.99995")
  assert align.verdict(net, net, dict(fields, max_weight_error=float("inf"))) == "wrong: units unmatched"
  same = dict(fields, max_weight_error=float("inf"), max_logit_error=1e-15, domain_max_logit_error=2.0**-31)
  assert align.verdict(net, net, same) == "equivalent on the points: units unmatched"
  assert align.verdict(net, net, dict(same, domain_max_logit_error=1e-8)) == "wrong: units unmatched"
  assert align.verdict(net, net, dict(same, agreement=0.9999)) == "wrong: units unmatched"
  smaller = network.random_net(0, [6, 4, 2, 1])
  assert align.verdict(net, smaller, fields) == "exact; widths 4-2, victim's 4-3"
