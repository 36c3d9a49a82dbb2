"""`video_folder`: a TFDS dataset of SHeaP-style head crops from a user's own videos.

Point `manual_dir` at a folder of videos and/or frame folders (see `reader.py` for the layout and
the optional landmark files). Each usable video becomes consecutive records, one per frame, with
the same training features and record layout as `synthetic_heads` (data/synthetic_heads/
features.py), so the pair pipeline reads both. Crops follow SHeaP's video rule
(`sheap_jax.face.crop`): a box from the frame's 68 landmarks when given, otherwise from the
scikit-image face detector, enlarged, moved up, clamped to the frame and smoothed over frames.

A video that cannot be decoded, has fewer than `min_frames` frames, or shows no face is skipped:
the build log names it with the reason, and `info.metadata["skipped"]` keeps the list.
"""
import dataclasses
import logging
from typing import Optional

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from data.synthetic_heads import features as frame_features
from data.video_folder import reader
from sheap_jax.face import crop

VIDEO_NAME = "video_name"  # bytes: the source's path relative to manual_dir
CROP_BOX = "crop_box"  # (4,) float32 (x0, y0, x1, y1) of the crop in the source frame's pixels
# Keys are video_id * KEY_STRIDE + frame: with shuffling disabled, TFDS writes records in key
# order, which keeps each video's frames consecutive (the layout the pair sampler relies on).
KEY_STRIDE = 1 << 32
MIN_VALID_LANDMARKS = 34  # fewer found points than this: detect the face instead

log = logging.getLogger(__name__)


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
  """Crop size, frame sampling and SHeaP's video-crop parameters."""
  image_size: int = crop.CROP_SIZE
  frame_step: int = 1  # keep every frame_step-th frame
  max_frames: Optional[int] = None  # per video, after frame_step
  min_frames: int = 2  # a pair needs two frames
  margin: float = crop.VIDEO_MARGIN
  shift_up: float = crop.VIDEO_SHIFT_UP
  smoothing: float = crop.VIDEO_SMOOTHING
  detect_max_side: int = 320  # frames are shrunk to this before face detection (speed)


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """Head crops from the videos in `manual_dir`; one `train` split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [VideoFolderConfig(name="224"),
                     VideoFolderConfig(name="64", image_size=64)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put videos (.mp4, .avi, .mov, .mkv, .webm) or folders of frames in manual_dir. Optional "
      "landmarks: <video>.npy (T, 68, 2) beside a video or frame folder, or <frame>.npy (68, 2) "
      "beside each frame; (x, y) in source pixels, NaN where missing.")

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        frame_features.IMAGE: tfds.features.Tensor(shape=(), dtype=np.object_),
        frame_features.LANDMARKS: tfds.features.Tensor(
            shape=(frame_features.NUM_LANDMARKS, 2), dtype=np.float32),
        frame_features.LANDMARKS_VALID: tfds.features.Tensor(
            shape=(frame_features.NUM_LANDMARKS,), dtype=np.bool_),
        frame_features.VIDEO_ID: tfds.features.Scalar(dtype=np.int64),
        frame_features.FRAME_INDEX: tfds.features.Scalar(dtype=np.int64),
        frame_features.VIDEO_NUM_FRAMES: tfds.features.Scalar(dtype=np.int64),
        VIDEO_NAME: tfds.features.Tensor(shape=(), dtype=np.object_),
        CROP_BOX: tfds.features.Tensor(shape=(4,), dtype=np.float32),
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        description=__doc__.splitlines()[0])

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    sources = reader.find_sources(root)
    if not sources:
      raise FileNotFoundError(f"data/video_folder: no videos or frame folders in {root}")
    self.info.metadata["skipped"] = {}
    return {"train": self._generate_examples(sources)}

  def _generate_examples(self, sources):
    config = self.builder_config
    skipped = self.info.metadata["skipped"]
    for video_id, source in enumerate(sources):
      try:
        boxes, landmarks = _plan_crops(source, config)
      except reader.SourceError as error:
        log.warning("video_folder: skipping %s: %s", source.name, error)
        skipped[source.name] = str(error)
        continue
      count = len(boxes)
      frames = reader.read_frames(source, config.frame_step, count)
      for index, (frame, box, points) in enumerate(zip(frames, boxes, landmarks)):
        crop_points = crop.points_to_crop(points, box, config.image_size)
        valid = np.all(np.isfinite(crop_points), axis=1) & np.all(
            (crop_points >= -0.5) & (crop_points <= config.image_size - 0.5), axis=1)
        yield video_id * KEY_STRIDE + index, {
            frame_features.IMAGE: frame_features.encode_image(
                crop.crop_image(frame, box, config.image_size)),
            frame_features.LANDMARKS: np.where(valid[:, None], crop_points, 0.0).astype(
                np.float32),
            frame_features.LANDMARKS_VALID: valid,
            frame_features.VIDEO_ID: video_id,
            frame_features.FRAME_INDEX: index,
            frame_features.VIDEO_NUM_FRAMES: count,
            VIDEO_NAME: source.name.encode("utf-8"),
            CROP_BOX: box.astype(np.float32),
        }
    if len(skipped) == len(sources):
      raise ValueError("data/video_folder: no usable video; skipped: " + "; ".join(
          f"{name} ({why})" for name, why in skipped.items()))
    if skipped:
      log.warning("video_folder: skipped %d of %d sources: %s", len(skipped), len(sources),
                  "; ".join(f"{name} ({why})" for name, why in skipped.items()))


def _plan_crops(source: reader.Source, config: VideoFolderConfig):
  """First pass over a video: one smoothed crop box per frame and the landmarks (T, 68, 2)
  (NaN where unknown). Raises SourceError for unreadable, too short or faceless videos."""
  given = reader.read_landmarks(source, config.frame_step, config.max_frames)
  boxes = []
  for index, frame in enumerate(reader.read_frames(source, config.frame_step, config.max_frames)):
    points = given[index] if given is not None and index < len(given) else None
    boxes.append(_frame_box(frame, points, config))
  if len(boxes) < config.min_frames:
    raise reader.SourceError(f"{source.path}: {len(boxes)} frame(s), need {config.min_frames}")
  found = np.array([b is not None for b in boxes])
  if not found.any():
    raise reader.SourceError(f"{source.path}: no face found in any frame")
  # Frames where the face was missed take the box of the nearest frame where it was found.
  nearest = np.abs(np.arange(len(boxes))[:, None] - np.flatnonzero(found)[None]).argmin(1)
  filled = np.stack([boxes[np.flatnonzero(found)[i]] for i in nearest])
  landmarks = np.full((len(boxes), frame_features.NUM_LANDMARKS, 2), np.nan, np.float32)
  if given is not None:
    landmarks[:min(len(given), len(boxes))] = given[:len(boxes)]
  return crop.smooth_boxes(filled, config.smoothing), landmarks


def _frame_box(frame: np.ndarray, points: Optional[np.ndarray], config: VideoFolderConfig):
  """SHeaP's video box for one frame, or None when neither landmarks nor the detector find a
  face."""
  height, width = frame.shape[:2]
  if points is not None and np.isfinite(points).all(axis=1).sum() >= MIN_VALID_LANDMARKS:
    return crop.video_box(crop.landmarks_box(points, np.isfinite(points).all(axis=1)), width,
                          height, config.margin, config.shift_up)
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
