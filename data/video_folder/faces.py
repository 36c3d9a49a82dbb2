"""The first pass over a source: which frames show a face, their landmarks and crop boxes.

Three ways, in order of preference: the source's landmark files; the face models
(`sheap_jax.face`, tracked through the video); scikit-image's LBP cascade when the models are
unavailable or switched off (boxes only; frames where it misses take the nearest found box,
as before the face models).
"""
import dataclasses
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from data.video_folder import reader
from sheap_jax.face import crop
from sheap_jax.face import crops as face_crops

NUM_LANDMARKS = 68


@dataclasses.dataclass
class Plan:
  """The kept frames of a source (indices into `reader.read_frames`' frames) and, per kept
  frame, its smoothed crop box (4,), landmarks (68, 2) in frame pixels (NaN where unknown),
  their validity, the face score; the landmark type; `skipped` (frame, reason) of the frames
  left out."""
  frames: np.ndarray
  boxes: np.ndarray
  points: np.ndarray
  valid: np.ndarray
  scores: np.ndarray
  landmark_type: Optional[str]  # None: no landmarks (LBP boxes)
  skipped: List[Tuple[int, str]]


def plan(source: reader.Source, config, models) -> Plan:
  """The plan of one source; SourceError for unreadable, too short or faceless sources."""
  given = reader.read_landmarks(source, config.frame_step, config.max_frames)
  frames = reader.read_frames(source, config.frame_step, config.max_frames)
  if given is not None:
    boxes, points, valid, scores, skipped = _from_given(frames, given, config)
    landmark_type = config.given_landmark_type
  elif models is not None:
    found = face_crops.video_faces(models, frames, fps=config.fps / config.frame_step,
                                   margin=config.margin, shift_up=config.shift_up)
    boxes, points, valid, scores, skipped = (found.boxes, found.points, found.valid,
                                             found.scores, found.skipped)
    landmark_type = found.landmark_type
  else:
    return _from_detector(source, frames, config)
  kept = np.array([t for t, box in enumerate(boxes) if box is not None], np.int64)
  _check_counts(source, len(boxes), len(kept), config)
  return Plan(kept, smooth_runs(kept, np.stack([boxes[t] for t in kept]), config.smoothing),
              np.asarray(points, np.float32)[kept], np.asarray(valid, bool)[kept],
              np.asarray(scores, np.float32)[kept], landmark_type, skipped)


def smooth_runs(frames: np.ndarray, boxes: np.ndarray, smoothing: float) -> np.ndarray:
  """`crop.smooth_boxes` over each run of consecutive frames: after frames without a face the
  face may be elsewhere, so the average starts afresh (the release never skips frames)."""
  starts = np.flatnonzero(np.diff(frames, prepend=-2) != 1)
  return np.concatenate([crop.smooth_boxes(run, smoothing)
                         for run in np.split(boxes, starts[1:])])


def _check_counts(source, total: int, kept: int, config) -> None:
  if total < config.min_frames:
    raise reader.SourceError(f"{source.path}: {total} frame(s), need {config.min_frames}")
  if not kept:
    raise reader.SourceError(f"{source.path}: no face found in any frame")
  if kept < config.min_frames:
    raise reader.SourceError(f"{source.path}: a face in {kept} frame(s), need "
                             f"{config.min_frames}")


def _from_given(frames, given: np.ndarray, config):
  """Boxes from the landmark files; a frame without enough landmarks is skipped."""
  boxes, points, valid, skipped = [], [], [], []
  for t, frame in enumerate(frames):
    height, width = frame.shape[:2]
    marks = given[t] if t < len(given) else np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
    found = np.all(np.isfinite(marks), axis=1)
    box = face_crops.box_from_landmarks(marks, found, width, height, config.margin,
                                        config.shift_up)
    if box is None:
      skipped.append((t, f"{found.sum()} landmarks in the landmark file, need "
                         f"{face_crops.MIN_VALID_POINTS}"))
    boxes.append(box)
    points.append(marks)
    valid.append(found)
  scores = np.array([box is not None for box in boxes], np.float32)
  return boxes, np.array(points).reshape(-1, NUM_LANDMARKS, 2), np.array(valid).reshape(
      -1, NUM_LANDMARKS), scores, skipped


def _from_detector(source, frames, config) -> Plan:
  """LBP boxes for every frame; missed frames take the nearest found frame's box."""
  boxes = [_detector_box(frame, config) for frame in frames]
  found = np.flatnonzero([b is not None for b in boxes])
  _check_counts(source, len(boxes), len(boxes) if len(found) else 0, config)
  nearest = found[np.abs(np.arange(len(boxes))[:, None] - found[None]).argmin(1)]
  count = len(boxes)
  return Plan(np.arange(count), crop.smooth_boxes(np.stack([boxes[i] for i in nearest]),
                                                  config.smoothing),
              np.full((count, NUM_LANDMARKS, 2), np.nan, np.float32),
              np.zeros((count, NUM_LANDMARKS), bool), np.zeros(count, np.float32), None, [])


def _detector_box(frame: np.ndarray, config) -> Optional[np.ndarray]:
  """SHeaP's video box from the LBP cascade's largest face, or None."""
  height, width = frame.shape[:2]
  shrink = min(1.0, config.detect_max_side / max(height, width))
  size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
  small = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR)) if shrink < 1 else frame
  detections = crop.detect_faces(small)
  if not len(detections):
    return None
  # Back to the frame's pixels: pixel edges (x + 0.5) scale by the resize factor.
  scale = np.array([size[0] / width, size[1] / height] * 2) if shrink < 1 else np.ones(4)
  detection = (detections[0] + 0.5) / scale - 0.5
  return crop.video_box(crop.landmark_box_from_detection(detection), width, height,
                        config.margin, config.shift_up)
