"""Mesh rasteriser against analytic depth and NumPy ray casting; fill rule, occlusion, textures."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from sheap_jax.geometry import camera as camera_lib
from sheap_jax.render import mesh_render
from sheap_jax.geometry import mesh_topology
from sheap_jax.geometry import shading

SIZE = 48


def _camera(focal=40.0, width=SIZE, height=SIZE, centre=None, viewmat=None):
  cx, cy = ((width - 1) / 2, (height - 1) / 2) if centre is None else centre
  K = jnp.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], jnp.float32)
  viewmat = jnp.eye(4) if viewmat is None else jnp.asarray(viewmat, jnp.float32)
  return camera_lib.Camera(K=K, viewmat=viewmat, width=width, height=height)


def _pixel_rays(camera):
  """(H*W, 3) camera-space ray directions with z = 1 through every pixel centre."""
  rows, cols = np.meshgrid(np.arange(camera.height), np.arange(camera.width), indexing="ij")
  pixels = np.stack([cols, rows, np.ones_like(cols)], -1).reshape(-1, 3).astype(np.float64)
  return pixels @ np.linalg.inv(np.asarray(camera.K, np.float64)).T


def _ray_cast(camera, vertices, faces):
  """Nearest exact ray-triangle hit per pixel (Moller-Trumbore in float64).

  Returns face ids (-1 for none), depth, and a per-pixel flag for ambiguous pixels: the ray
  passes within 1e-5 (barycentric) of some edge, or the two nearest hits tie in depth.
  """
  rays = _pixel_rays(camera)[:, None, :]  # (P, 1, 3)
  view = np.asarray(camera.viewmat, np.float64)
  corners = (np.asarray(vertices, np.float64) @ view[:3, :3].T + view[:3, 3])[faces]  # (F, 3, 3)
  a, e1, e2 = corners[:, 0], corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
  pvec = np.cross(rays, e2)
  det = np.sum(e1 * pvec, -1)
  tvec = -a
  u = np.sum(tvec * pvec, -1) / det
  qvec = np.cross(tvec, e1)
  v = np.sum(rays * qvec, -1) / det
  t = np.sum(e2 * qvec, -1) / det  # rays have z = 1, so t is camera z
  margin = np.minimum(np.minimum(u, v), 1.0 - u - v)
  hit = (margin >= 0) & (t > 0)
  depth_all = np.where(hit, t, np.inf)
  depth_all = np.concatenate([depth_all, np.full_like(depth_all[:, :1], np.inf)], 1)  # 2+ columns
  order = np.argsort(depth_all, axis=1)
  nearest = order[:, 0]
  depth = np.take_along_axis(depth_all, order[:, :2], axis=1)
  ids = np.where(np.isfinite(depth[:, 0]), nearest, -1)
  ambiguous = np.any((np.abs(margin) < 1e-5) & (t > 0), axis=1)
  ambiguous |= np.isfinite(depth[:, 1]) & (depth[:, 1] < depth[:, 0] * (1 + 1e-6))
  shape = (camera.height, camera.width)
  return ids.reshape(shape), np.where(ids >= 0, depth[:, 0], 0).reshape(shape), \
      ambiguous.reshape(shape)


def _grid_faces(rows, cols, alternate=True):
  """Two triangles per quad of a (rows+1) x (cols+1) vertex grid, diagonals alternating."""
  faces = []
  for r in range(rows):
    for c in range(cols):
      a, b, d, e = r * (cols + 1) + c, r * (cols + 1) + c + 1, (r + 1) * (cols + 1) + c, \
          (r + 1) * (cols + 1) + c + 1
      if alternate and (r + c) % 2:
        faces += [[a, b, e], [a, e, d]]
      else:
        faces += [[a, b, d], [b, e, d]]
  return np.array(faces, np.int32)


def _plane_through_image(rng, camera, grid=6, jitter=0.3):
  """A tilted plane's vertices lifted from a jittered pixel grid that overhangs the image."""
  normal = np.array([0.0, 0.0, 1.0]) + rng.uniform(-0.3, 0.3, 3) * [1, 1, 0]
  offset = rng.uniform(1.5, 2.5)
  u = np.linspace(-6.0, camera.width + 5.0, grid + 1)
  v = np.linspace(-6.0, camera.height + 5.0, grid + 1)
  uu, vv = np.meshgrid(u, v)
  step = u[1] - u[0]
  uu[1:-1, 1:-1] += rng.uniform(-jitter, jitter, (grid - 1, grid - 1)) * step
  vv[1:-1, 1:-1] += rng.uniform(-jitter, jitter, (grid - 1, grid - 1)) * step
  pixels = np.stack([uu, vv, np.ones_like(uu)], -1).reshape(-1, 3)
  rays = pixels @ np.linalg.inv(np.asarray(camera.K, np.float64)).T
  vertices = rays * (offset / (rays @ normal))[:, None]
  return vertices.astype(np.float32), _grid_faces(grid, grid), normal, offset


