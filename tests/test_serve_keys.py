"""Keys of the prediction service: revocation (by key, by label, by syncing a keys file), HMAC digests that leave
no piece of a key in the database, generated keys, settings checked with types and bounds, and a key database
that is never reset behind the operator's back (missing, corrupt, foreign secret, vanished while serving)."""
import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import service  # noqa: E402
from extraction.remote import KeyRefused, RemoteOracle  # noqa: E402
from functional_equivalence import victims  # noqa: E402
from service import keystore  # noqa: E402
from tests.conftest import REPO, make_key_store, npy_bytes  # noqa: E402

ALICE, BOB, CAROL = "Kx9_Qm7-Lp2_Wz8-Rt5_Yv3", "Gh4_Jn6-Vb1_Xc0-Ps7_Ud2", "Mr3_Tk8-Wq5_Ze1-Ny6_Hs4"


def serve_keys(*args):
  return subprocess.run([sys.executable, "-m", "launch.serve_keys", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120)


@pytest.fixture
def served(tmp_path):
  """A float64 victim served to ALICE, BOB and CAROL; yields (url, database path)."""
  path = victims.save_npz(tmp_path / "victim.npz", victims.random_net(0, 5, 4, 3))
  store = make_key_store(tmp_path / "keys.sqlite", {k: {"output": "logits", "budget": 100} for k in (ALICE, BOB, CAROL)})
  with service.BackgroundServer(service.create_app(service.model_from_npz(path), store)) as url:
    yield url, tmp_path / "keys.sqlite"


def answered(url, key) -> int:
  return httpx.post(url + "/v1/predict", content=npy_bytes(np.ones((1, 5))),
                    headers={"X-API-Key": key, "Content-Type": "application/x-npy"}).status_code


def test_revoked_keys_are_refused_from_the_next_request(served):
  url, db = served
  oracle = RemoteOracle(url, ALICE)
  assert oracle(np.ones((2, 5))).shape == (2, 3)
  r = serve_keys(f"--db={db}", f"--revoke={ALICE}")
  assert r.returncode == 0 and "'key0' revoked" in r.stdout, r.stderr
  with pytest.raises(KeyRefused, match="unknown or revoked"):
    oracle(np.ones((1, 5)))
  assert answered(url, BOB) == 200
  r = serve_keys(f"--db={db}", "--revoke-label=key1")  # BOB, by the operator's label
  assert r.returncode == 0 and "'key1' revoked" in r.stdout, r.stderr
  assert (answered(url, ALICE), answered(url, BOB), answered(url, CAROL)) == (401, 401, 200)
  r = serve_keys(f"--db={db}", "--add", "--label=again", f"--key={ALICE}")  # revoked keys stay revoked
  assert r.returncode == 1 and "revoked keys stay revoked" in r.stderr and answered(url, ALICE) == 401
  listing = serve_keys(f"--db={db}", "--list").stdout
  assert listing.count("REVOKED") == 2 and ALICE not in listing


def test_keys_file_sync_revokes_the_keys_it_does_not_list(served, tmp_path):
  url, db = served
  keys_file = tmp_path / "keys.json"
  keys_file.write_text(json.dumps({CAROL: {"label": "carol", "output": "logits", "budget": 50}}))
  r = serve_keys(f"--db={db}", f"--keys={keys_file}")  # without --sync: adds or updates only
  assert r.returncode == 0 and (answered(url, ALICE), answered(url, CAROL)) == (200, 200)
  r = serve_keys(f"--db={db}", f"--keys={keys_file}", "--sync")
  assert r.returncode == 0 and "revoked (not in the keys file): 'key0', 'key1'" in r.stdout, r.stdout + r.stderr
  assert (answered(url, ALICE), answered(url, BOB), answered(url, CAROL)) == (401, 401, 200)
  report = keystore.KeyStore(db).load(keystore.read_keys_file(keys_file), sync=True)
  assert report.updated == ("carol",) and not report.revoked


def test_the_database_holds_no_piece_of_any_key(tmp_path):
  db = tmp_path / "keys.sqlite"
  assert serve_keys(f"--db={db}", "--init_db").returncode == 0
  r = serve_keys(f"--db={db}", "--add", "--label=generated", "--budget=5")
  generated = r.stdout.split(": ", 1)[1].split()[0]
  assert r.returncode == 0 and len(base64.urlsafe_b64decode(generated + "=")) == 32
  assert serve_keys(f"--db={db}", "--add", "--label=alice", f"--key={ALICE}").returncode == 0
  store = keystore.KeyStore(db)
  assert store.get(generated).settings.budget == 5 and store.get(ALICE).label == "alice"
  values = [str(v) for table in ("keys", "meta") for row in sqlite3.connect(db).execute(f"SELECT * FROM {table}")
            for v in row]
  raw = b"".join(f.read_bytes() for f in tmp_path.glob("keys.sqlite*") if not f.name.endswith(".secret"))
  for key in (generated, ALICE):
    pieces = {key[i:i + 4] for i in range(len(key) - 3)}
    assert not any(p in v for p in pieces for v in values), key
    assert key.encode() not in raw and hashlib.sha256(key.encode()).hexdigest().encode() not in raw
  assert store.digest(ALICE) in values  # an HMAC under the secret: another database digests the key otherwise
  other = make_key_store(tmp_path / "other.sqlite", {ALICE: {}})
  assert other.digest(ALICE) != store.digest(ALICE)
  assert oct(os.stat(tmp_path / "keys.sqlite.secret").st_mode & 0o777) == "0o600"


def test_add_generates_keys_and_refuses_short_ones(tmp_path):
  db = tmp_path / "keys.sqlite"
  r = serve_keys(f"--db={db}", "--init_db", "--add", "--label=first", "--output=labels")
  assert r.returncode == 0 and "shown once" in r.stdout, r.stderr
  r = serve_keys(f"--db={db}", "--add", "--label=short", "--key=fifteen-chars!!")
  assert r.returncode == 1 and "at least 16 characters" in r.stderr and "Traceback" not in r.stderr
  r = serve_keys(f"--db={db}", "--add", "--label=Kx9_Qm7-Lp2", f"--key={ALICE}")
  assert r.returncode == 1 and "holds a piece of its key" in r.stderr


BAD_SETTINGS = [  # (settings, part of the message)
    ({"output": "top_k", "top_k": 2.5}, "top_k must be an integer"),
    ({"output": "top_k", "top_k": True}, "top_k must be an integer"),
    ({"top_k": 2}, "top_k is a setting of output 'top_k'"),
    ({"budget": 10 ** 30}, "budget must be an integer in 0..1000000000000000"),
    ({"budget": 1.0}, "budget must be an integer"),
    ({"defenses": {"round_decimals": 10 ** 6}}, "round_decimals must be an integer in 0..15"),
    ({"defenses": {"round_decimals": True}}, "round_decimals must be an integer"),
    ({"defenses": {"noise_std": True}}, "noise_std must be a number"),
    ({"defenses": {"noise_std": float("nan")}}, "noise_std must be a number"),
    ({"defenses": {"noise_std": 0.1, "noise_seed": 3}}, "noise_seed is not a setting of the service"),
    ({"defenses": {"reverse_sigmoid_beta": True, "reverse_sigmoid_gamma": 0.5}}, "reverse_sigmoid_beta must be"),
    ({"defenses": {"reverse_sigmoid_beta": 0.5, "reverse_sigmoid_gamma": 1e9}}, "reverse_sigmoid_gamma must be"),
    ({"defenses": []}, "defenses must be a JSON object"),
]


def test_key_settings_are_checked_with_types_and_bounds():
  accepted, unclear = [], []
  for settings, message in BAD_SETTINGS:
    try:
      keystore.KeySettings.from_dict(settings)
      accepted.append(settings)
    except ValueError as e:
      if message not in str(e) or "\n" in str(e):
        unclear.append((settings, str(e)))
  assert not accepted and not unclear, f"accepted: {accepted}; unclear: {unclear}"
  keystore.KeySettings.from_dict({"budget": 10 ** 15, "output": "top_k", "top_k": 3,
                                  "defenses": {"round_decimals": 15, "noise_std": 1}})


def test_a_new_database_is_made_only_on_request(tmp_path):
  db = tmp_path / "keys.sqlite"
  with pytest.raises(keystore.StoreError, match="no key database .* create one with --init_db"):
    keystore.KeyStore(db)
  assert not db.exists()
  make_key_store(db, {ALICE: {"budget": 10}}).reserve(ALICE, 4)
  with pytest.raises(keystore.StoreError, match="already exists"):
    keystore.KeyStore(db, create=True)
  assert keystore.KeyStore(db).get(ALICE).used == 4
  (tmp_path / "keys.sqlite.secret").rename(tmp_path / "elsewhere")
  with pytest.raises(keystore.StoreError, match="secret file .*keys.sqlite.secret: No such file"):
    keystore.KeyStore(db)
  make_key_store(tmp_path / "other.sqlite", {BOB: {}})
  (tmp_path / "other.sqlite.secret").rename(tmp_path / "keys.sqlite.secret")  # a secret of another database
  with pytest.raises(keystore.StoreError, match="does not belong to key database"):
    keystore.KeyStore(db)


def make_read_only(path) -> bool:
  """Makes a file read-only even for root (chattr +i; chmod for others); False if this system cannot."""
  if os.geteuid() != 0:
    os.chmod(path, 0o444)
    return True
  return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("problem", ["missing", "corrupt", "old format", "read-only"])
def test_database_problems_at_startup_are_one_line(tmp_path, problem):
  npz = victims.save_npz(tmp_path / "victim.npz", victims.random_net(0, 5, 4, 3))
  db = tmp_path / "keys.sqlite"
  if problem == "read-only":
    make_key_store(db, {ALICE: {}}).close()
    if not make_read_only(db):
      pytest.skip("cannot make a file read-only for root here (no chattr)")
  if problem == "corrupt":
    db.write_bytes(b"not a database" * 100)
    (tmp_path / "keys.sqlite.secret").write_bytes(b"s" * 32)
    os.chmod(tmp_path / "keys.sqlite.secret", 0o600)
  elif problem == "old format":  # the SHA-256 database of the service before the secret
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE keys (digest TEXT PRIMARY KEY, label TEXT, budget INTEGER, used INTEGER)")
    con.execute("INSERT INTO keys VALUES (?, 'Kx9_...', 100, 60)", (hashlib.sha256(ALICE.encode()).hexdigest(),))
    con.commit()
    (tmp_path / "keys.sqlite.secret").write_bytes(b"s" * 32)
    os.chmod(tmp_path / "keys.sqlite.secret", 0o600)
  try:
    r = subprocess.run([sys.executable, "-m", "launch.serve", f"--victim_npz={npz}", f"--db={db}", "--port=0"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{problem} database: the server started instead of refusing")
  finally:
    if problem == "read-only" and os.geteuid() == 0:
      subprocess.run(["chattr", "-i", str(db)], capture_output=True)
  want = {"missing": "create one with --init_db", "corrupt": "file is not a database",
          "old format": "is in format 0, not 2", "read-only": "readonly database"}[problem]
  assert r.returncode == 1 and want in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert len(r.stderr.strip().splitlines()) == 1 and db.exists() == (problem != "missing")


def test_a_database_that_vanishes_while_serving_fails_closed(served, tmp_path):
  url, db = served
  assert answered(url, ALICE) == 200
  db.rename(tmp_path / "gone-keys.sqlite")
  r = httpx.post(url + "/v1/predict", content=npy_bytes(np.ones((1, 5))),
                 headers={"X-API-Key": ALICE, "Content-Type": "application/x-npy"})
  assert r.status_code == 503 and "key database" in r.json()["detail"] and "outputs" not in r.text
  assert httpx.get(url + "/v1/budget", headers={"X-API-Key": ALICE}).status_code == 503
  (tmp_path / "gone-keys.sqlite").rename(db)  # the same file back: served again, spending intact
  assert answered(url, ALICE) == 200
  assert keystore.KeyStore(db).get(ALICE).used == 2
  (tmp_path / "copy.sqlite").write_bytes(db.read_bytes())
  (tmp_path / "copy.sqlite").rename(db)  # replaced by a copy: another file, maybe older spending
  assert answered(url, ALICE) == 503
