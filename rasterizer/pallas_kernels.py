"""Pallas kernels for per-tile 2DGS compositing, forward and backward, joined with custom_vjp.

One program per tile (16x16 by default, `tile_size`), its pixels vectorised as lanes. The
forward walks the tile's (splat, tile) pairs front to back and stops once every pixel is done (a
data-dependent while loop); besides the running sums (final transmittance and the distortion
moments among them, which the backward reads) it writes the positions of each pixel's last
composited, median and stopping pair. The backward walks each tile back to front, recovers
transmittance as T / (1 - alpha), writes one gradient row per pair and reduces the rows to splats
with a segment sum, so no atomics are needed. The per-splat-per-pixel math is `splat_math`'s,
shared with the reference and the tiled path; its gradient inside the backward kernel is
`jax.vjp` of it.

Lowerings (see docs/pallas.md): interpret mode on CPU; on GPU the Triton lowering by default
(dynamic while loops and dynamically indexed loads lower there), Mosaic GPU selectable but
failing; Mosaic TPU lowers. Every kernel-side array op is one the Triton lowering accepts:
scalar loads, row loads and stores of power-of-two length, elementwise math, reductions;
no value slicing or stacking.
"""
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rasterizer import binning
from rasterizer import splat_math
from rasterizer import types

BACKENDS = ("triton", "mosaic_gpu", "mosaic_tpu")
BACKEND_ENV = "RASTERIZER_PALLAS_BACKEND"
DEFAULT_EXIT_CHECK_EVERY = 16
DEFAULT_UNROLL = 1

# Columns of the pair-major geometry rows (16 = a power of two, as Triton loads want).
GEOM_RAY = 0  # 9 values: rows T_u, T_v, T_w of the ray transform
GEOM_MEAN = 9  # 2 values
GEOM_OPACITY = 11
GEOM_NORMAL = 12  # 3 values, then one unused column
GEOM_WIDTH = 16

# Rows of the per-pixel float buffer (num_tiles, PIXEL_ROWS, pixels): the running sums.
ROW_TRANSMITTANCE, ROW_DEPTH_SUM, ROW_NORMAL, ROW_DISTORTION = 0, 1, 2, 5
ROW_MEDIAN_DEPTH, ROW_M1, ROW_M2 = 6, 7, 8  # M1 = sum w m, M2 = sum w m^2 (distortion moments)
PIXEL_ROWS = 9
# Rows of the per-pixel int32 buffer (num_tiles, 3, pixels): pair positions in the sorted list.
ROW_LAST, ROW_MEDIAN, ROW_STOP = 0, 1, 2  # last composited, median, the one that stopped it
INDEX_ROWS = 3


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Static settings of one compositing call (hashable: it is a custom_vjp nondiff arg)."""

  width: int
  height: int
  interpret: bool
  backend: str
  exit_check_every: int  # pairs composited between two all-pixels-done tests
  unroll: int  # forward pairs per inner-loop step, as straight-line code
  tile_size: int = types.TILE_SIZE  # a power of two: a tile's pixels are one row of lanes

  @property
  def pixels(self):
    return self.tile_size * self.tile_size

  @property
  def tiles_x(self):
    return pl.cdiv(self.width, self.tile_size)

  @property
  def num_tiles(self):
    return self.tiles_x * pl.cdiv(self.height, self.tile_size)


def default_backend() -> str:
  """$RASTERIZER_PALLAS_BACKEND, else Mosaic TPU on TPUs and Triton elsewhere (on GPUs its
  lowering takes the kernels' dynamic loops and dynamically indexed loads; Mosaic GPU's not)."""
  backend = os.environ.get(BACKEND_ENV,
                           "mosaic_tpu" if jax.default_backend() == "tpu" else "triton")
  if backend not in BACKENDS:
    raise ValueError(f"rasterizer/pallas_kernels.py: ${BACKEND_ENV}={backend!r} is not one of "
                     f"{BACKENDS}")
  return backend


def _compiler_params(config: KernelConfig):
  if config.interpret:
    return None
  if config.backend == "triton":
    from jax.experimental.pallas import triton as pltriton  # pylint: disable=g-import-not-at-top
    return pltriton.CompilerParams(num_warps=4, num_stages=1)
  if config.backend == "mosaic_tpu":
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
    return pltpu.CompilerParams()
  from jax.experimental.pallas import mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  return plgpu.CompilerParams()


def _tile_pixels(config: KernelConfig, dtype):
  """Pixel-centre coordinates (pixels,) of this program's tile and which lie inside the image.

  int32 throughout, also under jax_enable_x64 (where a Python int given to lax would be int64).
  """
  tile = pl.program_id(0)
  lane = jax.lax.broadcasted_iota(jnp.int32, (config.pixels,), 0)
  tiles_x, tile_size = jnp.int32(config.tiles_x), jnp.int32(config.tile_size)
  x = jax.lax.rem(tile, tiles_x) * tile_size + jax.lax.rem(lane, tile_size)
  y = jax.lax.div(tile, tiles_x) * tile_size + jax.lax.div(lane, tile_size)
  inside = (x < config.width) & (y < config.height)
  return x.astype(dtype), y.astype(dtype), inside


def _load_geometry(geom_ref, i):
  """Scalar loads of pair i's ray transform (9), centre (2), opacity and normal (3)."""
  ray = tuple(geom_ref[i, GEOM_RAY + k] for k in range(9))
  mean = (geom_ref[i, GEOM_MEAN], geom_ref[i, GEOM_MEAN + 1])
  normal = tuple(geom_ref[i, GEOM_NORMAL + k] for k in range(3))
  return ray, mean, geom_ref[i, GEOM_OPACITY], normal


