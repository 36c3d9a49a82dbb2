"""Training throughput: pairs per second, step time and the rasteriser's share of it.

    python bench/train.py --config configs/base.py:cpu --steps 10 --out bench/results/train_cpu.json

Times the real data-parallel train step (all local devices) on random images of the config's
size (throughput does not depend on pixel values), after one compiling step. The rasteriser's
share is the time of its forward + backward alone, on the splats that step renders, divided by
the step time. Prints a table and writes JSON: config, pairs_per_s, step_ms, raster_ms,
raster_share, device.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import rasterizer  # noqa: E402
from sheap_jax import objective  # noqa: E402
from sheap_jax import rigging  # noqa: E402
from sheap_jax import train  # noqa: E402


def load_config(spec: str):
  """`path[:arg]` -> the config file's get_config(arg), as --config of the train CLI."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


def timed(fn, repeats):
  """Median wall time (ms) of fn() over `repeats` calls, each waited for."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/base.py:cpu")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up)")
  parser.add_argument("--out", default="", help="JSON file to write")
  args = parser.parse_args(argv)

  config = load_config(args.config)
  mesh = train.make_mesh(jax.local_devices())
  networks = objective.build_networks(config)
  flame_model = objective.load_flame_model(config)
  frozen = train.replicate(objective.build_frozen(config, flame_model), mesh)
  optimizer = train.make_optimizer(config)
  state = train.replicate(train.init_state(networks, frozen, config, optimizer), mesh)
  step = train.make_train_step(networks, config, optimizer, mesh)

  devices = mesh.devices.size
  per_device = max(config.batch_size // devices, 1)
  size = config.model.image_size
  rng = np.random.default_rng(0)
  batch = {name: rng.random((devices, per_device, size, size, 3), dtype=np.float32)
           for name in ("source_image", "target_image")}
  batch["target_landmarks"] = rng.random((devices, per_device, 68, 2), np.float32) * size
  batch["target_landmarks_valid"] = np.ones((devices, per_device, 68), np.float32)
  sharded = train.shard_batch(batch, mesh)

  holder = [state]

  def run_step():
    holder[0], metrics = step(holder[0], frozen, sharded)
    return metrics

  jax.block_until_ready(run_step())  # compile
  step_ms = timed(run_step, args.steps)

  # The rasteriser alone on the splats of one device's share of the batch.
  source = jnp.asarray(batch["source_image"][0])
  out = jax.jit(lambda p, f: objective.reanimate(networks, p, f, config, source,
                                                 jnp.asarray(batch["target_image"][0])))(
      holder[0].params, frozen)
  splats = rigging.rig_gaussians(out.local_gaussians, out.vertices, flame_model.faces)
  background = jnp.asarray(config.render.background, jnp.float32)

  @jax.jit
  def raster_forward_backward(splats):
    def total(s):
      r = rasterizer.rasterize(s, out.viewmats, out.Ks, config.render.size, config.render.size,
                               background, impl=config.render.impl,
                               capacity=config.render.get("capacity"))
      return (jnp.sum(r.color) + jnp.sum(r.depth) + jnp.sum(r.normals)
              + jnp.sum(r.distortion) + jnp.sum(r.median_depth))
    return jax.grad(total)(splats)

  jax.block_until_ready(raster_forward_backward(splats))
  raster_ms = timed(lambda: raster_forward_backward(splats), args.steps)

  record = dict(
      config=args.config, pairs_per_s=devices * per_device / (step_ms / 1e3),
      step_ms=step_ms, raster_ms=raster_ms, raster_share=raster_ms / step_ms,
      device=f"{jax.devices()[0].device_kind} x{devices}", batch_size=devices * per_device,
      splats=int(splats.means.shape[1]), render_size=config.render.size,
      raster_impl=config.render.impl, steps=args.steps)
  print(f"{'config':<24}{'device':<14}{'batch':>6}{'splats':>8}{'step ms':>10}"
        f"{'pairs/s':>9}{'raster ms':>11}{'share':>7}")
  print(f"{args.config:<24}{record['device']:<14}{record['batch_size']:>6}{record['splats']:>8}"
        f"{step_ms:>10.1f}{record['pairs_per_s']:>9.2f}{raster_ms:>11.1f}"
        f"{record['raster_share']:>7.2f}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(record, f, indent=2)


if __name__ == "__main__":
  main()
