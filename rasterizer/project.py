"""Per-splat, per-camera preprocessing: ray transforms, centres, normals, opacity-aware boxes."""
import jax
import jax.numpy as jnp

from rasterizer import quaternion
from rasterizer import types

# The box covers the region where o exp(-rho / 2) >= 1/255 with this much slack in rho and in
# pixels, so float rounding can never leave a passing (pixel, splat) outside it.
_CUTOFF_SLACK = 1e-3
_PIXEL_SLACK = 1e-2
# Full float32 in the small matmuls: GPUs otherwise run them in TF32 (10 mantissa bits, relative
# error 2^-11, i.e. 0.5 mm at 1 m and 0.1 px at 512 px).
_HIGHEST = jax.lax.Precision.HIGHEST


def project_splats(
    splats: types.Splats, viewmat: jnp.ndarray, K: jnp.ndarray, width: int, height: int
) -> types.ProjectedSplats:
  """Projects one image's splats (leading (N,)) through one camera.

  viewmat: (4, 4) world-to-camera (OpenCV axes); K: (3, 3) intrinsics (pixel centres at
  integer coordinates). The ray transform M = W H (2DGS `compute_transmat`) maps splat-plane
  coordinates (u, v, 1) to homogeneous pixels: M @ (u, v, 1); its rows are T_u, T_v, T_w.
  The centre used by the low-pass filter is the projection of the splat's centre (the official
  code uses the centre of the cut-off ellipse's box, which moves with the cut-off).
  """
  rot = viewmat[:3, :3]
  means_cam = jnp.matmul(splats.means, rot.T, precision=_HIGHEST) + viewmat[:3, 3]
  axes = quaternion.quaternion_to_matrix(splats.quats)  # (N, 3, 3) columns: t_u, t_v, normal
  axes_cam = jnp.einsum("ij,njk->nik", rot, axes, precision=_HIGHEST)
  tangent_u = axes_cam[:, :, 0] * splats.scales[:, :1]
  tangent_v = axes_cam[:, :, 1] * splats.scales[:, 1:2]
  columns = jnp.stack([tangent_u, tangent_v, means_cam], axis=-1)  # (N, 3, 3) = W H in camera
  transforms = jnp.einsum("ij,njk->nik", K, columns, precision=_HIGHEST)
  depths = means_cam[:, 2]
  means2d = transforms[:, :2, 2] / jnp.where(depths == 0, 1.0, depths)[:, None]

  normals = axes_cam[:, :, 2]
  cos = -jnp.sum(means_cam * normals, axis=-1)
  normals = jnp.where((cos < 0)[:, None], -normals, normals)

  boxes, box_ok = _opacity_aware_boxes(transforms, means2d, splats.opacities, width, height)
  visible = (
      (depths > types.NEAR_PLANE) & (cos != 0) & (splats.opacities >= types.ALPHA_MIN) & box_ok
      & jnp.all(jnp.isfinite(transforms), axis=(1, 2)))
  return types.ProjectedSplats(
      ray_transforms=transforms,
      means2d=means2d,
      depths=depths,
      normals=normals,
      opacities=splats.opacities,
      features=splats.features,
      boxes=jnp.where(visible[:, None], boxes, 0),
      visible=visible,
  )


def _conic_extent(t_axis, t_w, cutoff_sq):
  """Range along one pixel axis of the projected disc {u^2 + v^2 <= c^2}.

  The pixel line x = const is the plane k = x T_w - T_axis in (u, v, 1); it is tangent to the
  disc when k.z^2 = c^2 (k.x^2 + k.y^2), a quadratic a x^2 - 2 b x + e = 0. a > 0 exactly when
  the whole disc lies in front of the camera; otherwise the extent is unbounded.
  """
  planar = lambda p, q: p[..., 0] * q[..., 0] + p[..., 1] * q[..., 1]
  a = t_w[..., 2] ** 2 - cutoff_sq * planar(t_w, t_w)
  b = t_w[..., 2] * t_axis[..., 2] - cutoff_sq * planar(t_w, t_axis)
  e = t_axis[..., 2] ** 2 - cutoff_sq * planar(t_axis, t_axis)
  bounded = a > 0
  a_safe = jnp.where(bounded, a, 1.0)
  centre = b / a_safe
  half = jnp.sqrt(jnp.maximum(centre * centre - e / a_safe, 0.0))
  return centre - half, centre + half, bounded


def _opacity_aware_boxes(transforms, means2d, opacities, width, height):
  """Inclusive integer pixel boxes holding every pixel where alpha can reach 1/255.

  alpha >= 1/255 needs rho <= c^2 = 2 ln(255 o); rho = min(rho3d, rho2d), so the region is the
  union of the projected disc of radius c and the filter circle of radius c / sqrt(2).
  """
  cutoff_sq = 2.0 * jnp.log(jnp.maximum(opacities, types.ALPHA_MIN) / types.ALPHA_MIN)
  cutoff_sq = cutoff_sq + _CUTOFF_SLACK
  filter_radius = jnp.sqrt(cutoff_sq / types.FILTER_INV_SQUARE)
  t_u, t_v, t_w = transforms[:, 0], transforms[:, 1], transforms[:, 2]
  x_lo, x_hi, x_bounded = _conic_extent(t_u, t_w, cutoff_sq)
  y_lo, y_hi, y_bounded = _conic_extent(t_v, t_w, cutoff_sq)
  bounded = x_bounded & y_bounded
  inf = jnp.inf
  x_lo = jnp.where(bounded, jnp.minimum(x_lo, means2d[:, 0] - filter_radius), -inf)
  x_hi = jnp.where(bounded, jnp.maximum(x_hi, means2d[:, 0] + filter_radius), inf)
  y_lo = jnp.where(bounded, jnp.minimum(y_lo, means2d[:, 1] - filter_radius), -inf)
  y_hi = jnp.where(bounded, jnp.maximum(y_hi, means2d[:, 1] + filter_radius), inf)
  x0 = jnp.ceil(jnp.clip(x_lo - _PIXEL_SLACK, -1.0, width))
  x1 = jnp.floor(jnp.clip(x_hi + _PIXEL_SLACK, -1.0, width))
  y0 = jnp.ceil(jnp.clip(y_lo - _PIXEL_SLACK, -1.0, height))
  y1 = jnp.floor(jnp.clip(y_hi + _PIXEL_SLACK, -1.0, height))
  x0, y0 = jnp.maximum(x0, 0), jnp.maximum(y0, 0)
  x1, y1 = jnp.minimum(x1, width - 1), jnp.minimum(y1, height - 1)
  nonempty = (x0 <= x1) & (y0 <= y1)
  boxes = jnp.stack([x0, y0, x1, y1], axis=-1).astype(jnp.int32)
  return boxes, nonempty
