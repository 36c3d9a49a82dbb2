"""Pure-JAX tiled compositing: each tile (16x16 by default) walks its own front-to-back pairs.

Forward: tiles run one after another (`lax.map`); inside a tile a `while_loop` composites
chunks of `chunk_size` pairs (`splat_math.composite_block` on the tile's pixels) until the
tile's list ends or every pixel has stopped (early termination). Memory is one chunk's
(tile pixels x chunk_size) terms, never pixels x splats.

Backward (custom_vjp, mirroring the Pallas kernel's): a while_loop cannot be reverse-
differentiated, and checkpointing every chunk would cost memory per chunk. Instead each tile is
walked back to front from its last composited chunk; the state before a chunk is recovered
from the state after it (`uncomposite_block`: T / (1 - alpha), sums minus contributions) and
the chunk is differentiated with `jax.vjp` of the same `composite_block`, replaying the
forward's recorded stop and median positions. Per-pair gradients are added into per-splat
gradients with a scatter-add.
"""
import functools

import jax
import jax.numpy as jnp

from rasterizer import binning
from rasterizer import splat_math
from rasterizer import types

DEFAULT_CHUNK_SIZE = 32
_FLOAT_FIELDS = ("transmittance", "color", "depth_sum", "normal_sum", "median_depth", "m1", "m2",
                 "distortion")


def composite_tiles(
    projected: types.ProjectedSplats,
    bins: types.TileBins,
    width: int,
    height: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    tile_size: int = types.TILE_SIZE,
) -> splat_math.CompositeState:
  """Per-pixel running sums, (H, W) leading, compositing each tile's binned pairs (`bins` made
  with the same tile_size)."""
  num_splats, num_channels = projected.features.shape
  if num_splats == 0:  # nothing to gather from: every pixel keeps the initial state
    return splat_math.initial_state((height, width), num_channels, projected.features.dtype)
  tiles_x, tiles_y = binning.tile_grid(width, height, tile_size)
  if bins.tile_ranges.shape[0] != tiles_x * tiles_y:
    raise ValueError(f"rasterizer/tiled.py: bins have {bins.tile_ranges.shape[0]} tiles, a "
                     f"{width}x{height} image has {tiles_x * tiles_y} of {tile_size}x{tile_size}")
  x, y, inside = _tile_pixels(tiles_x, tiles_y, width, height, tile_size)
  params = (projected.ray_transforms, projected.means2d, projected.opacities, projected.normals,
            projected.features)
  ids = jnp.concatenate([bins.splat_ids, jnp.zeros((chunk_size,), jnp.int32)])
  states = _render_tiles(chunk_size, params, bins.tile_ranges, ids, x, y, inside)

  def to_image(a):
    a = a.reshape((tiles_y, tiles_x, tile_size, tile_size) + a.shape[2:])
    a = jnp.swapaxes(a, 1, 2).reshape((tiles_y * tile_size, tiles_x * tile_size) + a.shape[4:])
    return a[:height, :width]

  return jax.tree.map(to_image, states)


