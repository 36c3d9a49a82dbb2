"""How much the low-pass filter's centre matters: the rasterizer's rule against the official one.

  python bench/filter_centre.py --out bench/results/filter_centre_cpu.json

The rasterizer centres the 2DGS low-pass filter (rho2d = 2 |c - x|^2) on the projection of the
splat's centre; the official code (hbb1/diff-surfel-rasterization at e0ed020, forward.cu
`compute_aabb`) on the centre of the bounding box of the splat's 3-sigma ellipse, and culls a
splat where that computation's d is 0. This script renders the same splats both ways with the
tiled path (float32) and records, per scene, how far the centres move (pixels; also per
range of tilt from face-on) and how the colour, alpha and expected depth change: max and mean
absolute difference over all pixels (depth also where alpha >= 0.5, since expected depth
= sum w z / alpha swings where alpha is tiny) and the pixels that change by more than 1e-4 and
1e-2. Scenes: `bench/scenes.py` heads, and the renders the `cpu` training config draws at its
first step (untrained networks on random images, as bench/train.py times them). See
docs/rasterizer.md.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from bench import scenes  # noqa: E402
import rasterizer  # noqa: E402
from rasterizer import project  # noqa: E402
from rasterizer import splat_math  # noqa: E402
from rasterizer import tiled  # noqa: E402

OFFICIAL_CUTOFF = 3.0  # TIGHTBBOX is 0 in the official auxiliary.h
OUTPUTS = ("color", "alpha", "depth")
TILT_BINS_DEG = (0, 30, 60, 90)  # offsets reported per range of the angle between the splat's
# normal and the ray to its centre (0 = face-on, 90 = edge-on)


def official_filter_centres(transforms):
  """(N, 2) centres of the official low-pass filter and (N,) which splats it keeps (d != 0):
  with t = (c^2, c^2, -1), d = t . (T_w * T_w), f = t / d, the centre is
  (f . (T_u * T_w), f . (T_v * T_w))."""
  c2 = OFFICIAL_CUTOFF**2
  t_u, t_v, t_w = transforms[:, 0], transforms[:, 1], transforms[:, 2]
  planar = lambda p, q: p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]
  d = c2 * planar(t_w, t_w) - t_w[:, 2] ** 2
  kept = d != 0
  d = jnp.where(kept, d, 1.0)
  centre = lambda t_axis: (c2 * planar(t_axis, t_w) - t_axis[:, 2] * t_w[:, 2]) / d
  return jnp.stack([centre(t_u), centre(t_v)], axis=-1), kept


def with_official_centres(projected: rasterizer.ProjectedSplats, width, height):
  """The same projected splats with the official filter centre, its cull, and boxes that hold
  the filter circle around the new centre (the opacity-aware box of `project`)."""
  centres, kept = official_filter_centres(projected.ray_transforms)
  boxes, box_ok = project._opacity_aware_boxes(  # pylint: disable=protected-access
      projected.ray_transforms, centres, projected.opacities, width, height)
  visible = projected.visible & kept & box_ok
  return projected.replace(means2d=centres, boxes=jnp.where(visible[:, None], boxes, 0),
                           visible=visible)


def render_both(splats, viewmat, K, width, height, background):
  """(today's buffers, the official rule's buffers, centre offsets (N,) px, |cos| (N,),
  visible (N,), pairs dropped, splats only the official rule culls) for one image, through the
  same binning and tiled compositing."""
  projected = rasterizer.project_splats(splats, viewmat, K, width, height)
  official = with_official_centres(projected, width, height)

  def buffers(p):
    bins = rasterizer.bin_splats(p, width, height, capacity=int(8 * p.depths.shape[0]) + 4096)
    state = tiled.composite_tiles(p, bins, width, height)
    return splat_math.pixel_outputs(state, background), bins.pairs_dropped

  (today, dropped_today), (theirs, dropped_theirs) = buffers(projected), buffers(official)
  offsets = jnp.linalg.norm(official.means2d - projected.means2d, axis=-1)
  means_cam = splats.means @ viewmat[:3, :3].T + viewmat[:3, 3]
  rays = means_cam / jnp.linalg.norm(means_cam, axis=-1, keepdims=True)
  cos = jnp.abs(jnp.sum(rays * projected.normals, axis=-1))
  culled = jnp.sum(projected.visible & ~official.visible)
  return (today, theirs, offsets, cos, projected.visible, dropped_today + dropped_theirs,
          culled)


def summarise(today, theirs, offsets, cos, visible, dropped, culled):
  """One record of differences (numpy scalars turned into floats/ints for JSON)."""
  offsets, cos, visible = (np.asarray(a) for a in (offsets, cos, visible))
  record = dict(pairs_dropped=int(np.sum(dropped)), culled_by_official_rule=int(np.sum(culled)))
  tilt = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
  masks = {"all": visible}
  for lo, hi in zip(TILT_BINS_DEG[:-1], TILT_BINS_DEG[1:]):
    masks[f"tilt_{lo}_{hi}"] = visible & (tilt >= lo) & (tilt <= hi if hi == 90 else tilt < hi)
  for name, mask in masks.items():
    values = offsets[mask]
    record[f"offset_px_{name}"] = dict(
        splats=int(mask.sum()), max=float(values.max(initial=0.0)),
        mean=float(values.mean()) if values.size else 0.0,
        p99=float(np.percentile(values, 99)) if values.size else 0.0)
  changed = None
  for name in OUTPUTS:
    diff = np.abs(np.asarray(theirs[name], np.float64) - np.asarray(today[name], np.float64))
    per_pixel = diff.reshape(diff.shape[:3] + (-1,)).max(-1)  # (B, H, W)
    changed = per_pixel if changed is None else np.maximum(changed, per_pixel)
    record[name] = dict(max_abs=float(diff.max()), mean_abs=float(diff.mean()))
  opaque = (np.asarray(today["alpha"]) >= 0.5) & (np.asarray(theirs["alpha"]) >= 0.5)
  depth_diff = np.abs(np.asarray(theirs["depth"], np.float64) - np.asarray(today["depth"]))
  record["depth_where_alpha_over_half"] = dict(max_abs=float(depth_diff[opaque].max(initial=0)),
                                              mean_abs=float(depth_diff[opaque].mean()))
  covered = np.asarray(today["alpha"]) > 0
  record.update(pixels=int(changed.size), covered_pixels=int(covered.sum()),
                pixels_changed={f"{t:g}": int((changed > t).sum()) for t in (1e-4, 1e-2)})
  return record


def head_record(size, num_splats):
  splats = scenes.head_scene(num_splats)
  viewmat, K = scenes.camera(size, size)
  outputs = jax.jit(render_both, static_argnums=(3, 4))(splats, viewmat, K, size, size,
                                                          jnp.zeros(3))
  batched = [jax.tree.map(lambda a: a[None], outputs[0]),
             jax.tree.map(lambda a: a[None], outputs[1]), *outputs[2:]]
  return dict(scene=f"head {size}^2 {num_splats} splats", **summarise(*batched))


def training_record(config_spec):
  """The splats and cameras of the first training step of `config_spec` (bench/train.py's
  setup: untrained networks, random images), rendered both ways."""
  from bench import train as bench_train  # pylint: disable=g-import-not-at-top
  from sheap_jax.training import objective  # pylint: disable=g-import-not-at-top
  from sheap_jax.render import rigging  # pylint: disable=g-import-not-at-top
  from sheap_jax.training import trainer  # pylint: disable=g-import-not-at-top

  config = bench_train.load_config(config_spec)
  networks = objective.build_networks(config)
  frozen = objective.build_frozen(config, objective.load_flame_model(config))
  state = trainer.init_state(networks, frozen, config, trainer.make_optimizer(config))
  size = config.model.image_size
  rng = np.random.default_rng(0)
  images = [jnp.asarray(rng.random((config.batch_size, size, size, 3), dtype=np.float32))
            for _ in range(2)]
  out = jax.jit(lambda p, s, t: objective.reanimate(networks, p, frozen, config, s, t))(
      state.params, *images)
  splats = objective._shade_splats(  # pylint: disable=protected-access
      rigging.rig_gaussians(out.local_gaussians, out.vertices, frozen.flame.faces),
      out.viewmats, jnp.asarray(objective.DEFAULT_LIGHTING) + out.source.lighting)
  render = config.render.size
  background = jnp.asarray(config.render.background, jnp.float32)
  outputs = jax.jit(jax.vmap(render_both, in_axes=(0, 0, 0, None, None, None)),
                    static_argnums=(3, 4))(splats, out.viewmats, out.Ks, render, render,
                                           background)
  return dict(scene=f"{config_spec} first step, batch {config.batch_size}, {render}^2, "
                    f"{splats.means.shape[1]} splats", **summarise(*outputs))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--heads", default="64:2000,256:10000,256:20000,512:20000,512:100000",
                      help="comma-separated size:splats head scenes")
  parser.add_argument("--train-config", default="configs/base.py:cpu",
                      help="training config whose first-step renders are compared ('' skips)")
  parser.add_argument("--out", default="", help="JSON file to write")
  args = parser.parse_args(argv)
  records = []
  jobs = [lambda s=int(s), n=int(n): head_record(s, n)
          for s, n in (h.split(":") for h in args.heads.split(",") if h)]
  if args.train_config:
    jobs.append(lambda: training_record(args.train_config))
  print(f"{'scene':<52}{'offset px max/mean':>20}{'colour max/mean':>20}{'alpha max':>11}"
        f"{'depth max':>11}{'px >1e-4':>10}{'px >1e-2':>10}{'covered':>9}")
  for job in jobs:
    r = job()
    r["loadavg"] = os.getloadavg()[0]
    records.append(r)
    off = r["offset_px_all"]
    print(f"{r['scene']:<52}{off['max']:>11.2e}/{off['mean']:.1e}"
          f"{r['color']['max_abs']:>11.2e}/{r['color']['mean_abs']:.1e}"
          f"{r['alpha']['max_abs']:>11.2e}{r['depth']['max_abs']:>11.2e}"
          f"{r['pixels_changed']['0.0001']:>10}{r['pixels_changed']['0.01']:>10}"
          f"{r['covered_pixels']:>9}", flush=True)
    if args.out:
      json_out.write_json(args.out, records)
  if args.out:
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