def test_tilted_plane_matches_analytic_perspective_depth():
  rng = np.random.default_rng(0)
  camera = _camera()
  vertices, faces, normal, offset = _plane_through_image(rng, camera)
  fragments = mesh_render.rasterize(jnp.asarray(vertices), jnp.asarray(faces), camera)
  assert np.all(np.asarray(fragments.face_ids) >= 0)  # the plane covers every pixel
  rays = _pixel_rays(camera).reshape(SIZE, SIZE, 3)
  want = offset / (rays @ normal)
  assert want.max() / want.min() > 1.2  # genuinely tilted
  np.testing.assert_allclose(fragments.depth, want, rtol=1e-4)


def _coverage_counts(vertices, faces, camera):
  """(F, H, W) masks of each triangle drawn on its own (an additive coverage pass)."""
  draw_one = lambda face: mesh_render.rasterize(vertices, face[None], camera, chunk_size=64).mask
  return np.asarray(jax.jit(jax.vmap(draw_one))(jnp.asarray(faces)))


@pytest.mark.parametrize("pixel_aligned", [True, False])
def test_shared_edges_leave_no_holes_and_no_double_coverage(pixel_aligned):
  rng = np.random.default_rng(1)
  if pixel_aligned:
    # Vertices exactly on pixel centres every 4 px: edges run through rows of pixel centres.
    camera = _camera(focal=8.0, width=24, height=24, centre=(4.0, 4.0))
    coords = np.arange(-4, 29, 4, dtype=np.float32)
    xx, yy = np.meshgrid((coords - 4.0) / 8.0, (coords - 4.0) / 8.0)
    vertices = np.stack([xx, yy, np.ones_like(xx)], -1).reshape(-1, 3)
    faces = _grid_faces(len(coords) - 1, len(coords) - 1)
  else:
    camera = _camera(width=24, height=24)
    vertices, faces, _, _ = _plane_through_image(rng, camera, grid=8, jitter=0.35)
  counts = _coverage_counts(jnp.asarray(vertices), faces, camera)
  np.testing.assert_array_equal(counts.sum(0), 1.0)
  # The full render shows, at every pixel, the one triangle that covers it.
  fragments = mesh_render.rasterize(jnp.asarray(vertices), jnp.asarray(faces), camera)
  np.testing.assert_array_equal(fragments.face_ids, counts.argmax(0))


@pytest.fixture(scope="module")
def sphere_scene():
  """A tessellated sphere seen by a camera with a random pose."""
  rng = np.random.default_rng(8)
  vertices, faces = mesh_topology.icosphere(3)
  centre = rng.normal(size=3).astype(np.float32)
  vertices = vertices * 0.9 + centre
  rotation = Rotation.random(random_state=rng).as_matrix()
  viewmat = np.eye(4)
  viewmat[:3, :3] = rotation
  viewmat[:3, 3] = np.array([0.1, -0.05, 4.0]) - rotation @ centre
  camera = _camera(focal=70.0, viewmat=viewmat)
  fragments = mesh_render.rasterize(jnp.asarray(vertices), jnp.asarray(faces), camera)
  return vertices, faces, centre, camera, fragments


