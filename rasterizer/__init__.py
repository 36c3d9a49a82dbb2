"""Differentiable 2D Gaussian Splatting (2DGS) rasteriser in JAX: one public entry point.

`rasterize` projects splats (`project.py`), then composites them with one of three
interchangeable implementations that produce the same buffers:
- "reference": dense jnp specification (`reference.py`), plain autodiff;
- "tiled": pure-JAX production path, tile binning + per-tile compositing with early stop
  (`binning.py`, `tiled.py`);
- "pallas": Pallas kernels for the per-tile compositing, forward and backward
  (`pallas_kernels.py`, imported on first use).
"""
from typing import Optional

import jax
import jax.numpy as jnp

from rasterizer import binning
from rasterizer import reference
from rasterizer import splat_math
from rasterizer import tiled
from rasterizer.project import project_splats
from rasterizer.types import TILE_SIZE, ProjectedSplats, RasterOutput, Splats, TileBins

IMPLEMENTATIONS = ("reference", "tiled", "pallas")

__all__ = [
    "IMPLEMENTATIONS", "ProjectedSplats", "RasterOutput", "Splats", "TileBins",
    "project_splats", "bin_splats", "rasterize", "rasterize_image",
]

bin_splats = binning.bin_splats


def _composite(projected, width, height, impl, capacity, tile_size, impl_options):
  """Running sums ((H, W) leading), the pairs dropped and the pairs needed for one image."""
  if impl == "reference":  # no pairs: nothing to drop; the count is what binning would need
    state = reference.composite_reference(projected, width, height, **impl_options)
    return state, jnp.int32(0), binning.pairs_needed(projected, tile_size)
  bins = binning.bin_splats(projected, width, height, capacity, tile_size=tile_size)
  if impl == "tiled":
    state = tiled.composite_tiles(projected, bins, width, height, tile_size=tile_size,
                                  **impl_options)
  else:
    from rasterizer import pallas_kernels  # on first use: it imports the Pallas lowerings
    state = pallas_kernels.composite_tiles(projected, bins, width, height, tile_size=tile_size,
                                           **impl_options)
  return state, bins.pairs_dropped, bins.pairs_total


def rasterize_image(
    splats: Splats,
    viewmat: jnp.ndarray,
    K: jnp.ndarray,
    width: int,
    height: int,
    background: jnp.ndarray,
    *,
    impl: str = "tiled",
    capacity: Optional[int] = None,
    tile_size: int = TILE_SIZE,
    **impl_options,
) -> RasterOutput:
  """One image: splats (N, ...), viewmat (4, 4), K (3, 3), background (C,); outputs unbatched."""
  projected = project_splats(splats, viewmat, K, width, height)
  state, dropped, needed = _composite(projected, width, height, impl, capacity, tile_size,
                                      impl_options)
  culled = jnp.sum(~projected.visible).astype(jnp.int32)
  return RasterOutput(
      **splat_math.pixel_outputs(state, background), splats_culled=culled, pairs_dropped=dropped,
      pairs_needed=needed)


def rasterize(
    splats: Splats,
    viewmats: jnp.ndarray,
    Ks: jnp.ndarray,
    width: int,
    height: int,
    background: jnp.ndarray,
    *,
    impl: str = "tiled",
    capacity: Optional[int] = None,
    tile_size: int = TILE_SIZE,
    **impl_options,
) -> RasterOutput:
  """Renders B images of 2D Gaussian splats; differentiable w.r.t. splats, viewmats, background.

  splats: one scene shared by all cameras (leading (N,)) or one per image (leading (B, N)).
  viewmats: (B, 4, 4) world-to-camera, OpenCV axes; Ks: (B, 3, 3) intrinsics with pixel (i, j)
  centred at (i, j). background: (B, C) or (C,). impl: "tiled" (default), "reference" or
  "pallas". capacity: (splat, tile) pair buffer per image for the tiled paths (default
  `binning.default_capacity`); pairs beyond it are dropped and counted in `pairs_dropped`.
  tile_size: side of the tiled paths' square tiles, a power of two (default 16, the official
  rasteriser's); every splat-tile pair composites a whole tile, so scenes of sub-pixel splats
  render faster on smaller tiles, which need more pairs (capacity). It does not change the image.
  impl_options go to the implementation (e.g. pixels_per_chunk for "reference",
  chunk_size for "tiled", interpret for "pallas").
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"rasterizer.rasterize: impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
  viewmats, Ks = jnp.asarray(viewmats), jnp.asarray(Ks)
  if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
    raise ValueError(f"rasterizer.rasterize: viewmats must be (B, 4, 4), got {viewmats.shape}")
  batch = viewmats.shape[0]
  if Ks.shape != (batch, 3, 3):
    raise ValueError(f"rasterizer.rasterize: Ks must be ({batch}, 3, 3), got {Ks.shape}")
  if splats.means.ndim not in (2, 3) or splats.means.shape[-1] != 3:
    raise ValueError(
        f"rasterizer.rasterize: splats.means must be (N, 3) or (B, N, 3), got {splats.means.shape}")
  shared = splats.means.ndim == 2
  lead = splats.means.shape[:-1]
  expected = dict(quats=lead + (4,), scales=lead + (2,), opacities=lead)
  for name, shape in expected.items():
    if getattr(splats, name).shape != shape:
      raise ValueError(f"rasterizer.rasterize: splats.{name} must be {shape}, got "
                       f"{getattr(splats, name).shape}")
  if splats.features.ndim != len(lead) + 1 or splats.features.shape[:-1] != lead:
    raise ValueError(f"rasterizer.rasterize: splats.features must be {lead + ('C',)}, got "
                     f"{splats.features.shape}")
  if not shared and lead[0] != batch:
    raise ValueError(f"rasterizer.rasterize: {lead[0]} splat sets for {batch} cameras")
  num_channels = splats.features.shape[-1]
  background = jnp.asarray(background, splats.features.dtype)
  if background.shape == (num_channels,):
    background = jnp.broadcast_to(background, (batch, num_channels))
  if background.shape != (batch, num_channels):
    raise ValueError(f"rasterizer.rasterize: background must be ({num_channels},) or "
                     f"({batch}, {num_channels}), got {background.shape}")
  if width < 1 or height < 1:
    raise ValueError(f"rasterizer.rasterize: image size must be positive, got {width}x{height}")
  tile_size = binning.check_tile_size(tile_size, "rasterizer.rasterize")

  def one_image(splats_i, viewmat, K, bg):
    return rasterize_image(splats_i, viewmat, K, width, height, bg, impl=impl,
                           capacity=capacity, tile_size=tile_size, **impl_options)

  splat_axis = None if shared else 0
  return jax.vmap(one_image, in_axes=(splat_axis, 0, 0, 0))(splats, viewmats, Ks, background)
