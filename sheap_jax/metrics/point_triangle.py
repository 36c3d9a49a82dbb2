"""Exact point-to-triangle-mesh distances (NumPy, float64), for geometry metrics.

The NoW error is the distance from every scan vertex to the closest point of the predicted
surface, so it must be exact (faces, edges and vertices alike), not a point-to-vertex proxy.

`MeshDistanceIndex` is built once per mesh and answers many queries (the rigid refinement moves
the scan, never the mesh). It prefilters with a KD-tree on proxy points that cover every
triangle to within `cover_radius` (centroids of a uniform subdivision). For a point, the
triangle owning its nearest proxy gives an upper bound u on the distance; every triangle at
distance <= u has a proxy within u + cover_radius, so the triangles owning the proxies in that
ball are the only candidates, and the answer is exact. The ball usually lies within the point's
16 nearest proxies (one KD-tree query); otherwise (far from the surface) a ball query collects
it, and a point whose ball holds more proxies than the mesh has triangles is compared with
every triangle instead.
"""
import itertools

import numpy as np
from scipy import spatial

_PAIRS_PER_CHUNK = 1 << 17  # (point, triangle) pairs evaluated at once: bounds memory
_NEIGHBOURS = 16  # proxies fetched per point; enough near the surface
_SLACK = 1e-9  # relative margin on the prefilter's bounds, far above float64 rounding


def closest_points_on_triangles(points, a, b, c):
  """Closest point of triangle (a, b, c) to each point; all arrays broadcast to (..., 3).

  The closest point is the projection onto the plane when it falls inside the triangle, and
  otherwise the closest point on one of the three edges (which covers the vertex regions). This
  also stays exact for degenerate (zero-area) triangles, whose plane test is skipped.
  """
  points, a, b, c = (np.asarray(x, np.float64) for x in (points, a, b, c))
  ab, ac, ap = b - a, c - a, points - a
  d00 = _dot(ab, ab)
  d01 = _dot(ab, ac)
  d11 = _dot(ac, ac)
  d20 = _dot(ap, ab)
  d21 = _dot(ap, ac)
  det = d00 * d11 - d01 * d01
  # Degeneracy test relative to the edge lengths, so it is independent of units.
  planar = det > 1e-12 * d00 * d11
  safe_det = np.where(planar, det, 1.0)
  v = (d11 * d20 - d01 * d21) / safe_det
  w = (d00 * d21 - d01 * d20) / safe_det
  inside = planar & (v >= 0.0) & (w >= 0.0) & (v + w <= 1.0)
  projection = a + v[..., None] * ab + w[..., None] * ac

  best = _closest_on_segment(points, a, b)
  best_sq = _dot(points - best, points - best)
  for start, end in ((b, c), (c, a)):
    candidate = _closest_on_segment(points, start, end)
    candidate_sq = _dot(points - candidate, points - candidate)
    closer = candidate_sq < best_sq
    best = np.where(closer[..., None], candidate, best)
    best_sq = np.where(closer, candidate_sq, best_sq)
  return np.where(inside[..., None], projection, best)


def _dot(x, y):
  return np.einsum("...i,...i->...", x, y)


def _closest_on_segment(points, start, end):
  direction = end - start
  length_sq = _dot(direction, direction)
  t = _dot(points - start, direction) / np.where(length_sq > 0.0, length_sq, 1.0)
  t = np.clip(np.where(length_sq > 0.0, t, 0.0), 0.0, 1.0)
  return start + t[..., None] * direction


def _validated_mesh(vertices, faces):
  vertices = np.asarray(vertices, np.float64)
  faces = np.asarray(faces)
  if vertices.ndim != 2 or vertices.shape[1] != 3:
    raise ValueError(f"vertices must have shape (V, 3), got {vertices.shape}")
  if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
    raise ValueError(f"faces must have shape (F, 3) with F > 0, got {faces.shape}")
  if not np.issubdtype(faces.dtype, np.integer):
    raise ValueError(f"faces must hold integer vertex indices, got dtype {faces.dtype}")
  if faces.min() < 0 or faces.max() >= len(vertices):
    raise ValueError(
        f"faces index vertices 0..{len(vertices) - 1} but hold {faces.min()}..{faces.max()}")
  if not np.all(np.isfinite(vertices)):
    raise ValueError("vertices hold NaN or infinite coordinates")
  return vertices, faces.astype(np.int64)


