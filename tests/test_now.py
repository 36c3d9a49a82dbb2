"""NoW metric: exact point-to-mesh distances, the crop, the alignment, and the summaries."""
import numpy as np
from PIL import Image
import pytest
from scipy import linalg
from scipy.spatial.transform import Rotation
import trimesh
from trimesh import triangles as trimesh_triangles

from sheap_jax.metrics import now
from sheap_jax.metrics import point_triangle


def _brute_force_reference(points, vertices, faces):
  """trimesh's exact per-triangle closest points, minimised over every triangle."""
  tri = vertices[faces]
  repeated_points = np.repeat(points, len(tri), axis=0)
  closest = trimesh_triangles.closest_point(np.tile(tri, (len(points), 1, 1)), repeated_points)
  distances = np.linalg.norm(closest - repeated_points, axis=1).reshape(len(points), len(tri))
  best = distances.argmin(axis=1)
  return distances.min(axis=1), closest.reshape(len(points), len(tri), 3)[np.arange(len(points)),
                                                                           best]


def _voronoi_region_points(rng, a, b, c, count):
  """Points in each region of triangle abc: face (both sides), the 3 edges, the 3 vertices."""
  normal = np.cross(b - a, c - a)
  normal /= np.linalg.norm(normal)
  centroid = (a + b + c) / 3
  size = np.linalg.norm(b - a)
  points = []
  for _ in range(count):
    height = rng.uniform(-1, 1) * size * normal
    w = rng.dirichlet(np.ones(3))
    points.append(w[0] * a + w[1] * b + w[2] * c + height)  # face region
    for p, q in ((a, b), (b, c), (c, a)):  # edge regions: outside the edge, within its span
      out = np.cross(q - p, normal)
      out *= np.sign(np.dot(out, p - centroid)) / np.linalg.norm(out)
      points.append(p + rng.uniform(0.1, 0.9) * (q - p) + rng.uniform(0.1, 1) * size * out
                    + height)
    for p in (a, b, c):  # vertex regions: beyond the vertex, away from the centroid
      points.append(p + rng.uniform(0.2, 1) * (p - centroid) + height)
  return np.asarray(points)


def test_flat_mesh_offsets_along_the_normal_give_the_offset():
  rng = np.random.default_rng(0)
  grid = np.stack(np.meshgrid(np.arange(6.0), np.arange(5.0), indexing="ij"), -1).reshape(-1, 2)
  index = np.arange(30).reshape(6, 5)
  quads = np.stack([index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]], -1)
  faces = np.concatenate([quads[..., [0, 1, 2]], quads[..., [0, 2, 3]]]).reshape(-1, 3)
  rotation = Rotation.random(random_state=1).as_matrix()
  origin = rng.normal(size=3)
  to_world = lambda xyz: 0.01 * xyz @ rotation.T + origin  # 1 cm squares
  vertices = to_world(np.c_[grid, np.zeros(len(grid))])
  feet = np.c_[rng.uniform([0.5, 0.5], [4.5, 3.5], (200, 2)), np.zeros(200)]
  heights = rng.uniform(-0.02, 0.02, 200)  # up to 2 cm either side, foot well inside
  points = to_world(feet + heights[:, None] * np.array([0, 0, 100.0]))
  distances, closest, face_ids = point_triangle.point_to_mesh_distance(points, vertices, faces)
  np.testing.assert_allclose(distances, np.abs(heights), atol=1e-6)
  np.testing.assert_allclose(closest, to_world(feet), atol=1e-6)
  foot_cell = np.floor(feet[:, :2]).astype(int)
  np.testing.assert_array_equal(face_ids % 20, foot_cell[:, 0] * 4 + foot_cell[:, 1])