def _alpha_depth(ray, mean, opacity, x, y):
  """The shared per-splat math on one pair's scalars and a tile's pixel vectors."""
  return splat_math.splat_alpha_depth(ray[0:3], ray[3:6], ray[6:9], mean[0], mean[1], opacity,
                                      x, y)


def _forward_kernel(ranges_ref, geom_ref, feat_ref, color_ref, pixel_ref, index_ref, *, config):
  dtype = geom_ref.dtype
  x, y, inside = _tile_pixels(config, dtype)
  tile = pl.program_id(0)
  start, end = ranges_ref[tile, 0], ranges_ref[tile, 1]
  pixels = config.pixels
  zeros = jnp.zeros((pixels,), dtype)
  channels = color_ref.shape[0]

  def cond(carry):
    i, active = carry[0], carry[1]
    return (i < end) & (jnp.max(active.astype(jnp.int32)) > 0)

  def composite_pair(carry):
    (i, active, trans, color, depth_sum, nx, ny, nz, dist, m1, m2, median, last, median_index,
     stop_index) = carry
    ray, mean, opacity, normal = _load_geometry(geom_ref, jnp.minimum(i, end - 1))
    alpha, z, valid = _alpha_depth(ray, mean, opacity, x, y)
    test_trans = trans * (1.0 - alpha)
    hit = active & valid & (i < end)
    stop = hit & (test_trans < types.TRANSMITTANCE_MIN)
    take = hit & jnp.logical_not(stop)
    w = jnp.where(take, alpha * trans, 0.0)
    m = splat_math.normalized_depth(jnp.where(take, z, 1.0))
    dist = dist + (m * m * (1.0 - trans) + m2 - 2.0 * m * m1) * w
    m1 = m1 + w * m
    m2 = m2 + w * m * m
    color = color + feat_ref[jnp.minimum(i, end - 1), :][:, None] * w[None, :]
    depth_sum = depth_sum + w * z
    nx, ny, nz = nx + w * normal[0], ny + w * normal[1], nz + w * normal[2]
    is_median = take & (trans > types.MEDIAN_TRANSMITTANCE)
    median = jnp.where(is_median, z, median)
    median_index = jnp.where(is_median, i, median_index)
    last = jnp.where(take, i, last)
    stop_index = jnp.where(stop, i, stop_index)
    trans = jnp.where(take, test_trans, trans)
    active = active & jnp.logical_not(stop)
    return (i + 1, active, trans, color, depth_sum, nx, ny, nz, dist, m1, m2, median, last,
            median_index, stop_index)

  no_position = jnp.full((pixels,), splat_math.NO_POSITION, jnp.int32)
  # Pixels outside the image are born stopped, as in the tiled path.
  not_stopped = jnp.where(inside, splat_math.NO_STOP, splat_math.NO_POSITION)
  init = (start, inside, zeros + 1.0, jnp.zeros((channels, pixels), dtype), zeros, zeros,
          zeros, zeros, zeros, zeros, zeros, zeros, no_position, no_position, not_stopped)

  def composite_pairs(step, carry):
    # `unroll` copies in straight-line code, so that a GPU compiler can start the next pairs'
    # loads while this pair's math runs (the Triton lowering cannot unroll a loop itself).
    del step
    for _ in range(config.unroll):
      carry = composite_pair(carry)
    return carry

  # The all-pixels-done test is a reduction over the tile: run it every few pairs only.
  body = lambda carry: jax.lax.fori_loop(0, config.exit_check_every // config.unroll,
                                         composite_pairs, carry)
  (_, _, trans, color, depth_sum, nx, ny, nz, dist, m1, m2, median, last, median_index,
   stop_index) = jax.lax.while_loop(cond, body, init)
  color_ref[...] = color
  for row, value in ((ROW_TRANSMITTANCE, trans), (ROW_DEPTH_SUM, depth_sum), (ROW_NORMAL, nx),
                     (ROW_NORMAL + 1, ny), (ROW_NORMAL + 2, nz), (ROW_DISTORTION, dist),
                     (ROW_MEDIAN_DEPTH, median), (ROW_M1, m1), (ROW_M2, m2)):
    pixel_ref[row, :] = value
  index_ref[ROW_LAST, :] = last
  index_ref[ROW_MEDIAN, :] = median_index
  index_ref[ROW_STOP, :] = stop_index


