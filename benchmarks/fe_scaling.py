"""Scaling of functionally-equivalent extraction (issue 4), and ART's FunctionallyEquivalentExtraction beside it.

  python -m benchmarks.fe_scaling [--eval_inputs=1000000] [--art_sizes=64x8,...] [--data_dir=../shared/data]

1. Random Gaussian victims d-h-10 (victims.random_net) for d in --dims and h in --hidden: our attack through a
   float64 logits Oracle, not told h. Reports queries, units found, max aligned weight error (and in bits), max
   |logit difference| and top-1 agreement on --eval_inputs inputs ~ N(0, I), seconds (attack only).
2. Trained victims: digits 64-32-10 and CIFAR-10 grayscale 32x32 (d=1024) 1024-64-10 trained on --cifar_train
   images, with agreement on their test sets too.
3. ART 1.20 `FunctionallyEquivalentExtraction` (benchmark-only dependency: pip install
   adversarial-robustness-toolbox) on the --art_sizes victims, in a child process with a timeout, told the number
   of neurons (it needs it), through a float64 wrapper that counts queries (ART's stock BlackBoxClassifier casts
   answers to float32); its agreement is measured on 10^5 random inputs. Plus one run of the stock float32
   wrapper, to show what a float32 oracle does to its search.
Writes benchmarks/results/fe_scaling.{json,md} with the command and the machine.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import multiprocessing as mp
import pathlib
import sys
import time

from absl import app, flags
import numpy as np

from benchmarks.common import RESULTS, machine

flags.DEFINE_list("dims", ["64", "784"], "Input dimensions d of the random victims.")
flags.DEFINE_list("hidden", ["8", "16", "32", "64", "128", "256"], "Hidden widths h of the random victims.")
flags.DEFINE_integer("outputs", 10, "Outputs k of the random victims.")
flags.DEFINE_integer("eval_inputs", 1_000_000, "Random inputs for our logit comparison and agreement.")
flags.DEFINE_list("art_sizes", ["64x8", "64x16", "64x32", "64x64", "784x8", "784x16", "784x32"],
                  "dxh victims for ART (empty: skip).")
flags.DEFINE_integer("art_timeout", 240, "Seconds per ART run before it is stopped.")
flags.DEFINE_integer("art_float32_timeout", 60, "Seconds for the stock (float32) ART wrapper on 64x8 (0: skip).")
flags.DEFINE_bool("trained", True, "Also extract the trained digits and CIFAR-10 grayscale victims.")
flags.DEFINE_string("data_dir", "../shared/data", "Directory holding cifar10/{train,test}.npz.")
flags.DEFINE_integer("cifar_train", 10_000, "CIFAR-10 training images for the grayscale victim.")
flags.DEFINE_integer("seed", 0, "Seed of victims and attacks.")
FLAGS = flags.FLAGS



def ours(net, eval_inputs: int, seed: int, test=None) -> dict:
  """Our attack on `net` through a float64 logits Oracle, and its evaluation."""
  from extraction.oracle import Oracle
  from functional_equivalence import align, attack, victims
  oracle = Oracle(victims.backend(net), output="logits", record_inputs=False)
  t0 = time.monotonic()
  result = attack.extract(oracle, net.shape[0], seed=seed)
  seconds = time.monotonic() - t0
  err = align.weight_error(net, result.net)
  agree = align.random_agreement(net, result.net, eval_inputs, seed=seed + 1)
  row = dict(queries=result.queries, queries_log2=round(math.log2(result.queries), 2),
             units_found=result.hidden_units_found, max_weight_error=err["max_weight_error"],
             error_bits=round(err["weight_error_bits"], 1), max_logit_error=agree["max_logit_error"],
             agreement=agree["agreement"], eval_inputs=eval_inputs, seconds=round(seconds, 2),
             stats={k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in result.stats.items()})
  if test is not None:
    t = align.logit_agreement(net, result.net, test[0])
    row.update(test_agreement=t["agreement"], test_max_logit_error=t["max_logit_error"], test_inputs=len(test[0]),
               victim_test_accuracy=float(np.mean(victims.logits(net, test[0]).argmax(1) == test[1])))
  return row


def _art_child(arrays, seed, float64, counter, conn):
  """Runs ART in a child process; sends back ((w0, b0, w1, b1), seconds) or an error string. Queries counted in
  `counter`; the timer starts after the imports."""
  import warnings
  warnings.filterwarnings("ignore")  # ART divides by zero-width steps when its search goes wrong
  from art.attacks.extraction import FunctionallyEquivalentExtraction
  from art.estimators.classification.blackbox import BlackBoxClassifierNeuralNetwork
  from functional_equivalence import victims
  net = victims.TwoLayerNet(*arrays)

  def predict(x):
    counter.value += len(x)
    return victims.logits(net, x)

  class Float64BlackBox(BlackBoxClassifierNeuralNetwork):
    def predict(self, x, batch_size=128, **kwargs):  # ART's own predict copies answers into a float32 buffer
      return predict(np.asarray(x, np.float64))

  cls = Float64BlackBox if float64 else BlackBoxClassifierNeuralNetwork
  d, h, k = net.shape
  clf = cls(predict, input_shape=(d,), nb_classes=k)
  np.random.seed(seed)  # ART draws its line with np.random
  conn.send("started")
  t0 = time.monotonic()
  try:
    fee = FunctionallyEquivalentExtraction(clf, num_neurons=h)
    with contextlib.redirect_stdout(io.StringIO()):  # ART prints every weight ratio
      fee.extract(np.random.normal(size=(1000, d)))
    conn.send(((fee.w_0, fee.b_0.ravel(), fee.w_1, fee.b_1.ravel()), time.monotonic() - t0))
  except Exception as e:  # report, do not crash the benchmark
    conn.send(f"{type(e).__name__} after {time.monotonic() - t0:.1f} s: {str(e)[:200]}")


def art(net, seed: int, timeout: float, float64: bool = True) -> dict:
  """ART's FunctionallyEquivalentExtraction on `net`, stopped after `timeout` seconds."""
  from functional_equivalence import align, victims
  ctx = mp.get_context("spawn")
  counter = ctx.Value("q", 0, lock=False)
  recv, send = ctx.Pipe(duplex=False)
  proc = ctx.Process(target=_art_child, args=(tuple(net), seed, float64, counter, send))
  proc.start()
  assert recv.poll(120) and recv.recv() == "started", "ART child did not start"
  t0 = time.monotonic()
  got = recv.recv() if recv.poll(timeout) else None
  seconds = time.monotonic() - t0
  proc.terminate()
  proc.join()
  row = dict(art_queries=int(counter.value), art_seconds=round(seconds, 1))
  if got is None:
    return dict(row, art_status=f"stopped after {timeout} s (not finished)")
  if isinstance(got, str):
    return dict(row, art_status=got)
  rec, row["art_seconds"] = victims.TwoLayerNet(*got[0]), round(got[1], 1)
  err = align.weight_error(net, rec)
  agree = align.random_agreement(net, rec, 100_000, seed=seed + 1)
  cos = np.max(np.abs((net.w0 / np.linalg.norm(net.w0, axis=0)).T @ (rec.w0 / np.linalg.norm(rec.w0, axis=0))), 1)
  return dict(row, art_status="finished", art_queries_log2=round(math.log2(max(row["art_queries"], 1)), 2),
              art_wrong_rows=int(np.sum(cos < 1 - 1e-9)), art_worst_row_cosine=round(float(cos.min()), 4),
              art_matched_units=err["matched_units"], art_max_weight_error=err["max_weight_error"],
              art_max_matched_error=err["max_matched_error"], art_max_logit_error=agree["max_logit_error"],
              art_agreement=agree["agreement"], art_eval_inputs=100_000)


