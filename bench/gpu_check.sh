#!/usr/bin/env bash
# Every GPU figure the issues ask for, in two calls of at most ~10 minutes each. Steps run
# smallest first, each under its own time limit, so a slow step cannot swallow the rest; logs
# and JSON land in $OUT (./gpu_out elsewhere), the benchmarks' JSON rewritten after every
# record, so a step cut by its limit keeps what it measured.
#   bash bench/gpu_check.sh raster   # Pallas vs reference on the GPU, the rasteriser grid (#3)
#   bash bench/gpu_check.sh models   # ViT / DINOv2, batched prediction (#8), train step (#7)
# "raster" needs jax, flax and numpy only. "models" also needs ml-collections (bench/predict.py
# and bench/train.py read configs/base.py); where it is missing, put its wheel in .whl/ first:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections
# and it is installed from there (no network needed on the GPU machine).
set -u
PART=${1:-raster}
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"; local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "--- $name rc=$rc in $(( $(date +%s) - t0 ))s"; grep -v -i warn "$OUT/$name.log" | tail -n 20
}
step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())"'
case $PART in
  raster)
    # Compiled Pallas kernels against the reference (outputs and gradients), 512^2 timings of
    # the forward's exit-test interval and unrolling, each setting's output compared with the
    # first's (tiled is timed in the grid below, the reference last).
    step pallas_smoke 150 python3 bench/pallas_smoke.py --sizes 512 --splats 10000,100000 \
        --impls pallas --exit-check-every 1,16 --unroll 1,4,16 \
        --out "$OUT/pallas_smoke_h200.json"
    # The grid (bin_ms: projection + binning alone; pairs_needed against capacity),
    # then Pallas at 512^2 with a capacity of 3 pairs per splat, which holds every 512^2 scene
    # from 20k splats up.
    step raster_bench 240 python3 bench/rasterizer.py --impls pallas,tiled --sizes 256,512 \
        --splats 10000,20000,50000,100000 --repeats 5 --out "$OUT/rasterizer_h200.json"
    step raster_capacity 60 python3 bench/rasterizer.py --impls pallas --sizes 512 \
        --splats 20000,100000 --repeats 5 --pairs-per-splat 3 \
        --out "$OUT/rasterizer_capacity3_h200.json"
    # The 512^2/10k ratio to the dense reference (goal >= 100x), last: it is the slowest step.
    step raster_reference 75 python3 bench/rasterizer.py --impls pallas,reference --sizes 512 \
        --splats 10000 --repeats 5 --reference-repeats 1 --out "$OUT/rasterizer_ref_h200.json"
    ;;
  models)
    step models_bench 90 python3 bench/models.py --models S/16,B/16 --batches 1,256 \
        --dtype bfloat16 --repeats 20 --out "$OUT/models_h200.json"
    step predict_bench 150 python3 bench/predict.py --sizes tiny,S/16,B/16 --batches 1,32,256 \
        --out "$OUT/predict_h200.json"
    step train_bench 240 python3 bench/train.py --config configs/base.py \
        --override render.impl=pallas --steps 10 --out "$OUT/train_h200.json"
    ;;
  *) echo "bench/gpu_check.sh: unknown part '$PART' (raster or models)"; exit 2;;
esac
