"""The built-in procedural head, in FLAME's format (FLAME itself cannot be shipped).

`build_head_assets()` returns the same assets dict a real FLAME model gives once read (keys,
shapes, dtypes and meanings of `generic_model.pkl` plus the landmark embedding, UVs, masks and
eyelid blendshapes), so every code path that takes FLAME takes this head unchanged. It is
deterministic: NumPy/SciPy only, fixed seeds, the same arrays (and file bytes) on every run.

    python -m sheap_jax.head.head_model --out PATH   # PATH.npz or a FLAME-layout directory

What it contains and how its shape space was scaled is written down in docs/head_model.md.
"""
import argparse

import numpy as np
from scipy import linalg
from scipy import optimize
from scipy import sparse

from sheap_jax.head import _head_geometry as geometry

NUM_SHAPE, NUM_EXPRESSION = 300, 100
ROOT_PARENT = 4294967295  # FLAME stores the root's parent as uint32(-1)
KINTREE = np.array([[ROOT_PARENT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64)
JAW_JOINT_TARGETS = np.array([[0.066, -0.002, 0.014], [-0.066, -0.002, 0.014]])  # at the TMJs
NECK_AXIS_Z = -0.012  # root and neck joints sit on the neck's axis

# Anthropometric targets (adult survey means / sds, metres): breadth, length, face height.
DIMENSION_SD_TARGETS = {"head_breadth": 0.006, "head_length": 0.007, "face_height": 0.007}

# Leading modes, in order, with their peak vertex displacement at one standard deviation
# (metres). None: scaled so the head dimensions match DIMENSION_SD_TARGETS.
SHAPE_MODES = (("face height", None), ("head length", None), ("head width", None),
               ("crown height", 0.004), ("jaw width", 0.003), ("cheekbone prominence", 0.0025),
               ("chin protrusion", 0.003), ("eye spacing", 0.0015), ("lip fullness", 0.002),
               ("brow ridge", 0.002), ("nose length", 0.0025), ("nose width", 0.0015))
EXPRESSION_MODES = (("mouth open", 0.006), ("smile", 0.005), ("brow raise", 0.0047),
                    ("pucker", 0.004), ("lip stretch", 0.004), ("cheek puff", 0.004),
                    ("left smirk", 0.0037), ("frown", 0.004), ("squint", 0.0025))
_SHAPE_SEED, _EXPRESSION_SEED = 20250, 20251


# ----------------------------------------------------------------------------- small helpers


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def _gauss(points, centre, sigma):
  d = (points - centre) / sigma
  return np.exp(-0.5 * np.sum(d * d, axis=-1))


def _mirror_gauss(points, centre, sigma):
  return _gauss(points, centre, sigma) + _gauss(points, centre * np.array([-1.0, 1.0, 1.0]), sigma)


def vertex_normals(vertices, faces):
  """Area-weighted vertex normals (unit length)."""
  n = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]],
               vertices[faces[:, 2]] - vertices[faces[:, 0]])
  out = np.zeros_like(vertices)
  for k in range(3):
    np.add.at(out, faces[:, k], n)
  return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


def _jaw_line(z):
  """Height of the lower edge of the mandible at depth z (menton in front, gonion behind)."""
  return -0.088 + 0.43 * (0.07 - z)


# ----------------------------------------------------------------------------- rig


def _average_of(vertices, candidates, target):
  """Non-negative weights (summing to 1) on a few candidate vertices whose average is target:
  FLAME's joints are such averages of nearby vertices, so they follow the shape."""
  system = np.vstack([vertices[candidates].T, np.ones(len(candidates))])
  weights, _ = optimize.nnls(system, np.append(target, 1.0))
  keep = weights > 1e-9
  return candidates[keep], weights[keep] / weights[keep].sum()