def test_sphere_matches_exact_ray_triangle_intersection(sphere_scene):
  vertices, faces, _, camera, fragments = sphere_scene
  ids, depth, ambiguous = _ray_cast(camera, vertices, faces)
  clear = ~ambiguous
  assert ambiguous.mean() < 0.05 and (ids >= 0).mean() > 0.3
  np.testing.assert_array_equal(np.asarray(fragments.face_ids)[clear], ids[clear])
  hit = np.asarray(fragments.face_ids) >= 0
  assert np.all(((ids >= 0) == hit) | ambiguous)
  both = hit & (ids >= 0)
  np.testing.assert_allclose(np.asarray(fragments.depth)[both], depth[both], rtol=1e-4)
  assert np.all(np.asarray(fragments.depth)[~hit] == 0)


def test_barycentrics_reproduce_positions_depth_and_normals(sphere_scene):
  vertices, faces, centre, camera, fragments = sphere_scene
  hit = np.asarray(fragments.face_ids) >= 0
  bary = np.asarray(fragments.barycentrics)
  np.testing.assert_allclose(bary[hit].sum(-1), 1.0, atol=1e-5)
  assert np.all(bary[hit] >= -1e-5)
  positions = jax.jit(mesh_render.interpolate)(fragments, jnp.asarray(faces),
                                               jnp.asarray(vertices))
  pixels, z = jax.jit(camera_lib.project_points)(camera, positions.reshape(-1, 3))
  rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
  want = np.stack([cols, rows], -1).reshape(-1, 2)
  np.testing.assert_allclose(np.asarray(pixels)[hit.reshape(-1)], want[hit.reshape(-1)],
                             atol=2e-3)
  np.testing.assert_allclose(np.asarray(z).reshape(SIZE, SIZE)[hit],
                             np.asarray(fragments.depth)[hit], rtol=1e-5)
  # Shaded render: smooth camera-space normals close to the sphere's outward normal.
  image = mesh_render.render_mesh(jnp.asarray(vertices), jnp.asarray(faces), camera)
  true_normals = (np.asarray(positions) - centre) / 0.9 @ np.asarray(camera.viewmat)[:3, :3].T
  cosines = np.sum(np.asarray(image.normals) * true_normals, -1)[hit]
  assert cosines.min() > 0.995


def test_nearer_triangle_wins_whatever_the_submission_order():
  rng = np.random.default_rng(2)
  camera = _camera()
  triangles = []
  for depth in (rng.uniform(1.5, 2.0), rng.uniform(3.0, 4.0)):
    angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    xy = 0.5 * depth * np.stack([np.cos(angles), np.sin(angles)], -1)
    z = depth + rng.uniform(-0.2, 0.2, 3)
    triangles.append(np.concatenate([xy, z[:, None]], -1))
  near, far = triangles
  results = []
  for first, second in ((near, far), (far, near)):
    vertices = np.concatenate([first, second]).astype(np.float32)
    faces = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
    results.append(mesh_render.rasterize(jnp.asarray(vertices), jnp.asarray(faces), camera))
  # Which triangle shows at each pixel: 1 the near one, 2 the far one, 0 none.
  labels = [np.select([r.face_ids == near_id, r.face_ids == 1 - near_id], [1, 2], 0)
            for r, near_id in zip(results, (0, 1))]
  np.testing.assert_array_equal(labels[0], labels[1])
  np.testing.assert_array_equal(results[0].depth, results[1].depth)
  one_face = np.array([[0, 1, 2]])
  near_ids, _, near_unclear = _ray_cast(camera, near.astype(np.float32), one_face)
  far_ids, _, far_unclear = _ray_cast(camera, far.astype(np.float32), one_face)
  clear = ~near_unclear & ~far_unclear
  overlap = (near_ids >= 0) & (far_ids >= 0) & clear
  far_only = (near_ids < 0) & (far_ids >= 0) & clear
  assert overlap.sum() > 100 and far_only.sum() > 10
  assert np.all(labels[0][overlap] == 1) and np.all(labels[0][far_only] == 2)


