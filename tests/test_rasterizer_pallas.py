"""Pallas compositing kernels (interpret mode on CPU) against the dense jnp reference.

Scenes are tiny (48x40 px, so tiles are cut by the image border; tens of splats) because
interpret mode is slow; they are dense enough that pixels stop early and cross the median.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures import jaxprs
from rasterizer import binning
from rasterizer import pallas_kernels
from rasterizer import project
from rasterizer import reference
from rasterizer import splat_math
from rasterizer import tiled
from rasterizer import types
import test_rasterizer_oracle as oracle

WIDTH, HEIGHT = 48, 40
NUM_SPLATS = 48  # one size for every test: each new shape costs an interpret-mode compile
# (exit_check_every, unroll) settings of the forward kernel, each checked against the reference.
KERNEL_SETTINGS = ((1, 1), (16, 1), (16, 4))
FLOAT_FIELDS = ("transmittance", "color", "depth_sum", "normal_sum", "median_depth", "m1", "m2",
                "distortion")


def random_splats(key, num_splats, num_channels=3):
  """Splats 1-2 m in front of an identity camera; every other one opaque and the first six
  large, so that pixels stop early."""
  k = jax.random.split(key, 6)
  depth = jax.random.uniform(k[0], (num_splats, 1), minval=1.0, maxval=2.0)
  xy = jax.random.uniform(k[1], (num_splats, 2), minval=-0.45, maxval=0.45) * depth
  opacities = jax.random.uniform(k[4], (num_splats,), minval=0.3, maxval=1.0)
  return types.Splats(
      means=jnp.concatenate([xy, depth], axis=1),
      quats=jax.random.normal(k[2], (num_splats, 4)) + jnp.array([2.0, 0.0, 0.0, 0.0]),
      scales=jax.random.uniform(k[3], (num_splats, 2), minval=0.005, maxval=0.3)
      * jnp.where(jnp.arange(num_splats) < 6, 3.0, 1.0)[:, None],
      opacities=jnp.where(jnp.arange(num_splats) % 2 == 0, 1.0, opacities),
      features=jax.random.uniform(k[5], (num_splats, num_channels)))


def camera(width=WIDTH, height=HEIGHT, focal=45.0):
  K = jnp.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
  return jnp.eye(4), K


@functools.partial(jax.jit, static_argnums=1)
def composite_both(splats, tile_size):
  viewmat, K = camera()
  projected = project.project_splats(splats, viewmat, K, WIDTH, HEIGHT)
  bins = binning.bin_splats(projected, WIDTH, HEIGHT, tile_size=tile_size)
  pallas = [pallas_kernels.composite_tiles(projected, bins, WIDTH, HEIGHT, interpret=True,
                                           exit_check_every=every, unroll=unroll,
                                           tile_size=tile_size)
            for every, unroll in KERNEL_SETTINGS]
  ref = reference.composite_reference(projected, WIDTH, HEIGHT)
  return projected, bins, pallas, ref


def _scene_that_stops_early(rng):
  """random_splats on fresh keys until the float64 official loop stops a pixel early (it does
  for about 97.5% of keys; median crossings come with it), and that loop's threshold margins."""
  viewmat, K = camera()
  for _ in range(20):
    splats = random_splats(jax.random.PRNGKey(rng.integers(2**31)), NUM_SPLATS)
    scene = {f: np.asarray(getattr(splats, f))
             for f in ("means", "quats", "scales", "opacities", "features")}
    want, margin = oracle.render(**scene, viewmat=np.asarray(viewmat), K=np.asarray(K),
                                 width=WIDTH, height=HEIGHT, background=np.zeros(3))
    if want["stopped"].any():
      return splats, margin
  raise AssertionError("no scene with an early stop in 20 draws")


@pytest.mark.parametrize("tile_size", [16, 8])
@pytest.mark.parametrize("setting", range(len(KERNEL_SETTINGS)),
                         ids=[f"exit_check_every_{e}_unroll_{u}" for e, u in KERNEL_SETTINGS])
