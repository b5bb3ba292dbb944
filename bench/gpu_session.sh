#!/usr/bin/env bash
# The GPU measurements of issue 14 in one go, for a session lent a GPU (see bench/README.md):
# correctness of the CUDA paths (gpu_checks.py), then harness overhead, data wait, GPU utilisation
# of the main job as shipped and with the speed settings, and --jobs scaling. Every result goes to
# $OUT (default bench/gpu_out) as JSON, with stderr logs beside it. About 8-10 minutes on an H200;
# PART=checks|figures runs one half (each well inside a 10-minute command limit).
# Usage (repository root, stitch importable):  OUT=/some/dir PART=checks bash bench/gpu_session.sh
set -u
OUT=${OUT:-bench/gpu_out}
PART=${PART:-all}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
run() {  # run NAME COMMAND...: stdout to NAME.json, stderr to NAME.log, the status noted
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
if [ "$PART" = all ] || [ "$PART" = checks ]; then
  run gpu_checks "$PY" bench/gpu_checks.py
  run harness_cuda "$PY" bench/harness_overhead.py --device cuda
  run data_wait_cuda "$PY" bench/data_wait.py --device cuda
  run data_wait_cuda_device_cache "$PY" bench/data_wait.py --device cuda --cache device --workers 0
fi
if [ "$PART" = all ] || [ "$PART" = figures ]; then
  # the main job as shipped, then with the speed settings (same runs, other run ids for precision)
  run gpu_util_shipped "$PY" bench/gpu_util.py --trace "$OUT/gpu_util_shipped.csv"
  "$PY" - "$OUT/unet_coordatt_fast.yaml" <<'PYEOF'
import sys, yaml
raw = yaml.safe_load(open("experiments/unet_coordatt.yaml"))
raw["data"].update({"cache": "device", "num_workers": 0})
raw["train"].update({"precision": "bf16", "channels_last": True})
open(sys.argv[1], "w").write(yaml.safe_dump(raw, sort_keys=False))
PYEOF
  run gpu_util_fast "$PY" bench/gpu_util.py --experiment "$OUT/unet_coordatt_fast.yaml" --trace "$OUT/gpu_util_fast.csv"
  run jobs_scaling_cuda "$PY" bench/jobs_scaling.py --device cuda --jobs 1 2 4
fi
cat "$OUT/summary.txt"
