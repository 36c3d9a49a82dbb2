#!/usr/bin/env bash
# One device call: environment, Pallas kernel check against the reference, rasterizer and model
# benchmarks. Each step has its own time limit so one slow step cannot swallow the rest; logs and
# JSON land in $OUT (or ./gpu_out when run elsewhere).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"; local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "--- $name rc=$rc in $(( $(date +%s) - t0 ))s"; tail -n 25 "$OUT/$name.log"
}
step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv; python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())"'
step pallas_smoke ${SMOKE_S:-120} python3 bench/pallas_smoke.py
step raster_bench ${RASTER_S:-240} python3 bench/rasterizer.py --impls ${IMPLS:-reference,tiled,pallas} --sizes 256,512 --splats ${SPLATS:-10000,20000,50000,100000} --out "$OUT/rasterizer_h200.json"
step models_bench ${MODELS_S:-120} python3 bench/models.py --models tiny,S/16,B/16 --batches 1,256 --dtype bfloat16 --out "$OUT/models_h200.json"
