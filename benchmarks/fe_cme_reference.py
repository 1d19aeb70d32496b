"""CME's own code beside our deep attack on the same victims (issue 14): Carlini, Jagielski, Mironov (CRYPTO 2020).

  git clone https://github.com/google-research/cryptanalytic-model-extraction /tmp/cme
  flock /tmp/heavy.lock python -m benchmarks.fe_cme_reference --cme_dir=/tmp/cme [--max_seconds=1200]

Their code (Apache 2.0) is not copied into this repository: --cme_dir names a checkout (commit 1093b62 was run). It
is run unchanged through benchmarks/cme_compat.py, the smallest shim for current JAX / numpy (jax.config and
jax.experimental.optimizers moved, np.array of ragged lists refused, mp.Pool(cpu_count // 4) empty on < 4 cores:
one process here), in a subprocess per victim with their own alarm shortened to --max_seconds.

Victims: exactly benchmarks/fe_deep.py's (its flags and constructors: deep.network.random_net over --random_sizes
and --seeds, deep.network.cme_net seed 0 over --cme_sizes, the digits victims over --digits_hidden), each written in
their format (models/SEED_SIZES.npy, benchmarks/cme_format.py) and their extract.py told the sizes on its command
line, as their README runs it (our attack is told nothing). Their attack seed (their np.random) is the one
fe_deep.py gives ours (np.random.SeedSequence([seed, 14]); the evaluation draws the other). With --ours (default)
our attack runs on the same victim in the same run (fe_deep.run_one).

Per run: status (ok; timeout after N s; error: their traceback's last line; no result), queries (our own count of
the rows their code sent to the victim, up to saving the model; their printed counter stays 0, their issue #3),
log2, their own printed check ("Maximum logit loss on the unit sphere", 100,000 N(0, I) inputs), and, measured by
us on what they pickled, the same evaluation as fe_deep.py (aligned weight error per layer and overall, agreement
and max |logit difference| on N(0, I) and over the ball of radius 1000), seconds (their process, wall clock).
Writes benchmarks/results/fe_cme_reference.{json,md}.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags

from benchmarks import cme_format, fe_deep
from benchmarks.common import RESULTS, machine, report_head

flags.DEFINE_string("cme_dir", None, "Checkout of google-research/cryptanalytic-model-extraction.")
flags.DEFINE_bool("ours", True, "Also run our deep attack on each victim (fe_deep.run_one), side by side.")
flags.DEFINE_string("cme_workdir", "/tmp/fe_cme_reference", "Where victims, their logs and outputs are written.")
FLAGS = flags.FLAGS

SHIM = pathlib.Path(__file__).resolve().parent / "cme_compat.py"

QUOTED = fe_deep.QUOTED


def run_cme(net, attack_seed: int, workdir: pathlib.Path) -> tuple:
  """Their extract.py on `net` (cme_compat.py in a subprocess): status, counts, their figures, the recovered net."""
  workdir.mkdir(parents=True, exist_ok=True)
  cme_format.export_victim(workdir, net, attack_seed)
  extracted = workdir / f"extracted-{net.shape_text}.p"
  extracted.unlink(missing_ok=True)
  log = workdir / "log.txt"
  cmd = [sys.executable, str(SHIM), FLAGS.cme_dir, str(workdir), net.shape_text, str(attack_seed)]
  cmd.append(str(int(FLAGS.max_seconds)))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  start = time.time()
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
      code = proc.wait(timeout=FLAGS.max_seconds + 120)  # their alarm should end it first
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL)
      code = proc.wait()
  seconds = time.time() - start
  text = log.read_text(errors="replace")
  parsed = cme_format.parse_output(text)
  error = cme_format.last_error(text)
  if parsed["timed_out"] or code == -signal.SIGKILL:
    status = f"timeout after {seconds:.0f} s"
  elif error:
    status = f"error: {error[:200]}"
  elif not extracted.exists():
    status = f"no result (exit code {code})"
  else:
    status = "ok"
  queries = parsed["our_queries_at_save"] if parsed["our_queries_at_save"] is not None else parsed["our_queries"]
  row = dict(
    tool="CME",
    status=status,
    queries=queries,
    queries_log2=round(math.log2(queries), 2) if queries else None,
    their_query_count=parsed["their_query_count"],
    their_saved_queries=parsed["their_saved_queries"],
    their_max_logit_loss=parsed["their_max_logit_loss"],
    final_solve=parsed["final_solve"],
    seconds=round(seconds, 1),
    log=str(log),
  )
  return row, (cme_format.load_extracted(extracted) if status == "ok" else None)


def run_victim(name: str, net, seed: int) -> list:
  attack_seed, eval_seed = fe_deep.run_seeds(seed)
  base = fe_deep.victim_fields(name, net, seed)
  workdir = pathlib.Path(FLAGS.cme_workdir) / f"{name.replace(' ', '_')}_{net.shape_text}_{seed}"
  row, rec = run_cme(net, attack_seed, workdir)
  if rec is not None:
    if rec.sizes != net.sizes:
      row.update(widths_found=rec.shape_text)
    row.update(fe_deep.evaluate(net, rec, eval_seed))
  rows = [dict(base, **row)]
  if FLAGS.ours:
    rows.append(dict(fe_deep.run_one(name, net, seed), tool="ours"))
  return rows


COLUMNS = [
  "victim",
  "shape",
  "seed",
  "tool",
  "status",
  "verdict",
  "queries_log2",
  "final_solve",
  "their_max_logit_loss",
  "layer_errors",
  "error_bits",
  "agreement",
  "domain_agreement",
  "max_logit_error",
  "domain_max_logit_error",
  "seconds",
]


def _cell(v) -> str:
  if isinstance(v, float) and v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
    return f"{v:.2g}"
  return "" if v is None else str(v)


def markdown(rows, command, info, seconds, reading, commit="") -> str:
  lines = report_head(
    "CME's own code beside our deep attack (issue 14)",
    f"Command: `{command}` (CME's code at commit {commit or 'unknown'}, run through benchmarks/cme_compat.py)",
    info,
    seconds,
    COLUMNS,
  )
  lines += ["| " + " | ".join(_cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
  lines += ["", "Reading:", ""] + [f"- {line}" for line in reading]
  lines += ["", "Published figures (quoted, not re-run):", ""] + [f"- {q}" for q in QUOTED]
  return "\n".join(lines) + "\n"


def reading(rows) -> list:
  """What the rows say, computed from them (no figure typed in)."""
  out = []
  cme = [r for r in rows if r["tool"] == "CME"]
  ok = [r for r in cme if r["status"] == "ok"]
  exact = [r for r in ok if r.get("verdict", "").startswith("exact")]
  out.append(
    f"CME's code finished on {len(ok)} of {len(cme)} victims; exact (every unit matched, error <= 2^-30, "
    f"agreement 1.0) on {len(exact)}; the others: "
    + (
      "; ".join(f"{r['shape']} seed {r['seed']}: {r.get('verdict') or r['status']}" for r in cme if r not in exact)
      or "none"
    )
    + "."
  )
  theirs_exact = {(r["shape"], r["seed"]) for r in exact}
  ours_exact = [r for r in rows if r["tool"] == "ours" and r.get("verdict", "").startswith("exact")]
  out.append(
    f"Ours exact on {len(ours_exact)} of {sum(r['tool'] == 'ours' for r in rows)}; exact by both: "
    f"{sum((r['shape'], r['seed']) in theirs_exact for r in ours_exact)}."
  )
  for r in cme:
    ours = next((o for o in rows if o["tool"] == "ours" and (o["shape"], o["seed"]) == (r["shape"], r["seed"])), None)
    if ours and r.get("queries") and ours.get("queries") and r["status"] == ours["status"] == "ok":
      out.append(
        f"{r['victim']} {r['shape']} seed {r['seed']}: CME {r['queries_log2']} vs ours {ours['queries_log2']} "
        f"log2 queries (ratio {r['queries'] / ours['queries']:.2f}); error bits {r.get('error_bits')} vs "
        f"{ours.get('error_bits')}; {r['seconds']} s vs {ours['seconds']} s."
      )
  out.append(
    "CME's code is told the layer sizes (extract.py SIZES SEED) and brute-forces 2^K sign patterns of the last "
    "hidden layer (K its width) when its signs are not found otherwise; ours is told nothing."
  )
  return out


def main(argv):
  del argv
  import jax
  from absl import logging

  if not FLAGS.cme_dir or not (pathlib.Path(FLAGS.cme_dir) / "extract.py").exists():
    sys.exit(
      f"--cme_dir={FLAGS.cme_dir}: not a checkout of CME's code (no extract.py); get it with "
      "`git clone https://github.com/google-research/cryptanalytic-model-extraction`"
    )
  logging.set_verbosity(logging.WARNING)
  command = "python -m benchmarks.fe_cme_reference " + " ".join(sys.argv[1:])
  commit = subprocess.run(
    ["git", "-C", FLAGS.cme_dir, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
  ).stdout.strip()
  shutil.rmtree(FLAGS.cme_workdir, ignore_errors=True)
  start = time.time()
  rows = []
  with jax.enable_x64(True):
    for name, net, seed in fe_deep.victims():
      for row in run_victim(name, net, seed):
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
      write(rows, command, commit, time.time() - start)  # after every victim: a long run's rows so far
  print(f"wrote {RESULTS / FLAGS.out}.{{json,md}}")


def write(rows, command, commit, seconds):
  info = machine("jax", "numpy", "scipy", "networkx")
  text = reading(rows)
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{FLAGS.out}.json").write_text(
    json.dumps(
      dict(command=command, cme_commit=commit, machine=info, seconds=seconds, rows=rows, reading=text, quoted=QUOTED),
      indent=1,
      default=str,
    )
  )
  (RESULTS / f"{FLAGS.out}.md").write_text(markdown(rows, command, info, seconds, text, commit))


if __name__ == "__main__":
  FLAGS.set_default("out", "fe_cme_reference")
  app.run(main)
