"""Training throughput: pairs per second, step time and the renderer's share of it.

    python bench/train.py --config configs/base.py:cpu --renderers gaussians,mesh --steps 5 \
        --out bench/results/train_cpu.json
    python bench/train.py --config configs/base.py:cpu --override render.impl=reference \
        --override batch_size=8
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/train.py \
        --renderers gaussians,mesh --steps 5 --out bench/results/train_cpu.json \
        --devices 2,1 --baseline "regressor.regions=()" --baseline render.capacity=None \
        --baseline render.impl=tiled --baseline render.tile_size=16 \
        --baseline-devices 1     # the cpu config before 2026-12-08, and now on 2 and 1 devices

`--baseline KEY=VALUE` (repeatable) also times the config with those fields set, in rounds
alternating with the config's own (so that other jobs' load falls on both alike); `--devices`
and `--baseline-devices` pick how many local devices each step uses (default: all;
`--devices 2,1` times the config on 2 and on 1 device, alternating too).

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

Prints a table and writes a JSON list of records, one per renderer (and baseline): config
(with any --override flags), renderer, pairs_per_s, step_ms, raster_ms (the renderer's forward +
backward), raster_share, device, batch_size, splats (null for the mesh), render_size,
px_per_mm (pixels per mm at the head's distance), raster_impl ("mesh_baseline" for the mesh),
capacity, pairs_needed (per image, last round), geometry_gradients, regions, steps, loadavg.
"""
import argparse
import ast
import importlib.util
import math
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
from sheap_jax.training import trainer  # noqa: E402


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

  faces = frozen.splat_faces

  def total(inputs, Ks):  # the step's render: rig, shade, rasterise (routed as configured)
    local, vertices, viewmats, sh = inputs
    r = objective.render_splats(config, local, vertices, faces, viewmats, Ks, sh, background)
    return (jnp.sum(r.color) + jnp.sum(r.depth) + jnp.sum(r.normals)
            + jnp.sum(r.distortion) + jnp.sum(r.median_depth))
  inputs_of = lambda out: ((out.local_gaussians, out.vertices, out.viewmats, lighting(out)),
                           out.Ks)  # the intrinsics are constants, as in the step
  splats = lambda out: int(np.prod(out.local_gaussians.offsets.shape[1:3]))
  return jax.jit(jax.grad(total)), inputs_of, splats


def random_batch(devices: int, per_device: int, size: int) -> dict:
  """A fixed random batch of the step's inputs, (devices, per_device, ...): images at `size`,
  68 landmarks, all valid (the input pipeline is not timed)."""
  rng = np.random.default_rng(0)
  batch = {name: rng.random((devices, per_device, size, size, 3), dtype=np.float32)
           for name in ("source_image", "target_image")}
  batch["target_landmarks"] = rng.random((devices, per_device, 68, 2), np.float32) * size
  batch["target_landmarks_valid"] = np.ones((devices, per_device, 68), np.float32)
  return batch


