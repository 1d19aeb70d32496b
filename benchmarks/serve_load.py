"""The prediction service under hostile load: another key's latency while one client attacks, before and after.

Run: `flock /tmp/heavy.lock python -m benchmarks.serve_load --baseline_repo=/tmp/serve_before` (about 6 minutes on
a 2-core CPU), where /tmp/serve_before holds the code before the fixes (e.g. `git archive <commit> | tar -x -C
/tmp/serve_before`); without --baseline_repo only this code is measured. Writes
benchmarks/results/serve_load.{json,md}.

Everything runs on loopback (127.0.0.1, and 127.0.0.2 as the attacker's address where a scenario says so), every
loop is bounded in count and in time, and every process it starts is stopped by a deadline. Each scenario gets a
fresh server process (`python -m launch.serve`, one uvicorn worker, the open-file limit set to --open_files, soft
and hard, as is common) serving a small CNN victim (digits 8x8x1, 20 training steps). A client of another key
sends one input at a time over a new connection each time (as a new client would), for --seconds, while the attack
runs in its own process; a request fails if it gets no 200 within 5 s. Scenarios:
  idle      no attack (the reference);
  batches   one key sends 8 concurrent batches of 4096 inputs, again and again;
  json      a key with no budget left sends 2 concurrent 30 MB JSON bodies, again and again;
  slow      1,100 slow connections (headers never finished, a byte a second), reopened when dropped;
            `slow_same`: the same from 127.0.0.1, the measured client's own address;
  uploads   40 held uploads of 32 MB from a key with budget (16 MB sent, the rest held back).
The attackers connect from 127.0.0.2 (another client) except in `slow_same`; the measured client from 127.0.0.1.
The server's resident memory is sampled every 50 ms (peak reported).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from absl import app, flags

from benchmarks.common import environment_line, start_serve

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline_repo", None, "A checkout of the code before the fixes: measured side by side.")
flags.DEFINE_string("victim_workdir", None, "A trained victim (launch.run workdir); default: train a tiny one.")
flags.DEFINE_float("seconds", 10.0, "Seconds of measurement per scenario (the attack runs throughout).")
flags.DEFINE_integer("open_files", 1024, "The server's open-file limit (soft and hard).")
flags.DEFINE_list("scenarios", ["idle", "batches", "json", "slow", "slow_same", "uploads"], "Scenarios to run.")
flags.DEFINE_string("out_dir", "benchmarks/results", "Where serve_load.{json,md} go.")
flags.DEFINE_enum("role", "main", ["main", "batches", "json", "slow", "uploads"], "Internal: an attacker process.")
flags.DEFINE_string("url", None, "Internal: the server an attacker process attacks.")
flags.DEFINE_string("source", "127.0.0.1", "Internal: the attacker's loopback address.")
flags.DEFINE_float("deadline", 0.0, "Internal: when an attacker process stops (seconds since the epoch).")
REPO = pathlib.Path(__file__).resolve().parent.parent
ATTACK, VICTIM, SPENT = "attacker-key-0123456789abcdef", "measured-key-0123456789abcdef", "spent-key-0123456789abcdef"
TARGET_MS = 50.0
REQUEST_TIMEOUT = 5.0
RAMP_SECONDS = 3.0


# ------------------------------------------------------------------------------------------------ attackers
def npy_bytes(x: np.ndarray) -> bytes:
  import io

  buf = io.BytesIO()
  np.save(buf, x)
  return buf.getvalue()


OUTCOMES: collections.Counter = collections.Counter()  # an attacker process's results: status or error -> count
_OUTCOMES_LOCK = threading.Lock()


def _count(outcome: str) -> None:
  with _OUTCOMES_LOCK:
    OUTCOMES[outcome] += 1


def _in_threads(target, count: int, deadline: float) -> None:
  """Runs `target` in `count` daemon threads, waiting for them until 5 s past the deadline."""
  threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(max(0.0, deadline - time.time()) + 5)


def _host_port(url: str) -> tuple[str, int]:
  host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
  return host, int(port)


def _post_repeatedly(
  url: str, deadline: float, source: str, body: bytes, headers: dict, threads: int, repeats: int
) -> None:
  """`threads` clients each posting `body` until the deadline, at most `repeats` times; outcomes counted."""
  import httpx

  def loop():
    with httpx.Client(timeout=30, transport=httpx.HTTPTransport(local_address=source)) as client:
      for _ in range(repeats):
        if time.time() > deadline:
          return
        try:
          _count(str(client.post(url + "/v1/predict", content=body, headers=headers).status_code))
        except httpx.HTTPError as e:
          _count(type(e).__name__)
          time.sleep(0.05)

  _in_threads(loop, threads, deadline)


def attack_batches(url: str, deadline: float, source: str) -> None:
  """8 threads sending batches of 4096 random digits images (npy) until the deadline (at most 500 each)."""
  body = npy_bytes(np.random.default_rng(0).integers(0, 256, (4096, 8, 8, 1), dtype=np.uint8))
  _post_repeatedly(url, deadline, source, body, {"X-API-Key": ATTACK, "Content-Type": "application/x-npy"}, 8, 500)


def attack_json(url: str, deadline: float, source: str) -> None:
  """2 threads sending 30 MB JSON bodies with a key whose budget is spent, until the deadline (at most 200 each)."""
  body = b"[" + b"0," * (15 * 1024 * 1024 - 1) + b"0]"
  _post_repeatedly(url, deadline, source, body, {"X-API-Key": SPENT, "Content-Type": "application/json"}, 2, 200)


async def _slow_slot(host: str, port: int, source: str, deadline: float) -> None:
  """One slow connection: headers a byte a second, never finished; reopened a second after being dropped."""
  while time.time() < deadline:
    writer = None
    try:
      reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(source, 0)), 5)
      _count("connections opened")
      writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
      while time.time() < deadline:
        await writer.drain()
        try:
          if await asyncio.wait_for(reader.read(1024), 1.0) == b"" or reader.at_eof():
            break  # dropped (or answered and closed) by the server
        except asyncio.TimeoutError:
          writer.write(b"a")
    except (OSError, asyncio.TimeoutError):
      pass
    finally:
      if writer is not None:
        writer.close()
    await asyncio.sleep(1.0)


def attack_slow(url: str, deadline: float, source: str, count: int = 1100) -> None:
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 256)), hard))
  host, port = _host_port(url)

  async def run():
    await asyncio.gather(*(_slow_slot(host, port, source, deadline) for _ in range(count)))

  asyncio.run(run())


def attack_uploads(url: str, deadline: float, source: str, count: int = 40) -> None:
  """40 uploads of 32 MB announced, 16 MB sent, the rest held back until the deadline (reopened if dropped)."""
  import socket

  host, port = _host_port(url)
  length, chunk = 32 * 1024 * 1024 - 4096, b"\0" * (1 << 20)
  head = (
    f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {ATTACK}\r\nContent-Type: application/x-npy\r\n"
    f"Content-Length: {length}\r\n\r\n"
  ).encode()

  def hold():
    for _ in range(20):
      if time.time() > deadline:
        return
      try:
        with socket.create_connection((host, port), timeout=5, source_address=(source, 0)) as s:
          s.sendall(head)
          for _ in range(16):
            s.sendall(chunk)
          s.settimeout(max(0.1, deadline - time.time()))
          answer = s.recv(1024)  # held until the server answers (or drops us) or the deadline passes
          _count(answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "dropped")
      except OSError as e:
        _count(type(e).__name__)
      time.sleep(0.5)

  _in_threads(hold, count, deadline)


# ----------------------------------------------------------------------------------------------- measuring
def rss_mb(pid: int) -> float:
  """Resident memory of a process in MB (0 once it is gone)."""
  try:
    for line in open(f"/proc/{pid}/status"):
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


class MemoryWatch:
  """Samples a process's resident memory every 50 ms in a thread; `peak` is the largest sample."""

  def __init__(self, pid: int):
    self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.wait(0.05):
      self.peak = max(self.peak, rss_mb(self.pid))

  def stop(self) -> float:
    self._stop.set()
    self._thread.join(5)
    return self.peak