def _joint_regressor(geo):
  """Sparse (5, V): each joint a weighted average of vertices around it, as in FLAME: rings
  round the neck for the root and neck joints, the cheeks in front of the ears for the jaw,
  the eyeballs for the eyes."""
  v = geo.vertices
  shell = np.flatnonzero(geo.part == geometry.SHELL)
  neck = shell[v[shell, 1] < _jaw_line(v[shell, 2])]
  rows, cols, vals = [], [], []
  for joint, height in ((0, -0.145), (1, -0.075)):
    ring = neck[np.abs(v[neck, 1] - height) < 0.01]
    ids, w = _average_of(v, ring, np.array([0.0, height, NECK_AXIS_Z]))
    rows += [joint] * len(ids)
    cols += list(ids)
    vals += list(w)
  cheeks = np.concatenate([shell[np.argsort(np.linalg.norm(v[shell] - t, axis=-1),
                                            kind="stable")[:6]] for t in JAW_JOINT_TARGETS])
  ids, w = _average_of(v, cheeks, JAW_JOINT_TARGETS.mean(0))
  rows += [2] * len(ids)
  cols += list(ids)
  vals += list(w)
  for joint, part in ((3, geometry.LEFT_EYEBALL), (4, geometry.RIGHT_EYEBALL)):
    ids = np.flatnonzero(geo.part == part)  # the sphere's vertices average to its centre
    rows += [joint] * len(ids)
    cols += list(ids)
    vals += [1.0 / len(ids)] * len(ids)
  return sparse.csc_matrix((vals, (rows, cols)), shape=(5, len(v)))


def _jaw_weight(geo):
  """Share of the jaw joint: 1 on the chin and lower lip, 0 on the upper lip and above,
  blending around the cheeks towards the ears and fading down the neck."""
  v = geo.vertices
  x, y, z = np.abs(v[:, 0]), v[:, 1], v[:, 2]
  lateral = np.maximum(x - geometry.MOUTH_HALF_WIDTH, 0.0)
  boundary = np.minimum(geometry.STOMION[1] + 0.6 * lateral, -0.015)
  band = np.minimum(0.003 + 0.5 * lateral, 0.012)  # the blend ends below the cheekbones
  w = _smoothstep(0.5 + (boundary - y) / (2.0 * band))
  w *= _smoothstep((z + 0.005) / 0.03)  # nothing behind the jaw joint
  w *= _smoothstep((y - _jaw_line(z) + 0.03) / 0.025)  # fades into the neck below the jaw
  w = np.where(geo.lip_side > 0, 0.0, np.where(geo.lip_side < 0, 1.0, w))
  return np.where(geo.part >= geometry.LEFT_EYE_POCKET, 0.0, w)  # eye pockets and eyeballs


def _skinning_weights(geo):
  y = geo.vertices[:, 1]
  weights = np.zeros((len(y), 5))
  root = _smoothstep((-0.09 - y) / 0.06)
  jaw = _jaw_weight(geo) * (1.0 - root)
  weights[:, 0] = root
  weights[:, 2] = jaw
  weights[:, 1] = 1.0 - root - jaw
  for joint, part in ((3, geometry.LEFT_EYEBALL), (4, geometry.RIGHT_EYEBALL)):
    mask = geo.part == part
    weights[mask] = 0.0
    weights[mask, joint] = 1.0
  return weights


# ----------------------------------------------------------------------------- eyelids


def _eye_angles(points, centre):
  """(chi, psi): angle from the eye's +x axis, and azimuth about it from +z towards +y."""
  q = points - centre
  chi = np.arccos(np.clip(q[:, 0] / np.linalg.norm(q, axis=-1), -1.0, 1.0))
  return chi, np.arctan2(q[:, 1], q[:, 2])


def _eyelid_blendshapes(geo):
  """(2, V, 3): each upper lid (its skin and the pocket lining behind it) turns about the eye
  centre's x axis until its margin meets the lower margin; the rest stays still."""
  v = geo.vertices
  out = np.zeros((2,) + v.shape)
  for eye, (slit, centre) in enumerate(zip(geo.eye_slits, geo.eye_centres)):
    pocket = geometry.LEFT_EYE_POCKET + eye
    cols = [int(c) for c in slit.columns]
    upper_ids = np.array([geo.grid_index[slit.row, c] for c in cols])
    lower_ids = np.array([upper_ids[0]] + [geo.lower_copies[(slit.row, c)] for c in cols[1:-1]]
                         + [upper_ids[-1]])
    chi_u, psi_u = _eye_angles(v[upper_ids], centre)
    _, psi_l = _eye_angles(v[lower_ids], centre)
    order = np.argsort(chi_u)
    closing = psi_u - psi_l + 0.03
    closing[[0, -1]] = 0.0
    q = v - centre
    radius = np.linalg.norm(q, axis=-1)
    chi, psi = _eye_angles(v, centre)
    margin_psi = np.interp(chi, chi_u[order], psi_u[order])
    angle = np.interp(chi, chi_u[order], closing[order], left=0.0, right=0.0)
    upper_skin = (geo.part == geometry.SHELL) & (psi >= margin_psi - 1e-9) & (geo.lid_side >= 0)
    upper_skin &= ~np.isin(np.arange(len(v)), lower_ids)
    upper_lining = (geo.part == pocket) & (geo.lid_side > 0)
    rim = geometry.EYEBALL_RADIUS + geometry.LID_GAP + geometry.LID_THICKNESS
    falloff = np.exp(-((psi - margin_psi) / 0.7) ** 2)
    falloff *= np.exp(-(np.maximum(radius - rim, 0.0) / 0.003) ** 2)
    falloff = np.where(falloff > 1e-4, falloff, 0.0)  # strictly local
    w = np.where(upper_skin | upper_lining, falloff, 0.0) * angle
    c, s = np.cos(w), np.sin(w)  # R_x(w) lowers the azimuth psi by w
    moved = np.stack([q[:, 0], c * q[:, 1] - s * q[:, 2], s * q[:, 1] + c * q[:, 2]], -1)
    out[eye] = moved - q
  return out