def test_interpenetrating_triangle_soup_matches_ray_casting():
  rng = np.random.default_rng(3)
  camera = _camera()
  centres = np.concatenate([rng.uniform(-0.6, 0.6, (40, 2)), rng.uniform(2.0, 3.0, (40, 1))], -1)
  vertices = (centres[:, None, :] + rng.normal(size=(40, 3, 3)) * 0.4).reshape(-1, 3)
  faces = np.arange(120, dtype=np.int32).reshape(40, 3)
  fragments = mesh_render.rasterize(jnp.asarray(vertices, jnp.float32), jnp.asarray(faces), camera)
  ids, depth, ambiguous = _ray_cast(camera, vertices.astype(np.float32), faces)
  clear = ~ambiguous
  assert clear.mean() > 0.9
  np.testing.assert_array_equal(np.asarray(fragments.face_ids)[clear], ids[clear])
  np.testing.assert_allclose(np.asarray(fragments.depth)[clear], depth[clear], rtol=1e-4)


def test_backface_culling_follows_flame_winding_under_the_default_camera():
  camera = camera_lib.default_camera(SIZE, SIZE)
  # Counter-clockwise seen from +z, i.e. from in front of the face, where the camera is.
  triangle = jnp.array([[-0.05, -0.05, 0.0], [0.05, -0.05, 0.0], [0.0, 0.06, 0.0]])
  front = jnp.array([[0, 1, 2]], jnp.int32)
  back = front[:, ::-1]
  drawn = mesh_render.rasterize(triangle, front, camera, cull_backfaces=True)
  culled = mesh_render.rasterize(triangle, back, camera, cull_backfaces=True)
  both = mesh_render.rasterize(triangle, back, camera)
  assert drawn.mask.sum() > 100 and culled.mask.sum() == 0
  np.testing.assert_array_equal(both.mask, drawn.mask)
  behind = triangle.at[0, 2].set(1.5)  # that vertex is 1.5 m behind the camera: not drawn
  assert mesh_render.rasterize(behind, front, camera).mask.sum() == 0
  # A closed convex mesh looks the same with and without culling, from fewer fragments.
  vertices, faces = mesh_topology.icosphere(2)
  vertices = jnp.asarray(vertices * 0.08)
  with_cull = mesh_render.rasterize(vertices, jnp.asarray(faces), camera, cull_backfaces=True)
  without = mesh_render.rasterize(vertices, jnp.asarray(faces), camera)
  np.testing.assert_array_equal(with_cull.face_ids, without.face_ids)
  assert int(with_cull.fragments) < 0.7 * int(without.fragments)


def test_sample_texture_matches_scipy_bilinear():
  rng = np.random.default_rng(4)
  texture = rng.uniform(size=(7, 11, 3)).astype(np.float32)
  uv = rng.uniform(-0.1, 1.1, (50, 2)).astype(np.float32)
  got = mesh_render.sample_texture(jnp.asarray(texture), jnp.asarray(uv))
  x = uv[:, 0] * 11 - 0.5
  y = (1.0 - uv[:, 1]) * 7 - 0.5
  want = np.stack([ndimage.map_coordinates(texture[..., c], [y, x], order=1, mode="nearest")
                   for c in range(3)], -1)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_textured_plane_is_perspective_correct_and_shaded():
  rng = np.random.default_rng(5)
  camera = _camera()
  vertices, faces, normal, offset = _plane_through_image(rng, camera, grid=4)
  # u runs linearly with world x over the plane, v with world y; a texture whose value is the
  # texel-centre u reproduces u exactly under bilinear filtering.
  lo, hi = vertices.min(0), vertices.max(0)
  uvs = 0.1 + 0.8 * (vertices[:, :2] - lo[:2]) / (hi[:2] - lo[:2])
  tex_width = 16
  ramp = (np.arange(tex_width) + 0.5) / tex_width
  texture = np.broadcast_to(ramp[None, :, None], (5, tex_width, 1)).astype(np.float32)
  light = shading.ambient_directional_sh(0.5, 0.0, (0.0, 0.0, -1.0))
  image = mesh_render.render_mesh(jnp.asarray(vertices), jnp.asarray(faces), camera,
                                  texture=jnp.asarray(texture), uvs=jnp.asarray(uvs),
                                  uv_faces=jnp.asarray(faces), sh_coeffs=light)
  rays = _pixel_rays(camera)
  world_x = rays[:, 0] * offset / (rays @ normal)
  want_u = 0.1 + 0.8 * (world_x - lo[0]) / (hi[0] - lo[0])
  np.testing.assert_allclose(np.asarray(image.color)[..., 0].reshape(-1), 0.5 * want_u,
                             atol=2e-5)


