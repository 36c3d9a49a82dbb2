"""Scores of one predicted mesh against one ground-truth mesh of the same topology.

The one implementation behind `evaluate`, training validation and the studies: NoW's 7
landmarks of a mesh, the NoW protocol's per-point errors with the ground truth as the scan,
the vertices inside NoW's crop, and how far neutral heads are from the template. Meshes in,
numbers out: nothing here knows about networks, predictors or datasets.
"""
import numpy as np

from sheap_jax.head import flame
from sheap_jax.metrics import now

# How a split's identities relate to training, printed beside every score of them.
SPLIT_ROLES = {"train": "fitting", "validation": "generalisation", "test": "generalisation"}


def split_role(split: str) -> str:
  """'fitting' for the identities trained on, 'generalisation' for held-out ones."""
  if split not in SPLIT_ROLES:
    raise ValueError(f"unknown split {split!r}: expected one of {sorted(SPLIT_ROLES)}")
  return SPLIT_ROLES[split]


def split_label(split: str) -> str:
  """'validation (generalisation)' etc.: the split and what its scores measure."""
  return f"{split} ({split_role(split)})"


def now_landmarks(model, vertices) -> np.ndarray:
  """NoW's 7 landmarks (7, 3) float64 of a mesh (V, 3): the model's full-embedding barycentrics
  (iBUG 36, 39, 42, 45, 33, 48, 54)."""
  index = np.asarray(flame.NOW_LANDMARKS)
  corners = np.asarray(vertices, np.float64)[
      np.asarray(model.faces)[np.asarray(model.full_lmk_faces)[index]]]
  bary = np.asarray(model.full_lmk_bary, np.float64)[index]
  return np.einsum("lkc,lk->lc", corners, bary)


def now_errors(model, pred_vertices, gt_vertices) -> np.ndarray:
  """(N,) NoW errors (metres) of a predicted mesh against a ground-truth mesh used as the scan:
  every GT vertex inside NoW's crop sphere, distance to the aligned predicted surface."""
  faces = np.asarray(model.faces)
  return now.now_errors(pred_vertices, faces, now_landmarks(model, pred_vertices), gt_vertices,
                        faces, now_landmarks(model, gt_vertices))


def crop_indices(model, gt_vertices) -> np.ndarray:
  """Indices of the vertices of `gt_vertices` inside NoW's crop sphere (its own landmarks)."""
  centre, radius = now.face_crop_sphere(now_landmarks(model, gt_vertices))
  distances = np.linalg.norm(np.asarray(gt_vertices, np.float64) - centre, axis=1)
  return np.flatnonzero(distances <= radius)


def distance_from_template_mm(neutral_meshes, model) -> float:
  """Mean over meshes of the RMS vertex distance (mm) from the template head, whole head and
  unaligned: how far a set of neutral heads has moved from the mean shape."""
  offsets = np.asarray(neutral_meshes, np.float64) - np.asarray(model.v_template)
  return float(1e3 * np.mean(np.sqrt(np.mean(np.sum(offsets ** 2, axis=-1), axis=-1))))