def cifar_gray(data_dir: str, n_train: int):
  """CIFAR-10 as grayscale 32x32 in [0, 1], flattened (d=1024): (x_train, y_train, x_test, y_test)."""
  out = []
  for split in ("train", "test"):
    with np.load(pathlib.Path(data_dir) / "cifar10" / f"{split}.npz") as f:
      img, lab = f["image"], f["label"]
    if split == "train":
      img, lab = img[:n_train], lab[:n_train]
    out += [(img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0).reshape(len(img), -1), lab]
  return tuple(out)


def trained_victims(seed: int):
  """[(name, net, (x_test, y_test), training seconds)] for digits and (if its files exist) CIFAR-10 grayscale."""
  from functional_equivalence import victims
  out = []
  t0 = time.monotonic()
  net, data = victims.digits_net(seed, hidden=32, steps=300)
  out.append(("digits 64-32-10", net, (data[2], data[3]), time.monotonic() - t0))
  if (pathlib.Path(FLAGS.data_dir) / "cifar10" / "train.npz").exists():
    t0 = time.monotonic()
    xtr, ytr, xte, yte = cifar_gray(FLAGS.data_dir, FLAGS.cifar_train)
    net = victims.train_two_layer(xtr, ytr, 64, seed=seed, steps=200, learning_rate=3e-3, num_classes=10)
    out.append(("cifar10-gray 1024-64-10", net, (xte, yte), time.monotonic() - t0))
  return out


