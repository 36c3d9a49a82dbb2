"""How much of an identity's true shape a predicted neutral head recovers, in geometry.

For one identity, Δ = neutral mesh - template on the vertices inside NoW's crop (the ground
truth's crop sphere), with the part a similarity transform can explain removed, the same way
for the prediction and the truth. The NoW protocol aligns with scale, rotation and translation,
so shape that only rescales or moves the face cannot score; removing it here makes Δ measure
what the protocol can see. The removal is the least-squares fit over the in-crop vertices of
the 7 motions of the template a similarity makes to first order (3 translations, 3 rotations
about the crop's centroid, 1 scaling about it): an orthogonal projection P, linear in the mesh,
exact for translation and scale and first-order in rotation (the best-fit rotations between
heads of one shape space are a few milliradians). Linearity is the point: a prediction
T + A (G - T) has Δ_pred = A Δ_true exactly. Then

  alpha = <Δ_pred, Δ_true> / |Δ_true|²   (1: all of the shape along the truth; 0: none)
  cos   = <Δ_pred, Δ_true> / (|Δ_pred| |Δ_true|)   (0 when Δ_pred = 0, as for the mean head;
          below 1e-9 |Δ_true| counts as 0: what a translated template leaves in float64)

and two RMS distances over the in-crop vertices: |Δ_pred - Δ_true| (the aligned vertex error)
and |Δ_pred| (how far the prediction moved from the template, `from_template_aligned_mm`).
`mode_survival` applies the same projection to each shape mode of a model (docs/head_model.md).
"""
import numpy as np

from sheap_jax.evaluation import scoring

_ZERO = 1e-18  # |Δ_pred|² below this share of |Δ_true|² is float64 rounding of zero


def similarity_basis(points) -> np.ndarray:
  """(3m, 7) orthonormal basis of the first-order similarity motions of points (m, 3)."""
  points = np.asarray(points, np.float64)
  arm = points - points.mean(axis=0)
  motions = [np.broadcast_to(axis, points.shape) for axis in np.eye(3)]  # translations
  motions += [np.cross(axis, arm) for axis in np.eye(3)]  # rotations about the centroid
  motions.append(arm)  # scaling about the centroid
  basis, _ = np.linalg.qr(np.stack([m.reshape(-1) for m in motions], axis=1))
  return basis


def remove_similarity(displacement, basis) -> np.ndarray:
  """The displacement (m, 3) minus its least-squares fit by the basis' motions."""
  flat = np.asarray(displacement, np.float64).reshape(-1)
  return (flat - basis @ (basis.T @ flat)).reshape(-1, 3)


def recovery(model, pred_vertices, gt_vertices) -> dict:
  """alpha, cos and the aligned in-crop RMS distances (mm) of one predicted neutral mesh
  against its identity's ground-truth neutral mesh."""
  crop = scoring.crop_indices(model, gt_vertices)
  template = np.asarray(model.v_template, np.float64)[crop]
  basis = similarity_basis(template)
  truth = remove_similarity(np.asarray(gt_vertices, np.float64)[crop] - template, basis)
  pred = remove_similarity(np.asarray(pred_vertices, np.float64)[crop] - template, basis)
  dot, truth_sq, pred_sq = np.sum(pred * truth), np.sum(truth ** 2), np.sum(pred ** 2)
  if truth_sq == 0:
    raise ValueError("shape recovery: the ground-truth mesh is the template up to a similarity, "
                     "so there is no shape to recover")
  rms = lambda d: float(1e3 * np.sqrt(np.sum(d ** 2) / len(crop)))
  return dict(alpha=float(dot / truth_sq),
              cos=float(dot / np.sqrt(pred_sq * truth_sq)) if pred_sq > _ZERO * truth_sq else 0.0,
              aligned_rms_mm=rms(pred - truth), from_template_aligned_mm=rms(pred),
              truth_from_template_aligned_mm=rms(truth), crop_vertices=int(len(crop)))


def mode_survival(model, num_modes=None) -> dict:
  """Per shape mode at 1 sd, over the template's crop: RMS (mm) on the whole head, in the crop,
  and in the crop once similarity motions are removed; the surviving share of the in-crop
  energy; and each mode's share of the expected aligned energy of a N(0, I) shape."""
  template = np.asarray(model.v_template, np.float64)
  crop = scoring.crop_indices(model, template)
  basis = similarity_basis(template[crop])
  directions = np.asarray(model.shapedirs, np.float64)
  directions = directions[..., :num_modes] if num_modes else directions
  whole, in_crop, aligned = [], [], []
  for k in range(directions.shape[-1]):
    mode = directions[..., k]
    whole.append(np.sum(mode ** 2) / len(template))
    in_crop.append(np.sum(mode[crop] ** 2) / len(crop))
    aligned.append(np.sum(remove_similarity(mode[crop], basis) ** 2) / len(crop))
  whole, in_crop, aligned = (np.asarray(v) for v in (whole, in_crop, aligned))
  return dict(whole_rms_mm=1e3 * np.sqrt(whole), crop_rms_mm=1e3 * np.sqrt(in_crop),
              aligned_rms_mm=1e3 * np.sqrt(aligned),
              surviving=np.divide(aligned, in_crop, out=np.zeros_like(aligned),
                                  where=in_crop > 0),
              aligned_share=aligned / aligned.sum(), crop_vertices=int(len(crop)))
