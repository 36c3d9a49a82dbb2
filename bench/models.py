"""Predictor forward speed: images per second and latency, per model size and batch size.

    python bench/models.py --models tiny,B/16 --batches 1,64 --dtype bfloat16 --repeats 20 \
        --out bench/results/models.json

Times the jitted `SheapPredictor` forward on random 224 x 224 images already on the device:
each repeat is one call, waited for (`block_until_ready`), after compilation and two warm-up
calls; the figures are medians over repeats. Needs only jax, flax and numpy. Prints a table and
writes JSON records {model, batch, dtype, image_size, images_per_s, latency_ms, compile_s,
params_m, repeats, device}.

`--regressor` adds the default Gaussians Regressor's training cost (forward and gradient) on a
FLAME-sized mesh (9,976 faces of an icosphere, 2 Gaussians each) with 256 DINOv2-B tokens per
image, recorded as model "regressor".
"""
import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from sheap_jax.geometry import mesh_topology  # noqa: E402
from sheap_jax.models.gaussians import GaussiansRegressor, face_layout  # noqa: E402
from sheap_jax.models.predictor import SheapPredictor  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


FLAME_FACES = 9976
DINOV2_TOKENS, DINOV2_WIDTH = 256, 768  # ViT-B/14 on a 224 x 224 crop


def _median_call_seconds(fn, args, repeats: int) -> tuple[float, float]:
  """(compile seconds, median seconds of one blocking call after two warm-up calls)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times)


def _record(model, batch, dtype, image_size, params, compile_s, seconds, repeats) -> dict:
  device = jax.devices()[0]
  return dict(model=model, batch=batch, dtype=jnp.dtype(dtype).name, image_size=image_size,
              images_per_s=batch / seconds, latency_ms=1e3 * seconds, compile_s=compile_s,
              params_m=sum(x.size for x in jax.tree.leaves(params)) / 1e6, repeats=repeats,
              device=f"{device.platform}:{device.device_kind}")


def time_predictor(size: str, batch: int, dtype, image_size: int, repeats: int) -> dict:
  """Median wall time of one forward call of the `size` predictor on `batch` images."""
  model = SheapPredictor(size=size, image_size=image_size, dtype=dtype)
  images = jax.random.uniform(jax.random.key(0), (batch, image_size, image_size, 3))
  params = jax.jit(model.init)(jax.random.key(1), images[:1])
  compile_s, seconds = _median_call_seconds(jax.jit(model.apply), (params, images), repeats)
  return _record(size, batch, dtype, image_size, params, compile_s, seconds, repeats)


def time_regressor(batch: int, dtype, repeats: int) -> dict:
  """Median wall time of the default regressor's forward + gradient on `batch` images."""
  vertices, faces = mesh_topology.icosphere(5, radius=0.1)
  layout = face_layout(faces[:FLAME_FACES], vertices)
  model = GaussiansRegressor(dtype=dtype)
  identity = jax.random.normal(jax.random.key(0), (batch, 256))
  tokens = jax.random.normal(jax.random.key(1), (batch, DINOV2_TOKENS, DINOV2_WIDTH))
  params = jax.jit(model.init)(jax.random.key(2), identity[:1], tokens[:1], layout)

  def loss(params):
    local = model.apply(params, identity, tokens, layout)
    return sum(jnp.mean(x) for x in jax.tree.leaves(local))

  compile_s, seconds = _median_call_seconds(jax.jit(jax.grad(loss)), (params,), repeats)
  return _record("regressor", batch, dtype, None, params, compile_s, seconds, repeats)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="tiny,S/16", help="comma-separated predictor sizes")
  parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
  parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--regressor", action="store_true",
                      help="also time the Gaussians Regressor's forward + gradient")
  parser.add_argument("--out", default=None, help="JSON file to write the records to")
  args = parser.parse_args(argv)

  dtype = DTYPES[args.dtype]
  runs = [(size, batch) for size in args.models.split(",")
          for batch in map(int, args.batches.split(","))]
  runs += [("regressor", batch) for batch in map(int, args.batches.split(","))
           if args.regressor]
  records = []
  print(f"{'model':>9} {'batch':>6} {'dtype':>9} {'images/s':>10} {'latency ms':>11} "
        f"{'compile s':>10}  device")
  for size, batch in runs:
    if size == "regressor":
      r = time_regressor(batch, dtype, args.repeats)
    else:
      r = time_predictor(size, batch, dtype, args.image_size, args.repeats)
    records.append(r)
    if args.out:
      json_out.write_json(args.out, records)
    print(f"{r['model']:>9} {r['batch']:>6} {r['dtype']:>9} {r['images_per_s']:>10.1f} "
          f"{r['latency_ms']:>11.2f} {r['compile_s']:>10.1f}  {r['device']}", flush=True)
  if args.out:
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