def _sum_rows(lane_values, rows):
  """(pixels,) vectors -> the (rows,) vector of their lane sums, zero-padded, from one 2D
  reduction: one block-wide reduction per pair instead of one per value (each costs the GPU a
  synchronisation), and a vector store, which suits every lowering (Mosaic TPU cannot store
  scalars to vector memory, Triton cannot stack). The block is built by row selects."""
  pixels = lane_values[0].shape[0]
  row = jax.lax.broadcasted_iota(jnp.int32, (rows, pixels), 0)
  block = jnp.zeros((rows, pixels), lane_values[0].dtype)
  for k, values in enumerate(lane_values):
    block = jnp.where(row == k, values[None, :], block)
  return jnp.sum(block, axis=1)


def _backward_kernel(ranges_ref, geom_ref, feat_ref, pixel_ref, index_ref, dcolor_ref, dpixel_ref,
                     grad_ref, dfeat_ref, *, config):
  dtype = geom_ref.dtype
  x, y, _ = _tile_pixels(config, dtype)
  tile = pl.program_id(0)
  start, end = ranges_ref[tile, 0], ranges_ref[tile, 1]
  last_index = index_ref[ROW_LAST, :]
  median_index = index_ref[ROW_MEDIAN, :]
  final_trans = pixel_ref[ROW_TRANSMITTANCE, :]
  weight_total = 1.0 - final_trans
  m1_total, m2_total = pixel_ref[ROW_M1, :], pixel_ref[ROW_M2, :]
  dcolor = dcolor_ref[...]
  dtrans = dpixel_ref[ROW_TRANSMITTANCE, :]
  ddepth = dpixel_ref[ROW_DEPTH_SUM, :]
  dnormal = tuple(dpixel_ref[ROW_NORMAL + k, :] for k in range(3))
  ddist = dpixel_ref[ROW_DISTORTION, :]
  dmedian = dpixel_ref[ROW_MEDIAN_DEPTH, :]
  dm1, dm2 = dpixel_ref[ROW_M1, :], dpixel_ref[ROW_M2, :]
  last = jnp.maximum(jnp.max(last_index) + 1, start)

  def write_zeros(i, carry):
    grad_ref[i, :] = jnp.zeros((GEOM_WIDTH,), dtype)
    dfeat_ref[i, :] = jnp.zeros(dfeat_ref.shape[1:], dtype)
    return carry

  jax.lax.fori_loop(last, end, write_zeros, 0)

  def body(carry):
    i, trans, behind = carry
    ray, mean, opacity, normal = _load_geometry(geom_ref, i)

    def alpha_depth(r, c, o):
      alpha, z, valid = _alpha_depth(r, c, o, x, y)
      return (alpha, z), valid

    # Pair scalars as per-lane copies, so the vjp gives per-pixel cotangents, summed below in
    # one reduction together with the normal's.
    lanes = lambda values: tuple(jnp.full((config.pixels,), v, dtype) for v in values)
    (alpha, z), alpha_depth_vjp, valid = jax.vjp(
        alpha_depth, lanes(ray), lanes(mean), jnp.full((config.pixels,), opacity, dtype),
        has_aux=True)
    take = valid & (i <= last_index)
    one_minus_alpha = jnp.where(take, 1.0 - alpha, 1.0)
    trans = jnp.where(take, trans / one_minus_alpha, trans)
    w = jnp.where(take, alpha * trans, 0.0)
    z_safe = jnp.where(take, z, 1.0)
    m, m_vjp = jax.vjp(splat_math.normalized_depth, z_safe)
    feature = feat_ref[i, :]
    # Per-pixel cotangent of this pair's weight: the sums are linear in the weights w_j;
    # distortion = 1/2 sum_jk w_j w_k (m_j - m_k)^2 has d/dw_j = m_j^2 W - 2 m_j M1 + M2.
    weight_cotangent = (jnp.sum(dcolor * feature[:, None], axis=0) + ddepth * z_safe
                        + dnormal[0] * normal[0] + dnormal[1] * normal[1]
                        + dnormal[2] * normal[2] + dm1 * m + dm2 * m * m
                        + ddist * (m * m * weight_total - 2.0 * m * m1_total + m2_total))
    # w_j = alpha_j T_j and T_k (k > j) carry a factor (1 - alpha_j): `behind` sums the
    # cotangent-weighted contributions of everything behind, final transmittance included.
    dalpha = jnp.where(take, trans * weight_cotangent - behind / one_minus_alpha, 0.0)
    dm = w * (ddist * 2.0 * (m * weight_total - m1_total) + dm1 + 2.0 * dm2 * m)
    (dz_from_m,) = m_vjp(jnp.where(take, dm, 0.0))
    dz = jnp.where(take, w * ddepth + dz_from_m, 0.0)
    dz = dz + jnp.where(median_index == i, dmedian, 0.0)
    behind = behind + w * weight_cotangent
    dray, dmean, dopacity = alpha_depth_vjp((dalpha, dz))
    dnormal_pair = tuple(w * dnormal[k] for k in range(3))
    grad_ref[i, :] = _sum_rows((*dray, *dmean, dopacity, *dnormal_pair), GEOM_WIDTH)
    dfeat_ref[i, :] = jnp.sum(dcolor * w[None, :], axis=1)
    return i - 1, trans, behind

  jax.lax.while_loop(lambda carry: carry[0] >= start, body,
                     (last - 1, final_trans, dtrans * final_trans))


