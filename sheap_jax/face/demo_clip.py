"""A clip made from one photo by moving, turning and zooming it, each frame's affine known.

The stand-in for a real video in the tests, bench/face.py and docs/face.md: a point p of the
photo lands at `affines[t] @ (p, 1)` in frame t (pixel centres at integers, as everywhere).
"""
import math

import numpy as np
from PIL import Image


def clip_affines(count: int, frame_size, photo_size, zoom=(0.8, 1.2), degrees=15.0,
                 shift=0.15, anchor=None) -> np.ndarray:
  """(count, 2, 3) affines: the photo's point `anchor` (default its centre) starts at the
  frame's centre, swings sideways by `shift` of the frame width and back; the photo turns from
  -`degrees` to +`degrees` about it and zooms from zoom[0] to zoom[1] times the scale at which
  the photo's height fills the frame's."""
  width, height = frame_size
  photo_width, photo_height = photo_size
  base = height / photo_height
  affines = []
  for t in np.linspace(0.0, 1.0, count):
    scale = base * (zoom[0] + (zoom[1] - zoom[0]) * t)
    angle = math.radians(degrees * (2 * t - 1))
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)],
                                 [math.sin(angle), math.cos(angle)]])
    centre = np.array([(width - 1) / 2 + shift * width * math.sin(2 * math.pi * t),
                       (height - 1) / 2])
    if anchor is None:
      anchor = [(photo_width - 1) / 2, (photo_height - 1) / 2]
    offset = centre - rotation @ anchor
    affines.append(np.concatenate([rotation, offset[:, None]], axis=1))
  return np.array(affines)


def render(photo: np.ndarray, affine: np.ndarray, frame_size) -> np.ndarray:
  """The (H, W, 3) uint8 frame showing `photo` through `affine` (grey outside), bilinear."""
  inverse = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
  # PIL maps output continuous coordinates (centre + 1/2) to input continuous coordinates.
  linear, offset = inverse[:, :2], inverse[:, 2]
  pil = np.concatenate([linear, (offset + 0.5 - linear @ [0.5, 0.5])[:, None]], axis=1)
  return np.asarray(Image.fromarray(photo).transform(
      tuple(frame_size), Image.Transform.AFFINE, tuple(pil.ravel()),
      resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)))


def apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
  """(N, 2) photo points -> frame points."""
  return np.asarray(points) @ affine[:, :2].T + affine[:, 2]


def make_clip(photo: np.ndarray, count: int, frame_size=(320, 240), **motion):
  """(frames: list of uint8 images, affines (count, 2, 3)); `motion` as in clip_affines."""
  affines = clip_affines(count, frame_size, photo.shape[1::-1], **motion)
  return [render(photo, a, frame_size) for a in affines], affines