# ----------------------------------------------------------------------------- bases


def _eye_rigid(geo, field):
  """Make a displacement field move each eyeball (and the pocket and lid margin around it)
  as a rigid translation: the displacement of the eye centre, blended out over the lids."""
  v = geo.vertices
  disp = field(v)
  for centre in geo.eye_centres:
    dist = np.linalg.norm(v - centre, axis=-1) - (geometry.EYEBALL_RADIUS + geometry.LID_GAP)
    blend = np.exp(-(np.maximum(dist, 0.0) / 0.004) ** 2)
    rigid = field(centre[None])[0]
    disp = (1.0 - blend[:, None]) * disp + blend[:, None] * rigid
  return disp


def _shape_fields():
  """Leading identity modes as smooth displacement fields (callables on (N, 3) points), by
  name; their size is set later from SHAPE_MODES."""
  above_neck = lambda p: _smoothstep((p[:, 1] + 0.13) / 0.07)
  front = lambda p: _smoothstep((p[:, 2] + 0.01) / 0.06)
  zero = lambda p: np.zeros(len(p))
  vec = lambda x, y, z: np.stack([x, y, z], -1)
  along = lambda weight, direction: weight[:, None] * np.asarray(direction)
  return {
      "face height": lambda p: vec(
          zero(p), geometry.smooth_min(p[:, 1] - 0.035, 0.0, 0.02) * front(p), zero(p)),
      "head length": lambda p: vec(zero(p), zero(p),
                                   geometry.smooth_min(p[:, 2] - 0.03, 0.0, 0.03) * above_neck(p)),
      "head width": lambda p: vec(p[:, 0] * above_neck(p), zero(p), zero(p)),
      "crown height": lambda p: vec(zero(p), np.maximum(p[:, 1] - 0.02, 0.0), zero(p)),
      "jaw width": lambda p: vec(
          p[:, 0] * np.exp(-0.5 * ((p[:, 1] + 0.05) / 0.03) ** 2) * front(p), zero(p), zero(p)),
      "chin protrusion": lambda p: along(_gauss(p, np.array([0.0, -0.072, 0.075]), 0.018),
                                         [0.0, -0.2, 1.0]),
      "cheekbone prominence": lambda p: _mirror_gauss(
          p, np.array([0.05, 0.008, 0.055]), 0.016)[:, None] * vec(
              np.sign(p[:, 0]), zero(p), np.full(len(p), 0.5)),
      "brow ridge": lambda p: along(_gauss(p, np.array([0.0, 0.047, 0.08]),
                                          np.array([0.04, 0.008, 0.02])), [0.0, 0.0, 1.0]),
      "nose length": lambda p: along(_gauss(p, np.array([0.0, 0.0, 0.1]), 0.016),
                                     [0.0, -0.3, 1.0]),
      "lip fullness": lambda p: along(_gauss(p, geometry.MOUTH_CAVITY_CENTRE + [0.0, 0.0, 0.03],
                                             np.array([0.022, 0.011, 0.02])), [0.0, 0.0, 1.0]),
      "eye spacing": lambda p: _mirror_gauss(p, geometry.EYE_CENTRE_LEFT, 0.02)[:, None] * vec(
          np.sign(p[:, 0]), zero(p), zero(p)),
      "nose width": lambda p: vec(p[:, 0] * _gauss(p, np.array([0.0, -0.006, 0.095]), 0.014),
                                  zero(p), zero(p)),
  }


def _away_from_eyes(geo):
  """0 on the eyeballs, their linings and lid margins, rising to 1 a few mm out."""
  v = geo.vertices
  away = np.ones(len(v))
  for centre in geo.eye_centres:
    away *= _smoothstep((np.linalg.norm(v - centre, axis=-1) - 0.016) / 0.008)
  return away


