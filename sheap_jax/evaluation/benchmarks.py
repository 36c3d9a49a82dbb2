"""Geometry benchmarks: any predictor, scored with the NoW protocol (`evaluation.scoring`).

- `synthetic_neutral`: identities of `synthetic_heads` (held out, or the training ones to
  measure fitting). Each scored frame's predicted shape gives a neutral mesh (zero pose,
  expression and eyelids), scored against the identity's ground-truth neutral mesh as NoW
  scores a prediction against a scan: crop the GT vertices around the nose with the GT mesh's 7
  NoW landmarks, align the prediction (7-landmark Procrustes with scale, then
  scale/rotation/translation refinement), per-vertex point-to-triangle errors. Like NoW, errors
  are pooled over images (frames), several per identity. Each item also gets its shape recovery
  (`shape_recovery`: alpha, cos, aligned in-crop RMS).
- `synthetic_expressions`: the same protocol on the posed, expressive frames: the predicted
  posed mesh (all parameters) against the frame's ground-truth posed mesh.
- `now`: real NoW images, cropped around NoW's face box, predicted neutral meshes written in the
  official layout (`now_data.write_prediction`), then scored against the scans.
- `expression_probe`: not geometry but expressiveness: a linear classifier
  (`evaluation.expression_probe`) fitted on the predicted expressions of the train identities'
  emotion-labelled frames names the emotion of held-out identities' frames.
Which frames: `select_frames` (evenly spaced frames of every video, identities interleaved);
`evaluate` scores 2 per identity (first and last) on `synthetic_neutral`, 4 on
`synthetic_expressions`, training validation 1 (the first; `evaluation/validation.py`). The
geometry benchmarks are chosen by name through `evaluation/evaluators.py`. Every result
keeps each item's identity, so that `BenchmarkResult.compare` can resample identities.
The "scan" of the synthetic benchmarks is every GT vertex inside NoW's crop sphere (eyeball and
mouth-pocket vertices included); only `oracle`-style predictors see the GT parameters.
"""
import dataclasses

import jax
import numpy as np
from PIL import Image
import tqdm

from data.synthetic_heads import assets
from data.synthetic_heads import features as F
from sheap_jax.face import crop
from sheap_jax.evaluation import expression_probe as probe_lib
from sheap_jax.head import flame
from sheap_jax.evaluation import intervals
from sheap_jax.evaluation import predictors
from sheap_jax.evaluation import scoring
from sheap_jax.evaluation import shape_recovery
from sheap_jax.metrics import now
from sheap_jax.metrics import now_data

PREDICTOR_IMAGE_SIZE = 224
BASELINE = "mean_head"  # what every ratio is relative to
RECOVERY_KEYS = ("alpha", "cos", "aligned_rms_mm", "from_template_aligned_mm")