def measure(url: str, seconds: float) -> dict:
  """One input at a time from VICTIM over a new connection each, for `seconds`: latencies and failures."""
  import httpx

  body = npy_bytes(np.random.default_rng(1).integers(0, 256, (1, 8, 8, 1), dtype=np.uint8))
  latencies, failures, errors = [], 0, {}
  limits = httpx.Limits(max_keepalive_connections=0)
  with httpx.Client(timeout=REQUEST_TIMEOUT, limits=limits) as client:
    end = time.perf_counter() + seconds
    for _ in range(100_000):
      if time.perf_counter() > end:
        break
      t0 = time.perf_counter()
      try:
        r = client.post(
          url + "/v1/predict", content=body, headers={"X-API-Key": VICTIM, "Content-Type": "application/x-npy"}
        )
        ok, what = r.status_code == 200, f"HTTP {r.status_code}: {r.text[:80]}"
      except httpx.HTTPError as e:
        ok, what = False, type(e).__name__
      if ok:
        latencies.append(1e3 * (time.perf_counter() - t0))
      else:
        failures += 1
        errors[what] = errors.get(what, 0) + 1
      time.sleep(0.02)
  out = {"requests": len(latencies) + failures, "failed": failures, "errors": errors}
  if latencies:
    out.update(
      median_ms=round(statistics.median(latencies), 1),
      p90_ms=round(float(np.percentile(latencies, 90)), 1),
      max_ms=round(max(latencies), 1),
    )
  return out


