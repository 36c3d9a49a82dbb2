"""Static facts about a triangle mesh's connectivity, computed once in NumPy from its faces.

The Gaussians Regressor lets neighbouring faces exchange information; which faces neighbour
which depends only on the topology (FLAME's `f`), so it is computed here, outside jit, and
passed to the network as constant arrays.
"""
import numpy as np


def check_faces(faces, num_vertices: int | None = None, name: str = "faces") -> np.ndarray:
  """Returns `faces` as an (F, 3) int32 array, or raises a ValueError saying what is wrong."""
  faces = np.asarray(faces)
  if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
    raise ValueError(f"{name}: expected a non-empty (F, 3) array of triangles, got shape "
                     f"{faces.shape}")
  if not np.issubdtype(faces.dtype, np.integer):
    raise ValueError(f"{name}: expected integer vertex indices, got dtype {faces.dtype}")
  if faces.min() < 0 or (num_vertices is not None and faces.max() >= num_vertices):
    raise ValueError(f"{name}: vertex indices must lie in [0, {num_vertices}), got "
                     f"[{faces.min()}, {faces.max()}]")
  if np.any((faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) |
            (faces[:, 0] == faces[:, 2])):
    raise ValueError(f"{name}: some triangles repeat a vertex (degenerate faces)")
  return faces.astype(np.int32)


def face_adjacency(faces, link_non_manifold: bool = True) -> np.ndarray:
  """(F, 3) int32: the face across edge e (vertices e, e+1 mod 3) of each face, -1 if none.

  A boundary edge has no neighbour. A non-manifold edge (shared by more than two faces) links
  each of its faces to the next one around the edge when `link_non_manifold` (the Gaussians
  Regressor's graph: every face still gets one neighbour), or to none otherwise (the mesh
  baseline's antialiasing, which treats such an edge as a silhouette).
  """
  faces = check_faces(faces)
  num_faces = faces.shape[0]
  starts = faces.reshape(-1)
  ends = np.roll(faces, -1, axis=1).reshape(-1)
  edge_keys = np.stack([np.minimum(starts, ends), np.maximum(starts, ends)], axis=1)
  _, edge_ids = np.unique(edge_keys, axis=0, return_inverse=True)
  edge_ids = edge_ids.reshape(-1)
  slots = np.arange(3 * num_faces)
  order = np.lexsort((slots, edge_ids))  # group slots by edge, stable within an edge
  sorted_edges = edge_ids[order]
  group_start = np.r_[0, np.flatnonzero(np.diff(sorted_edges)) + 1]
  group_size = np.diff(np.r_[group_start, sorted_edges.size])
  size_per_slot = np.repeat(group_size, group_size)
  start_per_slot = np.repeat(group_start, group_size)
  rank = np.arange(sorted_edges.size) - start_per_slot
  partner = order[start_per_slot + (rank + 1) % size_per_slot]
  neighbour = np.full(3 * num_faces, -1, np.int64)
  linked = size_per_slot > 1 if link_non_manifold else size_per_slot == 2
  neighbour[order[linked]] = partner[linked] // 3
  return neighbour.reshape(num_faces, 3).astype(np.int32)


def face_centroids(vertices, faces) -> np.ndarray:
  """(F, D) mean of each triangle's three corners (vertices (V, D): positions or UVs)."""
  return np.asarray(vertices, np.float64)[np.asarray(faces)].mean(axis=1)


def icosphere(subdivisions: int, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """A closed, consistently outward-wound sphere mesh: (V, 3) float32 vertices, (F, 3) faces.

  20 * 4**subdivisions faces; a topology-agnostic stand-in for FLAME in tests and benchmarks.
  """
  t = (1.0 + 5.0 ** 0.5) / 2.0
  vertices = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
              (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
  faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
           (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
           (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
  vertices = [np.array(v, np.float64) / np.linalg.norm(v) for v in vertices]
  for _ in range(subdivisions):
    midpoint_of = {}

    def midpoint(a, b):
      key = (min(a, b), max(a, b))
      if key not in midpoint_of:
        m = vertices[a] + vertices[b]
        vertices.append(m / np.linalg.norm(m))
        midpoint_of[key] = len(vertices) - 1
      return midpoint_of[key]

    new_faces = []
    for a, b, c in faces:
      ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
      new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
    faces = new_faces
  return (radius * np.stack(vertices)).astype(np.float32), np.asarray(faces, np.int32)