def _whole(shape):
  return pl.BlockSpec(shape, lambda t: (0,) * len(shape))


def _per_tile(rows, config):
  # The last two block dims are the array's own (rows, pixels), as Mosaic TPU allows for any
  # tile size (it otherwise wants multiples of (8, 128)).
  return pl.BlockSpec((None, rows, config.pixels), lambda t: (t, 0, 0))


def _forward_call(config, ranges, geom, features):
  channels = features.shape[1]
  nt = config.num_tiles
  return pl.pallas_call(
      functools.partial(_forward_kernel, config=config),
      grid=(nt,),
      in_specs=[_whole(ranges.shape), _whole(geom.shape), _whole(features.shape)],
      out_specs=[_per_tile(channels, config), _per_tile(PIXEL_ROWS, config),
                 _per_tile(INDEX_ROWS, config)],
      out_shape=[jax.ShapeDtypeStruct((nt, channels, config.pixels), geom.dtype),
                 jax.ShapeDtypeStruct((nt, PIXEL_ROWS, config.pixels), geom.dtype),
                 jax.ShapeDtypeStruct((nt, INDEX_ROWS, config.pixels), jnp.int32)],
      interpret=config.interpret,
      compiler_params=_compiler_params(config),
      name="rasterize_2dgs_forward",
  )(ranges, geom, features)