def renderer_rounds(config, spec: str, devices: int):
  """(one_round, record): one_round() times the renderer alone and then one train step of
  `config` on its first `devices` local devices (the first call compiles); record(times) is the
  result for the rounds' (step ms, renderer ms)."""
  mesh = trainer.make_mesh(jax.local_devices()[:devices])
  networks = objective.build_networks(config)
  frozen_host = objective.build_frozen(config, objective.load_flame_model(config))
  frozen = trainer.replicate(frozen_host, mesh)
  optimizer = trainer.make_optimizer(config)
  state = [trainer.replicate(trainer.init_state(networks, frozen_host, config, optimizer), mesh)]
  step = trainer.make_train_step(networks, config, optimizer, mesh)

  per_device = max(config.batch_size // devices, 1)
  size = config.model.image_size
  batch = random_batch(devices, per_device, size)
  sharded = trainer.shard_batch(batch, mesh)
  device_batch = [jnp.asarray(batch[name][0]) for name in ("source_image", "target_image")]
  reanimate = jax.jit(lambda p, f, s, t: objective.reanimate(networks, p, f, config, s, t))
  forward_backward, inputs_of, splats_of = renderer_forward_backward(config, frozen_host)
  last = {}

  # The renderer alone on one device's share of the batch, as the step renders it, then the
  # step, on the same parameters.
  def one_round():
    out = jax.block_until_ready(reanimate(state[0].params, frozen_host, *device_batch))
    raster_ms, _ = timed_once(lambda: forward_backward(*inputs_of(out)))
    step_ms, (state[0], _) = timed_once(lambda: step(state[0], frozen, sharded))
    last.update(out=out)
    return step_ms, raster_ms

  def record(times):
    step_ms = statistics.median(t[0] for t in times)
    raster_ms = statistics.median(t[1] for t in times)
    out = last["out"]
    render = config.render
    return dict(
        config=spec, renderer=config.renderer,
        pairs_per_s=devices * per_device / (step_ms / 1e3), step_ms=step_ms, raster_ms=raster_ms,
        raster_share=raster_ms / step_ms, device=f"{jax.devices()[0].device_kind} x{devices}",
        batch_size=devices * per_device, splats=splats_of(out), render_size=render.size,
        px_per_mm=None if config.renderer == "mesh" else px_per_mm(render.size),
        raster_impl="mesh_baseline" if config.renderer == "mesh" else render.impl,
        capacity=None if config.renderer == "mesh" else render.get("capacity"),
        tile_size=None if config.renderer == "mesh" else render.get("tile_size"),
        pairs_needed=None if config.renderer == "mesh" else float(
            jnp.mean(out.render.pairs_needed)),
        geometry_gradients=None if config.renderer == "mesh" else render.geometry_gradients,
        regions=list(config.regressor.get("regions") or ()), steps=len(times),
        loadavg=list(os.getloadavg()))
  return one_round, record


def px_per_mm(render_size: int) -> float:
  """Pixels per millimetre at the head's distance in SHeaP's framing (the signal a render
  holds): focal length in pixels over the camera distance."""
  focal = (render_size / 2) / math.tan(math.radians(camera_lib.SHEAP_FOV_Y_DEGREES) / 2)
  return focal / (camera_lib.SHEAP_CAMERA_DISTANCE * 1e3)


def bench_configs(configs, steps: int):
  """Records for [(config, spec, devices)], timed in alternating rounds so that other jobs'
  load falls on all of them alike."""
  runs = [renderer_rounds(config, spec, devices) for config, spec, devices in configs]
  times = [[] for _ in runs]
  for round_ in range(steps + 1):
    for (one_round, _), t in zip(runs, times):
      result = one_round()
      if round_:  # the first round compiles
        t.append(result)
  return [record(t) for (_, record), t in zip(runs, times)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/base.py:cpu")
  parser.add_argument("--renderers", default="",
                      help="comma-separated renderers to time (default: the config's)")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="set a config field (repeatable), e.g. render.impl=reference")
  parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                      help="also time the config with these fields set (repeatable), in "
                      "alternating rounds, e.g. the settings before a change")
  parser.add_argument("--devices", default="",
                      help="local devices of the step (default: all); comma-separated counts "
                      "time the config once per count, e.g. 2,1")
  parser.add_argument("--baseline-devices", type=int, default=0,
                      help="local devices of the baseline's step (default: all)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up)")
  parser.add_argument("--out", default="", help="JSON file to write")
  args = parser.parse_args(argv)

  if any(o.partition("=")[0] == "renderer" for o in args.override):
    parser.error("set the renderer with --renderers, not --override renderer=...")
  renderers = [r for r in args.renderers.split(",") if r] or [
      load_config(args.config, args.override).renderer]
  all_devices = len(jax.local_devices())
  variants = [(args.override, int(d)) for d in args.devices.split(",") if d] or [
      (args.override, all_devices)]
  if args.baseline:
    variants.insert(0, (args.override + args.baseline, args.baseline_devices or all_devices))
  specs = [" ".join([args.config] + [f"--override {o}" for o in overrides])
           for overrides, _ in variants]
  width = max(24, max(len(s) for s in specs) + 2)
  print(f"{'config':<{width}}{'renderer':<11}{'device':<14}{'batch':>6}{'splats':>8}"
        f"{'step ms':>10}{'pairs/s':>9}{'render ms':>11}{'share':>7}")
  records = []
  for renderer in renderers:
    configs = [(load_config(args.config, overrides + [f"renderer={renderer!r}"]), spec, devices)
               for (overrides, devices), spec in zip(variants, specs)]
    for r in bench_configs(configs, args.steps):
      records.append(r)
      print(f"{r['config']:<{width}}{r['renderer']:<11}{r['device']:<14}{r['batch_size']:>6}"
            f"{'-' if r['splats'] is None else r['splats']:>8}{r['step_ms']:>10.1f}"
            f"{r['pairs_per_s']:>9.2f}{r['raster_ms']:>11.1f}{r['raster_share']:>7.2f}",
            flush=True)
    if args.out:
      json_out.write_json(args.out, records)
  print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  if args.out:
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
