"""Binds Gaussians to mesh triangles, GaussianAvatars-style, and poses them with the mesh.

Each Gaussian lives in the local frame of one triangle (Qian et al., CVPR 2024): the frame's
origin is the triangle's centroid, its rotation R comes from the first edge and the normal, and
its scale k is a triangle-size measure, k = (|v1 - v0| + height of v2 over that edge) / 2, as in
GaussianAvatars. A Gaussian with local offset o, rotation q and per-axis scales (s_u, s_v) sits at

    centre = centroid + k R o,   rotation = R q,   scales = k (s_u, s_v)

so it moves, rotates and scales with its triangle; each tangent axis keeps its own local scale
and both are multiplied by the one isotropic k (the triangle's frame has no per-axis stretch).

Frame columns differ from GaussianAvatars on purpose: GaussianAvatars (3D Gaussians) puts the
normal in the second column; for 2D Gaussians the disc's normal is the rotation's third column,
so here R = [edge, normal x edge, normal], and the identity local rotation lays the disc flat in
its triangle's plane. R is a proper rotation (right-handed).
"""
from flax import struct
import jax.numpy as jnp

from rasterizer.types import Splats
from sheap_jax.geometry import rotation

_EPS = 1e-20


@struct.dataclass
class LocalGaussians:
  """Gaussians in their triangles' frames: K slots per face, leading batch dims optional."""

  offsets: jnp.ndarray  # (..., F, K, 3) centre offset in the face frame, in units of k
  quats: jnp.ndarray  # (..., F, K, 4) (w, x, y, z) rotation relative to the face frame
  scales: jnp.ndarray  # (..., F, K, 2) standard deviations along the disc axes, units of k
  opacities: jnp.ndarray  # (..., F, K) in [0, 1]
  features: jnp.ndarray  # (..., F, K, C) albedo or other per-Gaussian features


@struct.dataclass
class FaceFrames:
  """Per-triangle local frames of a mesh (leading batch dims optional)."""

  centroids: jnp.ndarray  # (..., F, 3)
  rotations: jnp.ndarray  # (..., F, 3, 3) columns: edge direction, in-plane normal x edge, normal
  scales: jnp.ndarray  # (..., F) k = (edge length + height) / 2


def _safe_normalize(x: jnp.ndarray) -> jnp.ndarray:
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS))


def face_frames(vertices: jnp.ndarray, faces) -> FaceFrames:
  """Frames of the triangles `faces` (F, 3) of `vertices` (..., V, 3)."""
  corners = jnp.take(vertices, jnp.asarray(faces), axis=-2)  # (..., F, 3 corners, 3)
  v0, v1, v2 = corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
  edge = v1 - v0
  tangent = _safe_normalize(edge)
  normal = _safe_normalize(jnp.cross(edge, v2 - v0))
  bitangent = jnp.cross(normal, tangent)
  edge_length = jnp.sqrt(jnp.maximum(jnp.sum(edge * edge, axis=-1), _EPS))
  height = jnp.abs(jnp.sum(bitangent * (v2 - v0), axis=-1))
  return FaceFrames(
      centroids=corners.mean(axis=-2),
      rotations=jnp.stack([tangent, bitangent, normal], axis=-1),
      scales=(edge_length + height) / 2,
  )


def rig_gaussians(local: LocalGaussians, vertices: jnp.ndarray, faces) -> Splats:
  """World-space splats of `local` bound to the triangles `faces` (F, 3) of `vertices` (B, V, 3).

  Splat n = f * K + k is slot k of face f. `local` has shapes (B, F, K, ...) or, shared by the
  whole batch, (F, K, ...).
  """
  faces = jnp.asarray(faces)
  num_faces, slots = local.offsets.shape[-3:-1]
  if vertices.ndim != 3 or vertices.shape[-1] != 3:
    raise ValueError(f"rig_gaussians: vertices must be (B, V, 3), got {vertices.shape}")
  if local.offsets.ndim == 4 and local.offsets.shape[0] != vertices.shape[0]:
    raise ValueError(f"rig_gaussians: {local.offsets.shape[0]} sets of local Gaussians for "
                     f"{vertices.shape[0]} meshes")
  if faces.shape != (num_faces, 3):
    raise ValueError(f"rig_gaussians: faces {faces.shape} do not match the {num_faces} faces "
                     "of the local Gaussians")
  frames = face_frames(vertices, faces)
  batch = vertices.shape[0]
  rot = frames.rotations[:, :, None]  # (B, F, 1, 3, 3)
  k = frames.scales[:, :, None, None]  # (B, F, 1, 1)
  means = frames.centroids[:, :, None] + k * (rot @ local.offsets[..., None])[..., 0]
  world_rot = rot @ rotation.quaternion_to_matrix(local.quats)
  n = num_faces * slots

  def per_splat(x, trailing):
    return jnp.broadcast_to(x, (batch, num_faces, slots) + trailing).reshape(
        (batch, n) + trailing)

  return Splats(
      means=per_splat(means, (3,)),
      quats=per_splat(rotation.matrix_to_quaternion(world_rot), (4,)),
      scales=per_splat(k * local.scales, (2,)),
      opacities=per_splat(local.opacities, ()),
      features=per_splat(local.features, local.features.shape[-1:]),
  )