# ------------------------------------------------------------------------------------------------- servers
def is_after(repo: pathlib.Path) -> bool:
  return (repo / "service" / "secret.py").is_file()


def start_server(repo: pathlib.Path, workdir: pathlib.Path, tmp: pathlib.Path):
  """`python -m launch.serve` of `repo` on a free port with --open_files; returns (process, url)."""
  keys = {
    ATTACK: {"budget": 10**12, "output": "probabilities"},
    VICTIM: {"output": "probabilities"},
    SPENT: {"budget": 0, "output": "probabilities"},
  }
  extra = []
  if is_after(repo):
    keys = {k: {"label": f"key{i}", **v} for i, (k, v) in enumerate(keys.items())}
    extra = ["--init_db"]
  db = tempfile.mkdtemp(dir=tmp)
  (tmp / "keys.json").write_text(json.dumps(keys))
  cmd = [
    sys.executable,
    "-m",
    "launch.serve",
    f"--victim_workdir={workdir}",
    f"--keys={tmp / 'keys.json'}",
    f"--db={db}/keys.sqlite",
    "--port=0",
    *extra,
  ]
  limit = FLAGS.open_files

  def set_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

  return start_serve(cmd, cwd=repo, preexec_fn=set_limit, env={**os.environ, "PYTHONPATH": str(repo)})


