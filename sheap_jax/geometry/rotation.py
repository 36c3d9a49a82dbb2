"""The project's one rotation module: axis-angle, rotation matrices and quaternions (w, x, y, z).

FLAME takes axis-angle; Gaussians use quaternions. Every conversion here is smooth and has
finite gradients everywhere, including the zero rotation (where the axis is undefined) and
half-turns (where the trace-based formulas break down).
"""
import jax.numpy as jnp

from rasterizer.quaternion import normalize_quaternion, quaternion_to_matrix

__all__ = [
    "axis_angle_to_matrix",
    "axis_angle_to_quaternion",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "normalize_quaternion",
    "quaternion_to_axis_angle",
    "quaternion_to_matrix",
    "skew",
]

# Below this squared angle the closed forms are replaced by their Taylor series, which are exact
# to float32 rounding there; the closed forms divide by the angle, the series do not.
_SMALL_ANGLE_SQ = 1e-6


def skew(v: jnp.ndarray) -> jnp.ndarray:
  """(..., 3) vectors to (..., 3, 3) cross-product matrices: skew(a) @ b == cross(a, b)."""
  x, y, z = jnp.moveaxis(v, -1, 0)
  zero = jnp.zeros_like(x)
  rows = [[zero, -z, y], [z, zero, -x], [-y, x, zero]]
  return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def _half_angle_terms(axis_angle: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """sin(t/2) / (t/2) and cos(t/2) for t = |axis_angle|, finite with finite gradients at 0."""
  theta_sq = jnp.sum(axis_angle * axis_angle, axis=-1)
  small = theta_sq < _SMALL_ANGLE_SQ
  half = 0.5 * jnp.sqrt(jnp.where(small, 1.0, theta_sq))  # both jnp.where branches stay finite
  sinc_half = jnp.where(small, 1.0 - theta_sq / 24.0, jnp.sin(half) / half)
  cos_half = jnp.where(small, 1.0 - theta_sq / 8.0, jnp.cos(half))
  return sinc_half, cos_half


def axis_angle_to_matrix(axis_angle: jnp.ndarray) -> jnp.ndarray:
  """(..., 3) axis-angle (axis * angle in radians) to (..., 3, 3) rotation matrices.

  Rodrigues, R = I + sin(t)/t K + (1 - cos(t))/t^2 K^2 with K = skew(axis_angle), using
  sin(t)/t = sinc(t/2) cos(t/2) and (1 - cos(t))/t^2 = sinc(t/2)^2 / 2: no cancellation at small
  angles and no division by the angle.
  """
  sinc_half, cos_half = _half_angle_terms(axis_angle)
  k = skew(axis_angle)
  eye = jnp.eye(3, dtype=axis_angle.dtype)
  a = (sinc_half * cos_half)[..., None, None]
  b = (0.5 * sinc_half * sinc_half)[..., None, None]
  return eye + a * k + b * (k @ k)


def axis_angle_to_quaternion(axis_angle: jnp.ndarray) -> jnp.ndarray:
  """(..., 3) axis-angle to (..., 4) unit quaternions (w, x, y, z); w >= 0 for angles <= pi."""
  sinc_half, cos_half = _half_angle_terms(axis_angle)
  return jnp.concatenate([cos_half[..., None], 0.5 * sinc_half[..., None] * axis_angle], axis=-1)


def quaternion_to_axis_angle(q: jnp.ndarray) -> jnp.ndarray:
  """(..., 4) quaternions (w, x, y, z), any length, to (..., 3) axis-angle with angle in [0, pi]."""
  q = normalize_quaternion(q)
  q = jnp.where(q[..., :1] < 0, -q, q)  # q and -q are the same rotation; pick angle <= pi
  w, v = q[..., 0], q[..., 1:]
  sin_half_sq = jnp.sum(v * v, axis=-1)
  small = sin_half_sq < _SMALL_ANGLE_SQ
  sin_half = jnp.sqrt(jnp.where(small, 1.0, sin_half_sq))
  # angle / sin(angle/2) = 2 atan2(s, w) / s, whose series in s is 2/w (1 - s^2 / (3 w^2)).
  scale = jnp.where(small, 2.0 / w * (1.0 - sin_half_sq / (3.0 * w * w)),
                    2.0 * jnp.arctan2(sin_half, w) / sin_half)
  return scale[..., None] * v


def matrix_to_quaternion(matrix: jnp.ndarray) -> jnp.ndarray:
  """(..., 3, 3) rotation matrices to (..., 4) unit quaternions (w, x, y, z) with w >= 0.

  Shepperd's method: of the four ways to read the quaternion off the matrix, use the one
  whose pivot (4 w^2, 4 x^2, 4 y^2 or 4 z^2) is largest, so no division is ill-conditioned.
  """
  m = matrix
  m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  # Each candidate is 4 * (pivot component) * q; its pivot entry is 4 * component^2.
  candidates = jnp.stack([
      jnp.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], axis=-1),
      jnp.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], axis=-1),
      jnp.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], axis=-1),
      jnp.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], axis=-1),
  ], axis=-2)
  pivots = jnp.stack([candidates[..., i, i] for i in range(4)], axis=-1)
  best = jnp.argmax(pivots, axis=-1)
  chosen = jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
  q = normalize_quaternion(chosen)
  return jnp.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(matrix: jnp.ndarray) -> jnp.ndarray:
  """(..., 3, 3) rotation matrices to (..., 3) axis-angle with angle in [0, pi]."""
  return quaternion_to_axis_angle(matrix_to_quaternion(matrix))