def _expression_fields(geo, jaw):
  """Leading expression modes: (V, 3) displacement fields on the rest mesh, by name. The
  lower lip is told apart from the upper by the jaw weight, so the lips can part."""
  v = geo.vertices
  corners = np.array([geometry.MOUTH_HALF_WIDTH, geometry.STOMION[1], 0.078])
  side = np.sign(v[:, 0])
  vec = lambda x, y, z: np.stack(np.broadcast_arrays(x, y, z), -1)
  mouth = _gauss(v, np.array([0.0, geometry.STOMION[1], 0.085]), np.array([0.03, 0.016, 0.03]))
  corner = _mirror_gauss(v, corners, 0.013)
  brows = _mirror_gauss(v, np.array([0.03, 0.048, 0.075]), np.array([0.022, 0.012, 0.03]))
  inner_brows = _mirror_gauss(v, np.array([0.014, 0.044, 0.085]), 0.011)
  cheeks = _mirror_gauss(v, np.array([0.045, -0.02, 0.06]), 0.018)
  lower_lids = _mirror_gauss(v, geometry.EYE_CENTRE_LEFT + np.array([0.0, -0.012, 0.01]), 0.008)
  return {
      "mouth open": (jaw * _smoothstep(v[:, 2] / 0.04))[:, None] * np.array([0.0, -1.0, -0.3]),
      "smile": corner[:, None] * vec(0.5 * side, 0.8, -0.4) + 0.4 * cheeks[:, None] * np.array(
          [0.0, 1.0, 0.3]),
      "brow raise": brows[:, None] * np.array([0.0, 1.0, 0.1]),
      "frown": inner_brows[:, None] * vec(-0.6 * side, -1.0, 0.0),
      "pucker": mouth[:, None] * vec(-8.0 * v[:, 0], 0.0, 0.8),
      "lip stretch": corner[:, None] * vec(side, -0.2, -0.3),
      "cheek puff": cheeks[:, None] * vec(side, 0.0, 0.5),
      "left smirk": _gauss(v, corners, 0.013)[:, None] * np.array([0.3, 0.8, -0.3]),
      "squint": lower_lids[:, None] * np.array([0.0, 1.0, 0.2]) + 0.5 * cheeks[:, None] * np.array(
          [0.0, 1.0, 0.0]),
  }


def _smooth_random_field(points, rng, anchors, support):
  """A few random Gaussian bumps with random directions, centred on surface points."""
  disp = np.zeros_like(points)
  for _ in range(3):
    centre = anchors[rng.integers(len(anchors))]
    sigma = rng.uniform(*support)
    disp += _gauss(points, centre, sigma)[:, None] * rng.normal(size=3)
  return disp


def _orthonormal_basis(fields):
  """Columns orthonormalised in order, like Gram-Schmidt (Cholesky QR, applied twice for
  accuracy; cheaper than Householder QR for tall matrices)."""
  q = np.stack([f.reshape(-1) for f in fields], 1)
  for _ in range(2):
    upper = np.linalg.cholesky(q.T @ q).T
    q = linalg.solve_triangular(upper, q.T, trans="T", lower=False).T
  return q


def _component_norms(basis, peaks, total):
  """Norms for the columns of an orthonormal (V, 3, K) basis: the leading ones give the
  requested peak vertex displacement, the rest decay from just below the smallest of those,
  so the components come ordered by variance like PCA's."""
  leading = np.array(peaks, np.float64) / np.linalg.norm(basis[:, :, :len(peaks)], axis=1).max(0)
  first = 0.9 * np.nanmin(leading)
  tail = first * (1.0 + np.arange(total - len(peaks)) / 8.0) ** -1.2
  return np.concatenate([leading, tail])


def _shape_basis(geo):
  """(V, 3, 300): semantic modes, then smooth random deformations of decaying variance; the
  modes without a set size are scaled so that the head dimensions over N(0, 1) samples have
  the standard deviations of adult surveys."""
  v = geo.vertices
  rng = np.random.default_rng(_SHAPE_SEED)
  anchors = v[geo.part == geometry.SHELL]
  named = _shape_fields()
  fields = [_eye_rigid(geo, named[name]) for name, _ in SHAPE_MODES]
  while len(fields) < NUM_SHAPE:
    fields.append(_eye_rigid(geo, lambda p: _smooth_random_field(p, rng, anchors, (0.02, 0.05))))
  q = _orthonormal_basis(fields).reshape(len(v), 3, NUM_SHAPE)
  peaks = [np.nan if peak is None else peak for _, peak in SHAPE_MODES]
  norms = _component_norms(q, peaks, NUM_SHAPE)
  free = np.flatnonzero(np.isnan(norms))
  fixed = np.flatnonzero(~np.isnan(norms))
  points = anthropometric_vertices(v)
  gradients = np.stack([_dimension_gradient(v, q, points[name]) for name in
                        DIMENSION_SD_TARGETS])  # (measures, components)
  targets = np.array(list(DIMENSION_SD_TARGETS.values())) ** 2
  rest = ((gradients[:, fixed] * norms[fixed]) ** 2).sum(1)
  squared = np.linalg.solve(gradients[:, free] ** 2, targets - rest)
  if np.any(squared <= 0.0):
    raise ValueError("built-in head: shape basis cannot reach the anthropometric targets")
  norms[free] = np.sqrt(squared)
  return q * norms


