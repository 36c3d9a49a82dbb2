#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one device call (jax, flax, numpy only: no
# ml-collections or tfds needed). Steps run smallest first, each under its own time limit, so a
# slow step cannot swallow the rest; logs and JSON land in $OUT (./gpu_out elsewhere).
#   bash bench/gpu_check.sh            # about 6-8 minutes on an H200, machine start excluded
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"; local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "--- $name rc=$rc in $(( $(date +%s) - t0 ))s"; grep -v -i warn "$OUT/$name.log" | tail -n 20
}
step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())"'
# Compiled Pallas kernels against the reference (outputs and gradients), then 512^2 timings.
step pallas_smoke 150 python3 bench/pallas_smoke.py --sizes 512 --splats 10000,100000 \
    --exit-check-every 1,16 --out "$OUT/pallas_smoke_h200.json"
# The grid; the dense reference only at the smallest count (it takes seconds there).
step raster_bench 240 python3 bench/rasterizer.py --impls tiled,pallas --sizes 256,512 \
    --splats 10000,20000,50000,100000 --repeats 5 --out "$OUT/rasterizer_h200.json"
step models_bench 90 python3 bench/models.py --models S/16,B/16 --batches 1,256 \
    --dtype bfloat16 --repeats 20 --out "$OUT/models_h200.json"
