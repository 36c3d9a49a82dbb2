"""Mesh of the built-in head: a closed shell with mouth and eye pockets, plus two eyeballs.

Package-private helper of `sheap_jax.head.head_model`. Everything here is plain NumPy with no
randomness, so the mesh is the same on every machine.

How the shell is made: a latitude-longitude grid of ray directions from an origin inside the
head (rows from the crown to the bottom of the neck, columns around the vertical axis, denser on
the face) is cast against a smooth signed distance function built from ellipsoids (cranium,
lower face, neck, nose, brows, cheekbones, chin, jaw angles, ears) minus the eye sockets. The
head is star-shaped from the origin, so every ray has one outermost crossing.

Three grid rows are cut open along part of their length ("slits"): the lip line (the mouth) and
the two palpebral fissures (the eyes). A slit's row vertices get a second copy that the band of
triangles below it uses, which opens a hole bounded by the upper and lower copies. Each hole is
closed by a pocket: rings that peel the slit back around a cavity (an ellipsoid behind the lips,
a sphere just outside each eyeball) and end in a zipped seam at the back. The surface stays a
closed, consistently oriented 2-manifold, yet the lower lip can move away from the upper lip
(jaw rotation opens the mouth) and the upper lid can slide over the eyeball.

Axes: FLAME's head frame, metres: x to the subject's left, y up, z out of the face.
"""
import dataclasses

import numpy as np
from scipy import interpolate

# Parts (per vertex and per face).
SHELL, MOUTH_POCKET, LEFT_EYE_POCKET, RIGHT_EYE_POCKET, LEFT_EYEBALL, RIGHT_EYEBALL = range(6)

# Layout constants (metres unless noted).
RAY_ORIGIN = np.array([0.0, 0.0, 0.01])
EYE_CENTRE_LEFT = np.array([0.032, 0.030, 0.066])  # subject's left = +x (FLAME's joint 3)
EYEBALL_RADIUS = 0.0125
LID_GAP = 0.0008  # lid margin and eye pocket sit this far outside the eyeball
LID_THICKNESS = 0.0025
STOMION = np.array([0.0, -0.038, 0.09])  # lip line at the midline (z only sets the row angle)
MOUTH_HALF_WIDTH = 0.025
MOUTH_CAVITY_CENTRE = np.array([0.0, -0.038, 0.058])
MOUTH_CAVITY_AXES = np.array([0.03, 0.014, 0.03])
NECK_BOTTOM = -0.19

NUM_COLUMNS = 88  # even: column 0 faces forward, column NUM_COLUMNS // 2 backward
EYE_FISSURE_HALF_ANGLE = 0.85  # radians around the eye's axis, seen from the eye centre
EYE_OPEN_UP, EYE_OPEN_DOWN = 0.0045, 0.0035  # lid margin heights above / below the eye axis
POCKET_RINGS_MOUTH, POCKET_RINGS_EYE = 6, 6
POCKET_END = 0.93  # fraction of the peel at which a pocket is zipped shut
EYEBALL_RINGS, EYEBALL_SEGMENTS = 11, 16


@dataclasses.dataclass(frozen=True)
class Slit:
  """A grid row cut open between two corner columns (listed in increasing-angle order)."""

  row: int
  columns: np.ndarray  # (m + 1,) corner, interior..., corner


@dataclasses.dataclass
class HeadGeometry:
  """Rest mesh plus the bookkeeping the rig, bases, masks and landmarks need."""

  vertices: np.ndarray  # (V, 3) float64
  faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
  uv: np.ndarray  # (T, 2) float64 in [0, 1]
  uv_faces: np.ndarray  # (F, 3) int64
  part: np.ndarray  # (V,) int: SHELL, ..., RIGHT_EYEBALL
  face_part: np.ndarray  # (F,)
  lip_side: np.ndarray  # (V,) +1 upper lip side of the mouth slit and pocket, -1 lower, 0 else
  lid_side: np.ndarray  # (V,) +1 upper lid margin and its pocket side, -1 lower, 0 else
  grid_index: np.ndarray  # (rows + 2, columns) shell vertex ids; rows 0 / -1 hold the poles
  row_angles: np.ndarray  # (rows + 2,) polar angle of each grid row from +y
  column_angles: np.ndarray  # (columns,) azimuth from +z towards +x
  mouth_slit: Slit
  eye_slits: tuple  # (left, right)
  lower_copies: dict  # (row, column) -> id of the lower copy of a slit vertex
  eye_centres: np.ndarray  # (2, 3) left, right


