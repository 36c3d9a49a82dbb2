"""(splat, tile) pairs in a fixed-capacity buffer, sorted by tile and then front to back."""
from typing import Optional

import jax
import jax.numpy as jnp

from rasterizer import types

_INT32_LIMIT = 2**31 - 1
# Binary searches as one unrolled computation: the default `scan` method is a loop of ~20
# steps, which on GPUs costs a kernel launch per step.
_SEARCH = "scan_unrolled"


def check_tile_size(tile_size, where: str = "rasterizer/binning.py") -> int:
  """`tile_size` as an int, if it is a power of two (the Pallas kernels' pixel rows must be, for
  Triton); else a ValueError that starts with `where`."""
  if isinstance(tile_size, bool) or int(tile_size) != tile_size or tile_size < 1 or (
      int(tile_size) & (int(tile_size) - 1)):
    raise ValueError(f"{where}: tile_size must be a power of two (1, 2, 4, 8, 16, 32, ...), got "
                     f"{tile_size!r}")
  return int(tile_size)


def tile_grid(width: int, height: int, tile_size: int = types.TILE_SIZE):
  """(tiles_x, tiles_y) of tile_size x tile_size tiles covering the image."""
  return -(-width // tile_size), -(-height // tile_size)


def default_capacity(num_splats: int, width: int, height: int,
                     tile_size: int = types.TILE_SIZE) -> int:
  """Pairs buffer size when none is given: 8 pairs per splat (at least 1024), never more than
  every splat on every tile. Splats on a head seen at 256-512 pixels touch 1-9 tiles (2.5 on
  average for the benchmark scenes, with 16x16 tiles); scenes of large splats or small tiles
  should pass a capacity (dropped pairs are reported in `pairs_dropped`)."""
  tiles_x, tiles_y = tile_grid(width, height, tile_size)
  return max(1, min(num_splats * tiles_x * tiles_y, max(1024, 8 * num_splats)))


def _tile_rects(boxes: jnp.ndarray, tile_size: int):
  """Tile rectangles (x0, y0, width, height), each (N,), of pixel boxes (N, 4)."""
  tiles = boxes // tile_size
  return tiles[:, 0], tiles[:, 1], tiles[:, 2] - tiles[:, 0] + 1, tiles[:, 3] - tiles[:, 1] + 1


def pairs_needed(projected: types.ProjectedSplats,
                 tile_size: int = types.TILE_SIZE) -> jnp.ndarray:
  """() int32: the (splat, tile) pairs the visible splats' boxes cover, i.e. the capacity a
  scene needs to drop nothing."""
  _, _, rect_w, rect_h = _tile_rects(projected.boxes, tile_size)
  return jnp.sum(jnp.where(projected.visible, rect_w * rect_h, 0)).astype(jnp.int32)


def depth_order(projected: types.ProjectedSplats) -> jnp.ndarray:
  """Splat indices front to back, invisible splats last (a stable sort, so ties keep index
  order in every path). The indices are sorted as int32 (argsort's are int64 under x64)."""
  keys = jnp.where(projected.visible, projected.depths, jnp.inf)
  indices = jnp.arange(keys.shape[0], dtype=jnp.int32)
  return jax.lax.sort((keys, indices), num_keys=1, is_stable=True)[1]


def bin_splats(
    projected: types.ProjectedSplats,
    width: int,
    height: int,
    capacity: Optional[int] = None,
    two_key_sort: Optional[bool] = None,
    tile_size: int = types.TILE_SIZE,
) -> types.TileBins:
  """Lists, for every tile_size x tile_size tile, the visible splats whose box overlaps it,
  front to back.

  Pairs are enumerated front to back (splats in depth order, each over its tile rectangle), so
  when the capacity cuts the list it drops the farthest splats' pairs, and counts them. The sort
  key is tile * N + depth rank in int32 when that cannot overflow, else (or if `two_key_sort`)
  a two-key sort on (tile, rank); both give the same bins.
  """
  num_splats = projected.depths.shape[0]
  tile_size = check_tile_size(tile_size)
  tiles_x, tiles_y = tile_grid(width, height, tile_size)
  num_tiles = tiles_x * tiles_y
  if capacity is None:
    capacity = default_capacity(num_splats, width, height, tile_size)
  if capacity < 1:
    raise ValueError(f"rasterizer/binning.py: capacity must be >= 1, got {capacity}")

  if num_splats == 0:
    zero = jnp.int32(0)
    return types.TileBins(
        tile_ranges=jnp.zeros((num_tiles, 2), jnp.int32),
        splat_ids=jnp.zeros((capacity,), jnp.int32), pairs_total=zero, pairs_dropped=zero)

  order = depth_order(projected)
  rect_x, rect_y, rect_w, rect_h = _tile_rects(projected.boxes[order], tile_size)  # front to back
  counts = jnp.where(projected.visible[order], rect_w * rect_h, 0)
  ends = jnp.cumsum(counts)
  pairs_total = ends[-1]

  slot = jnp.arange(capacity, dtype=jnp.int32)
  rank = jnp.searchsorted(ends, slot, side="right", method=_SEARCH)
  rank = jnp.minimum(rank, num_splats - 1).astype(jnp.int32)
  used = slot < pairs_total
  local = slot - (ends[rank] - counts[rank])
  tile_x = rect_x[rank] + local % rect_w[rank]
  tile_y = rect_y[rank] + local // rect_w[rank]
  tile = jnp.where(used, tile_y * tiles_x + tile_x, num_tiles)  # sentinel tile sorts last
  splat_ids = order[rank]

  if two_key_sort is None:
    two_key_sort = (num_tiles + 1) * num_splats > _INT32_LIMIT
  if not two_key_sort:
    keys = tile * num_splats + rank
    keys, splat_ids = jax.lax.sort((keys, splat_ids), num_keys=1)
    sorted_tiles = keys // num_splats
  else:
    sorted_tiles, _, splat_ids = jax.lax.sort((tile, rank, splat_ids), num_keys=2)

  tile_ids = jnp.arange(num_tiles, dtype=jnp.int32)
  starts = jnp.searchsorted(sorted_tiles, tile_ids, side="left", method=_SEARCH)
  stops = jnp.searchsorted(sorted_tiles, tile_ids, side="right", method=_SEARCH)
  return types.TileBins(
      tile_ranges=jnp.stack([starts, stops], axis=-1).astype(jnp.int32),
      splat_ids=jnp.where(jnp.arange(capacity) < jnp.minimum(pairs_total, capacity),
                          splat_ids, 0).astype(jnp.int32),
      pairs_total=pairs_total.astype(jnp.int32),
      pairs_dropped=jnp.maximum(pairs_total - capacity, 0).astype(jnp.int32),
  )