_neutral_vertices = jax.jit(flame.neutral_vertices)
_flame_forward = jax.jit(flame.flame_forward)


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
  """Per-item NoW errors (metres) of one predictor on one benchmark."""

  benchmark: str
  item_ids: tuple  # one name per scored item (frame or NoW image)
  errors: tuple  # (N_i,) errors of each item's cropped GT points, metres
  identities: tuple  # each item's identity: the unit the intervals resample
  recovery: tuple = ()  # neutral benchmarks: each item's shape_recovery.recovery dict
  from_template_mm: float = float("nan")  # neutral benchmarks: scoring.distance_from_template_mm
  truth_from_template_mm: float = float("nan")  # the same of the ground-truth neutral meshes

  def summary(self):
    """Pooled median/mean/std in mm (NoW's figures), the point, item and identity counts; for
    neutral geometry the distances from the template and the mean shape recovery."""
    summary = {**now.summarize(list(self.errors)), "num_items": len(self.item_ids),
               "num_identities": len(set(self.identities))}
    if self.recovery:
      summary["from_template_mm"] = self.from_template_mm
      summary.update({key: float(np.mean([r[key] for r in self.recovery]))
                      for key in RECOVERY_KEYS})
    return summary

  def ground_truth(self):
    """Neutral benchmarks: how far the true heads are from the template, whole head and
    unaligned (`from_template_mm`) and in NoW's crop without similarity motions
    (`from_template_aligned_mm`), means over the items."""
    return dict(from_template_mm=self.truth_from_template_mm,
                from_template_aligned_mm=float(np.mean(
                    [r["truth_from_template_aligned_mm"] for r in self.recovery])))

  def per_item(self):
    return [{"id": i, "identity": str(c), "median_mm": float(1000 * np.median(e)),
             "mean_mm": float(1000 * e.mean()), **(self.recovery[k] if self.recovery else {})}
            for k, (i, c, e) in enumerate(zip(self.item_ids, self.identities, self.errors))]

  def recovery_by_identity(self):
    """{identity: {alpha, cos, aligned_rms_mm, from_template_aligned_mm}}, each the mean over
    the identity's scored frames."""
    by_identity = {}
    for identity, item in zip(self.identities, self.recovery):
      by_identity.setdefault(identity, []).append(item)
    return {str(identity): {key: float(np.mean([i[key] for i in items])) for key in RECOVERY_KEYS}
            for identity, items in by_identity.items()}

  def recovery_intervals(self, **bootstrap):
    """{key: intervals.MeanInterval} of the per-identity recovery values."""
    per_identity = list(self.recovery_by_identity().values())
    return {key: intervals.mean_interval([v[key] for v in per_identity], **bootstrap)
            for key in RECOVERY_KEYS}

  def compare(self, baseline, **bootstrap) -> intervals.PairedRatio:
    """This predictor's pooled median over `baseline`'s, scored on the same items."""
    if self.item_ids != baseline.item_ids:
      raise ValueError(f"{self.benchmark}: cannot pair results of different items "
                       f"({len(self.item_ids)} against {len(baseline.item_ids)})")
    return intervals.paired_ratio(self.errors, baseline.errors, self.identities, **bootstrap)


def score_neutral_meshes(model, pred_meshes, gt_meshes, item_ids, identities,
                         name="synthetic_neutral"):
  """The `synthetic_neutral` result of predicted neutral meshes (N, V, 3) against their
  identities' ground-truth neutral meshes: NoW errors and shape recovery per item."""
  pred_meshes, gt_meshes = np.asarray(pred_meshes), np.asarray(gt_meshes)
  errors = tuple(scoring.now_errors(model, p, g) for p, g in zip(pred_meshes, gt_meshes))
  recovery = tuple(shape_recovery.recovery(model, p, g) for p, g in zip(pred_meshes, gt_meshes))
  return BenchmarkResult(name, tuple(item_ids), errors, tuple(identities), recovery,
                         scoring.distance_from_template_mm(pred_meshes, model),
                         scoring.distance_from_template_mm(gt_meshes, model))


def select_frames(source, frames_per_identity, max_items=None):
  """Record indices: `frames_per_identity` evenly spaced frames of each video of the split.

  Records are stored video after video (features.py); the order interleaves identities (every
  identity's first pick, then every second pick, ...), so `max_items` keeps many identities.
  """
  if len(source) == 0:
    raise ValueError("the synthetic split holds no records")
  if frames_per_identity < 1:
    raise ValueError(f"frames_per_identity must be >= 1, got {frames_per_identity}")
  frames = int(source[0][F.VIDEO_NUM_FRAMES])
  picks = np.unique(np.round(np.linspace(0, frames - 1, min(frames_per_identity, frames))))
  num_videos = len(source) // frames
  order = [video * frames + int(p) for p in picks for video in range(num_videos)]
  return order[:max_items] if max_items else order


def _batches(source, indices, batch_size):
  """(images (B, H, W, 3) float32 [0, 1], examples {key: (B, ...)}, ids, identities) per chunk."""
  for start in range(0, len(indices), batch_size):
    records = [source[i] for i in indices[start:start + batch_size]]
    images = np.stack([F.decode_image(r[F.IMAGE]) for r in records]).astype(np.float32) / 255
    examples = {k: np.stack([r[k] for r in records]) for k in records[0] if k != F.IMAGE}
    ids = [f"video{int(r[F.VIDEO_ID]):06d}/frame{int(r[F.FRAME_INDEX]):04d}" for r in records]
    identities = [f"video{int(r[F.VIDEO_ID]):06d}" for r in records]
    yield images, examples, ids, identities


