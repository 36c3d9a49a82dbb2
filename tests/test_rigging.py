"""Rigging Gaussians to triangles: against a NumPy reference, equivariance, frames, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rasterizer.quaternion import quaternion_to_matrix
from sheap_jax.geometry import mesh_topology
from sheap_jax.render.rigging import LocalGaussians, face_frames, rig_gaussians

BATCH, SLOTS = 2, 3  # one set of shapes, so each test reuses the same two compilations
rig = jax.jit(rig_gaussians)


def _random_meshes(rng, batch):
  """Randomly perturbed small icospheres (80 faces), head-sized (metres)."""
  vertices, faces = mesh_topology.icosphere(1, radius=0.1)
  noise = 0.01 * rng.standard_normal((batch,) + vertices.shape)
  return (vertices[None] + noise).astype(np.float32), faces


def _random_local(rng, lead_shape, channels=3):
  return LocalGaussians(
      offsets=rng.normal(0, 0.5, lead_shape + (3,)).astype(np.float32),
      quats=rng.standard_normal(lead_shape + (4,)).astype(np.float32),
      scales=rng.uniform(0.1, 1.0, lead_shape + (2,)).astype(np.float32),
      opacities=rng.uniform(0, 1, lead_shape).astype(np.float32),
      features=rng.uniform(0, 1, lead_shape + (channels,)).astype(np.float32),
  )


def _numpy_frame(v0, v1, v2):
  """Frame from the triangle's corners, with k from the area: height = 2 area / |edge|."""
  edge, other = v1 - v0, v2 - v0
  normal = np.cross(edge, other)
  area = np.linalg.norm(normal) / 2
  normal /= np.linalg.norm(normal)
  tangent = edge / np.linalg.norm(edge)
  rot = np.stack([tangent, np.cross(normal, tangent), normal], axis=1)
  k = (np.linalg.norm(edge) + 2 * area / np.linalg.norm(edge)) / 2
  return (v0 + v1 + v2) / 3, rot, k


def _quat_wxyz_to_matrix(q):
  return Rotation.from_quat(np.roll(q, -1, axis=-1)).as_matrix()  # scipy is (x, y, z, w)


@pytest.mark.parametrize("shared_local", [False, True])
def test_rig_matches_numpy_reference(shared_local):
  rng = np.random.default_rng(0)
  batch, slots = BATCH, SLOTS
  vertices, faces = _random_meshes(rng, batch)
  num_faces = len(faces)
  lead = (num_faces, slots) if shared_local else (batch, num_faces, slots)
  local = _random_local(rng, lead, channels=5)
  splats = rig(local, vertices, faces)
  per_batch = lambda x: np.broadcast_to(x, (batch,) + x.shape[len(lead) - 2:])
  offsets, quats, scales = map(per_batch, (local.offsets, local.quats, local.scales))
  means = np.zeros((batch, num_faces, slots, 3))
  rotations = np.zeros((batch, num_faces, slots, 3, 3))
  world_scales = np.zeros((batch, num_faces, slots, 2))
  for b in range(batch):
    for f in range(num_faces):
      centroid, rot, k = _numpy_frame(*vertices[b, faces[f]].astype(np.float64))
      for s in range(slots):
        means[b, f, s] = centroid + k * rot @ offsets[b, f, s]
        rotations[b, f, s] = rot @ _quat_wxyz_to_matrix(quats[b, f, s])
        world_scales[b, f, s] = k * scales[b, f, s]
  flat = lambda x: x.reshape((batch, num_faces * slots) + x.shape[3:])
  np.testing.assert_allclose(splats.means, flat(means), atol=1e-6)
  np.testing.assert_allclose(quaternion_to_matrix(splats.quats), flat(rotations), atol=1e-5)
  np.testing.assert_allclose(splats.scales, flat(world_scales), rtol=1e-5)
  np.testing.assert_array_equal(splats.opacities, flat(per_batch(local.opacities)))
  np.testing.assert_array_equal(splats.features, flat(per_batch(local.features)))


def test_rigging_is_equivariant_to_similarity_transforms():
  rng = np.random.default_rng(1)
  vertices, faces = _random_meshes(rng, BATCH)
  local = _random_local(rng, (BATCH, len(faces), SLOTS))
  rot = Rotation.random(random_state=2).as_matrix().astype(np.float32)
  scale, shift = np.float32(1.7), rng.normal(0, 0.3, 3).astype(np.float32)
  moved_vertices = scale * vertices @ rot.T + shift
  before, after = rig(local, vertices, faces), rig(local, moved_vertices, faces)
  np.testing.assert_allclose(after.means, scale * before.means @ rot.T + shift, atol=1e-5)
  np.testing.assert_allclose(quaternion_to_matrix(after.quats),
                             rot @ quaternion_to_matrix(before.quats), atol=1e-5)
  np.testing.assert_allclose(after.scales, scale * before.scales, rtol=1e-5)
  np.testing.assert_array_equal(after.opacities, before.opacities)
  np.testing.assert_array_equal(after.features, before.features)


