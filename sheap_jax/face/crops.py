"""SHeaP's crops from the face models: 68 landmarks -> `crop.video_box`, for photos and videos.

Shared by `predict` and `data.video_folder`. `load_models` returns None (after one warning
naming `python -m sheap_jax.face fetch`) when the models cannot be had; callers then fall back
to scikit-image's LBP cascade (`crop.detect_faces`), whose crops are looser.
"""
import dataclasses
import warnings
from typing import Iterable, List, Optional, Tuple

import numpy as np

from sheap_jax.face import crop
from sheap_jax.face.models import FaceModels
from sheap_jax.face.weights import FETCH_COMMAND, FaceModelsUnavailable

MIN_VALID_POINTS = 34  # fewer usable landmarks than this: no box from them


def load_models(num_threads: int = 1) -> Optional[FaceModels]:
  """The face models, or None with a warning that the LBP cascade stands in for them."""
  try:
    return FaceModels.load(num_threads=num_threads)
  except FaceModelsUnavailable as error:
    warnings.warn(f"face models unavailable ({error}); falling back to scikit-image's LBP face "
                  f"detector, whose crops are looser. Get the models with `{FETCH_COMMAND}`.",
                  stacklevel=2)
    return None


def box_from_landmarks(points: np.ndarray, valid: np.ndarray, width: int, height: int,
                       margin: float = crop.VIDEO_MARGIN,
                       shift_up: float = crop.VIDEO_SHIFT_UP) -> Optional[np.ndarray]:
  """SHeaP's video box (4,) from 68 landmarks, or None with fewer than MIN_VALID_POINTS usable."""
  usable = np.asarray(valid, bool) & np.all(np.isfinite(points), axis=1)
  if usable.sum() < MIN_VALID_POINTS:
    return None
  return crop.video_box(crop.landmarks_box(points, usable), width, height, margin, shift_up)


@dataclasses.dataclass
class FaceFrames:
  """Per frame t of a photo or video: `boxes[t]` SHeaP's crop box (4,) or None (no face),
  `points[t]` (68, 2) frame pixels, `valid[t]` (68,), `scores[t]` face presence; `skipped`
  (frame, reason) of the frames without a face. Landmarks are 3D-type (`landmark_type`)."""
  boxes: List[Optional[np.ndarray]]
  points: np.ndarray
  valid: np.ndarray
  scores: np.ndarray
  skipped: List[Tuple[int, str]]
  landmark_type: str = "3d"


def photo_faces(models: FaceModels, image: np.ndarray, **box_options) -> FaceFrames:
  """The largest face of one photo."""
  points, score, valid = models.landmarks68(image)
  box = box_from_landmarks(points, valid, image.shape[1], image.shape[0], **box_options)
  skipped = [] if box is not None else [(0, "no face found")]
  return FaceFrames([box], points[None], valid[None], np.array([score], np.float32), skipped)


def video_faces(models: FaceModels, frames: Iterable[np.ndarray], fps: float = 30.0,
                **box_options) -> FaceFrames:
  """One face tracked through a video (`FaceModels.track`); boxes unsmoothed (the caller
  smooths the kept frames' boxes with `crop.smooth_boxes`)."""
  sizes = []

  def remember(frames):
    for frame in frames:
      sizes.append(None if frame is None else np.shape(frame)[:2])
      yield frame

  track = models.track(remember(frames), fps=fps)
  skipped = dict(track.skipped)
  boxes = []
  for t, size in enumerate(sizes):
    box = None if t in skipped or size is None else box_from_landmarks(
        track.points[t], track.valid[t], size[1], size[0], **box_options)
    if box is None and t not in skipped:
      skipped[t] = f"fewer than {MIN_VALID_POINTS} landmarks inside the frame"
    boxes.append(box)
  return FaceFrames(boxes, track.points, track.valid, track.scores, sorted(skipped.items()),
                    track.landmark_type)
