"""Gaussians Regressor and the face topology it runs on."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sheap_jax.geometry import mesh_topology
from sheap_jax.models.gaussians import GaussiansRegressor, face_layout
from sheap_jax.render.rigging import rig_gaussians

TINY = dict(width=16, depth=1, num_heads=2, mlp_ratio=2, fourier_bands=2)


def _mesh_with_boundary():
  """An icosphere (80 faces) with 5 faces cut out, so some edges have no neighbour."""
  vertices, faces = mesh_topology.icosphere(1, radius=0.1)
  return vertices, faces[5:]


def _inputs(seed, batch=2, identity_dim=8, tokens=6, token_dim=12):
  keys = jax.random.split(jax.random.key(seed), 2)
  return (jax.random.normal(keys[0], (batch, identity_dim)),
          jax.random.normal(keys[1], (batch, tokens, token_dim)))


@pytest.fixture(scope="module")
def regressor():
  """A tiny one-block regressor with 3 Gaussians of 5 features per face, and its jitted apply."""
  vertices, faces = _mesh_with_boundary()
  layout = face_layout(faces, vertices)
  model = GaussiansRegressor(**TINY, gaussians_per_face=3, feature_dim=5)
  params = jax.jit(model.init)(jax.random.key(0), *_inputs(0), layout)
  return model, params, layout, jax.jit(model.apply)


def test_face_adjacency_matches_brute_force():
  _, faces = _mesh_with_boundary()
  adjacency = mesh_topology.face_adjacency(faces)
  for f, face in enumerate(faces):
    for e in range(3):
      edge = {face[e], face[(e + 1) % 3]}
      others = [g for g, other in enumerate(faces) if g != f and edge <= set(other)]
      assert adjacency[f, e] == (others[0] if others else -1)
  edge_uses = collections.Counter(
      tuple(sorted((face[e], face[(e + 1) % 3]))) for face in faces for e in range(3))
  assert (adjacency == -1).sum() == sum(uses == 1 for uses in edge_uses.values()) > 0


def test_non_manifold_edges_link_every_face_to_another():
  faces = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]])  # three faces share edge (0, 1)
  adjacency = mesh_topology.face_adjacency(faces)
  np.testing.assert_array_equal(adjacency[:, 0], [1, 2, 0])
  np.testing.assert_array_equal(adjacency[:, 1:], -1)


def test_output_shapes_and_sensible_initial_splats(regressor):
  model, params, layout, apply = regressor
  slots, feature_dim = model.gaussians_per_face, model.feature_dim
  identity, tokens = _inputs(1)
  local = apply(params, identity, tokens, layout)
  num_faces = layout.neighbours.shape[0]
  lead = (2, num_faces, slots)
  for name, trailing in [("offsets", (3,)), ("quats", (4,)), ("scales", (2,)),
                         ("opacities", ()), ("features", (feature_dim,))]:
    value = getattr(local, name)
    assert value.shape == lead + trailing, name
    assert value.dtype == jnp.float32, name
  # Slots start spread in the face plane around the centroid, flat, small, half opaque, grey.
  angles = 2 * np.pi * np.arange(slots) / slots
  base = 0.3 * np.stack([np.cos(angles), np.sin(angles), np.zeros(slots)], 1)
  np.testing.assert_allclose(local.offsets, np.broadcast_to(base, lead + (3,)), atol=0.05)
  np.testing.assert_allclose(local.quats, np.broadcast_to([1.0, 0, 0, 0], lead + (4,)),
                             atol=0.05)
  np.testing.assert_allclose(local.scales, 0.5 / np.sqrt(slots), rtol=0.05)
  np.testing.assert_allclose(local.opacities, 0.5, atol=0.02)
  np.testing.assert_allclose(local.features, 0.5, atol=0.02)
  # Rigged onto a mesh and onto that mesh doubled, each splat's scale is about half its
  # triangle's edge length, and doubles with the mesh.
  vertices, faces = _mesh_with_boundary()
  first = jax.tree.map(lambda x: x[0], local)
  splats = rig_gaussians(first, jnp.stack([vertices, 2 * vertices]), faces)
  edge = np.linalg.norm(vertices[faces[:, 1]] - vertices[faces[:, 0]], axis=-1)
  ratio = np.asarray(splats.scales[0]).reshape(num_faces, slots, 2) / edge[:, None, None]
  assert np.all((ratio > 0.3 / np.sqrt(slots)) & (ratio < 0.6 / np.sqrt(slots)))
  np.testing.assert_allclose(splats.scales[1], 2 * splats.scales[0], rtol=1e-5)


def test_gradients_reach_every_parameter(regressor):
  model, params, layout, _ = regressor
  identity, tokens = _inputs(2)
  weights = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape),
                         jax.eval_shape(model.apply, params, identity, tokens, layout))

  def loss(params):
    local = model.apply(params, identity, tokens, layout)
    return sum(jnp.sum(w * x) for w, x in zip(jax.tree.leaves(weights), jax.tree.leaves(local)))

  grads = jax.jit(jax.grad(loss))(params)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
    assert np.all(grad != 0), f"{jax.tree_util.keystr(path)}: {np.sum(grad == 0)} zero entries"


def test_faces_only_see_their_neighbours(regressor):
  """Cross-attention and MLPs act per face; only the neighbour exchange mixes faces, one ring
  per block. So with one block, changing one face's embedding moves exactly it and its
  neighbours."""
  _, params, layout, apply = regressor
  identity, tokens = _inputs(4)
  changed_face = 7
  nudged = jax.tree.map(lambda x: x, params)
  nudged["params"]["face_embedding"] = params["params"]["face_embedding"].at[changed_face].add(1)
  moved = np.any(apply(nudged, identity, tokens, layout).offsets !=
                 apply(params, identity, tokens, layout).offsets, axis=(0, 2, 3))
  neighbours = np.asarray(layout.neighbours)[changed_face]
  assert set(np.flatnonzero(moved)) == {changed_face} | {int(n) for n in neighbours if n >= 0}


def test_uv_layout_and_bfloat16_compute():
  vertices, faces = _mesh_with_boundary()
  uv = (vertices[:, :2] / 0.2 + 0.5).astype(np.float32)  # a planar projection as UV atlas
  layout = face_layout(faces, vertices, uv_coords=uv, uv_faces=faces)
  assert layout.positions.shape == (len(faces), 5)
  assert np.all(np.abs(layout.positions) <= 1 + 1e-6)
  model = GaussiansRegressor(**TINY, gaussians_per_face=1, dtype=jnp.bfloat16)
  identity, tokens = _inputs(5)
  local, params = jax.jit(model.init_with_output)(jax.random.key(0), identity, tokens, layout)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  assert local.offsets.dtype == jnp.float32 and local.offsets.shape == (2, len(faces), 1, 3)
  np.testing.assert_allclose(local.offsets, 0, atol=0.05)  # one slot starts at the centroid
  np.testing.assert_allclose(local.opacities, 0.5, atol=0.02)


def test_bad_layout_inputs_are_reported():
  vertices, faces = _mesh_with_boundary()
  with pytest.raises(ValueError, match=r"faces: vertex indices must lie in \[0, 10\)"):
    face_layout(faces, vertices[:10])
  with pytest.raises(ValueError, match="give both uv_coords"):
    face_layout(faces, vertices, uv_coords=vertices[:, :2])
  with pytest.raises(ValueError, match=r"template_vertices must be \(V, 3\)"):
    face_layout(faces, vertices[:, :2])
  with pytest.raises(ValueError, match="gaussians_per_face must be 1..6"):
    GaussiansRegressor(**TINY, gaussians_per_face=7).init(
        jax.random.key(0), *_inputs(0), face_layout(faces, vertices))