def _dimension_gradient(v, basis, pair):
  a, b = pair
  axis = (v[a] - v[b]) / np.linalg.norm(v[a] - v[b])
  return (basis[a] - basis[b]).T @ axis


def _expression_basis(geo, jaw):
  """(V, 3, 100): semantic expressions, then smooth random face deformations."""
  v = geo.vertices
  rng = np.random.default_rng(_EXPRESSION_SEED)
  face = (v[:, 2] > 0.03) & (v[:, 1] < 0.07) & (v[:, 1] > -0.1) & (geo.part == geometry.SHELL)
  anchors = v[face]
  away = _away_from_eyes(geo)[:, None]
  named = _expression_fields(geo, jaw)
  fields = [named[name] * away for name, _ in EXPRESSION_MODES]
  while len(fields) < NUM_EXPRESSION:
    fields.append(_smooth_random_field(v, rng, anchors, (0.012, 0.03)) * away)
  q = _orthonormal_basis(fields).reshape(len(v), 3, NUM_EXPRESSION)
  return q * _component_norms(q, [peak for _, peak in EXPRESSION_MODES], NUM_EXPRESSION)


def _pose_correctives(geo, weights, eyelids, normals):
  """(V, 3, 36): small smooth correctives on (R - I) of joints 1..4 (FLAME's order): skin
  bulges where neck and jaw blend when they flex, and upper lids follow vertical gaze."""
  posedirs = np.zeros(geo.vertices.shape + (36,))
  sin_x = lambda joint: 9 * (joint - 1) + 3 * 2 + 1  # entry R[2, 1] = sin of a pitch
  neck_blend = 4.0 * weights[:, 0] * (1.0 - weights[:, 0])
  jaw_blend = 4.0 * weights[:, 2] * (1.0 - weights[:, 2])
  posedirs[:, :, sin_x(1)] = 0.004 * neck_blend[:, None] * normals
  posedirs[:, :, sin_x(2)] = 0.004 * jaw_blend[:, None] * normals
  posedirs[:, :, sin_x(3)] = 0.5 * eyelids[0]
  posedirs[:, :, sin_x(4)] = 0.5 * eyelids[1]
  pockets = (geo.part != geometry.SHELL) & (geo.part <= geometry.RIGHT_EYE_POCKET)
  posedirs[pockets, :, :2 * 9] = 0.0  # normals inside the cavities point inwards
  return posedirs


# ----------------------------------------------------------------------------- measurements


def anthropometric_vertices(v_template):
  """Vertex ids of the classic measuring points, chosen geometrically on the built-in head's
  template: euryon (left, right), glabella, opisthocranion, nasion, menton. Returns measure
  name -> (vertex a, vertex b) for head breadth, head length and face height. (The search
  regions lie on the outer surface, clear of the mouth and eye pockets.)"""
  v = v_template
  ids = np.arange(len(v))
  midline = np.abs(v[:, 0]) < 1e-9
  cranium = v[:, 1] > 0.045
  left = ids[cranium][np.argmax(v[cranium, 0])]
  right = ids[cranium][np.argmin(v[cranium, 0])]
  brow = midline & (v[:, 1] > 0.035) & (v[:, 1] < 0.065) & (v[:, 2] > 0.0)
  glabella = ids[brow][np.argmax(v[brow, 2])]
  back = midline & (v[:, 2] < 0.0) & (v[:, 1] > 0.0)
  opisthocranion = ids[back][np.argmin(v[back, 2])]
  bridge = midline & (v[:, 1] > 0.015) & (v[:, 1] < v[glabella, 1]) & (v[:, 2] > 0.04)
  nasion = ids[bridge][np.argmin(v[bridge, 2])]
  chin = midline & (v[:, 2] > 0.062) & (v[:, 1] < -0.05)
  menton = ids[chin][np.argmin(v[chin, 1])]
  return {"head_breadth": (left, right), "head_length": (glabella, opisthocranion),
          "face_height": (nasion, menton)}