def test_zero_and_in_plane_offsets_stay_on_their_triangle_plane():
  rng = np.random.default_rng(2)
  vertices, faces = _random_meshes(rng, BATCH)
  local = _random_local(rng, (len(faces), SLOTS))
  corners = vertices[0][faces].astype(np.float64)
  normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)

  at_centroid = rig(local.replace(offsets=np.zeros_like(local.offsets)), vertices, faces)
  np.testing.assert_allclose(at_centroid.means[0].reshape(-1, SLOTS, 3),
                             np.repeat(corners.mean(1)[:, None], SLOTS, 1), atol=1e-6)

  in_plane = local.offsets * np.array([1, 1, 0], np.float32)
  flat = rig(local.replace(offsets=in_plane, quats=np.eye(4, dtype=np.float32)[
      np.zeros(local.quats.shape[:-1], int)]), vertices, faces)
  means = np.asarray(flat.means[0], np.float64).reshape(-1, SLOTS, 3)
  heights = np.einsum("fsd,fd->fs", means - corners[:, None, 0], normals)
  np.testing.assert_allclose(heights, 0, atol=1e-6)
  # An identity local rotation lays each disc in its face plane: the disc normal is the face's.
  disc_normals = np.asarray(quaternion_to_matrix(flat.quats[0]))[..., 2].reshape(-1, SLOTS, 3)
  np.testing.assert_allclose(disc_normals, np.repeat(normals[:, None], SLOTS, 1), atol=1e-5)


def test_face_frames_are_orthonormal_right_handed_and_follow_the_first_edge():
  rng = np.random.default_rng(3)
  vertices, faces = _random_meshes(rng, 3)
  frames = jax.jit(face_frames)(vertices, faces)
  rot = np.asarray(frames.rotations, np.float64)
  np.testing.assert_allclose(np.swapaxes(rot, -1, -2) @ rot, np.broadcast_to(np.eye(3),
                                                                             rot.shape), atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(rot), 1, atol=1e-5)
  edges = vertices[:, faces[:, 1]] - vertices[:, faces[:, 0]]
  np.testing.assert_allclose(rot[..., 0], edges / np.linalg.norm(edges, axis=-1, keepdims=True),
                             atol=1e-5)
  # The icosphere is wound outward, so normals point away from the centre.
  assert np.all(np.einsum("bfd,bfd->bf", rot[..., 2], np.asarray(frames.centroids)) > 0)


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(4)
  vertices, faces = _random_meshes(rng, 1)
  local = _random_local(rng, (1, len(faces), 2))
  weights = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32),
                         rig_gaussians(local, vertices, faces))

  def loss(vertices, offsets, quats, scales):
    splats = rig_gaussians(local.replace(offsets=offsets, quats=quats, scales=scales), vertices,
                           faces)
    rot = quaternion_to_matrix(splats.quats)  # sign-free stand-in for the quaternion
    return (jnp.sum(weights.means * splats.means) + jnp.sum(weights.scales * splats.scales) +
            jnp.sum(rot * weights.means[..., None]))

  args = (vertices, local.offsets, local.quats, local.scales)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
  loss = jax.jit(loss)
  step = 1e-3
  for arg_index, grad in enumerate(grads):
    assert np.all(np.isfinite(grad))
    direction = rng.standard_normal(args[arg_index].shape).astype(np.float32)
    plus = list(args)
    minus = list(args)
    plus[arg_index] = args[arg_index] + step * direction
    minus[arg_index] = args[arg_index] - step * direction
    numeric = (loss(*plus) - loss(*minus)) / (2 * step)
    np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=2e-2, atol=1e-3)


def test_bad_shapes_are_reported():
  rng = np.random.default_rng(5)
  vertices, faces = _random_meshes(rng, 1)
  local = _random_local(rng, (len(faces) - 1, 2))
  with pytest.raises(ValueError, match="do not match"):
    rig_gaussians(local, vertices, faces[:-2])
  with pytest.raises(ValueError, match=r"vertices must be \(B, V, 3\)"):
    rig_gaussians(local, vertices[0], faces[:-1])
  batched = jax.tree.map(lambda x: np.stack([x] * 3), local)
  with pytest.raises(ValueError, match="3 sets of local Gaussians for 1 meshes"):
    rig_gaussians(batched, vertices, faces[:-1])
