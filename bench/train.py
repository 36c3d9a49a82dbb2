"""Training throughput: pairs per second, step time and the renderer's share of it.

    python bench/train.py --config configs/base.py:cpu --renderers gaussians,mesh --steps 5 \
        --out bench/results/train_cpu.json
    python bench/train.py --config configs/base.py:cpu --override render.impl=reference \
        --override batch_size=8

For each renderer of `--renderers` (default: the config's `renderer`), times the real
data-parallel train step (all local devices) on random images of the config's size (throughput
does not depend on pixel values), after one compiling step. The renderer's share is the time of
its forward + backward alone on the inputs that step renders, timed before each step on the
same parameters (the compositing's early stop makes its cost depend on them), divided by the
step time (medians of both): for "gaussians", `objective.render_splats` (the step's own
render: rigging, shading and `rasterizer.rasterize`, with the geometry gradients routed as
`config.render.geometry_gradients` says) on the predicted local Gaussians, mesh, camera and
lighting; for "mesh", `mesh_baseline.render` on the target mesh, predicted texture and lighting.
`--override KEY=VALUE` (repeatable) sets any other config field, as `--config.KEY=VALUE` does
for the train CLI; VALUE is read as a Python literal, else as a string.

Prints a table and writes a JSON list of records, one per renderer: config (with any
--override flags), renderer, pairs_per_s, step_ms, raster_ms (the renderer's forward +
backward), raster_share, device, batch_size, splats (null for the mesh), render_size,
raster_impl ("mesh_baseline" for the mesh), steps.
"""
import argparse
import ast
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import json_out  # noqa: E402
from sheap_jax.geometry import camera as camera_lib  # noqa: E402
from sheap_jax.render import mesh_baseline  # noqa: E402
from sheap_jax.training import objective  # noqa: E402
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


def timed_once(fn):
  """Wall time (ms) of fn(), waited for, and its result."""
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  return 1e3 * (time.perf_counter() - start), result


def renderer_forward_backward(config, frozen: objective.Frozen):
  """The renderer of `config.renderer` alone, on the inputs it drew in a reanimated batch `out`:
  (jitted f(inputs, Ks) -> the inputs' gradient, out -> (inputs, Ks), out -> splat count or
  None)."""
  size = config.render.size
  background = jnp.asarray(config.render.background, jnp.float32)
  lighting = lambda out: jnp.asarray(objective.DEFAULT_LIGHTING) + out.source.lighting
  if config.renderer == "mesh":
    def total(inputs, Ks):
      vertices, texture, sh, viewmats = inputs
      camera = camera_lib.Camera(K=Ks, viewmat=viewmats, width=size, height=size)
      r = mesh_baseline.render(vertices, frozen.mesh, camera, texture, sh, background)
      return jnp.sum(r.color) + jnp.sum(r.alpha) + jnp.sum(r.depth) + jnp.sum(r.normals)
    inputs_of = lambda out: ((out.vertices, out.texture, lighting(out), out.viewmats), out.Ks)
    return jax.jit(jax.grad(total)), inputs_of, lambda out: None

  faces = frozen.flame.faces

  def total(inputs, Ks):  # the step's render: rig, shade, rasterise (routed as configured)
    local, vertices, viewmats, sh = inputs
    r = objective.render_splats(config, local, vertices, faces, viewmats, Ks, sh, background)
    return (jnp.sum(r.color) + jnp.sum(r.depth) + jnp.sum(r.normals)
            + jnp.sum(r.distortion) + jnp.sum(r.median_depth))
  inputs_of = lambda out: ((out.local_gaussians, out.vertices, out.viewmats, lighting(out)),
                           out.Ks)  # the intrinsics are constants, as in the step
  splats = lambda out: int(np.prod(out.local_gaussians.offsets.shape[1:3]))
  return jax.jit(jax.grad(total)), inputs_of, splats


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
  device_batch = [jnp.asarray(batch[name][0]) for name in ("source_image", "target_image")]
  reanimate = jax.jit(lambda p, f, s, t: objective.reanimate(networks, p, f, config, s, t))
  forward_backward, inputs_of, splats_of = renderer_forward_backward(config, frozen_host)

  # Step and renderer alternate on the same parameters: the renderer alone on one device's share
  # of the batch, as the step renders it, then the step. The first round compiles.
  step_times, raster_times = [], []
  for round_ in range(steps + 1):
    out = jax.block_until_ready(reanimate(state.params, frozen_host, *device_batch))
    raster_ms, _ = timed_once(lambda: forward_backward(*inputs_of(out)))
    step_ms, (state, _) = timed_once(lambda: step(state, frozen, sharded))
    if round_:
      raster_times.append(raster_ms)
      step_times.append(step_ms)
  step_ms, raster_ms = statistics.median(step_times), statistics.median(raster_times)
  splats = splats_of(out)

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
  spec = " ".join([args.config] + [f"--override {o}" for o in args.override])
  width = max(24, len(spec) + 2)
  print(f"{'config':<{width}}{'renderer':<11}{'device':<14}{'batch':>6}{'splats':>8}"
        f"{'step ms':>10}{'pairs/s':>9}{'render ms':>11}{'share':>7}")
  records = []
  for renderer in renderers:
    config = load_config(args.config, args.override + [f"renderer={renderer!r}"])
    r = bench_renderer(config, spec, args.steps)
    records.append(r)
    print(f"{r['config']:<{width}}{r['renderer']:<11}{r['device']:<14}{r['batch_size']:>6}"
          f"{'-' if r['splats'] is None else r['splats']:>8}{r['step_ms']:>10.1f}"
          f"{r['pairs_per_s']:>9.2f}{r['raster_ms']:>11.1f}{r['raster_share']:>7.2f}",
          flush=True)
    if args.out:
      json_out.write_json(args.out, records)
  if args.out:
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