def head_dimensions(vertices, points):
  """Distances (metres) between the measuring points of `anthropometric_vertices`, for
  vertices shaped (..., V, 3)."""
  return {name: np.linalg.norm(vertices[..., a, :] - vertices[..., b, :], axis=-1)
          for name, (a, b) in points.items()}


# ----------------------------------------------------------------------------- masks


def _masks(geo, jaw):
  v = geo.vertices
  x, y, z = v[:, 0], v[:, 1], v[:, 2]
  shell = geo.part == geometry.SHELL
  ids = lambda m: np.flatnonzero(m).astype(np.int64)
  eye_zone = [shell & (np.linalg.norm(v - c, axis=-1) < 0.024) | (geo.part == pocket)
              for c, pocket in zip(geo.eye_centres,
                                   (geometry.LEFT_EYE_POCKET, geometry.RIGHT_EYE_POCKET))]
  ears = [shell & (np.linalg.norm((v - c) / np.array([0.018, 0.036, 0.024]), axis=-1) < 1.0)
          for c in (np.array([0.07, 0.006, -0.012]), np.array([-0.07, 0.006, -0.012]))]
  below_jaw = y < _jaw_line(z)
  face = shell & (z > 0.012) & (y < 0.085) & ~below_jaw
  lips = shell & (np.abs(x) < geometry.MOUTH_HALF_WIDTH + 0.006) & (z > 0.05) & (
      y > geometry.STOMION[1] - 0.015) & (y < geometry.STOMION[1] + 0.011)
  nose_axis = np.hypot(x / 0.02, (y - 0.004) / 0.032)
  nose = shell & (nose_axis < 1.0) & (z > 0.07)
  forehead = shell & (y > 0.045) & (y < 0.1) & (z > 0.035) & (np.abs(x) < 0.06)
  neck = shell & (below_jaw | (y < -0.06)) & (jaw < 0.5)
  scalp = shell & ~face & ~forehead & ~neck & ~ears[0] & ~ears[1] & (y > -0.06)
  return {
      "face": ids(face), "scalp": ids(scalp),
      "left_eyeball": ids(geo.part == geometry.LEFT_EYEBALL),
      "right_eyeball": ids(geo.part == geometry.RIGHT_EYEBALL),
      "eye_region": ids(eye_zone[0] | eye_zone[1]),
      "left_eye_region": ids(eye_zone[0]), "right_eye_region": ids(eye_zone[1]),
      "lips": ids(lips), "nose": ids(nose), "neck": ids(neck), "forehead": ids(forehead),
      "boundary": ids(shell & (y < geometry.NECK_BOTTOM + 0.012)),
      "left_ear": ids(ears[0]), "right_ear": ids(ears[1]),
  }


# ----------------------------------------------------------------------------- landmarks


def _barycentric(point, triangle):
  """Barycentric coordinates of the projection of `point` onto a triangle's plane."""
  a, b, c = triangle
  e0, e1, p = b - a, c - a, point - a
  d00, d01, d11 = e0 @ e0, e0 @ e1, e1 @ e1
  d20, d21 = p @ e0, p @ e1
  den = d00 * d11 - d01 * d01
  w1 = (d11 * d20 - d01 * d21) / den
  w2 = (d00 * d21 - d01 * d20) / den
  return np.array([1.0 - w1 - w2, w1, w2])


def _embed(point, vertices, faces, candidates):
  """(face id, barycentrics) of the surface point nearest `point` among candidate faces."""
  best = None
  for face in candidates:
    bary = _barycentric(point, vertices[faces[face]])
    bary = np.clip(bary, 0.0, None)
    bary /= bary.sum()
    dist = np.linalg.norm(bary @ vertices[faces[face]] - point)
    if best is None or dist < best[0] - 1e-12:
      best = (dist, face, bary)
  return best[1], best[2]


