"""Unit quaternions (w, x, y, z) to rotation matrices.

The rasterizer stands alone, so the one quaternion implementation of the project lives here;
`sheap_jax.geometry.rotation` re-exports it next to the axis-angle utilities.
"""
import jax.numpy as jnp


def normalize_quaternion(q: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """Scales (..., 4) quaternions to unit length; grad-safe at zero."""
  norm_sq = jnp.sum(q * q, axis=-1, keepdims=True)
  return q * jnp.where(norm_sq > eps, 1.0 / jnp.sqrt(jnp.maximum(norm_sq, eps)), 0.0)


def quaternion_to_matrix(q: jnp.ndarray) -> jnp.ndarray:
  """(..., 4) quaternions (w, x, y, z), any length, to (..., 3, 3) rotation matrices."""
  w, x, y, z = jnp.moveaxis(normalize_quaternion(q), -1, 0)
  rows = [
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ]
  return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)