def test_vmap_over_a_batch_and_chunking_do_not_change_the_image():
  vertices, faces = mesh_topology.icosphere(2)
  rng = np.random.default_rng(6)
  shifts = np.concatenate([rng.uniform(-0.3, 0.3, (3, 2)), rng.uniform(3, 4, (3, 1))], -1)
  batch_vertices = jnp.asarray(vertices[None] + shifts[:, None], jnp.float32)
  camera = _camera()
  cameras = camera_lib.Camera(K=jnp.broadcast_to(camera.K, (3, 3, 3)),
                              viewmat=jnp.broadcast_to(camera.viewmat, (3, 4, 4)),
                              width=SIZE, height=SIZE)
  batched = jax.jit(jax.vmap(lambda v, c: mesh_render.rasterize(v, jnp.asarray(faces), c)))(
      batch_vertices, cameras)
  for b in range(3):
    single = mesh_render.rasterize(batch_vertices[b], jnp.asarray(faces), camera)
    np.testing.assert_array_equal(batched.face_ids[b], single.face_ids)
    np.testing.assert_allclose(batched.depth[b], single.depth, rtol=1e-6)
  chunked = mesh_render.rasterize(batch_vertices[0], jnp.asarray(faces), camera, chunk_size=100)
  assert int(chunked.fragments) > 10 * 100  # many loop steps, with ties across chunks
  np.testing.assert_array_equal(chunked.face_ids, batched.face_ids[0])
  np.testing.assert_allclose(chunked.depth, batched.depth[0], rtol=1e-6)


def test_overlay_blends_only_where_the_mesh_is():
  vertices, faces = mesh_topology.icosphere(2)
  camera = camera_lib.default_camera(SIZE, SIZE)
  image = jnp.asarray(np.random.default_rng(7).uniform(size=(SIZE, SIZE, 3)), jnp.float32)
  out = mesh_render.overlay_mesh(image, jnp.asarray(vertices * 0.06), jnp.asarray(faces), camera)
  covered = np.asarray(mesh_render.rasterize(jnp.asarray(vertices * 0.06), jnp.asarray(faces),
                                  camera).mask) > 0
  assert covered.sum() > 100
  np.testing.assert_array_equal(np.asarray(out)[~covered], np.asarray(image)[~covered])
  assert np.all(np.abs(np.asarray(out) - np.asarray(image))[covered].max(-1) > 0)
  with pytest.raises(ValueError, match="mesh_render.py: image"):
    mesh_render.overlay_mesh(image[:10], jnp.asarray(vertices), jnp.asarray(faces), camera)


def test_bad_mesh_input_raises_clear_errors():
  camera = _camera()
  with pytest.raises(ValueError, match="mesh_render.py: vertices must be"):
    mesh_render.rasterize(jnp.zeros((2, 5, 3)), jnp.zeros((1, 3), jnp.int32), camera)
  with pytest.raises(ValueError, match="mesh_render.py: faces must be"):
    mesh_render.rasterize(jnp.zeros((5, 3)), jnp.zeros((1, 3)), camera)
  with pytest.raises(ValueError, match="texture needs uvs"):
    mesh_render.render_mesh(jnp.zeros((5, 3)), jnp.zeros((1, 3), jnp.int32), camera,
                            texture=jnp.zeros((4, 4, 3)))