def _tile_pixels(tiles_x, tiles_y, width, height, tile_size):
  """(tiles, tile_size^2) pixel centres of every tile, row-major inside the tile, and an
  in-image mask."""
  local = jnp.arange(tile_size * tile_size, dtype=jnp.int32)
  tile = jnp.arange(tiles_x * tiles_y, dtype=jnp.int32)
  px = (tile % tiles_x)[:, None] * tile_size + local % tile_size
  py = (tile // tiles_x)[:, None] * tile_size + local // tile_size
  inside = (px < width) & (py < height)
  return px.astype(jnp.float32), py.astype(jnp.float32), inside


def _chunk_block(params, ids, start, end, chunk_size):
  """The chunk of pairs at [start, start + chunk_size) of the sorted list, as a SplatBlock."""
  chunk_ids = jax.lax.dynamic_slice(ids, (start,), (chunk_size,))
  positions = start + jnp.arange(chunk_size, dtype=jnp.int32)
  gathered = [p[chunk_ids] for p in params]
  return chunk_ids, positions, positions < end, gathered


def _as_block(gathered, positions, active):
  transforms, means2d, opacities, normals, features = gathered
  return splat_math.SplatBlock(transforms=transforms, means2d=means2d, opacities=opacities,
                               normals=normals, features=features, active=active,
                               positions=positions)


def _start_state(inside, num_channels, dtype):
  state = splat_math.initial_state(inside.shape[0], num_channels, dtype)
  # Pixels outside the image are born stopped: they composite nothing and never hold a tile.
  return state.replace(stop_pos=jnp.where(inside, splat_math.NO_STOP, splat_math.NO_POSITION))


def _forward_tile(chunk_size, params, tile_range, ids, x, y, inside):
  start, end = tile_range[0], tile_range[1]
  features = params[4]

  def not_finished(carry):
    chunk_start, state = carry
    return (chunk_start < end) & jnp.any(state.stop_pos == splat_math.NO_STOP)

  def composite_chunk(carry):
    chunk_start, state = carry
    _, positions, active, gathered = _chunk_block(params, ids, chunk_start, end, chunk_size)
    state = splat_math.composite_block(state, _as_block(gathered, positions, active), x, y)
    return chunk_start + chunk_size, state

  state = _start_state(inside, features.shape[1], features.dtype)
  return jax.lax.while_loop(not_finished, composite_chunk, (start, state))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _render_tiles(chunk_size, params, tile_ranges, ids, x, y, inside):
  forward = functools.partial(_forward_tile, chunk_size, params, ids=ids)
  return jax.lax.map(lambda t: forward(tile_range=t[0], x=t[1], y=t[2], inside=t[3]),
                     (tile_ranges, x, y, inside))


def _render_tiles_fwd(chunk_size, params, tile_ranges, ids, x, y, inside):
  states = _render_tiles(chunk_size, params, tile_ranges, ids, x, y, inside)
  return states, (params, tile_ranges, ids, x, y, states)


def _backward_tile(chunk_size, params, ids, grads, tile_range, x, y, final, ct_final):
  """Adds one tile's gradients into `grads`, walking its chunks back to front."""
  start, end = tile_range[0], tile_range[1]
  last = jnp.max(final.last_pos)
  num_chunks = jnp.where(last >= start, (last - start) // chunk_size + 1, 0)
  ct_final = {name: getattr(ct_final, name) for name in _FLOAT_FIELDS}

  def chunk_gradients(step, carry):
    after, ct_after, grads = carry
    chunk_start = start + (num_chunks - 1 - step) * chunk_size
    chunk_ids, positions, active, gathered = _chunk_block(params, ids, chunk_start, end,
                                                          chunk_size)
    before = splat_math.uncomposite_block(
        after, _as_block(gathered, positions, active), x, y, decided=final)

    def composite(floats, gathered):
      state = before.replace(**floats)
      out = splat_math.composite_block(state, _as_block(gathered, positions, active), x, y,
                                       decided=final)
      return {name: getattr(out, name) for name in _FLOAT_FIELDS}

    floats_before = {name: getattr(before, name) for name in _FLOAT_FIELDS}
    _, pullback = jax.vjp(composite, floats_before, gathered)
    ct_before, ct_gathered = pullback(ct_after)
    grads = tuple(
        g.at[chunk_ids].add(jnp.where(active.reshape((-1,) + (1,) * (c.ndim - 1)), c, 0.0))
        for g, c in zip(grads, ct_gathered))
    return before, ct_before, grads

  return jax.lax.fori_loop(0, num_chunks, chunk_gradients, (final, ct_final, grads))[2]


def _render_tiles_bwd(chunk_size, residuals, ct_states):
  params, tile_ranges, ids, x, y, states = residuals

  def tile_gradients(tile, grads):
    take = lambda tree: jax.tree.map(lambda a: a[tile], tree)
    return _backward_tile(chunk_size, params, ids, grads, tile_ranges[tile], x[tile], y[tile],
                          take(states), take(ct_states))

  zeros = tuple(jnp.zeros_like(p) for p in params)
  grads = jax.lax.fori_loop(0, tile_ranges.shape[0], tile_gradients, zeros)
  return grads, None, None, None, None, None


_render_tiles.defvjp(_render_tiles_fwd, _render_tiles_bwd)
