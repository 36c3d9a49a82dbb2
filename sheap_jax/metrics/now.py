"""The NoW benchmark's scan-to-mesh error (Sanyal et al. 2019), without its C++/chumpy stack.

Steps, as in the official `now_evaluation` code (`scan2mesh_computations.py`):
1. crop the scan to a sphere around the nose (`crop_scan`);
2. align the prediction to the scan with a similarity Procrustes on the 7 landmarks;
3. refine scale, rotation and translation to minimise the sum of squared distances from the
   cropped scan vertices to the predicted surface (`rigid_align`; the official code runs
   chumpy's dogleg on the same objective, this runs Levenberg-Marquardt to convergence);
4. the error of each cropped scan vertex is its distance to the aligned predicted surface.
The metrical variant (`scale=False`) fixes the scale to 1 in steps 2 and 3: both meshes must then
be in the same unit. Everything here is in the scan's unit (the project's: metres).

Differences from the official code, both of which only matter for broken predictions: the
Procrustes rotation is kept proper (the official one may return a reflection), and the metrical
Procrustes computes its translation for scale 1 (the official one reuses the translation fitted
with the free scale and leaves the refinement to repair it).
"""
import dataclasses
import os

from matplotlib import figure as mpl_figure
import numpy as np
from scipy.spatial.transform import Rotation

from sheap_jax.metrics import point_triangle

# iBUG-68 indices of the 7 NoW landmarks, in NoW's order: right-eye outer and inner corners,
# left-eye inner and outer corners, nose bottom, right and left mouth corners.
NOW_LANDMARK_IBUG_INDICES = (36, 39, 42, 45, 33, 48, 54)
CROP_CENTRE_FRACTION = 0.3  # from the nose bottom towards the inner-eye midpoint
CROP_RADIUS_FACTOR = 1.4  # times the mean of outer-eye distance and nose length
_MAX_DAMPING_INCREASES = 12
_NEGLIGIBLE_MOTION = 1e-13  # relative to the scan's extent: float64 resolution


@dataclasses.dataclass(frozen=True)
class Similarity:
  """x -> scale * rotation @ x + translation."""

  scale: float
  rotation: np.ndarray  # (3, 3), proper (det +1)
  translation: np.ndarray  # (3,)

  def apply(self, points):
    return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

  def inverse(self):
    return Similarity(1.0 / self.scale, self.rotation.T,
                      -(self.rotation.T @ self.translation) / self.scale)

  def then(self, other):
    """The similarity that applies self first, then other."""
    return Similarity(other.scale * self.scale, other.rotation @ self.rotation,
                      other.apply(self.translation))


@dataclasses.dataclass(frozen=True)
class Alignment:
  """The result of `rigid_align`: prediction-to-scan transform and the per-point errors."""

  transform: Similarity  # final, maps predicted vertices into the scan frame
  landmark_transform: Similarity  # the Procrustes initialisation
  errors: np.ndarray  # (N,) distance of each scan point to the aligned surface
  iterations: int
  converged: bool


def _landmarks7(landmarks, name):
  landmarks = np.asarray(landmarks, np.float64)
  if landmarks.shape != (7, 3):
    raise ValueError(f"{name} must be the 7 NoW landmarks with shape (7, 3), got "
                     f"{landmarks.shape}")
  if not np.all(np.isfinite(landmarks)):
    raise ValueError(f"{name} hold NaN or infinite coordinates")
  return landmarks


def face_crop_sphere(scan_landmarks7):
  """Centre and radius of NoW's face crop, from the scan's 7 landmarks."""
  lm = _landmarks7(scan_landmarks7, "scan_landmarks7")
  nose_bottom = lm[4]
  inner_eye_midpoint = (lm[1] + lm[2]) / 2
  centre = nose_bottom + CROP_CENTRE_FRACTION * (inner_eye_midpoint - nose_bottom)
  outer_eye_distance = np.linalg.norm(lm[0] - lm[3])
  nose_length = np.linalg.norm(inner_eye_midpoint - nose_bottom)
  return centre, CROP_RADIUS_FACTOR * (outer_eye_distance + nose_length) / 2


