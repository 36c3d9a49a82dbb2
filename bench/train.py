"""Training throughput: pairs per second, step time and the renderer's share of it.

    python bench/train.py --config configs/base.py:cpu --renderers gaussians,mesh --steps 5 \
        --out bench/results/train_cpu.json
    python bench/train.py --config configs/base.py:cpu --override render.impl=reference \
        --override batch_size=8

For each renderer of `--renderers` (default: the config's `renderer`), times the real
data-parallel train step (all local devices) on random images of the config's size (throughput
does not depend on pixel values), after one compiling step. The renderer's share is the time of
its forward + backward alone on the inputs that step renders, divided by the step time:
`rasterizer.rasterize` on the rigged splats for "gaussians" (routed as the step routes it:
`config.render.geometry_gradients`), `mesh_baseline.render` on the
target mesh, predicted texture and lighting for "mesh". `--override KEY=VALUE` (repeatable) sets
any other config field, as `--config.KEY=VALUE` does for the train CLI; VALUE is read as a
Python literal, else as a string.

Prints a table and writes a JSON list of records, one per renderer: config (with any
--override flags), renderer, pairs_per_s, step_ms, raster_ms (the renderer's forward +
backward), raster_share, device, batch_size, splats (null for the mesh), render_size,
raster_impl ("mesh_baseline" for the mesh), steps.
"""
import argparse
import ast
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
from sheap_jax import camera as camera_lib  # noqa: E402
from sheap_jax import gradient_routing  # noqa: E402
from sheap_jax import mesh_baseline  # noqa: E402
from sheap_jax import objective  # noqa: E402
from sheap_jax import rigging  # noqa: E402
from sheap_jax import train  # noqa: E402


def load_config(spec: str, overrides=()):
  """`path[:arg]` -> the config file's get_config(arg), as --config of the train CLI, with each
  "KEY=VALUE" of `overrides` applied (dotted KEY, VALUE a Python literal or a string)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg)
  for override in overrides:
    key, sep, text = override.partition("=")
    if not sep:
      raise ValueError(f"bench/train.py: --override {override!r} is not KEY=VALUE")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, name = key.split(".")
    node = config
    for depth, parent in enumerate(parents):
      if parent not in node:
        raise ValueError(f"bench/train.py: --override {override!r}: {spec} has no field "
                         f"{'.'.join(parents[:depth + 1])!r}")
      node = node[parent]
    node[name] = value
  return config


def timed(fn, repeats):
  """Median wall time (ms) of fn() over `repeats` calls, each waited for."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times)


def renderer_forward_backward(config, out: objective.Reanimation, frozen: objective.Frozen):
  """(jitted f(inputs) -> their gradient, inputs, splat count or None): the renderer of
  `config.renderer` alone, on the inputs it drew in `out` (one reanimated batch)."""
  size = config.render.size
  background = jnp.asarray(config.render.background, jnp.float32)
  if config.renderer == "mesh":
    camera = camera_lib.Camera(K=out.Ks, viewmat=out.viewmats, width=size, height=size)
    lighting = jnp.asarray(objective.DEFAULT_LIGHTING) + out.source.lighting

    def total(inputs):
      vertices, texture, sh = inputs
      r = mesh_baseline.render(vertices, frozen.mesh, camera, texture, sh, background)
      return jnp.sum(r.color) + jnp.sum(r.alpha) + jnp.sum(r.depth) + jnp.sum(r.normals)
    return jax.jit(jax.grad(total)), (out.vertices, out.texture, lighting), None

  splats = rigging.rig_gaussians(out.local_gaussians, out.vertices, frozen.flame.faces)
  routed = config.render.get("geometry_gradients", "gaussians") == "gaussians"

  def render(s, viewmats):
    return rasterizer.rasterize(s, viewmats, out.Ks, size, size, background,
                                impl=config.render.impl, capacity=config.render.get("capacity"))

  def total(copies):  # with routed geometry gradients the step runs the backward twice
    if routed:
      r = gradient_routing.route_gradients(render, objective.GEOMETRY_BUFFERS,
                                           (copies[0], out.viewmats), (copies[1], out.viewmats))
    else:
      r = render(copies[0], out.viewmats)
    return (jnp.sum(r.color) + jnp.sum(r.depth) + jnp.sum(r.normals)
            + jnp.sum(r.distortion) + jnp.sum(r.median_depth))
  return jax.jit(jax.grad(total)), (splats, splats), int(splats.means.shape[1])


def bench_renderer(config, spec: str, steps: int):
  """One record: the train step of `config` (named `spec` in the record) and its renderer's
  share."""
  mesh = train.make_mesh(jax.local_devices())
  networks = objective.build_networks(config)
  frozen_host = objective.build_frozen(config, objective.load_flame_model(config))
  frozen = train.replicate(frozen_host, mesh)
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
  step_ms = timed(run_step, steps)

  # The renderer alone on one device's share of the batch, as the step renders it.
  out = jax.jit(lambda p, f, s, t: objective.reanimate(networks, p, f, config, s, t))(
      holder[0].params, frozen_host, jnp.asarray(batch["source_image"][0]),
      jnp.asarray(batch["target_image"][0]))
  forward_backward, inputs, splats = renderer_forward_backward(config, out, frozen_host)
  jax.block_until_ready(forward_backward(inputs))
  raster_ms = timed(lambda: forward_backward(inputs), steps)

  return dict(
      config=spec, renderer=config.renderer, pairs_per_s=devices * per_device / (step_ms / 1e3),
      step_ms=step_ms, raster_ms=raster_ms, raster_share=raster_ms / step_ms,
      device=f"{jax.devices()[0].device_kind} x{devices}", batch_size=devices * per_device,
      splats=splats, render_size=config.render.size,
      raster_impl="mesh_baseline" if config.renderer == "mesh" else config.render.impl,
      steps=steps)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/base.py:cpu")
  parser.add_argument("--renderers", default="",
                      help="comma-separated renderers to time (default: the config's)")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="set a config field (repeatable), e.g. render.impl=reference")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up)")
  parser.add_argument("--out", default="", help="JSON file to write")
  args = parser.parse_args(argv)

  if any(o.partition("=")[0] == "renderer" for o in args.override):
    parser.error("set the renderer with --renderers, not --override renderer=...")
  renderers = [r for r in args.renderers.split(",") if r] or [
      load_config(args.config, args.override).renderer]
  print(f"{'config':<24}{'renderer':<11}{'device':<14}{'batch':>6}{'splats':>8}{'step ms':>10}"
        f"{'pairs/s':>9}{'render ms':>11}{'share':>7}")
  records = []
  for renderer in renderers:
    config = load_config(args.config, args.override + [f"renderer={renderer!r}"])
    spec = " ".join([args.config] + [f"--override {o}" for o in args.override])
    r = bench_renderer(config, spec, args.steps)
    records.append(r)
    print(f"{r['config']:<24}{r['renderer']:<11}{r['device']:<14}{r['batch_size']:>6}"
          f"{'-' if r['splats'] is None else r['splats']:>8}{r['step_ms']:>10.1f}"
          f"{r['pairs_per_s']:>9.2f}{r['raster_ms']:>11.1f}{r['raster_share']:>7.2f}",
          flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(records, f, indent=2)


if __name__ == "__main__":
  main()
