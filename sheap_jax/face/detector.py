"""BlazeFace face detection (short-range 128 px and full-range 192 px), decoded as MediaPipe's
face detection graphs do (mediapipe/modules/face_detection/face_detection*.pbtxt):

- the frame is letterboxed into the square input (aspect ratio kept, black bars), scaled to
  [-1, 1];
- SSD anchors (SsdAnchorsCalculator): fixed unit size, centres on each stride's grid, layers of
  equal stride merged, two anchors per cell where the interpolated aspect ratio is set;
- each anchor's 16 regressors are a box (x centre, y centre, w, h) and 6 keypoints, in input
  pixels relative to the anchor; scores are the sigmoid of the clipped logits;
- weighted non-maximum suppression (IoU 0.3): each kept face averages the boxes and keypoints
  of the candidates it suppresses, weighted by their scores.
Keypoints: right eye, left eye, nose tip, mouth centre, right ear, left ear (the person's right
eye is on the image's left).
"""
import dataclasses
from typing import List, Tuple

import numpy as np

from sheap_jax.face import geometry

NUM_KEYPOINTS = 6
RIGHT_EYE, LEFT_EYE = 0, 1
SCORE_CLIP = 100.0
NMS_IOU = 0.3


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
  """One BlazeFace model's graph options."""
  model: str  # name in weights.MODELS
  size: int  # square input side, also the regressors' scale
  strides: Tuple[int, ...]
  interpolated_anchor: bool  # a second anchor per layer (interpolated_scale_aspect_ratio 1)
  min_score: float


SHORT_RANGE = DetectorSpec("face_detection_short_range", 128, (8, 16, 16, 16), True, 0.5)
FULL_RANGE = DetectorSpec("face_detection_full_range_sparse", 192, (4,), False, 0.6)


@dataclasses.dataclass(frozen=True)
class Detection:
  """A face: `box` (x0, y0, x1, y1) and `keypoints` (6, 2) in frame pixels, `score` in [0, 1]."""
  box: np.ndarray
  keypoints: np.ndarray
  score: float

  @property
  def area(self) -> float:
    return float(np.prod(self.box[2:] - self.box[:2]))

  def roi(self) -> geometry.RotatedRect:
    """The landmark model's input rectangle: the box turned by the eyes, its long side 1.5x,
    square (face_detection_front_detection_to_roi.pbtxt)."""
    rect = geometry.rect_from_keypoints(self.box, self.keypoints[RIGHT_EYE],
                                        self.keypoints[LEFT_EYE])
    return rect.scaled_square(1.5)


def anchor_centres(spec: DetectorSpec) -> np.ndarray:
  """(N, 2) anchor centres in [0, 1] input units, in the model's output order (per merged
  stride: rows, columns, anchors of the cell)."""
  centres = []
  layer = 0
  while layer < len(spec.strides):
    stride = spec.strides[layer]
    same = sum(1 for s in spec.strides[layer:] if s == stride)  # merged, as consecutive
    per_cell = same * (2 if spec.interpolated_anchor else 1)
    cells = -(-spec.size // stride)  # ceil
    grid = (np.arange(cells) + 0.5) / cells
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    cell_centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
    centres.append(np.repeat(cell_centres, per_cell, axis=0))
    layer += same
  return np.concatenate(centres)


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, size: int):
  """Raw outputs (N, 16), (N,) -> boxes (N, 4) as (x0, y0, x1, y1), keypoints (N, 6, 2) in
  [0, 1] input units, scores (N,)."""
  raw = np.asarray(regressors, np.float64) / size
  centre = raw[:, 0:2] + anchors
  half = raw[:, 2:4] / 2
  boxes = np.concatenate([centre - half, centre + half], axis=1)
  keypoints = raw[:, 4:4 + 2 * NUM_KEYPOINTS].reshape(-1, NUM_KEYPOINTS, 2) + anchors[:, None]
  scores = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, np.float64), -SCORE_CLIP, SCORE_CLIP)))
  return boxes, keypoints, scores


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = NMS_IOU):
  """MediaPipe's WEIGHTED non-maximum suppression. Returns lists of (box, keypoints, score):
  the best remaining candidate, with box and keypoints averaged over every remaining candidate
  overlapping it by more than `iou_threshold` (itself included), weighted by score."""
  order = np.argsort(-scores, kind="stable")
  kept = []
  while order.size:
    overlap = geometry.box_iou(boxes[order[0]], boxes[order]) > iou_threshold
    overlap[0] = True
    group = order[overlap]
    weights = scores[group] / scores[group].sum()
    kept.append((weights @ boxes[group], np.tensordot(weights, keypoints[group], axes=1),
                 float(scores[order[0]])))
    order = order[~overlap]
  return kept


def letterbox(height: int, width: int) -> geometry.RotatedRect:
  """The square around the whole frame that the detector sees (black bars where it is not)."""
  side = max(height, width)
  return geometry.RotatedRect((width - 1) / 2, (height - 1) / 2, side, side)


def detect(run_model, spec: DetectorSpec, anchors: np.ndarray, image: np.ndarray
           ) -> List[Detection]:
  """Faces in the uint8 (H, W, 3) `image`, best score first. `run_model` maps the normalised
  (1, S, S, 3) float32 input to [regressors (1, N, 16), logits (1, N, 1)]."""
  rect = letterbox(*image.shape[:2])
  pixels = geometry.warp(image, rect, spec.size, replicate_border=False)
  tensor = (pixels.astype(np.float32) * np.float32(2 / 255) - 1)[None]
  regressors, logits = run_model(tensor)
  regressors, logits = regressors.reshape(-1, 16), logits.reshape(-1)
  candidates = logits > -np.log(1 / spec.min_score - 1)  # sigmoid(logit) > min_score
  if not candidates.any():
    return []
  boxes, keypoints, scores = decode(regressors[candidates], logits[candidates],
                                    anchors[candidates], spec.size)
  detections = []
  for box, points, score in weighted_nms(boxes, keypoints, scores):
    corners = rect.tensor_to_frame(box.reshape(2, 2) * spec.size, spec.size)
    frame_points = rect.tensor_to_frame(points * spec.size, spec.size)
    detections.append(Detection(corners.ravel(), frame_points, score))
  return detections
