"""Where a Gaussian train step's time goes: each stage of the objective timed alone.

    python bench/train_stages.py --config configs/base.py:cpu --repeats 5
    python bench/train_stages.py --override render.capacity=4096 --out stages.json

Each stage is jitted on its own, on one device's share of the batch (the step's inputs, from
random images and the initial parameters), and timed after a compiling call; the stages are
timed round-robin so that load from other jobs spreads over all of them (median of
`--repeats`). The stages do not add up to the step exactly: XLA fuses across stage boundaries in
the step, and the step also updates the optimiser. Stages:
- predictor: the ViT on source and target frames, forward + backward (gradient of the outputs'
  sum);
- dinov2: the frozen encoder's patch tokens of the source, forward;
- regressor: the Gaussians Regressor, forward + backward;
- flame_rig_shade: FLAME, rigging and shading of the splats, forward + backward;
- mesh_zbuffer: the z-buffer depth/normal/mask of the target mesh, forward;
- project_bin: projection and tile binning (`rasterizer.bin_splats`), forward;
- raster_forward: `rasterizer.rasterize`, forward;
- raster_fwd_bwd: its forward + one backward (every buffer's gradient to the splats);
- render_routed: `objective.render_splats` (rig, shade, rasterise) forward + backward with the
  geometry buffers routed as `config.render.geometry_gradients` says (two backward passes);
- losses: `losses.total_loss` per pair (the step's), forward + backward to the render;
- step: the whole train step.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import rasterizer  # noqa: E402
from bench import json_out  # noqa: E402
from bench import train as train_bench  # noqa: E402
from sheap_jax.head import flame as flame_lib  # noqa: E402
from sheap_jax.training import losses  # noqa: E402
from sheap_jax.training import objective  # noqa: E402
from sheap_jax.render import rigging  # noqa: E402
from sheap_jax.training import trainer  # noqa: E402
from sheap_jax.models import dinov2  # noqa: E402


def _sum(tree):
  return sum(jnp.sum(x) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating))


def stage_functions(config, networks, frozen, params, batch):
  """{stage: zero-argument function returning its result}, each jitted."""
  size = config.render.size
  background = jnp.asarray(config.render.background, jnp.float32)
  out = jax.jit(lambda p: objective.reanimate(networks, p, frozen, config, batch["source_image"],
                                              batch["target_image"]))(params)
  lighting = jnp.asarray(objective.DEFAULT_LIGHTING) + out.source.lighting
  faces = frozen.splat_faces
  images = jnp.concatenate([batch["source_image"], batch["target_image"]])
  dinov2_input = objective.resize_images(batch["source_image"], config.dinov2.image_size)
  tokens = dinov2.frozen_features(networks.dinov2, frozen.dinov2, dinov2_input).patch_tokens
  shaded = objective._shade_splats(rigging.rig_gaussians(out.local_gaussians, out.vertices, faces),
                                   out.viewmats, lighting)
  raster = objective.raster_options(config)

  predictor = jax.jit(jax.grad(lambda p: _sum(networks.predictor.apply({"params": p}, images))))
  encoder = jax.jit(lambda images: dinov2.frozen_features(networks.dinov2, frozen.dinov2,
                                                         images).patch_tokens)
  regressor = jax.jit(jax.grad(lambda p: _sum(networks.regressor.apply(
      {"params": p}, out.source.identity, tokens, frozen.layout))))

  def rig_shade(target, local):
    vertices = flame_lib.flame_forward(
        frozen.flame, objective._flame_params(out.source, target)).vertices
    return _sum(objective._shade_splats(rigging.rig_gaussians(local, vertices, faces),
                                        out.viewmats, lighting))
  flame_rig = jax.jit(jax.grad(rig_shade, argnums=(0, 1)))
  zbuffer = jax.jit(lambda: objective.render_mesh_buffers(out.vertices, faces, out.Ks,
                                                           out.viewmats, size))

  def bins(splats):
    def one(s, viewmat, K):
      projected = rasterizer.project_splats(s, viewmat, K, size, size)
      return rasterizer.bin_splats(projected, size, size, raster["capacity"],
                                   tile_size=raster["tile_size"])
    return jax.vmap(one)(splats, out.viewmats, out.Ks)
  project_bin = jax.jit(bins)
  render = lambda s: rasterizer.rasterize(s, out.viewmats, out.Ks, size, size, background,
                                          **raster)
  raster_forward = jax.jit(render)
  raster_fwd_bwd = jax.jit(jax.grad(lambda s: _sum(render(s).replace(
      pairs_dropped=0, pairs_needed=0, splats_culled=0))))
  routed = jax.jit(jax.grad(lambda local, vertices: _sum(objective.render_splats(
      config, local, vertices, faces, out.viewmats, out.Ks, lighting, background).replace(
          pairs_dropped=0, pairs_needed=0, splats_culled=0)), argnums=(0, 1)))

  context = objective.loss_context(networks, frozen, config, batch, out)
  feature_fn, terms = context.feature_fn, objective.applicable_losses(config)

  def pair_loss(render):
    def one(single):
      single = jax.tree.map(lambda x: x[None], single).replace(feature_fn=feature_fn)
      return losses.total_loss(terms, single)[0]
    return jnp.mean(jax.vmap(one)(context.replace(render=render, feature_fn=None)))
  loss_grad = jax.jit(jax.grad(pair_loss, allow_int=True))

  return {
      "predictor": lambda: predictor(params["predictor"]),
      "dinov2": lambda: encoder(dinov2_input),
      "regressor": lambda: regressor(params["regressor"]),
      "flame_rig_shade": lambda: flame_rig(out.target, out.local_gaussians),
      "mesh_zbuffer": zbuffer,
      "project_bin": lambda: project_bin(shaded),
      "raster_forward": lambda: raster_forward(shaded),
      "raster_fwd_bwd": lambda: raster_fwd_bwd(shaded),
      "render_routed": lambda: routed(out.local_gaussians, out.vertices),
      "losses": lambda: loss_grad(out.render),
  }, out


def profile(config, repeats: int):
  """({stage: median ms}, info) for the Gaussian step of `config` on the local devices."""
  mesh = trainer.make_mesh(jax.local_devices())
  networks = objective.build_networks(config)
  frozen_host = objective.build_frozen(config, objective.load_flame_model(config))
  optimizer = trainer.make_optimizer(config)
  state_host = trainer.init_state(networks, frozen_host, config, optimizer)
  devices = mesh.devices.size
  per_device = max(config.batch_size // devices, 1)
  size = config.model.image_size
  batch = train_bench.random_batch(devices, per_device, size)
  stages, out = stage_functions(config, networks, frozen_host, state_host.params,
                                {k: jnp.asarray(v[0]) for k, v in batch.items()})

  frozen = trainer.replicate(frozen_host, mesh)
  state = [trainer.replicate(jax.tree.map(jnp.copy, state_host), mesh)]  # the step donates it
  step = trainer.make_train_step(networks, config, optimizer, mesh)
  sharded = trainer.shard_batch(batch, mesh)

  def train_step():
    state[0], metrics = step(state[0], frozen, sharded)
    return metrics
  stages["step"] = train_step

  times = {name: [] for name in stages}
  for round_ in range(repeats + 1):
    for name, fn in stages.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      if round_:
        times[name].append(1e3 * (time.perf_counter() - start))
  raster = objective.raster_options(config)
  info = dict(splats=int(np.prod(out.local_gaussians.offsets.shape[1:3])),
              render_size=config.render.size, devices=devices, per_device_batch=per_device,
              pairs_needed_per_image=float(jnp.mean(out.render.pairs_needed)),
              tile_size=raster["tile_size"],
              capacity=int(raster["capacity"] or rasterizer.binning.default_capacity(
                  int(np.prod(out.local_gaussians.offsets.shape[1:3])), config.render.size,
                  config.render.size, raster["tile_size"])))
  return {name: statistics.median(t) for name, t in times.items()}, info


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/base.py:cpu")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  config = train_bench.load_config(args.config, args.override)
  medians, info = profile(config, args.repeats)
  print(" ".join([args.config] + [f"--override {o}" for o in args.override]))
  print(", ".join(f"{k} {v}" for k, v in info.items()))
  print(f"{'stage':<18}{'ms':>10}{'of step':>9}")
  for name, ms in medians.items():
    print(f"{name:<18}{ms:>10.1f}{ms / medians['step']:>9.2f}")
  if args.out:
    json_out.write_json(args.out, dict(config=args.config, overrides=args.override,
                                       stages_ms=medians, loadavg=os.getloadavg(), **info))


if __name__ == "__main__":
  main()
