"""Data passed between the rasterizer's stages: splats -> projected splats -> tile bins -> image.

Conventions (stated once, used by every stage and by `sheap_jax.geometry.camera`):
- Camera: OpenCV axes (x right, y down, z forward). `viewmat` is the 4x4 world-to-camera
  transform, `K` the 3x3 pinhole intrinsics.
- Pixel centres: pixel (column i, row j) has its centre at continuous coordinates (i, j), as in
  the official 2DGS rasteriser and OpenCV; the image covers [-0.5, W - 0.5] x [-0.5, H - 0.5].
- Quaternions are (w, x, y, z); splat tangent axes are the first two columns of their matrix.
"""
from flax import struct
import jax.numpy as jnp

# Constants of the official 2DGS CUDA rasteriser (DESIGN.md 4.3).
NEAR_PLANE = 0.2
FAR_PLANE = 100.0
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
TRANSMITTANCE_MIN = 1e-4
FILTER_INV_SQUARE = 2.0  # low-pass fallback rho2d = 2 |c - x|^2 (sigma = sqrt(2)/2)
MEDIAN_TRANSMITTANCE = 0.5
TILE_SIZE = 16


@struct.dataclass
class Splats:
  """2D Gaussian discs in world space for one image (leading (N,)) or a batch ((B, N))."""

  means: jnp.ndarray  # (..., N, 3)
  quats: jnp.ndarray  # (..., N, 4) (w, x, y, z), normalised inside
  scales: jnp.ndarray  # (..., N, 2) standard deviations along the two tangent axes
  opacities: jnp.ndarray  # (..., N) in [0, 1]
  features: jnp.ndarray  # (..., N, C) colour or any per-splat features


@struct.dataclass
class ProjectedSplats:
  """Per-splat, per-camera quantities the compositing stage reads (one image)."""

  ray_transforms: jnp.ndarray  # (N, 3, 3) M = W H, rows T_u, T_v, T_w: M @ (u, v, 1) = (xw, yw, w)
  means2d: jnp.ndarray  # (N, 2) projected centre in pixels
  depths: jnp.ndarray  # (N,) camera-space z of the centre (sort key)
  normals: jnp.ndarray  # (N, 3) camera-space unit normal, flipped to face the camera
  opacities: jnp.ndarray  # (N,)
  features: jnp.ndarray  # (N, C)
  boxes: jnp.ndarray  # (N, 4) int32 inclusive pixel bounds (x0, y0, x1, y1), opacity-aware
  visible: jnp.ndarray  # (N,) bool: in front of the near plane, non-empty box, alpha can pass


@struct.dataclass
class TileBins:
  """(splat, tile) pairs sorted by tile, then front to back, in a fixed-capacity buffer."""

  tile_ranges: jnp.ndarray  # (num_tiles, 2) int32 [start, end) into splat_ids
  splat_ids: jnp.ndarray  # (capacity,) int32 splat index of each pair; unused slots at the end
  pairs_total: jnp.ndarray  # () int32 pairs requested before the capacity cut
  pairs_dropped: jnp.ndarray  # () int32 pairs that did not fit


@struct.dataclass
class RasterOutput:
  """Rendered buffers (batch first) and diagnostics."""

  color: jnp.ndarray  # (B, H, W, C) composited features + transmittance * background
  alpha: jnp.ndarray  # (B, H, W) 1 - final transmittance
  depth: jnp.ndarray  # (B, H, W) expected depth: sum(w z) / alpha (0 where alpha is 0)
  median_depth: jnp.ndarray  # (B, H, W) depth where transmittance crosses 0.5 (0 if never)
  normals: jnp.ndarray  # (B, H, W, 3) sum(w n), camera space
  distortion: jnp.ndarray  # (B, H, W) sum_ij w_i w_j (m_i - m_j)^2 in normalised depth m
  splats_culled: jnp.ndarray  # (B,) int32 splats that cannot touch any pixel
  pairs_dropped: jnp.ndarray  # (B,) int32 (splat, tile) pairs lost to capacity (0 for reference)
  pairs_needed: jnp.ndarray  # (B,) int32 pairs the scene asks for (the capacity dropping none)