def test_sphere_tessellation_known_distances_at_vertices_faces_and_edges():
  rng = np.random.default_rng(2)
  radius = 0.1
  sphere = trimesh.creation.icosphere(subdivisions=2, radius=radius)
  vertices, faces = np.asarray(sphere.vertices), np.asarray(sphere.faces)
  index = point_triangle.MeshDistanceIndex(vertices, faces)

  # Beyond a vertex along its direction: the vertex is the closest point (convex, inscribed).
  lam = rng.uniform(1.01, 1.5, len(vertices))
  distances, closest, _ = index.query(vertices * lam[:, None])
  np.testing.assert_allclose(distances, (lam - 1) * radius, atol=1e-6)
  np.testing.assert_allclose(closest, vertices, atol=1e-6)

  # Off a face centre along its normal, outside and a little inside.
  centroids = vertices[faces].mean(1)
  normals = np.asarray(sphere.face_normals)
  heights = rng.uniform(-0.002, 0.02, len(faces))
  distances, closest, face_ids = index.query(centroids + heights[:, None] * normals)
  np.testing.assert_allclose(distances, np.abs(heights), atol=1e-6)
  np.testing.assert_allclose(closest, centroids, atol=1e-6)
  np.testing.assert_array_equal(face_ids, np.arange(len(faces)))

  # Off an edge midpoint along the mean of its two faces' normals.
  edges, edge_faces = sphere.face_adjacency_edges, sphere.face_adjacency
  midpoints = vertices[edges].mean(1)
  bisectors = normals[edge_faces].sum(1)
  bisectors /= np.linalg.norm(bisectors, axis=1, keepdims=True)
  heights = rng.uniform(0.0, 0.02, len(edges))
  distances, closest, _ = index.query(midpoints + heights[:, None] * bisectors)
  np.testing.assert_allclose(distances, heights, atol=1e-6)
  np.testing.assert_allclose(closest, midpoints, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_distances_match_trimesh_on_random_meshes_in_every_voronoi_region(seed, monkeypatch):
  # A tiny pair budget forces many batches; far points take the every-triangle path.
  monkeypatch.setattr(point_triangle, "_PAIRS_PER_CHUNK", 97)
  rng = np.random.default_rng(seed)
  vertices = rng.uniform(-1, 1, (40, 3))
  faces = np.array([rng.choice(40, 3, replace=False) for _ in range(50)])
  regional = np.concatenate([_voronoi_region_points(rng, *vertices[f], count=2)
                             for f in faces[:10]])
  points = np.concatenate([regional, rng.uniform(-1.5, 1.5, (150, 3)),
                           rng.normal(size=(20, 3)) * 20])
  distances, closest, face_ids = point_triangle.point_to_mesh_distance(points, vertices, faces)
  ref_distances, ref_closest = _brute_force_reference(points, vertices, faces)
  np.testing.assert_allclose(distances, ref_distances, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(closest, ref_closest, atol=1e-9)
  # The returned face holds the returned closest point.
  on_own_face = trimesh_triangles.closest_point(vertices[faces[face_ids]], points)
  np.testing.assert_allclose(on_own_face, closest, atol=1e-9)


def test_single_triangle_regions_match_trimesh():
  rng = np.random.default_rng(3)
  a, b, c = rng.normal(size=(3, 3))
  points = _voronoi_region_points(rng, a, b, c, count=30)
  ours = point_triangle.closest_points_on_triangles(points, a, b, c)
  theirs = trimesh_triangles.closest_point(np.tile([a, b, c], (len(points), 1, 1)), points)
  np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_degenerate_triangles_reduce_to_segments_and_points():
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(2, 3))
  points = rng.normal(size=(100, 3)) * 2
  t = np.clip((points - a) @ (b - a) / np.dot(b - a, b - a), 0, 1)
  segment_closest = a + t[:, None] * (b - a)
  collinear = point_triangle.closest_points_on_triangles(points, a, b, 0.3 * a + 0.7 * b)
  np.testing.assert_allclose(collinear, segment_closest, atol=1e-12)
  collapsed = point_triangle.closest_points_on_triangles(points, a, a, a)
  np.testing.assert_allclose(collapsed, np.broadcast_to(a, points.shape), atol=0)


def test_bad_meshes_are_rejected_with_a_reason():
  vertices = np.zeros((3, 3))
  with pytest.raises(ValueError, match="faces index vertices 0..2"):
    point_triangle.MeshDistanceIndex(vertices, np.array([[0, 1, 3]]))
  with pytest.raises(ValueError, match=r"vertices must have shape \(V, 3\)"):
    point_triangle.MeshDistanceIndex(np.zeros((3, 2)), np.array([[0, 1, 2]]))
  with pytest.raises(ValueError, match="NaN"):
    point_triangle.point_to_mesh_distance(np.full((1, 3), np.nan), np.eye(3), [[0, 1, 2]])


# A head-like closed surface in metres, facing +z: an ellipsoid with a nose, brow and cheek.
def _head_mesh(rows=28, cols=40):
  polar = np.linspace(0, np.pi, rows + 1)[1:-1]
  azimuth = np.linspace(-np.pi, np.pi, cols, endpoint=False)
  polar, azimuth = np.meshgrid(polar, azimuth, indexing="ij")
  directions = np.stack([np.sin(polar) * np.sin(azimuth), np.cos(polar),
                         np.sin(polar) * np.cos(azimuth)], -1).reshape(-1, 3)
  directions = np.concatenate([[[0, 1, 0]], directions, [[0, -1, 0]]])
  vertices = directions * np.array([0.075, 0.10, 0.09])
  front = directions[:, 2] > 0

  def bump(x, y, width, height, amplitude):
    return amplitude * front * np.exp(-((vertices[:, 0] - x) / width)**2
                                      - ((vertices[:, 1] - y) / height)**2)

  vertices[:, 2] += (bump(0, 0, 0.012, 0.03, 0.025) + bump(0, 0.04, 0.05, 0.01, 0.008)
                     + bump(0.02, -0.06, 0.02, 0.015, 0.006))
  ring = np.arange(cols)
  faces = [np.stack([np.zeros(cols, int), 1 + ring, 1 + (ring + 1) % cols], 1)]
  for i in range(rows - 2):
    top, bottom = 1 + i * cols + ring, 1 + (i + 1) * cols + ring
    top_next, bottom_next = 1 + i * cols + (ring + 1) % cols, 1 + (i + 1) * cols + (ring + 1) % cols
    faces += [np.stack([top, bottom, top_next], 1), np.stack([top_next, bottom, bottom_next], 1)]
  last = len(vertices) - 1
  base = 1 + (rows - 2) * cols
  faces.append(np.stack([np.full(cols, last), base + (ring + 1) % cols, base + ring], 1))
  # NoW order: right eye outer, inner; left eye inner, outer; nose bottom; mouth corners.
  targets = np.array([[-0.045, 0.03], [-0.016, 0.03], [0.016, 0.03], [0.045, 0.03],
                      [0.0, -0.018], [-0.025, -0.05], [0.025, -0.05]])
  gaps = np.linalg.norm(vertices[None, :, :2] - targets[:, None], axis=-1)
  landmark_ids = np.where(front[None], gaps, np.inf).argmin(axis=1)
  return vertices, np.concatenate(faces), landmark_ids


def _surface_samples(vertices, faces, count, rng):
  """Area-uniform random points on a mesh surface."""
  tri = vertices[faces]
  areas = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
  chosen = rng.choice(len(faces), count, p=areas / areas.sum())
  weights = rng.dirichlet(np.ones(3), count)
  return np.einsum("nk,nkd->nd", weights, tri[chosen])


def _random_similarity(rng, scale=True):
  return now.Similarity(float(rng.uniform(0.7, 1.4)) if scale else 1.0,
                        Rotation.random(random_state=rng.integers(1 << 30)).as_matrix(),
                        rng.normal(size=3))


@pytest.fixture(scope="module")
def head():
  vertices, faces, landmark_ids = _head_mesh()
  rng = np.random.default_rng(5)
  return vertices, faces, vertices[landmark_ids], _surface_samples(vertices, faces, 4000, rng)


def test_head_fixture_is_a_closed_head_like_surface(head):
  vertices, faces, landmarks, _ = head
  mesh = trimesh.Trimesh(vertices, faces, process=False)
  assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
  assert landmarks[4, 2] > landmarks[[1, 2], 2].max() + 0.01  # the nose sticks out


def test_crop_keeps_the_vertices_in_nows_sphere(head):
  vertices, faces, landmarks, _ = head
  inner_mid = (landmarks[1] + landmarks[2]) / 2
  centre = landmarks[4] + 0.3 * (inner_mid - landmarks[4])
  radius = 1.4 * (np.linalg.norm(landmarks[0] - landmarks[3])
                  + np.linalg.norm(inner_mid - landmarks[4])) / 2
  kept = np.linalg.norm(vertices - centre, axis=1) <= radius
  cropped, cropped_faces = now.crop_scan(vertices, faces, landmarks)
  np.testing.assert_array_equal(cropped, vertices[kept])
  whole = faces[kept[faces].all(axis=1)]
  np.testing.assert_array_equal(cropped[cropped_faces], vertices[whole])
  assert 0 < kept.sum() < len(vertices)


def test_procrustes_recovers_a_similarity_and_never_reflects():
  rng = np.random.default_rng(6)
  source = rng.normal(size=(7, 3))
  truth = _random_similarity(rng)
  fitted = now.procrustes(source, truth.apply(source))
  np.testing.assert_allclose(fitted.scale, truth.scale, rtol=1e-10)
  np.testing.assert_allclose(fitted.rotation, truth.rotation, atol=1e-10)
  np.testing.assert_allclose(fitted.translation, truth.translation, atol=1e-10)
  mirrored = now.procrustes(source, source * np.array([-1.0, 1, 1]))
  np.testing.assert_allclose(np.linalg.det(mirrored.rotation), 1.0, atol=1e-12)


def test_procrustes_matches_scipy_orthogonal_procrustes_on_noisy_points():
  rng = np.random.default_rng(12)
  source = rng.normal(size=(7, 3))
  target = _random_similarity(rng).apply(source) + rng.normal(size=(7, 3)) * 0.2
  source_c, target_c = source - source.mean(0), target - target.mean(0)
  rotation_t, _ = linalg.orthogonal_procrustes(source_c, target_c)  # source_c @ R ~ target_c
  assert np.linalg.det(rotation_t) > 0
  scale = np.trace(target_c.T @ source_c @ rotation_t) / np.sum(source_c**2)
  fitted = now.procrustes(source, target)
  np.testing.assert_allclose(fitted.rotation, rotation_t.T, atol=1e-10)
  np.testing.assert_allclose(fitted.scale, scale, rtol=1e-10)
  np.testing.assert_allclose(fitted.apply(source).mean(0), target.mean(0), atol=1e-12)
  rigid = now.procrustes(source, target, scale=False)
  assert rigid.scale == 1.0
  np.testing.assert_allclose(rigid.rotation, rotation_t.T, atol=1e-10)


def _scan_of(head, transform, landmark_noise, rng):
  vertices, faces, landmarks, samples = head
  scan = transform.apply(samples)
  scan_landmarks = transform.apply(landmarks) + rng.normal(size=(7, 3)) * landmark_noise
  cropped, _ = now.crop_scan(scan, None, scan_landmarks)
  return cropped, scan_landmarks


def _landmark_only_errors(head, alignment, cropped):
  vertices, faces = head[:2]
  return point_triangle.point_to_mesh_distance(
      cropped, alignment.landmark_transform.apply(vertices), faces)[0]


def test_alignment_of_a_mesh_to_its_own_surface_is_exact(head):
  rng = np.random.default_rng(7)
  vertices, faces, landmarks, samples = head
  truth = _random_similarity(rng)
  scan = truth.apply(samples)
  errors = now.now_errors(vertices, faces, landmarks, scan, None, truth.apply(landmarks))
  assert errors.size > 1000
  assert errors.max() < 1e-5  # 0.01 mm


@pytest.mark.parametrize("scale", [True, False])
def test_refinement_undoes_landmark_noise(head, scale):
  rng = np.random.default_rng(8 + scale)
  vertices, faces, landmarks, _ = head
  truth = _random_similarity(rng, scale=scale)
  cropped, noisy_landmarks = _scan_of(head, truth, 0.003, rng)
  alignment = now.rigid_align(vertices, faces, landmarks, cropped, noisy_landmarks, scale=scale)
  landmark_only = _landmark_only_errors(head, alignment, cropped)
  assert alignment.converged
  assert np.mean(landmark_only) > 0.5e-3  # 3 mm landmark noise leaves > 0.5 mm on average
  assert np.mean(alignment.errors) < 1e-4 and np.max(alignment.errors) < 1e-4  # < 0.1 mm
  np.testing.assert_allclose(alignment.transform.scale, truth.scale, rtol=1e-5)
  np.testing.assert_allclose(alignment.transform.rotation, truth.rotation, atol=1e-5)
  # The reported errors are the scan-to-aligned-mesh distances.
  recomputed = point_triangle.point_to_mesh_distance(
      cropped, alignment.transform.apply(vertices), faces)[0]
  np.testing.assert_allclose(alignment.errors, recomputed, atol=1e-9)


def test_refinement_reaches_a_minimum_of_the_squared_distances_on_a_noisy_scan(head):
  rng = np.random.default_rng(13)
  vertices, faces, _, _ = head
  cropped, scan_landmarks = _scan_of(head, _random_similarity(rng), 0.003, rng)
  noisy = cropped + rng.normal(size=cropped.shape) * 0.0005  # 0.5 mm scanner noise
  alignment = now.rigid_align(vertices, faces, head[2], noisy, scan_landmarks)
  assert alignment.converged

  def cost(transform):
    distances = point_triangle.point_to_mesh_distance(noisy, transform.apply(vertices), faces)[0]
    return np.sum(distances**2)

  best = cost(alignment.transform)
  np.testing.assert_allclose(best, np.sum(alignment.errors**2), rtol=1e-9)
  for _ in range(6):  # no nearby similarity does better
    nudge = now.Similarity(float(np.exp(rng.normal() * 1e-3)),
                           Rotation.from_rotvec(rng.normal(size=3) * 1e-3).as_matrix(),
                           rng.normal(size=3) * 1e-4)
    assert cost(alignment.transform.then(nudge)) > best
  # Only the scanner noise is left: its mean absolute normal component is 0.4 mm.
  assert 0.3e-3 < np.mean(alignment.errors) < 0.5e-3


def test_metrical_variant_keeps_a_wrong_size_wrong(head):
  rng = np.random.default_rng(10)
  vertices, faces, landmarks, _ = head
  cropped, scan_landmarks = _scan_of(head, _random_similarity(rng, scale=False), 0.0, rng)
  bigger = 1.05 * vertices  # a prediction 5 % too large
  free = now.rigid_align(bigger, faces, 1.05 * landmarks, cropped, scan_landmarks, scale=True)
  metrical = now.rigid_align(bigger, faces, 1.05 * landmarks, cropped, scan_landmarks,
                             scale=False)
  assert metrical.transform.scale == 1.0
  np.testing.assert_allclose(free.transform.scale, 1 / 1.05, rtol=1e-6)
  assert np.mean(free.errors) < 1e-6
  assert np.mean(metrical.errors) > 0.5e-3  # a 5 % scale error stays visible: > 0.5 mm


def test_summaries_and_cumulative_curve_match_numpy(tmp_path):
  rng = np.random.default_rng(11)
  per_image = [rng.gamma(2.0, 0.0006, n) for n in (300, 500)]
  pooled_mm = 1000 * np.concatenate(per_image)
  stats = now.summarize(per_image)
  assert stats["num_points"] == 800
  np.testing.assert_allclose([stats["median_mm"], stats["mean_mm"], stats["std_mm"]],
                             [np.median(pooled_mm), pooled_mm.mean(), pooled_mm.std()],
                             rtol=1e-12)
  thresholds, percent = now.cumulative_error_curve(per_image, max_mm=5.0, num_thresholds=51)
  np.testing.assert_allclose(thresholds, np.linspace(0, 5, 51))
  expected = [100 * np.mean(pooled_mm <= t) for t in thresholds]
  np.testing.assert_allclose(percent, expected)
  path = tmp_path / "plots" / "cumulative.png"
  now.plot_cumulative_errors({"a": per_image, "b": per_image[0] * 2}, str(path))
  with Image.open(path) as image:
    assert image.format == "PNG" and min(image.size) > 100
  with pytest.raises(ValueError, match="no errors"):
    now.summarize([])
