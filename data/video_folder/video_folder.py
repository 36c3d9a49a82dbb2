"""`video_folder`: a TFDS dataset of SHeaP-style head crops from a user's own videos.

Point `manual_dir` at a folder of videos and/or frame folders (see `reader.py` for the layout and
the optional landmark files). Each usable video becomes consecutive records, one per frame with
a face, with the training features and record layout of `synthetic_heads` (data/synthetic_heads/
features.py) plus the optional fields of `data/frame_extras.py`, so the pair pipeline reads
both. Per frame (`data/video_folder/faces.py`):
- the 68 landmarks, their validity and a face score: from the landmark files when given (type
  `given_landmark_type`, "2d" unless stated), otherwise from the face models
  (`sheap_jax.face`: tracked through the video, type "3d"); frames without a face are skipped
  and listed in `info.metadata["skipped_frames"]`;
- the crop: SHeaP's video rule (`sheap_jax.face.crop`) on the landmarks, smoothed over the kept
  frames;
- the person matte (selfie segmentation: backdrop 0, hair and torso 1) cropped like the frame,
  as a grey PNG; empty without the models.
Without the face models (`python -m sheap_jax.face fetch`), or with `face_models=False`,
scikit-image's LBP cascade finds the crops as before (a warning says so): no landmarks, no
matte, and frames where it misses the face take the nearest found frame's box.

A video that cannot be decoded, has fewer than `min_frames` frames with a face, or shows none
is skipped: the build log names it with the reason, and `info.metadata["skipped"]` keeps the
list. With `validation_every = k > 0`, every k-th usable-looking source (sorted by name) is
held out as the `validation` split (none when there are fewer than k sources).
"""
import dataclasses
import logging
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from data import frame_extras
from data.synthetic_heads import features as frame_features
from data.video_folder import faces
from data.video_folder import reader
from sheap_jax.face import crop
from sheap_jax.face import crops as face_crops

VIDEO_NAME = "video_name"  # bytes: the source's path relative to manual_dir
CROP_BOX = "crop_box"  # (4,) float32 (x0, y0, x1, y1) of the crop in the source frame's pixels
SOURCE_FRAME = "source_frame"  # int64: the frame's index among the source's (stepped) frames
# Keys are video_id * KEY_STRIDE + frame: with shuffling disabled, TFDS writes records in key
# order, which keeps each video's frames consecutive (the layout the pair sampler relies on).
KEY_STRIDE = 1 << 32

log = logging.getLogger(__name__)


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
  """Crop size, frame sampling, SHeaP's video-crop parameters and the face models' use."""
  image_size: int = crop.CROP_SIZE
  frame_step: int = 1  # keep every frame_step-th frame
  max_frames: Optional[int] = None  # per video, after frame_step
  min_frames: int = 2  # a pair needs two frames
  margin: float = crop.VIDEO_MARGIN
  shift_up: float = crop.VIDEO_SHIFT_UP
  smoothing: float = crop.VIDEO_SMOOTHING
  detect_max_side: int = 320  # frames are shrunk to this before LBP face detection (speed)
  face_models: bool = True  # False: the LBP cascade's boxes only (no landmarks, no matte)
  given_landmark_type: str = "2d"  # what the landmark files hold (frame_extras.LANDMARK_TYPES)
  fps: float = 30.0  # frame rate the landmark tracker's smoothing assumes
  validation_every: int = 10  # every k-th source is held out (`validation`); 0: none