def _check_model_matches(model, examples):
  """GT meshes (stored, or recomputed from the `gt_` parameters with `model`) must come from
  the built-in head the data was rendered with."""
  stored = [key for key in (F.GT_VERTICES, F.GT_NEUTRAL_VERTICES) if key in examples]
  for key in stored:
    if examples[key].shape[-2] != model.num_vertices:
      raise ValueError(f"the synthetic ground truth ({key}) has {examples[key].shape[-2]} "
                       f"vertices but the FLAME model has {model.num_vertices}: synthetic "
                       "benchmarks need the built-in head the data was rendered with (omit "
                       "--flame)")
  if not stored:
    rendered_with = assets.head_assets().model.num_vertices
    if model.num_vertices != rendered_with:
      raise ValueError(f"the synthetic frames were rendered with the built-in head "
                       f"({rendered_with} vertices) but the FLAME model has "
                       f"{model.num_vertices}: synthetic benchmarks need that head (omit --flame)")


def _gt_neutral(model, examples):
  """(B, V, 3) ground-truth neutral meshes: stored, or recomputed from `gt_shape`."""
  _check_model_matches(model, examples)
  gt = examples.get(F.GT_NEUTRAL_VERTICES)
  return np.asarray(gt if gt is not None else _neutral_vertices(model, examples[F.GT_SHAPE]))


def _gt_posed(model, images, examples):
  """(B, V, 3) ground-truth posed meshes: stored, or recomputed from the `gt_` parameters."""
  _check_model_matches(model, examples)
  gt = examples.get(F.GT_VERTICES)
  if gt is None:
    gt = _flame_forward(model, predictors.oracle(images, examples)).vertices
  return np.asarray(gt)


def _synthetic(name, predictor, model, source, posed, max_items, frames_per_identity,
               batch_size):
  indices = select_frames(source, frames_per_identity, max_items)
  parts = []
  with tqdm.tqdm(total=len(indices), desc=name, unit="frame", disable=None) as progress:
    for images, examples, ids, identities in _batches(source, indices, batch_size):
      params = predictor(images, examples)
      if posed:
        predicted = np.asarray(_flame_forward(model, params).vertices)
        gt = _gt_posed(model, images, examples)
        parts.append(BenchmarkResult(name, tuple(ids), tuple(
            scoring.now_errors(model, p, g) for p, g in zip(predicted, gt)), tuple(identities)))
      else:
        parts.append(score_neutral_meshes(model, _neutral_vertices(model, params.shape),
                                          _gt_neutral(model, examples), ids, identities, name))
      progress.update(len(ids))
  return _concatenate(parts)


def _concatenate(parts):
  """One result of the batches' results (the distances from the template: means over all
  meshes)."""
  fields = {f: sum((getattr(p, f) for p in parts), ())
            for f in ("item_ids", "errors", "identities", "recovery")}
  mean = lambda field: (float(np.average([getattr(p, field) for p in parts],
                                         weights=[len(p.item_ids) for p in parts]))
                        if fields["recovery"] else float("nan"))
  return BenchmarkResult(parts[0].benchmark, **fields, from_template_mm=mean("from_template_mm"),
                         truth_from_template_mm=mean("truth_from_template_mm"))


def synthetic_neutral(predictor, model, source, max_items=None, frames_per_identity=2,
                      batch_size=8):
  """Predicted neutral meshes of the split's frames against their identity's GT neutral mesh."""
  return _synthetic("synthetic_neutral", predictor, model, source, False, max_items,
                    frames_per_identity, batch_size)


def synthetic_expressions(predictor, model, source, max_items=None, frames_per_identity=4,
                          batch_size=8):
  """Predicted posed meshes of the split's frames against the frames' GT posed meshes."""
  return _synthetic("synthetic_expressions", predictor, model, source, True, max_items,
                    frames_per_identity, batch_size)