def test_forward_matches_reference_except_at_discontinuities(setting, tile_size, rng):
  """Running sums and the stop / median / last positions (which the backward replays); any
  pixel that differs must sit on a threshold of the float64 official loop."""
  splats, margin = _scene_that_stops_early(rng)
  projected, bins, pallas, ref = composite_both(splats, tile_size)
  pallas = pallas[setting]
  assert int(bins.pairs_dropped) == 0
  on_threshold = margin < 1e-4

  mismatch = np.zeros((HEIGHT, WIDTH), bool)
  for name in FLOAT_FIELDS:
    diff = np.abs(np.asarray(getattr(pallas, name)) - np.asarray(getattr(ref, name)))
    mismatch |= diff.reshape(HEIGHT, WIDTH, -1).max(axis=-1) > 1e-5
  assert mismatch.mean() <= 1e-3
  assert np.all(on_threshold[mismatch]), margin[mismatch]

  # Positions index different lists (pairs vs depth-sorted splats): compare the splats.
  order = np.asarray(binning.depth_order(projected))
  pair_ids = np.asarray(bins.splat_ids)

  def splat_at(positions, ids):
    positions = np.asarray(positions)
    valid = (positions >= 0) & (positions != splat_math.NO_STOP)
    return np.where(valid, ids[np.where(valid, positions, 0)], -1)

  for field in ("stop_pos", "median_pos", "last_pos"):
    same = splat_at(getattr(pallas, field), pair_ids) == splat_at(getattr(ref, field), order)
    assert np.all(same | on_threshold), field


def _random_cotangents(key, outputs):
  leaves, tree = jax.tree.flatten(outputs)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _assert_grads_close(got, want, names):
  for name, g, w in zip(names, jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(jnp.max(jnp.abs(w)))
    assert scale > 0, name
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * scale, err_msg=name)


@pytest.mark.parametrize("tile_size", [16, 8])
def test_running_sum_gradients_match_reference(tile_size, rng):
  """Every running sum the kernels return (m1 and m2 too, which no public output shows)
  back-propagates like the reference. End-to-end gradients through `rasterize`:
  test_rasterizer_tiled.py."""
  key, weights_key = jax.random.split(jax.random.PRNGKey(rng.integers(2**31)))
  splats = random_splats(key, NUM_SPLATS)
  viewmat, K = camera()
  projected = project.project_splats(splats, viewmat, K, WIDTH, HEIGHT)
  bins = binning.bin_splats(projected, WIDTH, HEIGHT, tile_size=tile_size)
  shapes = jax.eval_shape(lambda: reference.composite_reference(projected, WIDTH, HEIGHT))
  weights = _random_cotangents(weights_key, {f: getattr(shapes, f) for f in FLOAT_FIELDS})

  @jax.jit
  def grads(inputs):
    def loss(composite, inputs):
      transforms, means2d, opacities, normals, features = inputs
      state = composite(projected.replace(ray_transforms=transforms, means2d=means2d,
                                          opacities=opacities, normals=normals,
                                          features=features))
      return sum(jnp.sum(getattr(state, f) * w) for f, w in weights.items())

    pallas = lambda p: pallas_kernels.composite_tiles(p, bins, WIDTH, HEIGHT, interpret=True,
                                                      tile_size=tile_size)
    ref = lambda p: reference.composite_reference(p, WIDTH, HEIGHT)
    return jax.grad(loss, 1)(pallas, inputs), jax.grad(loss, 1)(ref, inputs)

  got, want = grads((projected.ray_transforms, projected.means2d, projected.opacities,
                     projected.normals, projected.features))
  _assert_grads_close(got, want, ("ray_transforms", "means2d", "opacities", "normals",
                                  "features"))


@pytest.mark.parametrize("tile_size", [16, 8])
def test_over_capacity_matches_tiled_and_reports_drops(tile_size, rng):
  splats = random_splats(jax.random.PRNGKey(rng.integers(2**31)), NUM_SPLATS)
  viewmat, K = camera()

  @jax.jit
  def both(splats):
    projected = project.project_splats(splats, viewmat, K, WIDTH, HEIGHT)
    bins = binning.bin_splats(projected, WIDTH, HEIGHT, capacity=100, tile_size=tile_size)
    return (bins, pallas_kernels.composite_tiles(projected, bins, WIDTH, HEIGHT, interpret=True,
                                                 tile_size=tile_size),
            tiled.composite_tiles(projected, bins, WIDTH, HEIGHT, tile_size=tile_size))

  bins, pallas, tiled_state = both(splats)
  assert int(bins.pairs_dropped) > 0
  for name in FLOAT_FIELDS:
    np.testing.assert_allclose(getattr(pallas, name), getattr(tiled_state, name), rtol=0,
                               atol=1e-5, err_msg=name)


def test_zero_opacity_scene_composites_nothing(rng):
  """(Scenes with no splats at all: test_rasterizer_reference.py, every impl.)"""
  splats = random_splats(jax.random.PRNGKey(rng.integers(2**31)), NUM_SPLATS)
  _, bins, (pallas, *_), _ = composite_both(splats.replace(opacities=jnp.zeros(NUM_SPLATS)), 16)
  assert int(bins.pairs_total) == 0
  np.testing.assert_array_equal(pallas.transmittance, 1.0)
  for name in FLOAT_FIELDS[1:]:
    np.testing.assert_array_equal(getattr(pallas, name), 0.0)
  np.testing.assert_array_equal(pallas.last_pos, splat_math.NO_POSITION)


