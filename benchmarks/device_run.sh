#!/usr/bin/env bash
# The device check of a lent GPU machine, as one call of the device tool (about 6 minutes there):
#
#   bash benchmarks/device_wheels.sh          # here, once: the wheels that machine lacks, into .whl/
#   device run, carry [".whl"], timeout 600:  bash benchmarks/device_run.sh   (its parts stop within 570 s)
#
# It installs the carried wheels into /tmp/site, then runs benchmarks/device_check.py (environment, CPU-vs-GPU
# parity of training and inference, the smoke recipe trained, resumed, evaluated and predicted on the GPU,
# inference time per scene of the default and paper configurations), then benchmarks/bench_presets.py
# (training-step cost of the `fine` preset against `default`), bench_matcher.py (sparse vs vanilla attention)
# and bench_loading.py (whether reading batches ahead pays on a GPU), all with the dense backbone (no spconv
# there). Everything lands in $OUT (at most 8 files come back): device_check.json and .log, the four smoke
# logs and one overlay, benchmarks.log.
# DEVICE=cpu PYTHON=.venv/bin/python THREADS=2 bash benchmarks/device_run.sh rehearses it here (no wheels installed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-16}
mkdir -p "$OUT"
if [ "$DEVICE" != cpu ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "installing the carried wheels failed (run benchmarks/device_wheels.sh here first)"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    timeout 330 "$PYTHON" benchmarks/device_check.py --device "$DEVICE" --out "$OUT" --threads "$THREADS" 2>&1
    echo "device_check exit status $?"
} | tee "$OUT/device_check.log"
{
    timeout 90 "$PYTHON" benchmarks/bench_presets.py --device "$DEVICE" --threads "$THREADS" --backbone dense 2>&1
    echo "bench_presets exit status $?"
    timeout 60 "$PYTHON" benchmarks/bench_matcher.py --device "$DEVICE" --threads "$THREADS" 2>&1
    echo "bench_matcher exit status $?"
    timeout 90 "$PYTHON" benchmarks/bench_loading.py --device "$DEVICE" --threads "$THREADS" --preset full --stage 1 \
        --scenes 4 2>&1
    echo "bench_loading exit status $?"
} | tee "$OUT/benchmarks.log"
