"""ART's CopycatCNN and KnockoffNets against a launcher workdir's victim, beside the launcher's own rows
(benchmarks/table1_learning.py): our student wrapped as ART's thieved classifier, evaluated by the launcher's rule,
and the side-by-side table. No flags here, so tests can import it beside the launcher."""

from __future__ import annotations

import json
import math
import pathlib
import time

import numpy as np


def _launcher_flags(workdir: pathlib.Path) -> dict:
  """The flags the launcher ran with (from its results.json)."""
  return json.loads((workdir / "results.json").read_text())[0]["config"]


class _Thief:
  """Our student as ART's thieved classifier (`fit` and `predict` on float inputs holding uint8 values)."""

  def __init__(self, cfg, dataset, num_classes, shape, seed, evaluator):
    import jax
    from art.estimators.classification import BlackBoxClassifier

    from extraction import augment, models, seeds, train

    self.model = models.create_model(cfg["student_model"], num_classes)
    tx = train.make_optimizer(
      cfg["lr"] or 0.002, 0.02 if cfg["weight_decay"] is None else cfg["weight_decay"], cfg["student_steps"]
    )
    self.state = train.create_state(self.model, tx, seeds.key(seed, "student"), shape)
    flip, shift = augment.default_augmentation(dataset)
    self.step = jax.jit(train.make_supervised_step(self.model, ema_decay=cfg["ema"], flip=flip, shift=shift))
    self.rng = np.random.default_rng(seed)
    self.steps = 0
    self.evaluator, self.eval_every, self.history = evaluator, cfg["eval_every"], []
    thief = self

    class Classifier(BlackBoxClassifier):
      def fit(self, x, y, batch_size=64, nb_epochs=1, **_):
        thief.fit(x, y, batch_size, nb_epochs)

      def predict(self, x, batch_size=128, **_):
        return thief.logits(x)

    self.art = Classifier(self.logits, tuple(shape), num_classes, clip_values=(0, 255))

  def fit(self, x, y, batch_size, nb_epochs):
    """ART's training call. One of at least `eval_every` steps (the final training; not the adaptive policy's
    one-step online updates) is evaluated as the launcher evaluates its students: every `eval_every` steps and at
    its end, on the test and validation splits; `history` keeps the last such call's evaluations."""
    x = np.asarray(np.round(x), np.uint8)
    y = np.asarray(y, np.float32)
    total = nb_epochs * math.ceil(len(x) / batch_size)
    history = []
    for i in range(1, total + 1):
      idx = self.rng.integers(0, len(x), min(batch_size, len(x)))
      self.state, _ = self.step(self.state, {"images": x[idx], "targets": y[idx]})
      self.steps += 1
      if total >= self.eval_every and (i % self.eval_every == 0 or i == total):
        history.append({"step": i, **self.evaluator(self.logits, full=False)})
    if history:
      self.history = history

  def logits(self, x):
    """float64 logits less their maximum (the same softmax): ART's adaptive Knockoff takes a naive softmax of
    them (`np.exp`), which overflows on a confident float32 student's logits (its bandit's probabilities NaN)."""
    from extraction.predict import predict_logits

    z = np.asarray(predict_logits(self.model, self.state.variables(ema=True), np.asarray(np.round(x), np.uint8)))
    z = z.astype(np.float64)
    return z - z.max(-1, keepdims=True)


