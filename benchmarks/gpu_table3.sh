#!/usr/bin/env bash
# One device-tool call that runs benchmarks/gpu_table3.py on a lent GPU (run from the repository root there).
#
# Prepare here, once (both folders are ignored through .git/info/exclude and named in the call's `carry`):
#   echo /.device_data/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
#   python -m benchmarks.pack_images pack --data_dir=../shared/data --dataset=cifar10 --train=30000 --test=5000 \
#       --out=.device_data/cifar10.pack.npz                              # 55 MB, lossless, seed 0
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 \
#       chex==0.1.92 dm-pix==0.4.5
# Then call the device tool with carry [".device_data", ".whl"] and, for the 2026-11-30 run,
#   command: T=500 MAXS=330 SCALE=0.5 bash benchmarks/gpu_table3.sh                               (timeout_s 560)
#   command: T=290 MAXS=60 SCALE=0.5 EXTRA="--runs=mixmatch1000_4000" bash benchmarks/gpu_table3.sh (same machine)
# The image there has JAX with CUDA, flax and optax but no dm-pix: the wheel is installed to /tmp/site; the other
# carried wheels (this project's locked versions) are installed only if the image's flax stack fails to import.
# The second call reuses the victim in /tmp/gpu_table3 when it lands on the same (warm) machine.
# (Those two calls ran these steps from an uncommitted copy of this file that differed only in quoting, messages
# and the dm-pix install's --upgrade.)
set -o pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/dm_pix-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import flax, optax, orbax.checkpoint, chex, dm_pix" || {
  echo "the image's flax stack failed to import: carried wheels installed" | tee -a "$OUT/env.txt"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
}
python3 -c "import jax, flax, optax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__, jax.devices())" 2>&1 | tee -a "$OUT/env.txt"
python3 -m benchmarks.pack_images unpack --src=.device_data/cifar10.pack.npz --data_dir=/tmp/data 2>&1 | tee -a "$OUT/env.txt" || exit 1
# shellcheck disable=SC2086  # EXTRA holds several flags
timeout "${T:-500}" python3 -m benchmarks.gpu_table3 --data_dir=/tmp/data --scale="${SCALE:-0.5}" \
  --max_seconds="${MAXS:-330}" --out="$OUT/gpu_table3.json" $EXTRA
tail -5 "$OUT/gpu_table3.log"
