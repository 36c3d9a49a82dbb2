"""The tiled paths (`tiled`, and `pallas` in interpret mode) against the dense reference: every
output, every gradient; the capacity count."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rasterizer
from rasterizer import binning
import test_rasterizer_oracle as oracle

OUTPUTS = ("color", "alpha", "depth", "median_depth", "normals", "distortion")
SPLAT_FIELDS = ("means", "quats", "scales", "opacities", "features")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _run(impl, width, height, options, params, Ks, weights):
  """One jit per (impl, size, options), shared by the tests' parametrisations (the reference's
  compile is the costly one)."""
  def loss(params):
    splats = rasterizer.Splats(**{k: params[k] for k in SPLAT_FIELDS})
    out = rasterizer.rasterize(splats, params["viewmats"], Ks, width, height,
                               params["background"], impl=impl, **dict(options))
    return sum(jnp.sum(getattr(out, n) * weights[n]) for n in OUTPUTS), out
  return jax.grad(loss, has_aux=True)(params)


def _outputs_and_gradients(impl, scene, viewmats, Ks, width, height, background, weights,
                           **options):
  """All buffers, and gradients of a weighted sum of them w.r.t. every input, in one jit."""
  params = {**scene, "viewmats": viewmats, "background": background}
  grads, out = _run(impl, width, height, tuple(sorted(options.items())),
                    {k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(Ks),
                    {k: jnp.asarray(v) for k, v in weights.items()})
  return jax.tree.map(np.asarray, out), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("tile_size", [16, 8])
@pytest.mark.parametrize("impl,options", [("tiled", dict(chunk_size=8)), ("pallas", {})])
def test_equals_reference_in_every_output_and_gradient(impl, options, tile_size, rng):
  """Pallas runs in interpret mode here; 5 channels (padded to 8 in its kernels)."""
  width, height, num_splats, channels = 48, 37, 150, 5  # the last tile row is cut by the border
  # Any orientation, grazing included: the paths share the float32 splat math, and their
  # gradients part by at most ~1% of the tolerance (5 seeds per impl, 2026-11-29).
  scene = oracle.random_scene(rng, num_splats, channels, extent=0.3, scale_range=(0.05, 0.3),
                              opacity_range=(0.3, 1.0))
  rotation = oracle.quat_to_rotmat(np.array([1.0, *rng.normal(0, 0.05, 3)]))
  viewmats = np.stack([np.eye(4), np.block([[rotation, rng.normal(0, 0.05, (3, 1))],
                                            [np.zeros((1, 3)), 1]])]).astype(np.float32)
  Ks = np.stack([oracle.pinhole(width, height, 50.0)] * 2)
  background = rng.uniform(0, 1, (2, channels)).astype(np.float32)
  weights = {n: rng.normal(size=(2, height, width) + {"normals": (3,), "color": (channels,)}
                           .get(n, ())) for n in OUTPUTS}
  args = (scene, viewmats, Ks, width, height, background, weights)
  tiles_x, tiles_y = binning.tile_grid(width, height, tile_size)
  ref_out, ref_grads = _outputs_and_gradients("reference", *args)
  got_out, got_grads = _outputs_and_gradients(
      impl, *args, capacity=num_splats * tiles_x * tiles_y, tile_size=tile_size, **options)

  assert np.all(got_out.pairs_dropped == 0)
  for image in range(2):
    want, margin = oracle.render(**scene, viewmat=viewmats[image], K=Ks[image], width=width,
                                 height=height, background=background[image])
    assert want["stopped"].mean() > 0.01  # the early stop (hence the median crossing) is hit
    bad = np.zeros((height, width), bool)
    for name in OUTPUTS:
      err = np.abs(getattr(got_out, name)[image] - getattr(ref_out, name)[image])
      bad |= (err > 1e-5).reshape(height, width, -1).any(-1)
    assert bad.mean() <= 1e-3, bad.mean()
    assert np.all(margin[bad] < 1e-4), margin[bad]  # differences only on a threshold
  for name, ref in ref_grads.items():
    scale = np.abs(ref).max()
    assert scale > 0, name
    np.testing.assert_allclose(got_grads[name], ref, atol=1e-4 * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize("tile_size", [16, 8])
def test_over_capacity_scene_reports_its_dropped_pairs(tile_size, rng):
  width, height, num_splats, capacity = 64, 48, 60, 50
  scene = oracle.random_scene(rng, num_splats, scale_range=(0.1, 0.4))
  K = oracle.pinhole(width, height, 50.0)
  splats = rasterizer.Splats(**{k: jnp.asarray(v) for k, v in scene.items()})
  out = jax.jit(lambda s: rasterizer.rasterize(
      s, jnp.eye(4)[None], jnp.asarray(K)[None], width, height, jnp.zeros(3), impl="tiled",
      capacity=capacity, tile_size=tile_size))(splats)
  projected = rasterizer.project_splats(splats, jnp.eye(4), jnp.asarray(K), width, height)
  boxes = np.asarray(projected.boxes) // tile_size
  tiles = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
  pairs = int(np.sum(np.where(np.asarray(projected.visible), tiles, 0)))
  assert pairs > capacity
  assert int(out.pairs_dropped[0]) == pairs - capacity
  assert int(out.pairs_needed[0]) == pairs
