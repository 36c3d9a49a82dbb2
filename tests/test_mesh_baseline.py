"""Differentiable mesh baseline: agreement with the z-buffer renderer, gradients, silhouettes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sheap_jax.geometry import camera as camera_lib
from sheap_jax.training import losses
from sheap_jax.render import mesh_baseline
from sheap_jax.render import mesh_render
from sheap_jax.geometry import mesh_topology
from sheap_jax.geometry import shading

SIZE = 32
# One compiled single-image renderer shared by the tests.
_render_image = jax.jit(mesh_baseline.render_image, static_argnames="antialias")


@pytest.fixture(scope="module")
def scene():
  """A textured, lit sphere of radius 0.1 m, 1 m in front of SHeaP's default camera."""
  rng = np.random.default_rng(0)
  unit, faces = mesh_topology.icosphere(2)
  uvs = np.stack([0.5 + np.arctan2(unit[:, 0], unit[:, 2]) / (2 * np.pi),
                  0.5 + np.arcsin(unit[:, 1]) / np.pi], axis=1)
  topology = mesh_baseline.mesh_topology(faces, uvs, faces)
  vertices = jnp.asarray(0.1 * unit + np.array([0.01, -0.005, 0.0]), jnp.float32)
  texture = jnp.asarray(rng.uniform(0.2, 0.9, (16, 16, 3)), jnp.float32)
  light = shading.ambient_directional_sh(0.4, 0.7, (0.3, -0.5, -1.0)) * jnp.asarray(
      [1.0, 0.9, 0.8])
  camera = camera_lib.default_camera(SIZE, SIZE)
  return topology, vertices, texture, light, camera


def test_face_adjacency_flag_matches_a_brute_force_search():
  """Antialiasing's neighbours (`link_non_manifold=False`: none across an edge of three faces)
  and the regressor's (cycled around it) differ exactly on non-manifold edges."""
  faces = np.array([[0, 1, 2], [2, 1, 3], [3, 4, 2], [5, 6, 7], [1, 0, 8], [0, 1, 9]])
  unlinked = mesh_topology.face_adjacency(faces, link_non_manifold=False)
  linked = mesh_topology.face_adjacency(faces)
  for f, face in enumerate(faces):
    for e in range(3):
      edge = {face[e], face[(e + 1) % 3]}
      sharing = [g for g in range(len(faces)) if g != f and edge <= set(faces[g])]
      assert unlinked[f, e] == (sharing[0] if len(sharing) == 1 else -1)
      if len(sharing) == 1:
        assert linked[f, e] == sharing[0]
      elif sharing:  # non-manifold: some other face on the edge, each face linked once
        assert linked[f, e] in sharing
  ring = [linked[f, 0] for f in (0, 4, 5)]  # the three faces on edge (0, 1), each at e = 0
  assert sorted(ring) == [0, 4, 5]
  _, sphere = mesh_topology.icosphere(1)
  neighbours = mesh_baseline.mesh_topology(sphere, np.zeros((len(sphere), 2)),
                                           np.zeros_like(sphere)).neighbours
  assert np.all(np.asarray(neighbours) >= 0)  # closed: every edge shared
  np.testing.assert_array_equal(neighbours, mesh_topology.face_adjacency(sphere))
  for f, e in [(0, 0), (17, 2), (55, 1)]:
    g = neighbours[f, e]
    assert {sphere[f, e], sphere[f, (e + 1) % 3]} <= set(sphere[g])