def run_scenario(repo: pathlib.Path, workdir: pathlib.Path, tmp: pathlib.Path, scenario: str) -> dict:
  import httpx

  proc, url = start_server(repo, workdir, tmp)
  attacker, row = None, {}
  try:
    for _ in range(5):  # warm up: connections, the victim's batch-1 path
      httpx.post(
        url + "/v1/predict",
        headers={"X-API-Key": VICTIM, "Content-Type": "application/json"},
        content=json.dumps([[[[0]] * 8] * 8]),
        timeout=30,
      )
    start_rss = rss_mb(proc.pid)
    watch = MemoryWatch(proc.pid)
    if scenario != "idle":
      role = "slow" if scenario.startswith("slow") else scenario
      source = "127.0.0.1" if scenario == "slow_same" else "127.0.0.2"
      deadline = time.time() + RAMP_SECONDS + FLAGS.seconds + 2
      attacker = subprocess.Popen(
        [
          sys.executable,
          "-m",
          "benchmarks.serve_load",
          f"--role={role}",
          f"--url={url}",
          f"--source={source}",
          f"--deadline={deadline}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
      )
      time.sleep(RAMP_SECONDS)
    row.update(measure(url, FLAGS.seconds))
    row.update(scenario=scenario, server_rss_start_mb=round(start_rss), server_rss_peak_mb=round(watch.stop()))
  finally:
    if attacker is not None:
      try:
        out, _ = attacker.communicate(timeout=20)
        row["attacker"] = json.loads(out.strip().splitlines()[-1])
      except (subprocess.TimeoutExpired, ValueError, IndexError):
        attacker.kill()
        attacker.wait(10)
    proc.terminate()
    try:
      proc.wait(20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait(10)
  return row


def victim_dir(tmp: pathlib.Path) -> pathlib.Path:
  """--victim_workdir, or a small CNN trained for 20 steps on digits in tmp (in a subprocess: no jax here)."""
  if FLAGS.victim_workdir:
    return pathlib.Path(FLAGS.victim_workdir)
  code = (
    "import pathlib, sys; from extraction import datasets, victim; victim.train_victim(datasets.load_digits(), "
    "victim.VictimConfig(model='small_cnn', steps=20), pathlib.Path(sys.argv[1]) / 'victim')"
  )
  subprocess.run([sys.executable, "-c", code, str(tmp)], cwd=REPO, check=True, timeout=600)
  return tmp


def main(argv):
  del argv
  if FLAGS.role != "main":
    deadline = min(FLAGS.deadline, time.time() + 120)  # bounded whatever it is given
    attack = {"batches": attack_batches, "json": attack_json, "slow": attack_slow, "uploads": attack_uploads}
    attack[FLAGS.role](FLAGS.url, deadline, FLAGS.source)
    print(json.dumps(dict(OUTCOMES)), flush=True)
    return
  from benchmarks.common import machine

  logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
  info = machine("fastapi", "uvicorn", "httpx")
  versions = {"after": REPO}
  if FLAGS.baseline_repo:
    versions = {"before": pathlib.Path(FLAGS.baseline_repo).resolve(), **versions}
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    workdir = victim_dir(tmp)
    for scenario in FLAGS.scenarios:
      for version, repo in versions.items():
        row = {"version": version, **run_scenario(repo, workdir, tmp, scenario)}
        rows.append(row)
        print(json.dumps(row), flush=True)
  info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
  write(rows, info)


def _cell(row: dict) -> str:
  if row is None:
    return "— | — | —"
  median = f"{row['median_ms']:,.1f}" if "median_ms" in row else "—"
  p90 = f"{row['p90_ms']:,.1f}" if "p90_ms" in row else "—"
  return f"{median} | {p90} | {row['failed']}/{row['requests']}"


def write(rows: list[dict], info: dict) -> None:
  out = pathlib.Path(FLAGS.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  command = "python -m " + __spec__.name + "".join(f" {a}" for a in sys.argv[1:])
  settings = {
    "seconds": FLAGS.seconds,
    "open_files": FLAGS.open_files,
    "target_median_ms": TARGET_MS,
    "request_timeout_s": REQUEST_TIMEOUT,
    "victim": FLAGS.victim_workdir or "small_cnn, digits 8x8x1, 20 training steps",
    "baseline_repo": FLAGS.baseline_repo,
  }
  (out / "serve_load.json").write_text(
    json.dumps({"command": command, "machine": info, "settings": settings, "rows": rows}, indent=2)
  )
  by = {(r["version"], r["scenario"]): r for r in rows}
  what = {
    "idle": "no attack",
    "batches": "8 concurrent batches of 4096 from one key",
    "json": "2 x 30 MB JSON bodies from a key with no budget left",
    "slow": "1,100 slow connections from another address",
    "slow_same": "1,100 slow connections from the measured client's own address",
    "uploads": "40 held 32 MB uploads from one key",
  }
  lines = [
    "# The prediction service under hostile load: another key's latency, before and after",
    "",
    f"Command: `{command}`  ",
    f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, {info['platform']}, Python {info['python']}, jax "
    f"{info['jax']}, fastapi {info['fastapi']}, uvicorn {info['uvicorn']}, httpx {info['httpx']}; load "
    f"average {info['load_average'][0]:.1f} at start, {info['load_average_at_end'][0]:.1f} at end (2 cores "
    f"shared with other jobs: timings are pessimistic).  ",
    f"{environment_line(info)}  ",
    f"Setup: one server process per scenario (one uvicorn worker, open-file limit {FLAGS.open_files}), "
    f"victim {settings['victim']}; the measured client sends 1 input per request over a new connection, "
    f"for {FLAGS.seconds:g} s while the attack runs; a request fails without a 200 within "
    f"{REQUEST_TIMEOUT:g} s. Target: median <= {TARGET_MS:g} ms and no failed request. Memory: the "
    f"server's resident set, sampled every 50 ms.",
    "",
    "| attack | before median ms | p90 | failed | after median ms | p90 | failed | after meets target | "
    "before peak MB | after peak MB |",
    "|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
  ]
  for scenario in FLAGS.scenarios:
    before, after = by.get(("before", scenario)), by.get(("after", scenario))
    ok = after is not None and after["failed"] == 0 and after.get("median_ms", 1e9) <= TARGET_MS
    peak = lambda r: "—" if r is None else f"{r['server_rss_peak_mb']:,} (from {r['server_rss_start_mb']:,})"
    lines.append(
      f"| {what.get(scenario, scenario)} | {_cell(before)} | {_cell(after)} | "
      f"{'yes' if ok else 'NO'} | {peak(before)} | {peak(after)} |"
    )
  errors = [f"{r['version']} {r['scenario']}: {r['errors']}" for r in rows if r["errors"]]
  if errors:
    lines += ["", "Failures of the measured client by kind: " + "; ".join(errors) + "."]
  attackers = [f"{r['version']} {r['scenario']}: {r['attacker']}" for r in rows if r.get("attacker")]
  if attackers:
    lines += [
      "",
      f"What the attackers got over their {RAMP_SECONDS + FLAGS.seconds + 2:g} s (HTTP status or error "
      f"-> count; `batches`: each 200 is 4096 inputs answered): " + "; ".join(attackers) + ".",
    ]
  (out / "serve_load.md").write_text("\n".join(lines) + "\n")
  print(f"wrote {out / 'serve_load.json'} and {out / 'serve_load.md'}")


if __name__ == "__main__":
  app.run(main)