def _fmt(v, spec=""):
  return "" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def notes(rows: list[dict], float32_row) -> list[str]:
  """Target checks and the ART comparison, in words, computed from the rows."""
  out = []
  target = next((r for r in rows if r["victim"] == "random 784-128-10"), None)
  if target:
    checks = [("queries <= 2^18", target["queries"] <= 2 ** 18, f"{target['queries']} = 2^{target['queries_log2']}"),
              ("max aligned weight error <= 2^-30", target["error_bits"] >= 30, f"2^-{target['error_bits']}"),
              ("agreement 100%", target["agreement"] == 1.0, f"{target['agreement']} on {target['eval_inputs']:.0e}"),
              ("<= 60 s", target["seconds"] <= 60, f"{target['seconds']} s")]
    out.append("Targets for 784-128-10: " + "; ".join(f"{n}: {'met' if ok else 'MISSED'} ({v})"
                                                       for n, ok, v in checks) + ".")
  worst = min(rows, key=lambda r: r["error_bits"])
  found = sum(r["units_found"] == r["true_units"] for r in rows)
  out.append(f"Our attack, not told h, found every hidden unit in {found} of {len(rows)} victims; minimum agreement "
             f"{min(r['agreement'] for r in rows)}; the least precise victim is {worst['victim']} "
             f"(2^-{worst['error_bits']}). Seconds are the attack alone (victim queries included, evaluation not).")
  art_rows = [r for r in rows if "art_status" in r]
  done = [r for r in art_rows if r["art_status"] == "finished"]
  if done:
    q = [r["art_queries"] / r["queries"] for r in done]
    t = [r["art_seconds"] / max(r["seconds"], 1e-2) for r in done]
    out.append(f"ART (told h, float64 wrapper) finished on {len(done)} of {len(art_rows)} victims, using "
               f"{min(q):.0f}-{max(q):.0f}x our queries and {min(t):.0f}-{max(t):.0f}x our time; its extracted "
               f"networks agree with the victims on {min(r['art_agreement'] for r in done):.1%}-"
               f"{max(r['art_agreement'] for r in done):.1%} of random inputs, because some of its first-layer rows "
               f"are wrong (rows whose direction differs from every true row: "
               + ", ".join(f"{r['victim'].split()[-1]}: {r['art_wrong_rows']} of {r['true_units']}, worst cosine "
                           f"{r['art_worst_row_cosine']}" for r in done)
               + "). In the worst row we inspected by hand (64-8-10, outside this script) the magnitudes |a_ij| "
               "were close to the true ones but about 10% of the signs were wrong, which points at ART's "
               "per-coordinate sign step (second differences along e_0 + e_j); its last layer is then fitted to "
               "the wrong rows.")
  for r in art_rows:
    if r["art_status"] != "finished":
      out.append(f"ART on {r['victim']}: {r['art_status']} ({r['art_queries']} queries).")
  if float32_row:
    out.append(f"ART with its stock BlackBoxClassifierNeuralNetwork, which copies answers into a float32 buffer, on "
               f"random 64-8-10: {float32_row['art_status']}, after {float32_row['art_queries']} queries "
               f"(its critical-point search halves its step without a lower bound once float32 rounding breaks "
               f"its slope tests). Every other ART row uses a float64 wrapper.")
  out.append("ART's queries include the 1000 random inputs it needs for its last-layer fit; its agreement is "
             "measured on 10^5 random inputs, ours on --eval_inputs.")
  return out