def test_matches_the_z_buffer_renderer(scene):
  topology, vertices, texture, light, camera = scene
  reference = mesh_render.render_mesh(vertices, topology.faces, camera, texture=texture,
                                      uvs=topology.uvs, uv_faces=topology.uv_faces,
                                      sh_coeffs=light, background=0.25)
  plain = _render_image(vertices, topology, camera, texture, light, 0.25, antialias=False)
  np.testing.assert_array_equal(plain.face_ids, reference.fragments.face_ids)
  # Equal up to float32 rounding (the barycentrics are recomputed by another formula).
  np.testing.assert_allclose(plain.color, reference.color, atol=3e-6)
  np.testing.assert_allclose(plain.depth, reference.depth, atol=1e-6)
  np.testing.assert_allclose(plain.normals, reference.normals, atol=1e-6)
  np.testing.assert_array_equal(plain.alpha, reference.mask)

  smooth = _render_image(vertices, topology, camera, texture, light, 0.25)
  mask = np.asarray(reference.mask) > 0
  padded = np.pad(mask, 1)
  interior = (mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
              & padded[1:-1, 2:])
  exterior = ~(mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:])
  assert interior.sum() > 300 and exterior.sum() > 100
  keep = interior | exterior
  np.testing.assert_allclose(np.asarray(smooth.color)[keep], np.asarray(reference.color)[keep],
                             atol=3e-6)
  np.testing.assert_array_equal(np.asarray(smooth.alpha)[keep], np.asarray(reference.mask)[keep])
  # Silhouette pixels are blended: some fractional alpha on both sides of the outline.
  boundary_alpha = np.asarray(smooth.alpha)[~keep]
  assert np.sum((boundary_alpha > 0.01) & (boundary_alpha < 0.99)) > 20
  assert np.all((boundary_alpha > -1e-6) & (boundary_alpha < 1 + 1e-6))


@pytest.fixture(scope="module")
def weighted_sum(scene):
  """Compiled value and gradient of sum(weights * [colour, alpha]) w.r.t. vertices, texture,
  lighting, for (SIZE, SIZE, 4) weights."""
  topology, _, _, _, camera = scene

  def objective(v, tex, sh, weights):
    image = mesh_baseline.render_image(v, topology, camera, tex, sh, 0.25)
    return jnp.sum(weights * jnp.concatenate([image.color, image.alpha[..., None]], -1))

  return jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))


def test_gradients_match_finite_differences(scene, weighted_sum):
  topology, vertices, texture, light, camera = scene
  rng = np.random.default_rng(1)
  weights = jnp.asarray(rng.standard_normal((SIZE, SIZE, 4)), jnp.float32)
  face_ids = jax.jit(lambda v: mesh_render.rasterize(v, topology.faces, camera).face_ids)
  _, grads = weighted_sum(vertices, texture, light, weights)
  directions = [jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
                for x in (vertices, texture, light)]
  steps = (1e-6, 1e-2, 1e-2)  # vertices: a step small enough that every pixel keeps its face
  for i, (grad, direction, eps) in enumerate(zip(grads, directions, steps)):
    args = [vertices, texture, light]
    plus, minus = list(args), list(args)
    plus[i] = args[i] + eps * direction
    minus[i] = args[i] - eps * direction
    if i == 0:
      np.testing.assert_array_equal(face_ids(plus[0]), face_ids(minus[0]))
    numeric = (weighted_sum(*plus, weights)[0] - weighted_sum(*minus, weights)[0]) / (2 * eps)
    analytic = jnp.vdot(grad, direction)
    assert abs(float(analytic)) > 1e-2
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def test_silhouette_gradient_moves_the_outline(scene, weighted_sum):
  """d/dx of the alpha-weighted column moment = covered area * focal / depth (pixels per metre
  of sideways motion). Interior alpha is constant: only the antialiased silhouette moves."""
  topology, vertices, texture, light, camera = scene
  weights = jnp.zeros((SIZE, SIZE, 4)).at[..., 3].set(jnp.arange(SIZE, dtype=jnp.float32))
  sideways = jnp.zeros_like(vertices).at[:, 0].set(1.0)  # FLAME x = camera x here
  _, (grad, _, _) = weighted_sum(vertices, texture, light, weights)
  analytic = jnp.vdot(grad, sideways)
  area = jnp.sum(_render_image(vertices, topology, camera, texture, light, 0.25).alpha)
  focal = float(camera.K[0, 0])
  # Pixel-axis box filtering misses a little where the outline turns through 45 degrees: the
  # sphere's derivative comes out 4.3 % low.
  np.testing.assert_allclose(analytic, float(area) * focal / 1.0, rtol=0.08)  # centre at 1 m
  # The antialiased image is nearly continuous: a one-pixel central difference agrees too.
  step = 1.0 / focal
  moment = lambda shift: weighted_sum(vertices + shift * sideways, texture, light, weights)[0]
  np.testing.assert_allclose(analytic, (moment(step) - moment(-step)) / (2 * step), rtol=0.08)
  plain = _render_image(vertices, topology, camera, texture, light, 0.25, antialias=False)
  assert np.all((np.asarray(plain.alpha) == 0) | (np.asarray(plain.alpha) == 1))


