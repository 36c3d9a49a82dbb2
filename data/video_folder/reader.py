"""Finds a user's videos and frame folders and reads their frames and optional landmarks.

A source is either a video file (anything PyAV/FFmpeg decodes: .mp4, .avi, .mov, .mkv, .webm)
or a folder whose image files (.png, .jpg, .jpeg, .bmp) are the frames in name order. Optional
68-point landmarks (x, y) in the source's pixels (pixel (i, j) centred at (i, j)):
- `<video name without extension, or folder>.npy` beside it, shaped (T, 68, 2), or
- `<frame>.npy` beside each frame of a folder, shaped (68, 2).
NaN marks a point the landmark detector did not find.
"""
import dataclasses
import os
from typing import Iterator, List, Optional

import av
import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
NUM_LANDMARKS = 68


class SourceError(Exception):
  """A source that cannot be used; the message says which file and why."""


@dataclasses.dataclass(frozen=True)
class Source:
  name: str  # path relative to the root folder
  path: str
  frame_paths: Optional[List[str]] = None  # frame folders only


def find_sources(root: str) -> List[Source]:
  """Videos and frame folders anywhere under `root`, in sorted order."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data/video_folder: {root!r} is not a folder of videos")
  sources = []
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    frames = sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    if frames:
      sources.append(Source(os.path.relpath(folder, root), folder,
                            [os.path.join(folder, f) for f in frames]))
    for f in sorted(files):
      if f.lower().endswith(VIDEO_EXTENSIONS):
        path = os.path.join(folder, f)
        sources.append(Source(os.path.relpath(path, root), path))
  return sorted(sources, key=lambda s: s.name)


def read_frames(source: Source, frame_step: int = 1,
                max_frames: Optional[int] = None) -> Iterator[np.ndarray]:
  """Yields every `frame_step`-th frame as (H, W, 3) uint8, at most `max_frames` of them.

  Raises SourceError when the file cannot be opened or decoded.
  """
  if source.frame_paths is not None:
    paths = source.frame_paths[::frame_step][:max_frames]
    for path in paths:
      try:
        with Image.open(path) as image:
          yield np.asarray(image.convert("RGB"))
      except (OSError, ValueError) as error:
        raise SourceError(f"{path}: unreadable image ({error})") from error
    return
  try:
    with av.open(source.path) as container:
      if not container.streams.video:
        raise SourceError(f"{source.path}: no video stream")
      count = 0
      for index, frame in enumerate(container.decode(video=0)):
        if index % frame_step:
          continue
        if max_frames is not None and count >= max_frames:
          break
        count += 1
        yield frame.to_ndarray(format="rgb24")
  except av.FFmpegError as error:
    raise SourceError(f"{source.path}: cannot decode video ({error})") from error


def read_landmarks(source: Source, frame_step: int = 1,
                   max_frames: Optional[int] = None) -> Optional[np.ndarray]:
  """(T, 68, 2) float32 landmarks for the frames `read_frames` yields, NaN where missing, or
  None when the source has no landmark files."""
  stem = source.path if source.frame_paths is not None else os.path.splitext(source.path)[0]
  whole = stem.rstrip(os.sep) + ".npy"
  if os.path.isfile(whole):
    landmarks = _load(whole, (None, NUM_LANDMARKS, 2))
    return landmarks[::frame_step][:max_frames]
  if source.frame_paths is None:
    return None
  paths = [os.path.splitext(p)[0] + ".npy" for p in source.frame_paths[::frame_step][:max_frames]]
  if not any(os.path.isfile(p) for p in paths):
    return None
  missing = np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
  return np.stack([_load(p, (NUM_LANDMARKS, 2)) if os.path.isfile(p) else missing
                   for p in paths])


def _load(path: str, shape) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as error:
    raise SourceError(f"{path}: unreadable landmark file ({error})") from error
  if array.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, array.shape)):
    expected = tuple("T" if s is None else s for s in shape)
    raise SourceError(f"{path}: landmarks must be shaped {expected}, got {array.shape}")
  return array.astype(np.float32)