def markdown(rows: list[dict], meta: dict) -> str:
  lines = ["# Functionally-equivalent extraction: scaling on a 2-core CPU", "",
           f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
           f"Total wall time: {meta['seconds']:.0f} s (wall clock, on a machine shared with other jobs).", "",
           "## Our attack (float64 logits oracle, h not given)", "",
           "| victim | queries (log2) | units found | max aligned weight error (bits) | max abs logit diff |"
           " agreement (random inputs) | test agreement | seconds |", "|" + "---|" * 8]
  for r in rows:
    lines.append("| " + " | ".join([
        r["victim"], f"{r['queries']} (2^{r['queries_log2']})", f"{r['units_found']}/{r['true_units']}",
        f"{r['max_weight_error']:.2e} (2^-{r['error_bits']})", f"{r['max_logit_error']:.1e}",
        f"{r['agreement']:.6f} ({r['eval_inputs']:.0e})",
        "" if "test_agreement" not in r else f"{r['test_agreement']:.4f} ({r['test_inputs']})",
        f"{r['seconds']:.2f}"]) + " |")
  lines += ["", "## ART `FunctionallyEquivalentExtraction` on the same victims (told h)", "",
            "| victim | ART status | queries (log2) | seconds | matched units | max abs logit diff |"
            " agreement (1e5) | queries ART/ours | time ART/ours |", "|" + "---|" * 9]
  for r in rows:
    if "art_status" not in r:
      continue
    lines.append("| " + " | ".join([
        r["victim"], r["art_status"], f"{r['art_queries']} (2^{math.log2(max(r['art_queries'], 1)):.2f})",
        f"{r['art_seconds']:.1f}", _fmt(r.get("art_matched_units")), _fmt(r.get("art_max_logit_error"), ".2g"),
        _fmt(r.get("art_agreement"), ".4f"),
        f"{r['art_queries'] / r['queries']:.1f}" if r["art_status"] == "finished" else "",
        f"{r['art_seconds'] / max(r['seconds'], 1e-2):.0f}" if r["art_status"] == "finished" else ""]) + " |")
  return "\n".join(lines + ["", "## Notes", ""] + [f"- {n}" for n in notes(rows, meta.get("art_float32_64x8"))]) + "\n"


def main(argv):
  del argv
  from functional_equivalence import victims
  start = time.monotonic()
  art_sizes = {tuple(int(v) for v in s.split("x")) for s in FLAGS.art_sizes}
  rows = []
  for d in (int(v) for v in FLAGS.dims):
    for h in (int(v) for v in FLAGS.hidden):
      net = victims.random_net(FLAGS.seed, d, h, FLAGS.outputs)
      row = dict(victim=f"random {d}-{h}-{FLAGS.outputs}", true_units=h, **ours(net, FLAGS.eval_inputs, FLAGS.seed))
      if (d, h) in art_sizes:
        row.update(art(net, FLAGS.seed, FLAGS.art_timeout))
      print(json.dumps({k: v for k, v in row.items() if k != "stats"}), flush=True)
      rows.append(row)
  if FLAGS.trained:
    for name, net, test, train_s in trained_victims(FLAGS.seed):
      row = dict(victim=name, true_units=net.shape[1], train_seconds=round(train_s, 1),
                 **ours(net, FLAGS.eval_inputs, FLAGS.seed, test))
      print(json.dumps({k: v for k, v in row.items() if k != "stats"}), flush=True)
      rows.append(row)
  float32_row = None
  if FLAGS.art_float32_timeout > 0:
    float32_row = art(victims.random_net(FLAGS.seed, 64, 8, FLAGS.outputs), FLAGS.seed, FLAGS.art_float32_timeout,
                      float64=False)
    print(json.dumps(float32_row), flush=True)
  meta = dict(command=" ".join(["python -m benchmarks.fe_scaling"] + sys.argv[1:]), machine=machine("numpy", "adversarial-robustness-toolbox"),
              seconds=time.monotonic() - start, art_float32_64x8=float32_row)
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / "fe_scaling.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1, default=str))
  (RESULTS / "fe_scaling.md").write_text(markdown(rows, meta))
  print(f"wrote {RESULTS / 'fe_scaling.json'} and {RESULTS / 'fe_scaling.md'} in {meta['seconds']:.0f} s")


if __name__ == "__main__":
  app.run(main)