def test_batched_render_feeds_the_losses(scene):
  topology, vertices, texture, light, camera = scene
  batch = 2
  shifts = jnp.asarray([[0.0, 0.0, 0.0], [0.02, 0.01, 0.05]], jnp.float32)
  batch_vertices = vertices[None] + shifts[:, None]
  cameras = camera_lib.Camera(K=jnp.broadcast_to(camera.K, (batch, 3, 3)),
                              viewmat=jnp.broadcast_to(camera.viewmat, (batch, 4, 4)),
                              width=SIZE, height=SIZE)
  textures = jnp.stack([texture, 1.0 - texture])
  lights = jnp.stack([light, 0.5 * light])
  target = jnp.full((batch, SIZE, SIZE, 3), 0.5)

  @jax.jit
  @functools.partial(jax.value_and_grad, has_aux=True)
  def loss(v):
    render = mesh_baseline.render(v, topology, cameras, textures, lights, 0.1)
    context = losses.LossContext(render=render, image=target)
    return losses.total_loss({"l1": {"weight": 1.0}}, context)[0], render

  (value, out), grad = loss(batch_vertices)
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0
  np.testing.assert_allclose(value, jnp.mean(jnp.abs(out.color - target)), rtol=1e-5)
  assert out.normals.shape == (batch, SIZE, SIZE, 3) and float(jnp.abs(out.distortion).max()) == 0
  np.testing.assert_array_equal(out.median_depth, out.depth)
  with pytest.raises(ValueError, match="2 cameras for 3 meshes"):
    mesh_baseline.render(jnp.concatenate([batch_vertices, vertices[None]]), topology, cameras,
                         jnp.concatenate([textures, texture[None]]))
  for b in range(batch):
    single = _render_image(batch_vertices[b], topology, camera, textures[b], lights[b], 0.1)
    np.testing.assert_allclose(out.color[b], single.color, atol=1e-5)
    np.testing.assert_allclose(out.alpha[b], single.alpha, atol=1e-5)
    np.testing.assert_allclose(out.depth[b], single.depth, atol=1e-6)


def test_albedo_head_shapes_start_and_gradients():
  head = mesh_baseline.AlbedoHead(texture_size=16, grid_size=4, width=16, num_heads=2)
  rng = np.random.default_rng(2)
  identity = jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)
  tokens = jnp.asarray(rng.standard_normal((2, 9, 12)), jnp.float32)
  params = jax.jit(head.init)(jax.random.PRNGKey(0), identity, tokens)

  @jax.jit
  def texture_and_grads(i, t):
    grads = jax.grad(lambda i, t: jnp.sum(head.apply(params, i, t) ** 2), argnums=(0, 1))(i, t)
    return head.apply(params, i, t), grads

  texture, grads = texture_and_grads(identity, tokens)
  assert texture.shape == (2, 16, 16, 3)
  np.testing.assert_allclose(texture, 0.5, atol=0.02)  # starts grey
  assert all(float(jnp.abs(g).max()) > 0 for g in grads)
  with pytest.raises(ValueError, match="texture_size 15 is not a multiple of grid_size 4"):
    mesh_baseline.AlbedoHead(texture_size=15, grid_size=4).init(
        jax.random.PRNGKey(0), identity, tokens)


def test_bad_topology_is_rejected():
  unit, faces = mesh_topology.icosphere(0)
  with pytest.raises(ValueError, match="uv_faces must be an integer array shaped like faces"):
    mesh_baseline.mesh_topology(faces, np.zeros((12, 2)), faces[:5])
  with pytest.raises(ValueError, match="every uv_faces index below T"):
    mesh_baseline.mesh_topology(faces, np.zeros((5, 2)), faces)
  with pytest.raises(ValueError, match="faces must be an integer"):
    mesh_baseline.mesh_topology(faces.astype(np.float32), np.zeros((12, 2)), faces)
