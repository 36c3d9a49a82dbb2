"""One video's frames, as fitting may read them: images, the detector's landmarks, a matte.

`--video NAME:VARIANT/SPLIT/VIDEO_ID` names a video of a registered dataset
(`data/datasets.py`: `synthetic_heads:tiny/validation/8`, `video_folder:mine/train/0`). Only the
training fields are parsed (`data.pairs.TrainingFields`: images, landmarks and their validity
and type, the stored matte), so no `gt_*` field ever reaches the fit. The person matte is, by
`config.fit.matte`: "none"; "stored" (the dataset's own, from `python -m data.video_folder`);
or "face_model" (the selfie segmenter of `sheap_jax.face` run on each frame here).
"""
import dataclasses
from typing import Dict, Tuple

import numpy as np

from data import datasets
from data import frame_extras
from data import pairs
from data.synthetic_heads import features

_FILE = "sheap_jax/fitting/clip.py"
MATTES = ("none", "stored", "face_model")


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  dataset: str
  variant: str
  split: str
  video_id: int

  def __str__(self) -> str:
    return f"{self.dataset}:{self.variant}/{self.split}/{self.video_id}"


def parse_video_spec(text: str) -> VideoSpec:
  """'NAME:VARIANT/SPLIT/VIDEO_ID' -> VideoSpec, or one line saying what is expected."""
  name, _, rest = text.partition(":")
  parts = rest.split("/")
  if (name not in datasets.registered_datasets() or len(parts) != 3 or not all(parts)
      or not parts[2].isdigit()):
    raise datasets.ConfigError(
        f"--video={text!r}: expected NAME:VARIANT/SPLIT/VIDEO_ID with NAME one of "
        f"{list(datasets.registered_datasets())}, e.g. synthetic_heads:tiny/validation/8")
  return VideoSpec(name, parts[0], parts[1], int(parts[2]))


def video_records(source, video_id: int) -> range:
  """The record indices of one video in a split stored video after video (features.py)."""
  index = 0
  while index < len(source):
    record = source[index]
    if int(record[features.VIDEO_ID]) == video_id:
      return range(index, index + int(record[features.VIDEO_NUM_FRAMES]))
    index += int(record[features.VIDEO_NUM_FRAMES]) - int(record[features.FRAME_INDEX])
  raise datasets.ConfigError(f"{_FILE}: the split holds no video with id {video_id}")


def _frame_indices(count: int, max_frames: int) -> np.ndarray:
  """Evenly spaced frames of a video of `count` (all when max_frames is 0)."""
  if not max_frames or max_frames >= count:
    return np.arange(count)
  return np.unique(np.round(np.linspace(0, count - 1, max_frames)).astype(int))


def load_clip(spec: VideoSpec, config) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
  """(frames, record indices): the fit's inputs, batched over the video's frames, with the
  keys the objective reads (`target_image` (T, H, W, 3) float32 in [0, 1], `target_landmarks`
  (T, 68, 2) pixels, `target_landmarks_valid`, `target_landmarks_3d`, `target_matte` (T, H, W)
  in [0, 1], `target_matte_valid`), and the split's record indices they came from."""
  builder = datasets.open_named(spec.dataset, spec.variant, config)
  source = pairs.open_split(builder, spec.split)
  fields = pairs.TrainingFields(source)
  records = video_records(fields, spec.video_id)
  chosen = np.asarray(records)[_frame_indices(len(records), config.fit.max_frames)]
  rows = [fields[int(i)] for i in chosen]
  images = np.stack([features.decode_image(r[features.IMAGE]) for r in rows])
  frames = {
      "target_image": images.astype(np.float32) / 255.0,
      "target_landmarks": np.stack([r[features.LANDMARKS] for r in rows]).astype(np.float32),
      "target_landmarks_valid": np.stack([r[features.LANDMARKS_VALID] for r in rows]),
      "target_landmarks_3d": np.array([frame_extras.landmark_type(r[frame_extras.LANDMARK_TYPE])
                                       == "3d" for r in rows]),
  }
  frames.update(_mattes(config.fit.matte, rows, images))
  return frames, chosen


def _mattes(kind: str, rows, images) -> Dict[str, np.ndarray]:
  if kind not in MATTES:
    raise datasets.ConfigError(f"config.fit.matte={kind!r}; expected one of {list(MATTES)}")
  if kind == "none":
    return {}
  if kind == "stored":
    stored = [frame_extras.decode_mask(r[frame_extras.MATTE]) for r in rows]
    if all(m is None for m in stored):
      raise datasets.ConfigError("config.fit.matte='stored', but the video has no stored matte "
                                 "(synthetic_heads stores none: use 'face_model')")
    blank = np.zeros(images.shape[1:3], np.uint8)
    return {"target_matte": np.stack([blank if m is None else m for m in stored]
                                     ).astype(np.float32) / 255.0,
            "target_matte_valid": np.array([m is not None for m in stored])}
  from sheap_jax.face import models  # pylint: disable=import-outside-toplevel (TFLite: on use)
  face_models = models.FaceModels.load()
  return {"target_matte": np.stack([face_models.matte(image) for image in images]
                                   ).astype(np.float32),
          "target_matte_valid": np.ones(len(images), bool)}