@pytest.mark.parametrize("unroll,tile_size", [(1, 16), (4, 16), (1, 8)])
@pytest.mark.parametrize("backend,platform,kernel_call", [
    ("triton", "cuda", "__gpu$xla.gpu.triton"), ("mosaic_tpu", "tpu", "tpu_custom_call")])
def test_forward_and_backward_lower_for_accelerators(backend, platform, kernel_call, unroll,
                                                     tile_size):
  """Both kernels lower to Triton (CUDA) and Mosaic TPU IR here, without the accelerator;
  compiling them needs one (bench/pallas_smoke.py compiles and runs them on a GPU). 8x8 tiles
  are 64-lane rows: Mosaic TPU takes their blocks as full array dims (docs/pallas.md)."""
  splats = random_splats(jax.random.PRNGKey(7), NUM_SPLATS)
  viewmat, K = camera()
  projected = project.project_splats(splats, viewmat, K, WIDTH, HEIGHT)
  bins = binning.bin_splats(projected, WIDTH, HEIGHT, tile_size=tile_size)

  def loss(transforms):
    state = pallas_kernels.composite_tiles(projected.replace(ray_transforms=transforms), bins,
                                           WIDTH, HEIGHT, interpret=False, backend=backend,
                                           unroll=unroll, tile_size=tile_size)
    return jnp.sum(state.color) + jnp.sum(state.distortion)

  lowered = jax.jit(jax.grad(loss)).trace(projected.ray_transforms).lower(
      lowering_platforms=(platform,))
  assert lowered.as_text().count(kernel_call) == 2  # forward and backward kernels


def test_float64_lowers_to_triton_in_float64_and_mosaic_refuses_it():
  """Under jax_enable_x64 with float64 splats the kernels compute in float64: interpret mode
  (test_rasterizer_reference.py checks its result at 1e-9) and Triton; the Mosaic backends
  have no float64, and say so."""
  with jax.enable_x64(True):
    splats = jax.tree.map(lambda a: a.astype(jnp.float64),
                          random_splats(jax.random.PRNGKey(7), NUM_SPLATS))
    viewmat, K = (a.astype(jnp.float64) for a in camera())
    projected = project.project_splats(splats, viewmat, K, WIDTH, HEIGHT)
    bins = binning.bin_splats(projected, WIDTH, HEIGHT)

    def loss(transforms, backend):
      state = pallas_kernels.composite_tiles(projected.replace(ray_transforms=transforms), bins,
                                             WIDTH, HEIGHT, interpret=False, backend=backend)
      return jnp.sum(state.color) + jnp.sum(state.distortion)

    jaxpr = jax.make_jaxpr(jax.grad(loss), static_argnums=1)(projected.ray_transforms, "triton")
    kernels = [e for e in jaxprs.equations(jaxpr.jaxpr) if e.primitive.name == "pallas_call"]
    assert len(kernels) == 2  # forward and backward
    assert all(v.aval.dtype == jnp.float64 for e in kernels for v in e.outvars[:2])
    lowered = jax.jit(jax.grad(loss), static_argnums=1).trace(
        projected.ray_transforms, "triton").lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 2
    for backend in ("mosaic_tpu", "mosaic_gpu"):
      with pytest.raises(ValueError, match=f"pallas_kernels.py: backend '{backend}' has no "
                                           "float64"):
        loss(projected.ray_transforms, backend)


@pytest.mark.parametrize("options,message", [
    (dict(backend="cuda"), "backend 'cuda' is not one of"),
    (dict(exit_check_every=16, unroll=3), "unroll must divide exit_check_every"),
    (dict(tile_size=8), "bins have 9 tiles, a 48x40 image has 30 of 8x8"),
    (dict(tile_size=6), "tile_size must be a power of two"),
])
def test_rejects_bad_settings(options, message):
  splats = random_splats(jax.random.PRNGKey(8), NUM_SPLATS)
  viewmat, K = camera()
  projected = project.project_splats(splats, viewmat, K, WIDTH, HEIGHT)
  bins = binning.bin_splats(projected, WIDTH, HEIGHT)
  with pytest.raises(ValueError, match=f"pallas_kernels.py: {message}"):
    pallas_kernels.composite_tiles(projected, bins, WIDTH, HEIGHT, **options)