# ----------------------------------------------------------------------------- shape field


def _ellipsoid(points, centre, axes):
  """Approximate signed distance to an ellipsoid (exact on its surface, good near it)."""
  q = (points - centre) / axes
  k0 = np.linalg.norm(q, axis=-1)
  k1 = np.linalg.norm(q / axes, axis=-1)
  return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def smooth_min(a, b, k):
  h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
  return b + (a - b) * h - k * h * (1.0 - h)


def _neck(points):
  """Elliptic cylinder with a rounded flat bottom at NECK_BOTTOM; its top is inside the head."""
  q = points - np.array([0.0, 0.0, -0.012])
  side = (np.hypot(q[..., 0] / 0.054, q[..., 2] / 0.06) - 1.0) * 0.054
  bottom = np.maximum(NECK_BOTTOM - points[..., 1], points[..., 1] + 0.02)
  rounding = 0.012
  d = np.stack([side, bottom], -1) + rounding
  return np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(-1), 0.0) - rounding


def _mirror(points, centre, axes):
  """Union of an ellipsoid and its mirror image in the midsagittal plane."""
  mirrored = centre * np.array([-1.0, 1.0, 1.0])
  return np.minimum(_ellipsoid(points, centre, axes), _ellipsoid(points, mirrored, axes))


def head_sdf(points):
  """Signed distance (negative inside) of the head and neck without lips and lids."""
  d = _ellipsoid(points, np.array([0.0, 0.035, -0.0075]), np.array([0.0765, 0.106, 0.095]))
  d = smooth_min(d, _ellipsoid(points, np.array([0.0, -0.019, 0.018]),
                                np.array([0.060, 0.066, 0.070])), 0.02)
  d = smooth_min(d, _neck(points), 0.03)
  d = smooth_min(d, _mirror(points, np.array([0.046, -0.046, 0.004]),
                             np.array([0.018, 0.026, 0.03])), 0.015)  # jaw angles
  d = smooth_min(d, _mirror(points, np.array([0.048, 0.008, 0.05]),
                             np.array([0.022, 0.016, 0.024])), 0.012)  # cheekbones
  d = smooth_min(d, _ellipsoid(points, np.array([0.0, 0.046, 0.07]),
                                np.array([0.056, 0.013, 0.02])), 0.012)  # brow ridge
  d = smooth_min(d, _ellipsoid(points, np.array([0.0, -0.066, 0.068]),
                                np.array([0.02, 0.014, 0.015])), 0.014)  # chin
  d = smooth_min(d, _mirror(points, np.array([0.07, 0.006, -0.012]),
                             np.array([0.012, 0.03, 0.017])), 0.008)  # ears (simple lobes)
  nose = _ellipsoid(points, np.array([0.0, 0.008, 0.09]), np.array([0.0085, 0.022, 0.014]))
  nose = smooth_min(nose, _ellipsoid(points, np.array([0.0, -0.004, 0.1]),
                                      np.array([0.009, 0.009, 0.0105])), 0.006)
  nose = smooth_min(nose, _mirror(points, np.array([0.013, -0.009, 0.088]),
                                   np.array([0.0085, 0.0075, 0.009])), 0.005)
  d = smooth_min(d, nose, 0.008)
  for centre in eye_centres():
    socket = _ellipsoid(points, centre + np.array([0.0, 0.001, 0.015]),
                        np.array([0.019, 0.016, 0.019]))
    d = -smooth_min(-d, socket, 0.006)
  return d


def eye_centres():
  return np.stack([EYE_CENTRE_LEFT, EYE_CENTRE_LEFT * np.array([-1.0, 1.0, 1.0])])


