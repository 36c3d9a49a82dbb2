"""Projection and binning against NumPy: ray transforms, centres, normals, boxes, tile lists."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures import jaxprs
import rasterizer
from rasterizer import binning
from rasterizer import types
import test_rasterizer_oracle as oracle


def _project(scene, viewmat, K, width, height):
  splats = rasterizer.Splats(**{k: jnp.asarray(v) for k, v in scene.items()})
  return jax.jit(rasterizer.project_splats, static_argnums=(3, 4))(
      splats, jnp.asarray(viewmat, jnp.float32), jnp.asarray(K), width, height)


def _random_camera(rng):
  rotation = oracle.quat_to_rotmat(np.array([1.0, *rng.normal(0, 0.1, 3)]))
  return np.block([[rotation, rng.normal(0, 0.1, (3, 1))], [np.zeros((1, 3)), 1]])


def test_projection_matches_numpy(rng):
  width, height = 40, 30
  scene = oracle.random_scene(rng, 50, depth_range=(-0.5, 3.0))  # some behind the camera
  viewmat = _random_camera(rng)
  K = oracle.pinhole(width, height, 35.0)
  got = _project(scene, viewmat, K, width, height)
  transforms, means2d, depths, normals, in_front = oracle.project(
      scene["means"], scene["quats"], scene["scales"], viewmat, K)
  np.testing.assert_allclose(got.ray_transforms, transforms, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.depths, depths, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.normals, normals, atol=1e-5)
  visible = np.asarray(got.visible)
  assert not np.any(visible & ~in_front)
  np.testing.assert_allclose(np.asarray(got.means2d)[visible], means2d[visible], atol=1e-3)
  # The centre is where (u, v) = (0, 0) lands: M @ (0, 0, 1) / w.
  np.testing.assert_allclose(np.asarray(got.means2d)[visible],
                             (transforms[:, :2, 2] / transforms[:, 2:, 2])[visible], atol=1e-3)


def _passes(transform, mean2d, opacity, xs, ys):
  """alpha >= 1/255 at continuous pixel positions (xs, ys), by the official per-pixel formula
  in float64 (the near-plane test left out: boxes do not use it)."""
  tu, tv, tw = transform
  p = np.cross(xs[..., None] * tw - tu, ys[..., None] * tw - tv)
  s = p[..., :2] / p[..., 2:]
  rho = np.minimum(np.sum(s * s, -1), 2 * ((xs - mean2d[0]) ** 2 + (ys - mean2d[1]) ** 2))
  return opacity * np.exp(-0.5 * rho) >= types.ALPHA_MIN


def _region_extremes(transform, mean2d, cutoff_sq, num_angles=4096):
  """Points just inside the region where alpha passes, one per box side: the leftmost, topmost,
  rightmost and bottommost of the cut-off circle's rim mapped through the ray transform (dense
  angles) and of the filter circle's rim. Independent of project.py's tangent quadratic."""
  radius = np.sqrt(cutoff_sq) * (1 - 1e-6)  # just inside, so the points pass
  angle = np.linspace(0, 2 * np.pi, num_angles, endpoint=False)
  rim = transform @ np.stack([radius * np.cos(angle), radius * np.sin(angle), np.ones_like(angle)])
  points = np.concatenate([
      (rim[:2] / rim[2]).T,
      mean2d + radius / np.sqrt(types.FILTER_INV_SQUARE) * np.array(
          [[-1, 0], [0, -1], [1, 0], [0, 1]])])
  return points[[np.argmin(points[:, 0]), np.argmin(points[:, 1]), np.argmax(points[:, 0]),
                 np.argmax(points[:, 1])]]


def test_boxes_hold_every_passing_pixel_and_reach_no_further_than_the_region(rng):
  width, height = 48, 40
  scene = oracle.random_scene(rng, 40, opacity_range=(0.0, 1.0))
  viewmat = _random_camera(rng)
  K = oracle.pinhole(width, height, 40.0)
  projected = _project(scene, viewmat, K, width, height)
  boxes, visible = np.asarray(projected.boxes), np.asarray(projected.visible)
  transforms, means2d, _, _, _ = oracle.project(scene["means"], scene["quats"], scene["scales"],
                                                viewmat, K)
  ys, xs = np.mgrid[:height, :width].astype(np.float64)
  checked = 0
  for i in np.nonzero(visible)[0]:
    x0, y0, x1, y1 = boxes[i]
    opacity = np.float64(scene["opacities"][i])
    passing = _passes(transforms[i], means2d[i], opacity, xs, ys)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    assert not np.any(passing & ~inside), i  # contains every pixel where alpha passes
    cutoff_sq = 2 * np.log(255 * opacity)
    tw = transforms[i, 2]
    reach = lambda c2: tw[2] ** 2 - c2 * (tw[0] ** 2 + tw[1] ** 2)  # > 0: the disc is in front
    if reach(cutoff_sq) <= 0:  # its projection is unbounded: the box is the whole image
      assert (x0, y0, x1, y1) == (0, 0, width - 1, height - 1), i
    elif reach(cutoff_sq * 1.001 + 2e-3) > 0:  # clear of the box's own slack
      # Tight: each side lies within 0.05 px of a point where alpha passes (boxes hold pixel
      # centres, so a side sits on the last centre before the region's edge, or on the image
      # border). Needles (near edge-on splats, 0.01-0.1 px wide) can end between pixel
      # centres, so their boxes may reach past the last *pixel* that passes: no box built
      # from the region can be tighter there.
      left, top, right, bottom = _region_extremes(transforms[i], means2d[i], cutoff_sq)
      for point in (left, top, right, bottom):
        assert _passes(transforms[i], means2d[i], opacity, point[0], point[1]), i
      assert x0 >= left[0] - 0.05 and y0 >= top[1] - 0.05, i
      assert x1 <= right[0] + 0.05 and y1 <= bottom[1] + 0.05, i
      checked += 1
  assert checked >= 3


def test_a_needle_between_pixel_centres_keeps_its_whole_length_in_the_box():
  # The one way a box reaches past the pixels where alpha passes: a splat 0.1 degree from
  # edge-on projects to a needle 0.02 px wide. Centred between two pixel columns it
  # touches no pixel centre beyond its filter circle (radius 2.3 px), yet alpha passes along
  # its whole 13 px length, and the box holds that length.
  size, focal = 24, 40.0
  K = oracle.pinhole(size, size, focal)
  half_turn = np.radians(89.9) / 2
  scene = dict(means=np.array([[0.0, 0.0, 1.0]], np.float32),  # centre (11.5, 11.5) px
               quats=np.array([[np.cos(half_turn), 0, np.sin(half_turn), 0]], np.float32),
               scales=np.array([[0.05, 0.05]], np.float32), opacities=np.array([0.9], np.float32),
               features=np.ones((1, 3), np.float32))
  projected = _project(scene, np.eye(4), K, size, size)
  x0, y0, x1, y1 = np.asarray(projected.boxes)[0]
  transforms, means2d, _, _, _ = oracle.project(scene["means"], scene["quats"], scene["scales"],
                                                np.eye(4), K)
  ys, xs = np.mgrid[:size, :size].astype(np.float64)
  passing = _passes(transforms[0], means2d[0], 0.9, xs, ys)
  cutoff_sq = 2 * np.log(255 * 0.9)
  _, top, _, bottom = _region_extremes(transforms[0], means2d[0], cutoff_sq)
  assert y0 <= ys[passing].min() - 3 and y1 >= ys[passing].max() + 3  # the pixels stop early
  assert _passes(transforms[0], means2d[0], 0.9, top[0], top[1])  # the needle does not
  assert _passes(transforms[0], means2d[0], 0.9, bottom[0], bottom[1])
  assert abs(top[1] - y0) < 1 and abs(bottom[1] - y1) < 1 and x0 <= top[0] <= x1


def _numpy_tile_lists(projected, width, height, tile_size=types.TILE_SIZE):
  """tile -> splat ids overlapping it, front to back (stable by index on equal depth)."""
  tiles_x, tiles_y = int(np.ceil(width / tile_size)), int(np.ceil(height / tile_size))
  visible = np.asarray(projected.visible)
  order = np.argsort(np.where(visible, np.asarray(projected.depths), np.inf), kind="stable")
  boxes = np.asarray(projected.boxes) // tile_size
  lists = [[] for _ in range(tiles_x * tiles_y)]
  for i in order[visible[order]]:
    for ty in range(boxes[i, 1], boxes[i, 3] + 1):
      for tx in range(boxes[i, 0], boxes[i, 2] + 1):
        lists[ty * tiles_x + tx].append(int(i))
  return lists


@pytest.mark.parametrize("tile_size", [16, 8, 4])
def test_bins_list_each_tiles_splats_front_to_back_with_either_sort(tile_size, rng):
  width, height = 70, 50  # partial tiles at the right and bottom for every tile size
  scene = oracle.random_scene(rng, 60)
  scene["means"][:10, 2] = scene["means"][10:20, 2]  # equal depths: ties keep index order
  projected = _project(scene, np.eye(4), oracle.pinhole(width, height, 45.0), width, height)
  want = _numpy_tile_lists(projected, width, height, tile_size)
  total = sum(len(l) for l in want)
  for two_key_sort in (False, True):
    bins = jax.jit(binning.bin_splats, static_argnums=(1, 2, 3, 4, 5))(
        projected, width, height, total + 7, two_key_sort, tile_size)
    ranges, ids = np.asarray(bins.tile_ranges), np.asarray(bins.splat_ids)
    got = [list(ids[start:stop]) for start, stop in ranges]
    assert got == want, two_key_sort
    assert int(bins.pairs_total) == total and int(bins.pairs_dropped) == 0
  assert int(binning.pairs_needed(projected, tile_size)) == total
  assert binning.tile_grid(width, height, tile_size) == (-(-width // tile_size),
                                                         -(-height // tile_size))


@pytest.mark.parametrize("tile_size", [0, 12, 2.5, True])
def test_tile_size_must_be_a_power_of_two(tile_size, rng):
  projected = _project(oracle.random_scene(rng, 4), np.eye(4), oracle.pinhole(32, 32, 30.0),
                       32, 32)
  with pytest.raises(ValueError, match="binning.py: tile_size must be a power of two"):
    binning.bin_splats(projected, 32, 32, tile_size=tile_size)


def test_bins_keep_int32_keys_under_jax_enable_x64(rng):
  """x64 makes Python ints and sums int64 by default; 64-bit sorts are far slower on GPUs, so
  every integer sort operand of the binning (keys, ranks, ids) must stay int32, with either
  sort, on float64 splats; the lists stay right."""
  width, height = 70, 50
  scene = {k: v.astype(np.float64) for k, v in oracle.random_scene(rng, 60).items()}
  K = oracle.pinhole(width, height, 45.0).astype(np.float64)
  with jax.enable_x64(True):
    splats = rasterizer.Splats(**{k: jnp.asarray(v) for k, v in scene.items()})
    projected = jax.jit(rasterizer.project_splats, static_argnums=(3, 4))(
        splats, jnp.eye(4), jnp.asarray(K), width, height)
    assert projected.ray_transforms.dtype == jnp.float64
    want = _numpy_tile_lists(projected, width, height)
    for two_key_sort in (False, True):
      bin_splats = lambda p: binning.bin_splats(p, width, height, None, two_key_sort)
      sorts = [e for e in jaxprs.equations(jax.make_jaxpr(bin_splats)(projected).jaxpr)
               if e.primitive.name == "sort"]
      integer_operands = [v.aval.dtype for e in sorts for v in e.invars
                          if jnp.issubdtype(v.aval.dtype, jnp.integer)]
      assert sorts[-1].params["num_keys"] == (2 if two_key_sort else 1)  # the tile sort
      assert integer_operands and all(d == jnp.int32 for d in integer_operands), integer_operands
      bins = jax.jit(bin_splats)(projected)
      assert all(a.dtype == jnp.int32 for a in jax.tree.leaves(bins))
      ranges, ids = np.asarray(bins.tile_ranges), np.asarray(bins.splat_ids)
      assert [list(ids[start:stop]) for start, stop in ranges] == want, two_key_sort


def test_bins_switch_to_the_two_key_sort_where_int32_keys_would_overflow(rng):
  """65,536 tiles (4096^2 px) and 32,768 splats: the sentinel tile of unused slots,
  65,536 * N, passes 2^31 - 1 (the last real tile's keys reach it exactly), so bin_splats
  must choose the two-key sort; forced to one int32 key it lists wrong."""
  size, num_splats, num_visible, focal = 4096, 32768, 40, 2048.0
  tiles_x, tiles_y = binning.tile_grid(size, size)
  assert (tiles_x * tiles_y + 1) * num_splats > 2**31 - 1
  scene = oracle.random_scene(rng, num_splats, scale_range=(0.01, 0.03))
  depth = scene["means"][:num_visible, 2:]
  # The visible splats sit in the bottom-right corner (the largest tile ids); the rest are
  # behind the camera.
  scene["means"][:num_visible, :2] = rng.uniform(0.72, 0.93, (num_visible, 2)) * depth
  scene["means"][num_visible:, 2] = -1.0
  projected = _project(scene, np.eye(4), oracle.pinhole(size, size, focal), size, size)
  assert int(np.asarray(projected.visible).sum()) == num_visible
  want = _numpy_tile_lists(projected, size, size)
  bin_jit = jax.jit(binning.bin_splats, static_argnums=(1, 2, 3, 4))
  lists = lambda bins: [list(bins.splat_ids[start:stop]) for start, stop in bins.tile_ranges]
  bins = jax.tree.map(np.asarray, bin_jit(projected, size, size, None, None))
  assert lists(bins) == want
  assert int(bins.pairs_total) == sum(len(l) for l in want) and int(bins.pairs_dropped) == 0
  assert lists(jax.tree.map(np.asarray, bin_jit(projected, size, size, None, False))) != want


@pytest.mark.parametrize("tile_size", [16, 8])
def test_capacity_cut_drops_the_farthest_pairs_and_counts_them(tile_size, rng):
  width, height = 64, 48
  scene = oracle.random_scene(rng, 40, scale_range=(0.1, 0.4))
  projected = _project(scene, np.eye(4), oracle.pinhole(width, height, 50.0), width, height)
  want = _numpy_tile_lists(projected, width, height, tile_size)
  total = sum(len(l) for l in want)
  capacity = total // 2
  bins = jax.jit(binning.bin_splats, static_argnums=(1, 2, 3), static_argnames="tile_size")(
      projected, width, height, capacity, tile_size=tile_size)
  assert int(bins.pairs_total) == total
  assert int(bins.pairs_dropped) == total - capacity
  # Kept: the pairs of the nearest splats, in depth order, as many as fit.
  depths = np.asarray(projected.depths)
  order = [int(i) for i in np.argsort(depths, kind="stable") if projected.visible[i]]
  kept, budget = set(), capacity
  for i in order:
    tiles = sum(i in l for l in want)
    take = min(tiles, budget)
    budget -= take
    kept |= {(i, t) for t in [t for t, l in enumerate(want) if i in l][:take]}
  ranges, ids = np.asarray(bins.tile_ranges), np.asarray(bins.splat_ids)
  got = {(int(i), t) for t, (start, stop) in enumerate(ranges) for i in ids[start:stop]}
  assert got == kept