def crop_scan(scan_vertices, scan_faces, scan_landmarks7):
  """Keeps the scan vertices within NoW's face sphere (boundary included).

  Returns (vertices (M, 3), faces (K, 3) re-indexed: the faces whose three vertices are kept;
  None when scan_faces is None, e.g. for a point cloud).
  """
  vertices = np.asarray(scan_vertices, np.float64)
  if vertices.ndim != 2 or vertices.shape[1] != 3:
    raise ValueError(f"scan_vertices must have shape (N, 3), got {vertices.shape}")
  centre, radius = face_crop_sphere(scan_landmarks7)
  keep = np.linalg.norm(vertices - centre, axis=1) <= radius
  if not keep.any():
    raise ValueError(f"no scan vertex lies within {radius:g} of the face centre {centre}: "
                     "are the scan and its landmarks in the same frame and unit?")
  if scan_faces is None:
    return vertices[keep], None
  faces = np.asarray(scan_faces)
  new_index = np.cumsum(keep) - 1
  kept_faces = faces[keep[faces].all(axis=1)]
  return vertices[keep], new_index[kept_faces]


def procrustes(source, target, scale=True):
  """Least-squares similarity (rotation proper) with target ~ transform.apply(source).

  Umeyama's closed form; with scale=False the scale is fixed to 1.
  """
  source = np.asarray(source, np.float64)
  target = np.asarray(target, np.float64)
  source_mean, target_mean = source.mean(0), target.mean(0)
  source_c, target_c = source - source_mean, target - target_mean
  u, singular, vt = np.linalg.svd(target_c.T @ source_c)
  signs = np.array([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
  rotation = (u * signs) @ vt
  s = float(np.sum(singular * signs) / np.sum(source_c**2)) if scale else 1.0
  return Similarity(s, rotation, target_mean - s * rotation @ source_mean)


def _residuals(index, transform, scan_points):
  """Distances in the scan frame, and the closest points of the transformed surface.

  The mesh stays put (its index is built once): the scan goes through the inverse transform and
  the distances are scaled back.
  """
  distances, closest, face_ids = index.query(transform.inverse().apply(scan_points))
  return transform.scale * distances, transform.apply(closest), face_ids


def _jacobian_rows(scan_points, closest, distances, face_normals, pivot, scale):
  """Rows J with distance(step) ~ distance - J @ step, step = ([log-scale], rotation, shift).

  Under the left update about pivot p, a closest point c moves by ds (c - p) + dw x (c - p) + dt
  and (envelope theorem) the distance shrinks by that motion along the unit direction n from c
  to the scan point: J = [n.(c - p), (c - p) x n, n]. Where a point lies on the surface, n is
  the face normal (either sign gives the same normal equations, the residual being 0).
  """
  residual = scan_points - closest
  safe = distances > 0
  direction = np.where(safe[:, None], residual / np.where(safe, distances, 1.0)[:, None],
                       face_normals)
  arm = closest - pivot
  rows = [np.cross(arm, direction), direction]
  if scale:
    rows.insert(0, np.sum(direction * arm, axis=1, keepdims=True))
  return np.concatenate(rows, axis=1)


def _left_update(step, pivot, scale):
  """The similarity z -> exp(ds) R(dw) (z - pivot) + pivot + dt for a parameter step."""
  log_scale, step = (step[0], step[1:]) if scale else (0.0, step)
  rotation = Rotation.from_rotvec(step[:3]).as_matrix()
  s = float(np.exp(log_scale))
  return Similarity(s, rotation, pivot + step[3:] - s * rotation @ pivot)


def _damped_step(index, transform, residuals, cost, scan_points, pivot, extent, scale,
                 damping):
  """One Levenberg-Marquardt step that lowers the cost, or None when none can (a minimum)."""
  distances, closest, face_ids = residuals
  scan_normals = index.face_normals[face_ids] @ transform.rotation.T
  rows = _jacobian_rows(scan_points, closest, distances, scan_normals, pivot, scale)
  normal_matrix = rows.T @ rows
  gradient = rows.T @ distances
  regulariser = np.diag(np.maximum(np.diag(normal_matrix), 1e-300))
  for _ in range(_MAX_DAMPING_INCREASES):
    step = np.linalg.solve(normal_matrix + damping * regulariser, gradient)
    motion = np.abs(step) * np.r_[[1.0] * (len(step) - 3), [1.0 / extent] * 3]
    if motion.max() < _NEGLIGIBLE_MOTION:
      return None
    candidate = transform.then(_left_update(step, pivot, scale))
    trial = _residuals(index, candidate, scan_points)
    trial_cost = float(np.sum(trial[0]**2))
    if trial_cost < cost:
      return candidate, trial, trial_cost, max(damping / 10.0, 1e-12)
    damping *= 10.0
  return None


def rigid_align(pred_vertices, pred_faces, pred_landmarks7, scan_points, scan_landmarks7,
                scale=True, max_iterations=100, tolerance=1e-10):
  """Aligns a predicted mesh to (cropped) scan points the NoW way: landmarks, then surface.

  The refinement is Levenberg-Marquardt on the sum of squared scan-to-mesh distances, with an
  exact closest-point query per trial. It stops at a minimum: when a step lowers the cost by
  less than `tolerance` relatively, when no step lowers it, or when the RMS distance reaches
  float64 resolution.
  """
  pred_landmarks7 = _landmarks7(pred_landmarks7, "pred_landmarks7")
  scan_landmarks7 = _landmarks7(scan_landmarks7, "scan_landmarks7")
  scan_points = np.asarray(scan_points, np.float64)
  if scan_points.ndim != 2 or scan_points.shape[1] != 3 or len(scan_points) == 0:
    raise ValueError(f"scan_points must have shape (N, 3) with N > 0, got {scan_points.shape}")
  index = point_triangle.MeshDistanceIndex(pred_vertices, pred_faces)

  initial = procrustes(pred_landmarks7, scan_landmarks7, scale=scale)
  transform = initial
  residuals = _residuals(index, transform, scan_points)
  cost = float(np.sum(residuals[0]**2))
  pivot = scan_points.mean(0)
  extent = max(float(np.ptp(scan_points, axis=0).max()), 1e-300)
  cost_floor = len(scan_points) * (_NEGLIGIBLE_MOTION * extent)**2
  damping, converged, iterations = 1e-6, False, 0
  for iterations in range(1, max_iterations + 1):
    found = None
    if cost > cost_floor:
      found = _damped_step(index, transform, residuals, cost, scan_points, pivot, extent,
                           scale, damping)
    if found is None:
      converged = True
      break
    previous_cost = cost
    transform, residuals, cost, damping = found
    if previous_cost - cost < tolerance * previous_cost:
      converged = True
      break
  return Alignment(transform, initial, residuals[0], iterations, converged)


def now_errors(pred_vertices, pred_faces, pred_landmarks7, scan_vertices, scan_faces,
               scan_landmarks7, scale=True):
  """Per-point NoW errors (scan unit) of one predicted mesh against one scan.

  scale=False gives the metrical variant (rigid alignment only).
  """
  cropped, _ = crop_scan(scan_vertices, scan_faces, scan_landmarks7)
  return rigid_align(pred_vertices, pred_faces, pred_landmarks7, cropped, scan_landmarks7,
                     scale=scale).errors


def _pooled_mm(errors):
  """Concatenates per-image error arrays (metres) into one array in millimetres."""
  if isinstance(errors, np.ndarray):
    pooled = errors.ravel()
  else:
    pooled = np.concatenate([np.ravel(e) for e in errors]) if len(errors) else np.zeros(0)
  if pooled.size == 0:
    raise ValueError("no errors to summarise")
  return 1000.0 * pooled.astype(np.float64)


def summarize(errors):
  """Median, mean and standard deviation in mm of errors in metres, pooled over images."""
  mm = _pooled_mm(errors)
  return {"median_mm": float(np.median(mm)), "mean_mm": float(np.mean(mm)),
          "std_mm": float(np.std(mm)), "num_points": int(mm.size)}


def cumulative_error_curve(errors, max_mm=8.0, num_thresholds=801):
  """Percentage of points with error <= t, for thresholds t in [0, max_mm] (errors in metres)."""
  mm = np.sort(_pooled_mm(errors))
  thresholds = np.linspace(0.0, max_mm, num_thresholds)
  return thresholds, 100.0 * np.searchsorted(mm, thresholds, side="right") / mm.size


def plot_cumulative_errors(errors_by_method, path, max_mm=8.0):
  """Writes NoW's cumulative error plot (one curve per method) to `path` (PNG, SVG, ...).

  Uses a bare Figure (Agg for PNG), so no pyplot backend or global state is touched.
  """
  figure = mpl_figure.Figure(figsize=(5, 4))
  axes = figure.subplots()
  for name, errors in errors_by_method.items():
    thresholds, percent = cumulative_error_curve(errors, max_mm=max_mm)
    stats = summarize(errors)
    axes.plot(thresholds, percent,
              label=f"{name} (median {stats['median_mm']:.2f}, mean {stats['mean_mm']:.2f})")
  axes.set(xlim=(0, max_mm), ylim=(0, 100), xlabel="Error [mm]", ylabel="Percentage")
  axes.set_xticks(np.arange(0, max_mm + 1e-9, 1.0))
  axes.set_yticks(np.arange(0, 101, 20.0))
  axes.grid(alpha=0.3)
  axes.legend(loc="lower right")
  figure.tight_layout()
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  figure.savefig(path, dpi=120)