def _subdivision_barycentrics(n):
  """Barycentric centroids of the n*n triangles of a uniform n-subdivision, shape (n*n, 3)."""
  centroids = []
  for i in range(n):
    for j in range(n - i):
      centroids.append((i + 1 / 3, j + 1 / 3))  # upright sub-triangle (i, j)
      if i + j < n - 1:
        centroids.append((i + 2 / 3, j + 2 / 3))  # inverted sub-triangle above it
  uv = np.asarray(centroids) / n
  return np.stack([1.0 - uv.sum(1), uv[:, 0], uv[:, 1]], axis=1)


class MeshDistanceIndex:
  """A triangle mesh prepared for exact closest-point queries.

  Attributes: triangles (F, 3, 3), face_normals (F, 3) unit (0 for degenerate faces), and
  cover_radius (every point of every triangle lies this close to one of its proxies).
  """

  def __init__(self, vertices, faces, proxy_spacing=None):
    """proxy_spacing: covering radius aimed for (default: the median triangle radius)."""
    vertices, faces = _validated_mesh(vertices, faces)
    self.triangles = vertices[faces]  # (F, 3, 3)
    centroids = self.triangles.mean(axis=1)
    # A triangle lies within its circumscribing radius around its centroid (distance is convex,
    # so the farthest point is a vertex); an n-subdivision shrinks that radius n times.
    radii = np.linalg.norm(self.triangles - centroids[:, None], axis=-1).max(axis=1)
    spacing = proxy_spacing if proxy_spacing is not None else np.median(radii)
    spacing = max(float(spacing), 1e-9 * max(float(radii.max()), 1e-300))
    splits = np.maximum(1, np.ceil(radii / spacing)).astype(np.int64)
    proxies, owners = [], []
    for n in np.unique(splits):
      members = np.nonzero(splits == n)[0]
      weights = _subdivision_barycentrics(int(n))  # (n*n, 3)
      proxies.append(np.einsum("sk,fkd->fsd", weights, self.triangles[members]).reshape(-1, 3))
      owners.append(np.repeat(members, len(weights)))
    self.cover_radius = float(np.max(radii / splits))
    self._centroids, self._radii = centroids, radii
    normals = np.cross(self.triangles[:, 1] - self.triangles[:, 0],
                       self.triangles[:, 2] - self.triangles[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    self.face_normals = np.where(lengths > 0, normals / np.where(lengths > 0, lengths, 1), 0)
    self._proxy_faces = np.concatenate(owners)
    self._tree = spatial.cKDTree(np.concatenate(proxies))

  @property
  def num_faces(self):
    return len(self.triangles)

  def query(self, points):
    """Returns (distances (N,), closest_points (N, 3), face_ids (N,)) for points (N, 3)."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
      raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if not np.all(np.isfinite(points)):
      raise ValueError("points hold NaN or infinite coordinates")
    distances = np.empty(len(points))
    closest = np.empty((len(points), 3))
    face_ids = np.empty(len(points), np.int64)
    k = min(_NEIGHBOURS, self._tree.n)
    for ids in _batches(np.arange(len(points)), np.full(len(points), k), _PAIRS_PER_CHUNK):
      neighbour_distances, neighbours = self._tree.query(points[ids], k=k)
      neighbour_distances = neighbour_distances.reshape(len(ids), k)
      neighbours = neighbours.reshape(len(ids), k)
      # Upper bound: the distance to the triangle that owns the nearest proxy. Every triangle
      # at distance <= upper has a proxy within `radius` = upper + cover_radius.
      upper, _ = self._pair_distances(points[ids], self._proxy_faces[neighbours[:, 0]])
      radius = (upper + self.cover_radius) * (1 + _SLACK)
      # The k nearest proxies hold the whole ball unless the k-th is still inside it.
      complete = (neighbour_distances[:, -1] > radius) | (k == self._tree.n)
      rows, columns = np.nonzero((neighbour_distances <= radius[:, None]) & complete[:, None])
      done = ids[complete]
      candidates = self._proxy_faces[neighbours[rows, columns]]
      _, owners = np.unique(rows, return_inverse=True)
      result = self._segment_best(points[done], upper[complete], owners, candidates)
      distances[done], closest[done], face_ids[done] = result
      self._query_balls(points, ids[~complete], upper[~complete], radius[~complete],
                        (distances, closest, face_ids))
    return distances, closest, face_ids

  def _query_balls(self, points, ids, upper, radius, outputs):
    """Exact answers for points whose candidate ball holds many proxies (far from the mesh)."""
    counts = self._tree.query_ball_point(points[ids], radius, return_length=True)
    # Past one proxy per triangle, comparing with every triangle is cheaper.
    crowded = counts > self.num_faces
    for batch in _batches(np.flatnonzero(~crowded), counts[~crowded], _PAIRS_PER_CHUNK):
      lists = self._tree.query_ball_point(points[ids[batch]], radius[batch],
                                          return_sorted=False)
      proxy_ids = np.fromiter(itertools.chain.from_iterable(lists), np.int64,
                              count=int(counts[batch].sum()))
      owners = np.repeat(np.arange(len(batch)), counts[batch])
      result = self._segment_best(points[ids[batch]], upper[batch], owners,
                                  self._proxy_faces[proxy_ids])
      for output, value in zip(outputs, result):
        output[ids[batch]] = value
    crowded = np.flatnonzero(crowded)
    for batch in _batches(crowded, np.full(len(crowded), self.num_faces), _PAIRS_PER_CHUNK):
      owners = np.repeat(np.arange(len(batch)), self.num_faces)
      result = self._segment_best(points[ids[batch]], upper[batch], owners,
                                  np.tile(np.arange(self.num_faces), len(batch)))
      for output, value in zip(outputs, result):
        output[ids[batch]] = value

  def _pair_distances(self, points, faces):
    """Exact distance and closest point from points[i] to triangle faces[i]."""
    tri = self.triangles[faces]
    near = closest_points_on_triangles(points, tri[:, 0], tri[:, 1], tri[:, 2])
    return np.linalg.norm(points - near, axis=-1), near

  def _segment_best(self, points, upper, owners, faces):
    """Best of the candidate (owners[j], faces[j]) pairs; owners sorted, each point present.

    Pairs that cheap lower bounds (bounding sphere, supporting plane) place beyond the point's
    upper bound are dropped first; the triangle that gave the upper bound always survives.
    """
    if len(points) == 0:
      return np.empty(0), np.empty((0, 3)), np.empty(0, np.int64)
    offsets = points[owners] - self._centroids[faces]
    lower = np.maximum(np.linalg.norm(offsets, axis=1) - self._radii[faces],
                       np.abs(np.einsum("ij,ij->i", offsets, self.face_normals[faces])))
    keep = lower <= upper[owners] + _SLACK * (upper[owners] + self.cover_radius)
    owners, faces = owners[keep], faces[keep]
    d, near = self._pair_distances(points[owners], faces)
    starts = np.flatnonzero(np.diff(owners, prepend=-1))
    if len(starts) != len(points):
      raise RuntimeError("closest-point prefilter lost a point's candidates (internal error)")
    best_d = np.minimum.reduceat(d, starts)
    is_best = d == best_d[owners]
    first = np.flatnonzero(is_best)
    first = first[np.diff(owners[first], prepend=-1) != 0]
    return best_d, near[first], faces[first]


def _batches(ids, costs, budget):
  """Splits ids into consecutive batches whose summed costs stay within budget (>= 1 id)."""
  total = np.cumsum(costs)
  start = 0
  while start < len(ids):
    base = total[start - 1] if start else 0
    stop = max(start + 1, int(np.searchsorted(total, base + budget, side="right")))
    yield ids[start:stop]
    start = stop


def point_to_mesh_distance(points, vertices, faces):
  """Exact unsigned distance from each point to a triangle mesh's surface.

  Returns (distances (N,), closest_points (N, 3), face_ids (N,)), float64.
  """
  return MeshDistanceIndex(vertices, faces).query(points)