class VideoFolder(tfds.core.GeneratorBasedBuilder):
  """Head crops from the videos in `manual_dir`; a `train` split and, with enough sources, a
  held-out `validation` split."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "2.0.0": "Crops and 68 landmarks from the face models (LBP only as the fallback); adds "
               "landmark_type, face_score, the person matte and source_frame; frames without a "
               "face are skipped; held-out `validation` split.",
  }
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
        frame_extras.LANDMARK_TYPE: tfds.features.Tensor(shape=(), dtype=np.object_),
        frame_extras.FACE_SCORE: tfds.features.Scalar(dtype=np.float32),
        frame_extras.MATTE: tfds.features.Tensor(shape=(), dtype=np.object_),
        VIDEO_NAME: tfds.features.Tensor(shape=(), dtype=np.object_),
        CROP_BOX: tfds.features.Tensor(shape=(4,), dtype=np.float32),
        SOURCE_FRAME: tfds.features.Scalar(dtype=np.int64),
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        description=__doc__.splitlines()[0])

  def _split_generators(self, dl_manager):
    config = self.builder_config
    frame_extras.landmark_type(config.given_landmark_type)  # checked before any work
    root = str(dl_manager.manual_dir)
    sources = reader.find_sources(root)
    if not sources:
      raise FileNotFoundError(f"data/video_folder: no videos or frame folders in {root}")
    self.info.metadata["skipped"] = {}
    self.info.metadata["skipped_frames"] = {}
    models = face_crops.load_models() if config.face_models else None
    every = config.validation_every
    held_out = [i for i in range(len(sources)) if every > 0 and (i + 1) % every == 0]
    splits = {"train": [(i, s) for i, s in enumerate(sources) if i not in held_out]}
    if held_out:
      splits["validation"] = [(i, sources[i]) for i in held_out]
    return {name: self._generate_examples(split, models, name == "train")
            for name, split in splits.items()}

  def _generate_examples(self, sources, models, required: bool):
    config = self.builder_config
    skipped = self.info.metadata["skipped"]
    usable = 0
    for video_id, source in sources:
      try:
        plan = faces.plan(source, config, models)
      except reader.SourceError as error:
        log.warning("video_folder: skipping %s: %s", source.name, error)
        skipped[source.name] = str(error)
        continue
      usable += 1
      if plan.skipped:
        self.info.metadata["skipped_frames"][source.name] = [
            [int(t), why] for t, why in plan.skipped]
        log.info("video_folder: %s: %d frame(s) without a face skipped", source.name,
                 len(plan.skipped))
      yield from self._records(video_id, source, plan, models)
    names = [s.name for _, s in sources if s.name in skipped]
    if required and not usable:
      raise ValueError("data/video_folder: no usable video; skipped: " + "; ".join(
          f"{name} ({skipped[name]})" for name in names))
    if names:
      log.warning("video_folder: skipped %d of %d sources: %s", len(names), len(sources),
                  "; ".join(f"{name} ({skipped[name]})" for name in names))

  def _records(self, video_id: int, source, plan: faces.Plan, models):
    config = self.builder_config
    size = config.image_size
    count = len(plan.frames)
    landmark_type = (plan.landmark_type or "2d").encode("utf-8")
    frames = reader.read_frames(source, config.frame_step, int(plan.frames[-1]) + 1)
    position = {int(t): i for i, t in enumerate(plan.frames)}
    for t, frame in enumerate(frames):
      index = position.get(t)
      if index is None:
        continue
      box = plan.boxes[index]
      crop_points = crop.points_to_crop(plan.points[index], box, size)
      valid = plan.valid[index] & np.all(np.isfinite(crop_points), axis=1) & np.all(
          (crop_points >= -0.5) & (crop_points <= size - 0.5), axis=1)
      matte = b""
      if models is not None:
        levels = np.round(models.matte(frame) * 255).astype(np.uint8)
        matte = frame_extras.encode_mask(crop.crop_image(levels[..., None], box, size)[..., 0])
      yield video_id * KEY_STRIDE + index, {
          frame_features.IMAGE: frame_features.encode_image(crop.crop_image(frame, box, size)),
          frame_features.LANDMARKS: np.where(valid[:, None], crop_points, 0.0).astype(
              np.float32),
          frame_features.LANDMARKS_VALID: valid,
          frame_features.VIDEO_ID: video_id,
          frame_features.FRAME_INDEX: index,
          frame_features.VIDEO_NUM_FRAMES: count,
          frame_extras.LANDMARK_TYPE: landmark_type,
          frame_extras.FACE_SCORE: np.float32(plan.scores[index]),
          frame_extras.MATTE: matte,
          VIDEO_NAME: source.name.encode("utf-8"),
          CROP_BOX: box.astype(np.float32),
          SOURCE_FRAME: t,
      }
