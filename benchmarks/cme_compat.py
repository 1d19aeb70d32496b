"""Runs CME's own extract.py (Carlini, Jagielski, Mironov, CRYPTO 2020) on current JAX / numpy: the smallest shim.

  python benchmarks/cme_compat.py CME_DIR WORKDIR SIZES SEED SECONDS

CME_DIR is a checkout of https://github.com/google-research/cryptanalytic-model-extraction (Apache 2.0; nothing of
it is copied here). WORKDIR holds the victim as WORKDIR/models/SEED_SIZES.npy (benchmarks/cme_format.py writes it);
the run's cwd becomes WORKDIR and their fixed output paths /tmp/extracted-SIZES.p and /tmp/real-SIZES.p are
redirected into it. Their code is run unchanged, as `python extract.py SIZES SEED` would run it; SEED seeds their
np.random / random (their code also reads the model file by it). Their one-hour alarm (extract.py's set_timeout:
prints "Timed out." and exits 2) is shortened to SECONDS. Run by benchmarks/fe_cme_reference.py in a subprocess
(their code is module-global state throughout).

Last line printed: `CME_REFERENCE {json}` with our own count of the rows their code sent to the victim (a wrapper
around src.utils.run, their only query function; calls that name the weights explicitly, inner_A=..., are their
own end-of-run evaluation, not queries, and are not counted) and the count when the extracted model was saved.
"""

import json
import multiprocessing
import os
import pathlib
import runpy
import signal
import sys
import types

import numpy as np

cme_dir, workdir, sizes, seed = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
limit = int(sys.argv[5])

# Their alarm (signal.alarm(60 * 60) in extract.py) at the benchmark's limit instead; their handler is kept.
their_alarm = signal.alarm
signal.alarm = lambda seconds: their_alarm(min(int(seconds), limit))

# (src/sign_recovery.py's np.bool, removed in numpy 1.24, is back in numpy 2 as np.bool_: no shim needed.)

# jax >= 0.4.25 has no module jax.config (src/global_vars.py: `from jax.config import config`); the object is
# jax.config itself.
import jax  # noqa: E402

sys.modules["jax.config"] = types.SimpleNamespace(config=jax.config)

# jax.experimental.optimizers moved to jax.example_libraries.optimizers (jax 0.2.25) and was removed
# (src/refine_precision.py: `import jax.experimental.optimizers`, then jax.experimental.optimizers.adam).
import jax.example_libraries.optimizers  # noqa: E402
import jax.experimental  # noqa: E402

sys.modules["jax.experimental.optimizers"] = jax.example_libraries.optimizers
jax.experimental.optimizers = jax.example_libraries.optimizers


class SerialPool:
  """extract.py makes mp.Pool(cpu_count // 4): zero processes (a ValueError) on fewer than 4 cores, and forked
  workers would hide their queries from the count. One process: the pool's map is the builtin map."""

  def __init__(self, *args, **kwargs):
    pass

  def map(self, fn, items):
    return list(map(fn, items))


multiprocessing.Pool = SerialPool

# Their modules read sys.argv (sizes, seed; utils.py opens sys.argv[0]) and models/ relative to the cwd.
sys.argv = [str(cme_dir / "extract.py"), sizes, seed]
sys.path.insert(0, str(cme_dir))
os.chdir(workdir)

import src.utils  # noqa: E402  (before extract.py, so that its `from src.utils import run` takes the wrapper)

counted = {"queries": 0, "at_save": None}
their_run = src.utils.run


def counting_run(x, *args, **kwargs):
  if not args and not kwargs:  # the victim (their default weights); inner_A=... is their evaluation
    counted["queries"] += int(np.shape(x)[0])
  return their_run(x, *args, **kwargs)


src.utils.run = counting_run


def ragged_array(obj, *args, **kwargs):
  """numpy >= 1.24 refuses np.array(ragged list) (src/layer_recovery.py: np.array(resulting_examples), lists of
  witnesses of unequal lengths); older numpy made a 1-D object array, which is what their code expects."""
  try:
    return np.array(obj, *args, **kwargs)
  except ValueError as e:
    if args or "dtype" in kwargs or "inhomogeneous" not in str(e):
      raise
    out = np.empty(len(obj), dtype=object)
    out[:] = [np.asarray(item) if isinstance(item, list) else item for item in obj]
    return out


class OldNumpy(types.ModuleType):
  """numpy, but np.array as numpy < 1.24 had it (ragged_array); given to their modules as their `np`."""

  def __getattr__(self, name):
    return ragged_array if name == "array" else getattr(np, name)


import src.find_witnesses  # noqa: E402, F401  (every module of theirs, to give each the old np.array)
import src.hyperplane_normal  # noqa: E402, F401
import src.layer_recovery  # noqa: E402, F401
import src.refine_precision  # noqa: E402, F401
import src.sign_recovery  # noqa: E402, F401

for name, module in list(sys.modules.items()):
  if name.startswith("src.") and getattr(module, "np", None) is np:
    module.np = OldNumpy("numpy")


def redirecting_open(path, *args, **kwargs):
  """Their fixed /tmp output paths go to the workdir; the count is taken when the extracted model is written."""
  path = str(path)
  if path.startswith(("/tmp/extracted-", "/tmp/real-")):
    if path.startswith("/tmp/extracted-"):
      counted["at_save"] = counted["queries"]
    path = str(workdir.resolve() / os.path.basename(path))
  return open(path, *args, **kwargs)


code = 0
try:
  runpy.run_path(str(cme_dir / "extract.py"), init_globals={"open": redirecting_open}, run_name="__main__")
except SystemExit as e:  # their alarm handler exits 2
  code = e.code if isinstance(e.code, int) else 1
finally:
  print("CME_REFERENCE " + json.dumps(counted), flush=True)
sys.exit(code)