def run_art(workdir: pathlib.Path, names: list[str]) -> list[dict]:
  """ART's attacks against the launcher's victim at its budgets, output mode and seeds (module docstring)."""
  import logging as py_logging

  from art.attacks.extraction import CopycatCNN, KnockoffNets
  from art.estimators.classification import BlackBoxClassifier

  from extraction import datasets, evaluation, transfer
  from extraction import oracle as oracle_lib
  from extraction import victim as victim_lib
  from extraction.predict import predict_logits

  py_logging.getLogger("art").setLevel(py_logging.WARNING)
  cfg = _launcher_flags(workdir)
  ds = datasets.load(cfg["dataset"], cfg["data_dir"])
  victim = victim_lib.load_victim(workdir / "victim")
  split = np.load(workdir / "split.npz")
  evaluator = evaluation.Evaluator.build(
    lambda x: predict_logits(victim.model, victim.variables, x),
    ds.test.images,
    ds.test.labels,
    ds.num_classes,
    val_images=ds.train.images[split["val"]],
  )
  query_seed = cfg["seed"] if cfg["query_seed"] is None else cfg["query_seed"]
  student_seed = cfg["seed"] if cfg["student_seed"] is None else cfg["student_seed"]
  ts = transfer.load(
    cfg["transfer_set"], ds.image_shape, cfg["transfer_size"], transfer.draw_rng(query_seed), cfg["data_dir"]
  )
  actions = np.unique(ts.kinds[:, 0] * 100_000 + ts.kinds[:, 1], return_inverse=True)[1]
  backend = oracle_lib.model_backend(victim.model, victim.variables)
  output = cfg["oracle_output"][0]
  rows = []
  for name in names:
    for q in sorted(int(b) for b in cfg["queries"]):
      runs = []
      for rep in range(cfg["seeds"]):
        t0 = time.time()
        oracle = oracle_lib.Oracle(backend, output=output, top_k=cfg["top_k"], budget=q, record_inputs=False)
        api = BlackBoxClassifier(
          lambda x, oracle=oracle: oracle(np.asarray(np.round(x), np.uint8)),
          ds.image_shape,
          ds.num_classes,
          clip_values=(0, 255),
        )
        thief = _Thief(cfg, ds.name, ds.num_classes, ds.image_shape, student_seed + rep, evaluator)
        epochs = max(1, round(cfg["student_steps"] / math.ceil(q / cfg["batch_size"])))
        common = dict(batch_size_fit=cfg["batch_size"], batch_size_query=256, nb_epochs=epochs, nb_stolen=q)
        np.random.seed(query_seed + rep)  # ART draws from numpy's global generator
        if name == "copycat":
          CopycatCNN(api, **common).extract(ts.images.astype(np.float32), thieved_classifier=thief.art)
        else:
          attack = KnockoffNets(
            api,
            sampling_strategy=name.split("_")[1],
            reward="all",
            verbose=False,
            use_probability=output != "labels",
            **common,
          )
          attack.extract(
            ts.images.astype(np.float32), actions if name == "knockoff_adaptive" else None, thieved_classifier=thief.art
          )
        metrics = evaluation.summarize(thief.history, cfg["median_of"])  # the launcher's rule
        runs.append(
          {
            "accuracy": metrics["accuracy"],
            "fidelity": metrics["fidelity"],
            "val_fidelity": metrics["val_fidelity"],
            "last_fidelity": thief.history[-1]["fidelity"],
            "oracle_used": oracle.used,
            "steps": thief.steps,
            "seconds": round(time.time() - t0, 1),
          }
        )
        print(f"ART {name} q={q} rep={rep}: {runs[-1]}", flush=True)
      agg = evaluation.aggregate([{k: r[k] for k in ("accuracy", "fidelity", "val_fidelity")} for r in runs])
      rows.append(
        {
          "method": "fs (ART's training loop: see notes)",
          "strategy": f"ART {name}",
          "queries": q,
          "oracle_output": output,
          "oracle_used": runs[0]["oracle_used"],
          **agg,
          "steps": runs[0]["steps"],
          "seconds": sum(r["seconds"] for r in runs),
          "per_seed": runs,
        }
      )
  return rows


def _last_fidelity(row: dict) -> str:
  """Mean over the seeds of the final evaluation's test fidelity (ours: the end of each student's curve; ART's:
  `last_fidelity`), to show whether the students were still improving where the median was taken."""
  last = [p["curve"][-1]["fidelity"] if "curve" in p else p.get("last_fidelity") for p in row.get("per_seed", [])]
  return f"{np.mean(last):.4f}" if last and None not in last else ""


def side_by_side(rows: list[dict]) -> str:
  """One line per strategy (ours, then ART's), for each budget its fidelity (and the final evaluation's) and
  accuracy as mean ± std over the seeds, and the victim's accuracy above."""
  from launch.results import _cell

  victim = next((r for r in rows if r["method"] == "victim"), None)
  rows = [r for r in rows if r["method"] != "victim"]
  budgets = sorted({r["queries"] for r in rows})
  names = list(dict.fromkeys(r["strategy"] for r in rows))
  names = [n for n in names if not n.startswith("ART")] + [n for n in names if n.startswith("ART")]
  columns = ("fidelity", "last", "accuracy")
  head = ["strategy"] + [f"{m} @ {q}" for q in budgets for m in columns]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in names:
    by_q = {r["queries"]: r for r in rows if r["strategy"] == n}
    cells = [
      _last_fidelity(by_q.get(q, {})) if m == "last" else _cell(by_q.get(q, {}), m) for q in budgets for m in columns
    ]
    lines.append("| " + " | ".join([n] + cells) + " |")
  top = f"Victim test accuracy {victim['accuracy']:.4f}.\n\n" if victim else ""
  legend = (
    "fidelity: the reported figure (median of the last evaluations); last: the final evaluation's fidelity, "
    "mean over the seeds (above the median where the students were still improving).\n\n"
  )
  return top + legend + "\n".join(lines) + "\n"
