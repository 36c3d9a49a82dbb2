"""Head-like test scenes: splats on a closed head-sized surface, 1 m in front of the camera.

Plain numpy + jax (no ml-collections / tfds) so the benchmark runs on a bare GPU machine.
The surface is an ellipsoid with a nose bump (about 0.16 x 0.21 x 0.2 m); splats lie tangent
to it, so they face the camera at the front and are edge-on at the silhouette; a tenth get
random orientations. Splat size follows the surface area per splat.
"""
import math

import jax.numpy as jnp
import numpy as np

from rasterizer import types

HEAD_RADII = np.array([0.08, 0.105, 0.1])  # x (left-right), y (up-down), z (depth), metres
HEAD_DISTANCE = 1.0
VERTICAL_FOV_DEG = 14.2539  # SHeaP's public renderer


def camera(width: int, height: int):
  """(viewmat (4, 4), K (3, 3)): identity world-to-camera, vertical FOV 14.25 degrees."""
  focal = 0.5 * height / math.tan(math.radians(VERTICAL_FOV_DEG) / 2)
  K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
  return jnp.eye(4, dtype=jnp.float32), jnp.asarray(K, jnp.float32)


def _quaternions_from_frames(frames):
  """(N, 3, 3) rotation matrices (columns = axes) to (w, x, y, z) quaternions."""
  m = frames
  w = np.sqrt(np.maximum(1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 1e-12)) / 2
  x = np.copysign(np.sqrt(np.maximum(1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], 0)) / 2,
                  m[:, 2, 1] - m[:, 1, 2])
  y = np.copysign(np.sqrt(np.maximum(1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 0)) / 2,
                  m[:, 0, 2] - m[:, 2, 0])
  z = np.copysign(np.sqrt(np.maximum(1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2], 0)) / 2,
                  m[:, 1, 0] - m[:, 0, 1])
  return np.stack([w, x, y, z], axis=-1)


def head_scene(num_splats: int, seed: int = 0, num_channels: int = 3) -> types.Splats:
  """`num_splats` splats on the head surface centred at (0, 0, HEAD_DISTANCE), camera frame."""
  rng = np.random.default_rng(seed)
  directions = rng.normal(size=(num_splats, 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  nose = 0.025 * np.exp(-((directions[:, 0] / 0.15) ** 2 + (directions[:, 1] / 0.3) ** 2))
  nose = nose * (directions[:, 2] < 0)  # the face looks at the camera (-z)
  points = directions * HEAD_RADII * (1 + nose[:, None] / HEAD_RADII.mean())
  normals = directions / HEAD_RADII**2
  normals /= np.linalg.norm(normals, axis=1, keepdims=True)
  helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
  tangent_u = np.cross(normals, helper)
  tangent_u /= np.linalg.norm(tangent_u, axis=1, keepdims=True)
  tangent_v = np.cross(normals, tangent_u)
  quats = _quaternions_from_frames(np.stack([tangent_u, tangent_v, normals], axis=-1))
  random_orientation = rng.random(num_splats) < 0.1
  quats[random_orientation] = rng.normal(size=(random_orientation.sum(), 4))
  a, b, c = HEAD_RADII
  area = 4 * math.pi * ((a**1.6 * b**1.6 + a**1.6 * c**1.6 + b**1.6 * c**1.6) / 3) ** (1 / 1.6)
  sigma = 0.6 * math.sqrt(area / num_splats)
  return types.Splats(
      means=jnp.asarray(points + [0, 0, HEAD_DISTANCE], jnp.float32),
      quats=jnp.asarray(quats, jnp.float32),
      scales=jnp.asarray(sigma * rng.uniform(0.5, 1.5, (num_splats, 2)), jnp.float32),
      opacities=jnp.asarray(rng.uniform(0.3, 1.0, num_splats), jnp.float32),
      features=jnp.asarray(rng.uniform(0, 1, (num_splats, num_channels)), jnp.float32),
  )
