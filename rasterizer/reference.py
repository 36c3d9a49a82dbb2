"""The specification: every visible splat composited on every pixel, in plain jax.numpy.

Dense over pixels x depth-sorted splats, one `splat_math.composite_block` call per chunk of
pixels; chunks run under `lax.map` with `jax.checkpoint`, so forward and backward memory stay
at one chunk's (pixels x splats) terms. The backward pass is plain autodiff.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from rasterizer import binning
from rasterizer import splat_math
from rasterizer import types

# Per-chunk budget of (pixel, splat) terms; about 15 float32 arrays of this size are live.
DEFAULT_TERMS_PER_CHUNK = 1 << 20


def sorted_splat_block(projected: types.ProjectedSplats) -> splat_math.SplatBlock:
  """All splats front to back as one block; invisible ones inactive."""
  order = binning.depth_order(projected)
  return splat_math.SplatBlock(
      transforms=projected.ray_transforms[order],
      means2d=projected.means2d[order],
      opacities=projected.opacities[order],
      normals=projected.normals[order],
      features=projected.features[order],
      active=projected.visible[order],
      positions=jnp.arange(order.shape[0], dtype=jnp.int32),
  )


def pixel_centres(width: int, height: int):
  """(H*W,) x and y of pixel centres in row-major order (centre of pixel (i, j) is (i, j))."""
  y, x = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
  return x.reshape(-1), y.reshape(-1)


def composite_reference(
    projected: types.ProjectedSplats,
    width: int,
    height: int,
    pixels_per_chunk: Optional[int] = None,
) -> splat_math.CompositeState:
  """Per-pixel running sums, (H, W) leading, of the official loop over all visible splats."""
  num_splats, num_channels = projected.features.shape
  num_pixels = width * height
  if pixels_per_chunk is None:
    pixels_per_chunk = DEFAULT_TERMS_PER_CHUNK // max(num_splats, 1)
  pixels_per_chunk = int(max(1, min(num_pixels, pixels_per_chunk)))
  num_chunks = -(-num_pixels // pixels_per_chunk)
  padded = num_chunks * pixels_per_chunk

  x, y = pixel_centres(width, height)
  x = jnp.pad(x, (0, padded - num_pixels)).reshape(num_chunks, pixels_per_chunk)
  y = jnp.pad(y, (0, padded - num_pixels)).reshape(num_chunks, pixels_per_chunk)
  block = sorted_splat_block(projected)

  @jax.checkpoint
  def render_chunk(block, xy):
    start = splat_math.initial_state(pixels_per_chunk, num_channels, projected.features.dtype)
    return splat_math.composite_block(start, block, *xy)

  chunks = jax.lax.map(lambda xy: render_chunk(block, xy), (x, y))
  return jax.tree.map(
      lambda a: a.reshape((padded,) + a.shape[2:])[:num_pixels].reshape(
          (height, width) + a.shape[2:]), chunks)
