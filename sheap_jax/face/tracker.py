"""Following one face through a video: 68 landmarks per frame, tracked and smoothed.

- The first frame with a face takes the largest detected face that the mesh model confirms.
- Each next frame's region of interest comes from this frame's mesh (MeshResult.next_roi), as
  MediaPipe's face mesh tracks; the detector runs again when the presence score drops below
  mesh.PRESENCE_THRESHOLD or the new points no longer overlap the last face's box. Re-detection
  keeps the detected face overlapping the last one most (the largest if none overlaps).
- Temporal smoothing: a One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) on the points. Its
  cutoff frequency grows with the points' speed, measured in face sizes (the outer eye corners'
  distance) per second so that it does not depend on the frame size: still faces are smoothed
  hard (jitter gone), moving faces hardly at all (little lag). It restarts after a frame
  without a face.
- Frames without a face are skipped and listed, as are unreadable frames (None, wrong shape or
  dtype; a warning names the frame); nothing is raised for them.
"""
import dataclasses
import math
import warnings
from typing import Iterable, List, Optional, Tuple

import numpy as np

from sheap_jax.face import geometry, mesh
from sheap_jax.face.models import BadFrame, FaceModels, check_frame, inside_frame

OUTER_EYE_CORNERS_68 = (36, 45)
# A face that moved over a tenth of the region of interest (or changed size by 10%) between
# frames is looked at again in a region centred on it: the mesh model expects a centred face
# and otherwise lags behind fast motion.
REFINE_SHIFT = 0.1


@dataclasses.dataclass(frozen=True)
class OneEuro:
  """One-Euro filter settings: `min_cutoff` (Hz) is the cutoff of a still face; it rises by
  `beta` Hz per face size per second of speed; `derivative_cutoff` (Hz) smooths that speed."""
  min_cutoff: float = 0.5
  beta: float = 20.0
  derivative_cutoff: float = 4.0


def _alpha(cutoff, dt: float):
  """Weight of the new value in an exponential average of cutoff `cutoff` Hz, step `dt` s."""
  tau = 1.0 / (2 * math.pi * np.asarray(cutoff))
  return 1.0 / (1.0 + tau / dt)


class _OneEuroState:
  """The filter's memory: last output and last speed, per coordinate."""

  def __init__(self, settings: OneEuro):
    self._settings = settings
    self._value = None
    self._speed = None

  def reset(self):
    self._value = None

  def __call__(self, value: np.ndarray, dt: float, scale: float) -> np.ndarray:
    if self._value is None:
      self._value, self._speed = value, np.zeros_like(value)
      return value
    s = self._settings
    raw_speed = (value - self._value) / dt
    self._speed = self._speed + _alpha(s.derivative_cutoff, dt) * (raw_speed - self._speed)
    cutoff = s.min_cutoff + s.beta * np.abs(self._speed) / scale
    self._value = self._value + _alpha(cutoff, dt) * (value - self._value)
    return self._value


@dataclasses.dataclass
class Track:
  """Per frame t: `points[t]` (68, 2) float32 frame pixels (zero where no face), `valid[t]`
  (68,) bool, `scores[t]` face presence probability (0 where no face), `detected[t]` whether
  the detector ran for frame t. `skipped`: (frame, reason) of every frame without landmarks."""
  points: np.ndarray
  valid: np.ndarray
  scores: np.ndarray
  detected: np.ndarray
  skipped: List[Tuple[int, str]]
  landmark_type: str = mesh.LANDMARK_TYPE

  @property
  def found(self) -> np.ndarray:
    """(T,) bool: frames with landmarks."""
    return self.valid.any(axis=1)


def _points_box(points: np.ndarray) -> np.ndarray:
  return np.concatenate([points.min(0), points.max(0)])


def _candidates(faces, last_box: Optional[np.ndarray]):
  """The faces in the order to try: overlapping `last_box` most first, then the largest."""
  def key(face):
    overlap = geometry.box_iou(face.box, last_box) if last_box is not None else 0.0
    return (-overlap, -face.area)
  return sorted(faces, key=key)


def _moved(roi: geometry.RotatedRect, new: geometry.RotatedRect) -> bool:
  """Whether the face has moved within `roi` far enough for a second look (REFINE_SHIFT)."""
  shift = np.linalg.norm(new.centre - roi.centre) / roi.width
  return shift > REFINE_SHIFT or abs(math.log(new.width / roi.width)) > REFINE_SHIFT


def track(models: FaceModels, frames: Iterable[np.ndarray], fps: float = 30.0,
          smoothing: Optional[OneEuro] = OneEuro(), detect_every_frame: bool = False) -> Track:
  """Landmarks of one face through `frames` (uint8 (H, W, 3) RGB images, any iterable).
  `smoothing=None` returns the raw per-frame points; `detect_every_frame` runs the detector on
  every frame instead of tracking (slower; for comparison)."""
  filter_state = _OneEuroState(smoothing) if smoothing else None
  points, valid, scores, detected, skipped = [], [], [], [], []
  roi, last_box, last_found = None, None, None

  def no_landmarks(index, reason):
    points.append(np.zeros((68, 2), np.float32))
    valid.append(np.zeros(68, bool))
    scores.append(0.0)
    skipped.append((index, reason))

  for index, frame in enumerate(frames):
    detected.append(False)
    try:
      check_frame(frame, f"frame {index}")
    except BadFrame as error:
      warnings.warn(f"sheap_jax.face.track: {error}; skipped", stacklevel=2)
      no_landmarks(index, str(error))
      continue
    result = None
    if roi is not None and not detect_every_frame:
      result = models.mesh(frame, roi)
      if result.present and _moved(roi, result.next_roi()):
        result = models.mesh(frame, result.next_roi())
      lost = not result.present or geometry.box_iou(
          _points_box(result.ibug68()), last_box) <= 0
      result = None if lost else result
    if result is None:
      detected[-1] = True
      found = models.confirmed_face(frame, _candidates(models.detect(frame), last_box))
      result = found[1] if found else None
    if result is None or not result.present:
      reason = "no face detected" if result is None else (
          f"face presence score {result.score:.2f} below {mesh.PRESENCE_THRESHOLD}")
      no_landmarks(index, reason)
      roi = None
      if filter_state:
        filter_state.reset()
      continue
    roi = result.next_roi()
    face_points = result.ibug68()
    last_box = _points_box(face_points)
    if filter_state:
      eyes = face_points[list(OUTER_EYE_CORNERS_68)]
      dt = (index - last_found) / fps if last_found is not None else 1.0 / fps
      face_points = filter_state(face_points, dt, float(np.linalg.norm(eyes[1] - eyes[0])))
    last_found = index
    points.append(face_points.astype(np.float32))
    valid.append(inside_frame(face_points, frame.shape))
    scores.append(result.score)
  return Track(np.array(points, np.float32).reshape(-1, 68, 2),
               np.array(valid, bool).reshape(-1, 68), np.array(scores, np.float32),
               np.array(detected, bool), skipped)
