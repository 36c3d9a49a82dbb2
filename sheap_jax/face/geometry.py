"""Rotated rectangles in a frame, the square model inputs cut from them, and the way back.

Coordinates follow the project (sheap_jax/face/crop.py): pixel (column i, row j) is centred at
(i, j). A model input ("tensor") of S x S pixels covers the rectangle edge to edge: its
continuous coordinate u in [0, S] (what the TFLite models output, in tensor pixels) sits at
u / S - 1/2 of the rectangle's width from its centre, along the rectangle's rotated x axis.
Angles are in radians, y down: a positive angle turns the rectangle's x axis towards +y.
"""
import dataclasses
import math

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class RotatedRect:
  """A rectangle of `width` x `height` pixels centred at (`x`, `y`), turned by `angle`."""
  x: float
  y: float
  width: float
  height: float
  angle: float = 0.0

  @property
  def centre(self) -> np.ndarray:
    return np.array([self.x, self.y])

  def rotation(self) -> np.ndarray:
    c, s = math.cos(self.angle), math.sin(self.angle)
    return np.array([[c, -s], [s, c]])

  def corners(self) -> np.ndarray:
    """(4, 2) corners in frame pixels."""
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [self.width / 2, self.height / 2]
    return self.centre + half @ self.rotation().T

  def bounds(self) -> np.ndarray:
    """Axis-aligned box (x0, y0, x1, y1) around the rectangle."""
    corners = self.corners()
    return np.concatenate([corners.min(0), corners.max(0)])

  def scaled_square(self, scale: float) -> "RotatedRect":
    """MediaPipe's RectTransformation with square_long: the long side times `scale`, square."""
    side = max(self.width, self.height) * scale
    return dataclasses.replace(self, width=side, height=side)

  def tensor_to_frame(self, points: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) continuous tensor coordinates of an S = `size` input -> frame pixels."""
    local = (np.asarray(points, np.float64)[:, :2] / size - 0.5) * [self.width, self.height]
    return self.centre + local @ self.rotation().T

  def frame_to_tensor(self, points: np.ndarray, size: int) -> np.ndarray:
    """Inverse of `tensor_to_frame`."""
    local = (np.asarray(points, np.float64) - self.centre) @ self.rotation()
    return (local / [self.width, self.height] + 0.5) * size


def rect_from_keypoints(box: np.ndarray, start: np.ndarray, end: np.ndarray) -> RotatedRect:
  """MediaPipe's DetectionsToRects: the box (x0, y0, x1, y1), turned so that the line from
  keypoint `start` to keypoint `end` (the eyes) becomes horizontal."""
  dx, dy = np.asarray(end, np.float64) - np.asarray(start, np.float64)
  x0, y0, x1, y1 = np.asarray(box, np.float64)
  return RotatedRect((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, math.atan2(dy, dx))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of boxes (..., 4) and (..., 4), broadcast."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  low = np.maximum(a[..., :2], b[..., :2])
  high = np.minimum(a[..., 2:], b[..., 2:])
  inter = np.prod(np.clip(high - low, 0, None), axis=-1)
  area_a = np.prod(np.clip(a[..., 2:] - a[..., :2], 0, None), axis=-1)
  area_b = np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
  return inter / np.maximum(area_a + area_b - inter, 1e-12)


def warp(image: np.ndarray, rect: RotatedRect, size: int, replicate_border: bool) -> np.ndarray:
  """The (size, size, 3) uint8 model input cut from `image` along `rect`, bilinear.

  As MediaPipe's ImageToTensor (an affine warp), except that a rectangle more than twice the
  input's size is first shrunk by an integer box filter, so that the samples do not alias and
  the warp touches fewer pixels. Outside the frame: the edge pixels repeated
  (`replicate_border`, the landmark input) or black (the detector's letterbox).
  """
  height, width = image.shape[:2]
  factor = max(1, int(min(rect.width, rect.height) / size))
  x0, y0, x1, y1 = rect.bounds()
  x0, y0 = math.floor(x0) - 1, math.floor(y0) - 1  # one pixel of margin for bilinear taps
  x1 = x0 + factor * math.ceil((math.ceil(x1) + 2 - x0) / factor)
  y1 = y0 + factor * math.ceil((math.ceil(y1) + 2 - y0) / factor)
  region = image[max(y0, 0):y1, max(x0, 0):x1]
  if replicate_border:
    region = np.pad(region, ((max(-y0, 0), max(y1 - height, 0)),
                             (max(-x0, 0), max(x1 - width, 0)), (0, 0)), mode="edge")
  else:  # PIL fills what lies outside the region with black; the last box of `reduce` may be
    x0, y0 = max(x0, 0), max(y0, 0)  # cut short by the frame's edge
  picture = Image.fromarray(np.ascontiguousarray(region))
  if factor > 1:
    picture = picture.reduce(factor)
  # PIL maps output continuous coordinates to input continuous coordinates (edge-based). Frame
  # continuous = tensor_to_frame(u) + 1/2; region continuous = (frame - (x0, y0)) / factor.
  linear = rect.rotation() * [rect.width / size, rect.height / size]
  origin = rect.tensor_to_frame(np.zeros((1, 2)), size)[0] + 0.5 - [x0, y0]
  affine = np.concatenate([linear, origin[:, None]], axis=1) / factor
  out = picture.transform((size, size), Image.Transform.AFFINE, tuple(affine.ravel()),
                          resample=Image.Resampling.BILINEAR)
  return np.asarray(out)