def _backward_call(config, ranges, geom, features, pixel, index, dcolor, dpixel):
  capacity, channels = features.shape
  return pl.pallas_call(
      functools.partial(_backward_kernel, config=config),
      grid=(config.num_tiles,),
      in_specs=[_whole(ranges.shape), _whole(geom.shape), _whole(features.shape),
                _per_tile(PIXEL_ROWS, config), _per_tile(INDEX_ROWS, config),
                _per_tile(channels, config), _per_tile(PIXEL_ROWS, config)],
      out_specs=[_whole((capacity, GEOM_WIDTH)), _whole((capacity, channels))],
      out_shape=[jax.ShapeDtypeStruct((capacity, GEOM_WIDTH), geom.dtype),
                 jax.ShapeDtypeStruct((capacity, channels), geom.dtype)],
      interpret=config.interpret,
      compiler_params=_compiler_params(config),
      name="rasterize_2dgs_backward",
  )(ranges, geom, features, pixel, index, dcolor, dpixel)


def _tiles_to_image(tiles, config):
  """(num_tiles, K, pixels) tile-major rows -> (H, W, K) image."""
  tiles_y, size = config.num_tiles // config.tiles_x, config.tile_size
  k = tiles.shape[1]
  image = tiles.reshape(tiles_y, config.tiles_x, k, size, size).transpose(0, 3, 1, 4, 2)
  return image.reshape(tiles_y * size, config.tiles_x * size, k)[:config.height, :config.width]


def _pair_rows(projected: types.ProjectedSplats, dtype):
  """Per-splat geometry rows (N, 16) and features padded to a power-of-two width, in dtype."""
  n = projected.means2d.shape[0]
  geom = jnp.concatenate([
      projected.ray_transforms.reshape(n, 9), projected.means2d, projected.opacities[:, None],
      projected.normals, jnp.zeros((n, 1), dtype)], axis=1)
  channels = projected.features.shape[1]
  features = jnp.pad(projected.features, ((0, 0), (0, pl.next_power_of_2(channels) - channels)))
  return geom.astype(dtype), features.astype(dtype)