def labelled_frames(source, max_items=None):
  """Indices of the records with an emotion label (`gt_emotion >= 0`), in storage order, thinned
  evenly to at most `max_items`."""
  indices = [i for i in range(len(source)) if int(source[i][F.GT_EMOTION]) >= 0]
  if max_items and len(indices) > max_items:
    indices = [indices[int(k)] for k in np.round(np.linspace(0, len(indices) - 1, max_items))]
  return indices


def _probe_inputs(predictor, source, indices, batch_size):
  """(features (N, D), emotion labels (N,)) of the given records under `predictor`."""
  features, labels = [], []
  for images, examples, _, _ in _batches(source, indices, batch_size):
    features.append(probe_lib.probe_features(predictor(images, examples)))
    labels.append(np.asarray(examples[F.GT_EMOTION]))
  return np.concatenate(features), np.concatenate(labels)


def expression_probe(predictor, train_source, test_source, max_items=None, batch_size=8,
                     l2=probe_lib.DEFAULT_L2):
  """The probe's scores (`expression_probe.evaluate`) of one predictor: fitted on the labelled
  frames of `train_source`, scored on those of `test_source` (other identities)."""
  splits = {}
  for name, source in (("train", train_source), ("held-out", test_source)):
    indices = labelled_frames(source, max_items)
    if not indices:
      raise ValueError(f"expression_probe: the {name} split holds no emotion-labelled frames "
                       "(gt_emotion >= 0); build a config with more identities or frames")
    splits[name] = _probe_inputs(predictor, source, indices, batch_size)
  return probe_lib.evaluate(*splits["train"], *splits["held-out"], F.EMOTIONS, l2)


def crop_face_box(image, box, size=PREDICTOR_IMAGE_SIZE, enlargement=crop.NOW_ENLARGE):
  """SHeaP's NoW crop (`crop.now_box`: the box grown by `enlargement`, padded to a square;
  black outside the image), resampled to size x size by `crop.crop_image`. (H, W, 3) uint8 ->
  float32 [0, 1]."""
  pixels = crop.crop_image(np.asarray(image, np.uint8), crop.now_box(box, enlargement), size)
  return pixels.astype(np.float32) / 255


def _read_now_image(dataset, image, box, size):
  path = dataset.image_path(image)
  try:
    with Image.open(path) as pil:
      pixels = np.asarray(pil.convert("RGB"))
  except OSError as error:
    raise ValueError(f"{path}: cannot read the NoW image ({error})") from None
  return crop_face_box(pixels, box, size)


def now_benchmark(predictor, model, dataset, predictions_dir, split="val", challenge=None,
                  max_items=None, batch_size=8, image_size=PREDICTOR_IMAGE_SIZE):
  """Predicts neutral meshes for NoW images, writes them in the official layout, scores them."""
  images = dataset.images(split, challenge)[:max_items]
  if not images:
    raise ValueError(f"{dataset.root}: the NoW {split} list has no images"
                     + (f" of challenge {challenge}" if challenge else ""))
  faces = np.asarray(model.faces)
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    boxes = np.stack([dataset.face_box(im) for im in batch])
    crops = np.stack([_read_now_image(dataset, im, box, image_size)
                      for im, box in zip(batch, boxes)])
    params = predictor(crops, {"face_box": boxes})
    for image, vertices in zip(batch, np.asarray(_neutral_vertices(model, params.shape))):
      now_data.write_prediction(predictions_dir, image, vertices, faces,
                                scoring.now_landmarks(model, vertices))
  errors, missing = now_data.evaluate_predictions(dataset, predictions_dir, images)
  if missing:
    raise RuntimeError(f"{predictions_dir}: predictions missing for "
                       f"{[im.relative_path for im in missing][:5]}")
  ids = tuple(im.relative_path for im in images)
  return BenchmarkResult("now", ids, tuple(errors[i] for i in ids),
                         tuple(im.subject for im in images))


def write_cumulative_plot(results_by_predictor, path):
  """One cumulative error curve per predictor (NoW's plot), as a PNG."""
  now.plot_cumulative_errors({name: list(r.errors) for name, r in results_by_predictor.items()},
                             path)
  return path


PROBE = "expression_probe"