class _Landmarker:
  """Places landmarks on the shell through its grid: (fractional row, azimuth) -> point."""

  def __init__(self, geo):
    self.geo = geo
    self.shell_faces = np.flatnonzero(geo.face_part == geometry.SHELL)
    faces = geo.faces[self.shell_faces]
    self.faces_of = {}
    for k, tri in enumerate(faces):
      for vid in tri:
        self.faces_of.setdefault(int(vid), []).append(int(self.shell_faces[k]))
    self.order = np.argsort(geo.column_angles)

  def vertex(self, row, column, lower=False):
    key = (row, int(column))
    if lower and key in self.geo.lower_copies:
      return self.geo.lower_copies[key]
    return int(self.geo.grid_index[row, column])

  def at(self, row, phi, lower=False, row_shift=0.0):
    """Embedding of the grid point at azimuth phi on `row` (+ a fraction of the next row)."""
    phis = self.geo.column_angles[self.order]
    k = int(np.clip(np.searchsorted(phis, phi) - 1, 0, len(phis) - 2))
    t = (phi - phis[k]) / (phis[k + 1] - phis[k])
    cols = self.order[[k, k + 1]]
    step = 1 if row_shift >= 0 else -1
    corners = [self.vertex(row, c, lower) for c in cols]
    corners += [self.vertex(row + step, c, lower and step < 0) for c in cols]
    v = self.geo.vertices
    top = (1 - t) * v[corners[0]] + t * v[corners[1]]
    bottom = (1 - t) * v[corners[2]] + t * v[corners[3]]
    point = top + abs(row_shift) * (bottom - top)
    candidates = sorted({f for c in corners for f in self.faces_of[c]})
    return _embed(point, v, self.geo.faces, candidates)

  def at_vertex(self, vid):
    face = self.faces_of[int(vid)][0]
    bary = (self.geo.faces[face] == vid).astype(np.float64)
    return face, bary


def _rot_y(angle):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _contour(geo, marker, yaw):
  """The 17 jaw-contour landmarks seen at a head yaw (radians): for each of 17 directions
  fanning from below the nose, the face vertex that sticks out furthest in the image."""
  v = geo.vertices
  region = (geo.part == geometry.SHELL) & (v[:, 2] > 0.008) & (v[:, 1] < 0.028) & (
      v[:, 1] > _jaw_line(v[:, 2]) - 0.002) & (geo.lip_side == 0)
  ids = np.flatnonzero(region)
  pivot = np.array([0.0, 0.0, -0.01])
  rotated = (v[ids] - pivot) @ _rot_y(yaw).T
  centre = (np.array([0.0, -0.01, 0.06]) - pivot) @ _rot_y(yaw).T
  rel = rotated[:, :2] - centre[:2]
  angle = np.arctan2(rel[:, 0], -rel[:, 1])
  out = []
  for k in range(17):
    gamma = np.radians(105.0) * (k - 8) / 8
    window = np.abs(angle - gamma) < np.radians(6.0)
    reach = rel[window] @ np.array([np.sin(gamma), -np.cos(gamma)])
    out.append(marker.at_vertex(ids[window][np.argmax(reach)]))
  return out