def _kernel_dtype(projected: types.ProjectedSplats):
  """The float type the kernels compute in: the projected splats' common type (float64 only
  where the inputs are float64, which needs jax_enable_x64)."""
  return jnp.result_type(projected.ray_transforms, projected.means2d, projected.opacities,
                         projected.normals, projected.features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _composite(config, geom, features, tile_ranges, splat_ids):
  """Tile-major (colour sums, float rows, int rows) of splat rows `geom` and `features`."""
  outputs, _ = _composite_fwd(config, geom, features, tile_ranges, splat_ids)
  return outputs


def _composite_fwd(config, geom, features, tile_ranges, splat_ids):
  pair_geom = jnp.take(geom, splat_ids, axis=0, mode="clip")
  pair_features = jnp.take(features, splat_ids, axis=0, mode="clip")
  color, pixel, index = _forward_call(config, tile_ranges, pair_geom, pair_features)
  residuals = (geom, tile_ranges, splat_ids, pair_geom, pair_features, pixel, index)
  return (color, pixel, index), residuals


def _composite_bwd(config, residuals, cotangents):
  geom, tile_ranges, splat_ids, pair_geom, pair_features, pixel, index = residuals
  dcolor, dpixel, _ = cotangents
  pair_dgeom, pair_dfeatures = _backward_call(config, tile_ranges, pair_geom, pair_features,
                                              pixel, index, dcolor, dpixel)
  # Slots past the last tile's range hold no pair (and unwritten rows): send them nowhere.
  num_splats = geom.shape[0]
  used = jnp.arange(splat_ids.shape[0]) < jnp.max(tile_ranges[:, 1])
  segment = jnp.where(used, splat_ids, num_splats)
  dgeom = jax.ops.segment_sum(pair_dgeom, segment, num_segments=num_splats)
  dfeatures = jax.ops.segment_sum(pair_dfeatures, segment, num_segments=num_splats)
  return dgeom, dfeatures, None, None


_composite.defvjp(_composite_fwd, _composite_bwd)


def composite_tiles(projected: types.ProjectedSplats, bins: types.TileBins, width: int,
                    height: int, *, interpret=None, backend=None,
                    exit_check_every=DEFAULT_EXIT_CHECK_EVERY, unroll=DEFAULT_UNROLL,
                    tile_size=types.TILE_SIZE) -> splat_math.CompositeState:
  """Per-pixel running sums, (H, W) leading, of one image's binned splats; differentiable.

  Same contract as `tiled.composite_tiles` (`bins` made with the same `tile_size`, a power of
  two: one program per tile, its tile_size^2 pixels as lanes). Gradients reach ray_transforms,
  means2d, opacities, normals and features (depths and boxes only order and bin). `interpret`
  defaults to True on CPU; `backend` picks the lowering ("triton", "mosaic_gpu" or
  "mosaic_tpu", default `default_backend()`). The forward tests whether a whole tile is done
  every `exit_check_every` pairs (a tile-wide reduction; 1 tests after every pair), compositing
  `unroll` pairs (a divisor of `exit_check_every`) per step of its inner loop. The kernels
  compute in the inputs' float type: float64 inputs (under jax_enable_x64) run in float64 in
  interpret mode and on Triton, and are refused by the Mosaic backends (no float64 there).
  """
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  backend = default_backend() if backend is None else backend
  if backend not in BACKENDS:
    raise ValueError(f"rasterizer/pallas_kernels.py: backend {backend!r} is not one of "
                     f"{BACKENDS}")
  if exit_check_every < 1:
    raise ValueError(f"rasterizer/pallas_kernels.py: exit_check_every must be >= 1, got "
                     f"{exit_check_every}")
  if unroll < 1 or exit_check_every % unroll:
    raise ValueError(f"rasterizer/pallas_kernels.py: unroll must divide exit_check_every "
                     f"({exit_check_every}), got {unroll}")
  dtype = _kernel_dtype(projected)
  if dtype == jnp.float64 and not interpret and backend != "triton":
    raise ValueError(f"rasterizer/pallas_kernels.py: backend {backend!r} has no float64; "
                     f"pass float32 splats and cameras, or use interpret mode or 'triton'")
  config = KernelConfig(width=width, height=height, interpret=bool(interpret), backend=backend,
                        exit_check_every=int(exit_check_every), unroll=int(unroll),
                        tile_size=binning.check_tile_size(tile_size,
                                                          "rasterizer/pallas_kernels.py"))
  if bins.tile_ranges.shape[0] != config.num_tiles:
    raise ValueError(f"rasterizer/pallas_kernels.py: bins have {bins.tile_ranges.shape[0]} "
                     f"tiles, a {width}x{height} image has {config.num_tiles} of "
                     f"{tile_size}x{tile_size}")
  num_splats, num_channels = projected.features.shape
  if num_splats == 0:  # nothing to gather from: every pixel keeps the initial state
    return splat_math.initial_state((height, width), num_channels, projected.features.dtype)
  geom, features = _pair_rows(projected, dtype)
  color, pixel, index = _composite(config, geom, features, bins.tile_ranges.astype(jnp.int32),
                                   bins.splat_ids.astype(jnp.int32))
  color = _tiles_to_image(color, config)[..., :num_channels]
  pixel = _tiles_to_image(pixel, config)
  index = _tiles_to_image(index, config)
  return splat_math.CompositeState(
      transmittance=pixel[..., ROW_TRANSMITTANCE],
      color=color,
      depth_sum=pixel[..., ROW_DEPTH_SUM],
      normal_sum=pixel[..., ROW_NORMAL:ROW_NORMAL + 3],
      median_depth=pixel[..., ROW_MEDIAN_DEPTH],
      m1=pixel[..., ROW_M1],
      m2=pixel[..., ROW_M2],
      distortion=pixel[..., ROW_DISTORTION],
      stop_pos=index[..., ROW_STOP],
      median_pos=index[..., ROW_MEDIAN],
      last_pos=index[..., ROW_LAST])