def _cast(directions, sdf, max_radius=0.24, step=0.002, bisections=24):
  """Distance from RAY_ORIGIN to the outermost zero crossing of `sdf` along each direction."""
  far = np.full(len(directions), np.nan)
  for r in np.arange(max_radius, 0.0, -step):  # march inwards until first inside
    todo = np.flatnonzero(np.isnan(far))
    if not len(todo):
      break
    inside = sdf(RAY_ORIGIN + r * directions[todo]) < 0.0
    far[todo[inside]] = r
  if np.isnan(far).any():
    raise ValueError("built-in head: a ray from the head origin misses the surface")
  lo, hi = far, far + step
  for _ in range(bisections):
    mid = 0.5 * (lo + hi)
    inside = sdf(RAY_ORIGIN + mid[:, None] * directions) < 0.0
    lo = np.where(inside, mid, lo)
    hi = np.where(inside, hi, mid)
  return 0.5 * (lo + hi)


def _direction(theta, phi):
  s = np.sin(theta)
  return np.stack([s * np.sin(phi), np.cos(theta), s * np.cos(phi)], -1)


def _angles_of(point):
  d = point - RAY_ORIGIN
  d = d / np.linalg.norm(d)
  return np.arccos(d[1]), np.arctan2(d[0], d[2])


# ----------------------------------------------------------------------------- grid layout


def _column_angles():
  """Azimuths, mirror-symmetric (column c mirrors column -c): denser on the face and densest
  across the eyes, where the lids wrap tightly around the eyeballs."""
  _, eye_phi = _angles_of(EYE_CENTRE_LEFT)
  fine = np.linspace(0.0, np.pi, 2001)
  density = (1.0 + 1.3 * np.exp(-(fine / 0.7) ** 2)
             + 1.6 * np.exp(-((fine - eye_phi) / 0.12) ** 2))
  cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]))])
  half = NUM_COLUMNS // 2
  phi = np.interp(np.linspace(0.0, cdf[-1], half + 1), cdf, fine)
  return np.concatenate([phi, -phi[1:-1][::-1]])


def _row_angles():
  """Polar angles of the rows (first and last are the poles), with the lip line and the eye
  axis exactly on rows and denser rows on the face."""
  eye_theta, _ = _angles_of(EYE_CENTRE_LEFT)
  lip_theta, _ = _angles_of(STOMION)
  knots_index = np.array([0, 10, 19, 25, 31, 36, 39, 42, 48, 54, 57])
  knots_theta = np.array([0.0, 0.62, eye_theta - 0.22, eye_theta, eye_theta + 0.3,
                          lip_theta - 0.14, lip_theta, lip_theta + 0.14, lip_theta + 0.42,
                          2.72, np.pi])
  spline = interpolate.PchipInterpolator(knots_index, knots_theta)
  theta = spline(np.arange(knots_index[-1] + 1))
  return theta, int(knots_index[3]), int(knots_index[6])


def _slit_columns(phi, lo, hi):
  """Columns whose azimuths lie in [lo, hi] in increasing-angle order, wrapping at 0."""
  order = np.argsort(phi)
  chosen = [c for c in order if lo - 1e-9 <= phi[c] <= hi + 1e-9]
  return np.array(chosen)


# ----------------------------------------------------------------------------- build