def _landmark_embedding(geo):
  """DECA's landmark_embedding.npy content (iBUG 68 layout)."""
  marker = _Landmarker(geo)
  v, phi = geo.vertices, geo.column_angles
  grid = geo.grid_index
  eye_row, lip_row = geo.eye_slits[0].row, geo.mouth_slit.row
  points = [None] * 68

  # Brows 17-21 (subject's right, -x, outer to inner), 22-26 (left, inner to outer).
  eye_phi = abs(np.arctan2(geometry.EYE_CENTRE_LEFT[0],
                           geometry.EYE_CENTRE_LEFT[2] - geometry.RAY_ORIGIN[2]))
  brow_phis = eye_phi + np.radians([14.0, 8.0, 1.0, -6.0, -12.0])
  brow_rows = eye_row - np.array([4.2, 5.0, 5.3, 5.0, 4.4])
  for k in range(5):
    row = int(np.floor(brow_rows[k]))
    points[17 + k] = marker.at(row, -brow_phis[k], row_shift=brow_rows[k] - row)
    points[26 - k] = marker.at(row, brow_phis[k], row_shift=brow_rows[k] - row)

  # Nose: bridge 27-30 down the midline to the tip, base 31-35.
  midline = grid[1:-1, 0]
  tip_row = 1 + int(np.argmax(np.where(np.arange(len(midline)) + 1 < lip_row, v[midline, 2], -1)))
  nasion_row = eye_row - 1
  for k, frac in enumerate(np.linspace(0.0, 1.0, 4)):
    r = nasion_row + frac * (tip_row - nasion_row)
    points[27 + k] = marker.at(int(np.floor(r)), 0.0, row_shift=r - np.floor(r))
  below_tip = np.arange(tip_row + 1, lip_row)
  subnasale_row = below_tip[np.argmin(v[grid[below_tip, 0], 2])]
  for k, x in enumerate([-0.012, -0.006, 0.0, 0.006, 0.012]):
    az = np.arctan2(x, v[grid[subnasale_row, 0], 2] - geometry.RAY_ORIGIN[2])
    points[31 + k] = marker.at(subnasale_row - 1, az, row_shift=0.6)

  # Eyes: margins of the fissure slits. Right eye (-x) 36-41, left eye (+x) 42-47.
  # Azimuth grows towards +x: the right eye's slit starts at its outer corner (36), the left
  # eye's at its inner corner (42), as iBUG orders them.
  for base, slit in ((36, geo.eye_slits[1]), (42, geo.eye_slits[0])):
    first, last = int(slit.columns[0]), int(slit.columns[-1])  # increasing azimuth (+x)
    points[base] = marker.at_vertex(grid[slit.row, first])
    points[base + 3] = marker.at_vertex(grid[slit.row, last])
    for j, frac in ((1, 1 / 3), (2, 2 / 3)):
      az = phi[first] + frac * (phi[last] - phi[first])
      points[base + j] = marker.at(slit.row, az)
      points[base + 6 - j] = marker.at(slit.row, az, lower=True)

  # Lips: outer contour 48-59 (rows two above / below the slit), inner 60-67 (the slit).
  mouth = [int(c) for c in geo.mouth_slit.columns]
  corner = phi[mouth[-1]]
  points[48] = marker.at(lip_row, -corner - 0.5 * (phi[mouth[-1]] - phi[mouth[-2]]))
  points[54] = marker.at(lip_row, corner + 0.5 * (phi[mouth[-1]] - phi[mouth[-2]]))
  for k, frac in enumerate([-2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3]):
    points[49 + k] = marker.at(lip_row - 2, frac * corner, row_shift=0.2)
    points[59 - k] = marker.at(lip_row + 2, frac * corner, row_shift=0.3)
  points[60] = marker.at_vertex(grid[lip_row, mouth[0]])
  points[64] = marker.at_vertex(grid[lip_row, mouth[-1]])
  for k, frac in enumerate([-0.5, 0.0, 0.5]):
    points[61 + k] = marker.at(lip_row, frac * corner)
    points[67 - k] = marker.at(lip_row, frac * corner, lower=True)

  # Jaw contour: 79 rows in DECA's order: row k <= 39 for a head turned by +k degrees about y
  # (the Euler yaw of root @ neck), row 39 + k for -k degrees.
  yaws = np.radians(np.concatenate([np.arange(40), -np.arange(1, 40)]))
  dynamic = [_contour(geo, marker, yaw) for yaw in yaws]
  points[:17] = dynamic[0]

  faces = np.array([p[0] for p in points], np.int64)
  bary = np.array([p[1] for p in points], np.float64)
  return {
      "static_lmk_faces_idx": faces[17:].copy(),
      "static_lmk_bary_coords": bary[17:].copy(),
      "dynamic_lmk_faces_idx": np.array([[p[0] for p in row] for row in dynamic], np.int64),
      "dynamic_lmk_bary_coords": np.array([[p[1] for p in row] for row in dynamic], np.float64),
      "full_lmk_faces_idx": faces[None],
      "full_lmk_bary_coords": bary[None],
  }


# ----------------------------------------------------------------------------- assembly


def build_head_assets():
  """The built-in head's raw assets, in FLAME's layout (see the module docstring)."""
  geo = geometry.build_geometry()
  weights = _skinning_weights(geo)
  normals = vertex_normals(geo.vertices, geo.faces)
  eyelids = _eyelid_blendshapes(geo)
  shapedirs = np.concatenate([_shape_basis(geo), _expression_basis(geo, weights[:, 2])], -1)
  return {
      "v_template": geo.vertices.astype(np.float64),
      "shapedirs": shapedirs.astype(np.float64),
      "posedirs": _pose_correctives(geo, weights, eyelids, normals),
      "J_regressor": _joint_regressor(geo),
      "weights": weights,
      "kintree_table": KINTREE.copy(),
      "f": geo.faces.astype(np.uint32),
      "landmark_embedding": _landmark_embedding(geo),
      "vt": geo.uv,
      "ft": geo.uv_faces,
      "masks": _masks(geo, weights[:, 2]),
      "eyelids": eyelids,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True,
                      help="a .npz file, or a directory to write in FLAME's own file layout")
  args = parser.parse_args(argv)
  from sheap_jax.head import flame_io  # imported here: only the CLI writes files
  flame_io.save_flame(args.out, build_head_assets())
  print(f"wrote the built-in head to {args.out}")


if __name__ == "__main__":
  main()
