"""Queries per second of the victim through the prediction API (`launch.serve`, HTTP on 127.0.0.1) against the
local oracle, for batches of 1, 64 and 1024 inputs, with the same victim in one run.

Run: `python -m benchmarks.serve_throughput` (about 1.5 minutes on a 2-core CPU). Writes
benchmarks/results/serve_throughput.{json,md}.

The victim is the quickstart's architecture (small CNN on 8x8x1 digits, probabilities output), trained for a few
steps in a temporary directory unless --victim_workdir names a trained one (throughput does not depend on the
weights). The server runs as its own process (`python -m launch.serve`, uvicorn, one worker), the client
(`extraction.remote.RemoteOracle`, one thread, keep-alive connection) in this one; the local oracle is
`extraction.oracle.Oracle` over the same jitted backend. Each configuration is timed in alternating rounds of
--seconds, so that load from other processes falls on all alike; the table reports the median round.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks.common import environment_line, machine, start_serve

FLAGS = flags.FLAGS
flags.DEFINE_string("victim_workdir", None, "A trained victim (launch.run workdir); default: train a tiny one.")
flags.DEFINE_list("batches", ["1", "64", "1024"], "Inputs per query.")
flags.DEFINE_integer("rounds", 3, "Alternating timing rounds.")
flags.DEFINE_float("seconds", 1.5, "Seconds per configuration and round.")
flags.DEFINE_string("out_dir", "benchmarks/results", "Where serve_throughput.{json,md} go.")

KEY = "benchmark-key-0123456789"
MODES = ("local", "http_npy", "http_json")


def victim_dir(tmp: pathlib.Path) -> pathlib.Path:
  """--victim_workdir, or a small CNN trained for 20 steps on digits in tmp."""
  if FLAGS.victim_workdir:
    return pathlib.Path(FLAGS.victim_workdir)
  from extraction import datasets, victim

  victim.train_victim(datasets.load_digits(), victim.VictimConfig(model="small_cnn", steps=20), tmp / "victim")
  return tmp


def start_server(workdir: pathlib.Path, tmp: pathlib.Path):
  """`python -m launch.serve` on a free port; returns (process, url)."""
  (tmp / "keys.json").write_text(json.dumps({KEY: {"label": "throughput", "output": "probabilities"}}))
  cmd = [
    sys.executable,
    "-m",
    "launch.serve",
    f"--victim_workdir={workdir}",
    f"--keys={tmp / 'keys.json'}",
    f"--db={tmp / 'keys.sqlite'}",
    "--init_db",
    "--port=0",
  ]
  return start_serve(cmd)


def time_round(ask, x: np.ndarray, seconds: float) -> tuple[float, float]:
  """(inputs per second, median seconds per call) of `ask(x)` repeated for about `seconds`."""
  times, start = [], time.perf_counter()
  while time.perf_counter() - start < seconds or len(times) < 3:
    t = time.perf_counter()
    ask(x)
    times.append(time.perf_counter() - t)
  return len(x) * len(times) / sum(times), statistics.median(times)


def main(argv):
  del argv
  import service
  from extraction import oracle as oracle_lib
  from extraction import victim as victim_lib
  from extraction.remote import RemoteOracle

  info = machine("fastapi", "uvicorn", "httpx")
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    workdir = victim_dir(tmp)
    v = victim_lib.load_victim(service.resolve_victim_dir(workdir))
    local = oracle_lib.Oracle(oracle_lib.model_backend(v.model, v.variables), "probabilities", record_inputs=False)
    proc, url = start_server(workdir, tmp)
    try:
      clients = {
        "local": local,
        "http_npy": RemoteOracle(url, KEY, record_inputs=False),
        "http_json": RemoteOracle(url, KEY, record_inputs=False, transport="json"),
      }
      rng = np.random.default_rng(0)
      inputs = {b: rng.integers(0, 256, (b,) + tuple(v.image_shape), dtype=np.uint8) for b in map(int, FLAGS.batches)}
      for _, x in inputs.items():  # warm up (compilation, connections) and check the answers agree
        answers = {m: clients[m](x) for m in MODES}
        np.testing.assert_array_equal(answers["http_npy"], answers["local"])
        np.testing.assert_array_equal(answers["http_json"], answers["local"])
      samples = {(m, b): [] for m in MODES for b in inputs}
      for _ in range(FLAGS.rounds):
        for b, x in inputs.items():
          for m in MODES:
            samples[m, b].append(time_round(clients[m], x, FLAGS.seconds))
      for c in clients.values():
        if hasattr(c, "close"):
          c.close()
    finally:
      proc.terminate()
      proc.wait(30)
  rows = []
  for b in inputs:
    row = {"batch": b}
    for m in MODES:
      qps, lat = sorted(samples[m, b])[len(samples[m, b]) // 2]
      row[f"{m}_queries_per_s"], row[f"{m}_ms_per_request"] = round(qps, 1), round(1e3 * lat, 3)
    row["http_npy_vs_local"] = round(row["http_npy_queries_per_s"] / row["local_queries_per_s"], 3)
    rows.append(row)
    print(row, flush=True)
  info["load_average_at_end"] = list(os.getloadavg())
  write(rows, info)


def write(rows: list[dict], info: dict) -> None:
  out = pathlib.Path(FLAGS.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  command = "python -m " + __spec__.name + "".join(f" {a}" for a in sys.argv[1:])
  settings = {
    "rounds": FLAGS.rounds,
    "seconds": FLAGS.seconds,
    "victim": FLAGS.victim_workdir or "small_cnn, digits 8x8x1, 20 training steps",
    "output": "probabilities",
    "key": "unlimited budget",
  }
  (out / "serve_throughput.json").write_text(
    json.dumps({"command": command, "machine": info, "settings": settings, "rows": rows}, indent=2)
  )
  lines = [
    "# Prediction API throughput (q/s: inputs answered per second; ms: median per call of the batch)",
    "",
    f"Command: `{command}`  ",
    f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, {info['platform']}, Python "
    f"{info['python']}, jax {info['jax']}, fastapi {info['fastapi']}, uvicorn {info['uvicorn']}, httpx "
    f"{info['httpx']}; load average {info['load_average'][0]:.1f} at start, "
    f"{info['load_average_at_end'][0]:.1f} at end (shared machine).  ",
    f"{environment_line(info)}  ",
    f"Victim: {settings['victim']}; one client thread, one server process on 127.0.0.1; median of "
    f"{FLAGS.rounds} alternating rounds of {FLAGS.seconds:g} s.",
    "",
    "| batch | local oracle q/s | HTTP npy q/s | HTTP JSON q/s | npy / local | local ms/call | npy ms/request "
    "| JSON ms/request |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['batch']} | {r['local_queries_per_s']:,.0f} | {r['http_npy_queries_per_s']:,.0f} | "
      f"{r['http_json_queries_per_s']:,.0f} | {r['http_npy_vs_local']:.2f} | "
      f"{r['local_ms_per_request']:.2f} | {r['http_npy_ms_per_request']:.2f} | "
      f"{r['http_json_ms_per_request']:.2f} |"
    )
  (out / "serve_throughput.md").write_text("\n".join(lines) + "\n")
  print(f"wrote {out / 'serve_throughput.json'} and {out / 'serve_throughput.md'}")


if __name__ == "__main__":
  app.run(main)