def build_geometry():
  theta, eye_row, lip_row = _row_angles()
  phi = _column_angles()
  num_rows = len(theta) - 2  # ring rows between the poles
  columns = len(phi)

  # Slits. Mouth: columns within the mouth's half width; eyes: around each eye's azimuth.
  _, mouth_corner = _angles_of(STOMION + np.array([MOUTH_HALF_WIDTH, 0.0, -0.012]))
  mouth = Slit(lip_row, _slit_columns(phi, -mouth_corner, mouth_corner))
  eye_slits = []
  for centre in eye_centres():
    ends = [centre + (EYEBALL_RADIUS + LID_GAP) * np.array(
        [np.sin(a), 0.0, np.cos(a)]) for a in (-EYE_FISSURE_HALF_ANGLE, EYE_FISSURE_HALF_ANGLE)]
    lo, hi = sorted(_angles_of(e)[1] for e in ends)
    eye_slits.append(Slit(eye_row, _slit_columns(phi, lo, hi)))
  slits = [mouth] + eye_slits

  # Vertex ids: poles, grid rows, then lower copies of slit interiors.
  grid = np.full((num_rows + 2, columns), -1, np.int64)
  grid[0, :] = 0
  grid[1:-1] = 1 + np.arange(num_rows * columns).reshape(num_rows, columns)
  grid[-1, :] = 1 + num_rows * columns
  count = 2 + num_rows * columns
  lower = {}
  for slit in slits:
    for c in slit.columns[1:-1]:
      lower[(slit.row, int(c))] = count
      count += 1
  num_shell = count

  # Directions per shell vertex, with the eye fissures opened in the parameter domain.
  vert_theta = np.zeros(num_shell)
  vert_phi = np.zeros(num_shell)
  vert_theta[grid[1:-1]] = theta[1:-1, None]
  vert_phi[grid[1:-1]] = phi[None, :]
  vert_theta[grid[-1, 0]] = np.pi
  for (row, c), vid in lower.items():
    vert_theta[vid], vert_phi[vid] = theta[row], phi[c]
  is_lower_copy = np.zeros(num_shell, bool)
  is_lower_copy[list(lower.values())] = True
  warped_theta = _open_fissures(vert_theta, vert_phi, is_lower_copy, theta, eye_slits, phi)

  directions = _direction(warped_theta, vert_phi)
  radius = _cast(directions, head_sdf)
  radius = _add_lips(radius, vert_theta, vert_phi, theta[lip_row], phi, mouth)
  radius = _add_lids(radius, directions, vert_theta, vert_phi, theta[eye_row], phi, eye_slits)
  shell = RAY_ORIGIN + radius[:, None] * directions
  # Part the lips by a hair at rest (zero at the corners) so the slit is never a double wall.
  for (row, c), vid in lower.items():
    if row == lip_row:
      along = abs(phi[c]) / max(abs(phi[mouth.columns[0]]), 1e-9)
      shell[vid, 1] -= 0.0003 * (1.0 - along ** 2)

  faces, uv, uv_faces = _shell_mesh(grid, lower, theta, warped_theta)

  lip_side = np.zeros(num_shell)
  lid_side = np.zeros(num_shell)
  for slit, side in ((mouth, lip_side),) + tuple((s, lid_side) for s in eye_slits):
    for c in slit.columns[1:-1]:
      side[grid[slit.row, c]] = 1.0
      side[lower[(slit.row, int(c))]] = -1.0

  parts = [np.full(num_shell, SHELL)]
  face_parts = [np.full(len(faces), SHELL)]
  vertices = [shell]
  all_faces = [faces]
  uv_all, uvf_all = [uv], [uv_faces]
  lip_all, lid_all = [lip_side], [lid_side]
  uv_boxes = {MOUTH_POCKET: (0.42, 0.02, 0.72, 0.27), LEFT_EYE_POCKET: (0.75, 0.02, 0.98, 0.135),
              RIGHT_EYE_POCKET: (0.75, 0.155, 0.98, 0.27)}
  pocket_specs = [(MOUTH_POCKET, mouth, MOUTH_CAVITY_CENTRE, MOUTH_CAVITY_AXES,
                   POCKET_RINGS_MOUTH, lip_side)]
  for part, slit, centre in zip((LEFT_EYE_POCKET, RIGHT_EYE_POCKET), eye_slits, eye_centres()):
    pocket_specs.append((part, slit, centre, np.full(3, EYEBALL_RADIUS + LID_GAP),
                         POCKET_RINGS_EYE, lid_side))
  for part, slit, centre, axes, rings, side in pocket_specs:
    loop = _slit_loop(grid, lower, slit)
    offset = sum(len(v) for v in vertices)
    pos, f, loop_side, t_uv, t_uvf = _pocket(shell, loop, side, centre, axes, rings, offset,
                                             uv_boxes[part])
    vertices.append(pos)
    all_faces.append(f)
    parts.append(np.full(len(pos), part))
    face_parts.append(np.full(len(f), part))
    uvf_all.append(t_uvf + sum(len(u) for u in uv_all))
    uv_all.append(t_uv)
    ring_side = np.tile(loop_side, rings)
    lip_all.append(ring_side if part == MOUTH_POCKET else np.zeros(len(pos)))
    lid_all.append(ring_side if part != MOUTH_POCKET else np.zeros(len(pos)))

  for part, centre, box in ((LEFT_EYEBALL, eye_centres()[0], (0.02, 0.03, 0.2, 0.25)),
                            (RIGHT_EYEBALL, eye_centres()[1], (0.22, 0.03, 0.4, 0.25))):
    offset = sum(len(v) for v in vertices)
    pos, f, t_uv, t_uvf = _eyeball(centre, offset, box)
    vertices.append(pos)
    all_faces.append(f)
    parts.append(np.full(len(pos), part))
    face_parts.append(np.full(len(f), part))
    uvf_all.append(t_uvf + sum(len(u) for u in uv_all))
    uv_all.append(t_uv)
    lip_all.append(np.zeros(len(pos)))
    lid_all.append(np.zeros(len(pos)))

  return HeadGeometry(
      vertices=np.concatenate(vertices), faces=np.concatenate(all_faces),
      uv=np.concatenate(uv_all), uv_faces=np.concatenate(uvf_all),
      part=np.concatenate(parts), face_part=np.concatenate(face_parts),
      lip_side=np.concatenate(lip_all), lid_side=np.concatenate(lid_all),
      grid_index=grid, row_angles=theta, column_angles=phi, mouth_slit=mouth,
      eye_slits=tuple(eye_slits), lower_copies=lower, eye_centres=eye_centres())


# ----------------------------------------------------------------------------- shell details


def _open_fissures(vert_theta, vert_phi, is_lower_copy, row_theta, eye_slits, phi):
  """Spread the grid rows apart around each eye slit: the upper copies move up to the upper
  lid margin, the lower copies down to the lower one, neighbouring rows follow smoothly."""
  warped = vert_theta.copy()
  for slit, centre in zip(eye_slits, eye_centres()):
    theta_slit = row_theta[slit.row]
    lo, hi = phi[slit.columns[0]], phi[slit.columns[-1]]
    u = (vert_phi - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
    profile = np.clip(1.0 - u * u, 0.0, None)
    distance = np.linalg.norm(centre - RAY_ORIGIN) + EYEBALL_RADIUS
    up, down = EYE_OPEN_UP / distance, EYE_OPEN_DOWN / distance
    width = 2.0 * up
    above = (vert_theta < theta_slit - 1e-12) | (
        (np.abs(vert_theta - theta_slit) < 1e-12) & ~is_lower_copy)
    s = np.abs(vert_theta - theta_slit) / width
    shift = profile * np.exp(-s * s)
    warped = np.where(above, warped - up * shift, warped + down * shift)
  return warped


def _add_lips(radius, vert_theta, vert_phi, lip_theta, phi, mouth):
  """Push the lips out along their rays: an upper and a lower roll meeting at the slit."""
  corner = abs(phi[mouth.columns[0]])
  along = np.clip(1.0 - (vert_phi / (1.3 * corner)) ** 2, 0.0, None) ** 0.7
  distance = np.linalg.norm(STOMION - RAY_ORIGIN)
  s = (vert_theta - lip_theta) * distance  # metres below the lip line (negative above)
  upper = 0.0035 * np.exp(-((-s - 0.004) / 0.004) ** 2)
  lower = 0.0042 * np.exp(-((s - 0.005) / 0.005) ** 2)
  lip = np.where(s < 0.0, upper, lower)
  return radius + along * lip


def _add_lids(radius, directions, vert_theta, vert_phi, eye_theta, phi, eye_slits):
  """Wrap the lids around each eyeball: a sphere just outside the eye whose radius grows from
  the margin (LID_GAP) to the lid thickness, merged with the socket by a smooth maximum."""
  out = radius.copy()
  for slit, centre in zip(eye_slits, eye_centres()):
    lo, hi = phi[slit.columns[0]], phi[slit.columns[-1]]
    d_phi = np.maximum(np.maximum(lo - vert_phi, vert_phi - hi), 0.0) * np.sin(vert_theta)
    s = np.hypot(vert_theta - eye_theta, d_phi)
    lid_radius = EYEBALL_RADIUS + LID_GAP + LID_THICKNESS * (1.0 - np.exp(-(s / 0.035) ** 2))
    oc = RAY_ORIGIN - centre
    b = directions @ oc
    disc = b * b - (oc @ oc - lid_radius ** 2)
    hit = -b + np.sqrt(np.maximum(disc, 0.0))
    near = (disc > 0.0) & (s < 0.3)
    out = np.where(near, -smooth_min(-out, -hit, 0.0015), out)
  return out


def _shell_mesh(grid, lower, row_theta, warped_theta):
  """Triangles of the shell grid (mirror-symmetric diagonals, slits left open) and their UVs:
  u runs with the column index around the head (seam at the back), v with the row index."""
  rows, columns = grid.shape
  half = columns // 2
  row_of_theta = lambda t: np.interp(t, row_theta, np.arange(rows))
  uv_ids, uv_values = {}, []

  def uv_id(key, value):
    if key not in uv_ids:
      uv_ids[key] = len(uv_values)
      uv_values.append(value)
    return uv_ids[key]

  def corner(row, c, top_band, seam_left):
    """Vertex id and UV id of grid corner (row, c) in a quad; slit rows use the lower copy in
    the band below them."""
    vid = grid[row, c]
    if top_band and (row, c) in lower:
      vid = lower[(row, c)]
    signed = c if c < half or (c == half and not seam_left) else c - columns
    u = 0.5 + signed / columns
    v = 1.0 - 0.7 * row_of_theta(warped_theta[vid]) / (rows - 1)
    return vid, uv_id((vid, u), (u, v))

  faces, uv_faces = [], []
  for row in range(1, rows - 2):
    for c in range(columns):
      c1 = (c + 1) % columns
      seam = c == half  # quads starting at the back column sit on the u = 0 side
      a = corner(row, c, True, seam)
      b = corner(row, c1, True, False)
      cc = corner(row + 1, c1, False, False)
      d = corner(row + 1, c, False, seam)
      tris = ((a, d, cc), (a, cc, b)) if c < half else ((a, d, b), (b, d, cc))
      for tri in tris:
        faces.append([t[0] for t in tri])
        uv_faces.append([t[1] for t in tri])
  for c in range(columns):  # pole fans, one UV per fan triangle at the pole
    c1 = (c + 1) % columns
    seam = c == half
    for row, pole, band in ((1, "top", False), (rows - 2, "bottom", True)):
      a = corner(row, c, band, seam)
      b = corner(row, c1, band, False)
      u_mid = 0.5 * (uv_values[a[1]][0] + uv_values[b[1]][0])
      if pole == "top":
        faces.append([grid[0, 0], a[0], b[0]])
        uv_faces.append([uv_id((pole, c), (u_mid, 1.0)), a[1], b[1]])
      else:
        faces.append([grid[-1, 0], b[0], a[0]])
        uv_faces.append([uv_id((pole, c), (u_mid, 0.3)), b[1], a[1]])
  uv = np.array(uv_values, np.float64)
  return np.array(faces, np.int64), uv, np.array(uv_faces, np.int64)


# ----------------------------------------------------------------------------- pockets, eyes


def _slit_loop(grid, lower, slit):
  """Boundary of a slit's hole: corner, upper copies, corner, lower copies backwards."""
  cols = [int(c) for c in slit.columns]
  upper = [grid[slit.row, c] for c in cols]
  lower_ids = [lower[(slit.row, c)] for c in cols[1:-1]]
  return np.array(upper + lower_ids[::-1], np.int64)


def _pocket(shell, loop, side, centre, axes, rings, offset, uv_box):
  """Close a slit's hole with rings that peel it back around an ellipsoidal cavity.

  In the cavity's frame (polar axis x, azimuth psi from +z towards +y) each loop vertex keeps
  its own path: upper-side vertices travel over the top, lower-side ones underneath, corners
  towards the x poles, until the last ring is a thin lens at the back, zipped shut.
  """
  num = len(loop)
  m = num // 2
  loop_side = side[loop]
  q = (shell[loop] - centre) / axes
  rho = np.linalg.norm(q, axis=-1)
  d = q / rho[:, None]
  chi = np.arccos(np.clip(d[:, 0], -1.0, 1.0))
  psi = np.arctan2(d[:, 1], d[:, 2])
  margin = 0.15
  chi_full = margin + (chi - chi.min()) / (chi.max() - chi.min()) * (np.pi - 2 * margin)
  positions = []
  for r in range(1, rings + 1):
    t = POCKET_END * r / rings
    c = (1 - t) * chi + t * chi_full
    p = (1 - t) * psi + t * loop_side * np.pi
    radial = rho + (1.0 - rho) * min(1.0, t / 0.3)
    direction = np.stack([np.cos(c), np.sin(c) * np.sin(p), np.sin(c) * np.cos(p)], -1)
    positions.append(centre + axes * radial[:, None] * direction)
  ring_ids = [loop] + [offset + r * num + np.arange(num) for r in range(rings)]

  # UVs: ring r, loop position p -> a grid in uv_box (column num duplicates column 0);
  # row rings + 1 holds the lower side of the zipped seam.
  u0, v0, u1, v1 = uv_box
  uv_grid = np.stack(np.meshgrid(u0 + (u1 - u0) * np.arange(num + 1) / num,
                                 v1 - (v1 - v0) * np.arange(rings + 2) / (rings + 1),
                                 indexing="xy"), -1)  # (rings + 2, num + 1, 2)
  uv_index = lambda r, p: r * (num + 1) + p
  faces, uv_faces = [], []
  for r in range(rings):
    for p in range(num):
      a, b = ring_ids[r][p], ring_ids[r][(p + 1) % num]
      c, dd = ring_ids[r + 1][(p + 1) % num], ring_ids[r + 1][p]
      ua, ub = uv_index(r, p), uv_index(r, p + 1)
      uc, ud = uv_index(r + 1, p + 1), uv_index(r + 1, p)
      faces += [[a, dd, c], [a, c, b]]
      uv_faces += [[ua, ud, uc], [ua, uc, ub]]
  last = ring_ids[-1]
  upper = lambda k: last[k]
  lower_vertex = lambda k: last[0] if k == 0 else last[m] if k == m else last[num - k]
  lower_uv = lambda k: uv_index(rings, k) if k in (0, m) else uv_index(rings + 1, k)
  for k in range(m):
    if k > 0:
      faces.append([upper(k + 1), upper(k), lower_vertex(k)])
      uv_faces.append([uv_index(rings, k + 1), uv_index(rings, k), lower_uv(k)])
    if k + 1 < m:
      faces.append([upper(k + 1), lower_vertex(k), lower_vertex(k + 1)])
      uv_faces.append([uv_index(rings, k + 1), lower_uv(k), lower_uv(k + 1)])
  return (np.concatenate(positions), np.array(faces, np.int64), loop_side,
          uv_grid.reshape(-1, 2), np.array(uv_faces, np.int64))


def _eyeball(centre, offset, uv_box):
  """UV sphere with its front pole on the gaze axis (+z); UVs are an azimuthal map centred
  on the pupil, so an iris texture is a disc in the middle of the eye's UV square."""
  rings, segments = EYEBALL_RINGS, EYEBALL_SEGMENTS
  alpha = np.pi * np.arange(1, rings + 1) / (rings + 1)
  beta = 2 * np.pi * np.arange(segments) / segments
  ring = np.stack([np.sin(alpha)[:, None] * np.cos(beta), np.sin(alpha)[:, None] * np.sin(beta),
                   np.cos(alpha)[:, None] * np.ones_like(beta)], -1).reshape(-1, 3)
  unit = np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]])
  positions = centre + EYEBALL_RADIUS * unit
  front, back = offset, offset + 1 + rings * segments
  vid = lambda i, j: offset + 1 + i * segments + j % segments

  u0, v0, u1, v1 = uv_box
  middle, half = np.array([0.5 * (u0 + u1), 0.5 * (v0 + v1)]), 0.5 * min(u1 - u0, v1 - v0)
  polar = lambda a, b: middle + half * a / np.pi * np.array([np.cos(b), np.sin(b)])
  uv = [polar(0.0, 0.0)] + [polar(a, b) for a in alpha for b in beta]
  uv += [polar(np.pi, b + np.pi / segments) for b in beta]  # back pole, one per triangle
  tid = lambda i, j: 1 + i * segments + j % segments
  faces, uv_faces = [], []
  for j in range(segments):
    faces.append([front, vid(0, j), vid(0, j + 1)])
    uv_faces.append([0, tid(0, j), tid(0, j + 1)])
    for i in range(rings - 1):
      a, b, c, d = vid(i, j), vid(i, j + 1), vid(i + 1, j + 1), vid(i + 1, j)
      ta, tb, tc, td = tid(i, j), tid(i, j + 1), tid(i + 1, j + 1), tid(i + 1, j)
      faces += [[a, d, c], [a, c, b]]
      uv_faces += [[ta, td, tc], [ta, tc, tb]]
    faces.append([back, vid(rings - 1, j + 1), vid(rings - 1, j)])
    uv_faces.append([1 + rings * segments + j, tid(rings - 1, j + 1), tid(rings - 1, j)])
  return positions, np.array(faces, np.int64), np.array(uv), np.array(uv_faces, np.int64)
