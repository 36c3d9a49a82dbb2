"""Face boxes and SHeaP-style head crops, shared by the data builders and prediction.

A box is (x0, y0, x1, y1) in continuous pixel coordinates: pixel (column i, row j) is centred at
(i, j) and an image covers [-0.5, W - 0.5] x [-0.5, H - 0.5] (rasterizer/types.py). A crop of
`size` pixels maps the box onto the crop image's [-0.5, size - 0.5] square, so a point x goes to
(x - x0) * size / (x1 - x0) - 0.5 (`points_to_crop`).

SHeaP's public inference crops (DESIGN.md 4.2), in the release's units:
- video (`video_box`, `smooth_boxes`): coordinates are normalised by the image's (width,
  height); from the landmark box's centre c and h0, half its larger side in those units, the box
  is x = c.x +- h0 (1 + margin) / (width / height), y = c.y - shift_up h0 +- h0 (1 + margin),
  clamped to the image (not squared again), cut on whole pixels, and smoothed over frames on
  those integer corners; a landmark box with h0 <= 0.02 gives the whole image, no face the
  centre square (`centre_square_box`);
- NoW: the benchmark's `detected_face` box enlarged symmetrically by 80%, padded to a square,
  resized to 224 (`now_box`).
Without landmarks, `detect_faces` finds frontal faces with scikit-image's LBP cascade, which
ships with scikit-image and needs no download.
"""
import functools
from typing import Optional

import numpy as np
from PIL import Image

CROP_SIZE = 224
# The release's video demo: half side h0 (1 + VIDEO_MARGIN), moved up by VIDEO_SHIFT_UP h0, where
# h0 is half the landmark box's larger side in coordinates normalised by (width, height).
VIDEO_MARGIN = 0.9
VIDEO_SHIFT_UP = 0.5
VIDEO_MIN_HALF_SIDE = 0.02  # h0 at or below this: the landmarks are unusable, take the whole image
VIDEO_SMOOTHING = 0.3  # weight of the new frame's box in the exponential moving average
NOW_ENLARGE = 0.8  # NoW's detected_face box grows by 80%, half on each side
# The LBP cascade's square box vs the box of the 68 true landmarks on the same face (medians
# over synthetic_heads/tiny's 64 training frames; docs/data_pipeline.md): the landmark box is
# centred DETECTION_TO_LANDMARKS_SHIFT of the detection's side lower, and is
# DETECTION_TO_LANDMARKS_SIZE of that side wide and high (the cascade boxes the inner face).
DETECTION_TO_LANDMARKS_SHIFT = 0.267
DETECTION_TO_LANDMARKS_SIZE = (1.146, 1.189)


def _as_boxes(boxes, name: str, allow_flat: bool = False) -> np.ndarray:
  """Boxes as float64 (..., 4), checked; `allow_flat` accepts zero width or height (a landmark
  box of points on one line), never a negative one."""
  boxes = np.asarray(boxes, np.float64)
  if boxes.shape[-1:] != (4,):
    raise ValueError(f"sheap_jax/face/crop.py: {name} must end in 4 values (x0, y0, x1, y1), got "
                     f"shape {boxes.shape}")
  if not np.all(np.isfinite(boxes)):
    raise ValueError(f"sheap_jax/face/crop.py: {name} has non-finite values")
  width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  empty = (width < 0) | (height < 0) if allow_flat else (width <= 0) | (height <= 0)
  if np.any(empty):
    raise ValueError(f"sheap_jax/face/crop.py: {name} has an empty box (x1 <= x0 or y1 <= y0)")
  return boxes


def _edges_to_box(edges) -> np.ndarray:
  """Integer pixel corners (pixels x0..x1-1, y0..y1-1, as an array slice takes them) -> box."""
  return np.asarray(edges, np.float64) - 0.5


def landmarks_box(landmarks, valid=None) -> np.ndarray:
  """Tight box (4,) around (N, 2) points, using only those marked `valid` (N,) when given."""
  points = np.asarray(landmarks, np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"sheap_jax/face/crop.py: landmarks must be (N, 2), got {points.shape}")
  if valid is not None:
    points = points[np.asarray(valid, bool)]
  points = points[np.all(np.isfinite(points), axis=1)]
  if len(points) < 2:
    raise ValueError("sheap_jax/face/crop.py: need at least two valid, finite landmarks for a box")
  return np.concatenate([points.min(0), points.max(0)])


def square_box(box) -> np.ndarray:
  """The square about the box's centre whose side is the box's larger side (padding)."""
  box = _as_boxes(box, "box")
  cx, cy = 0.5 * (box[..., 0] + box[..., 2]), 0.5 * (box[..., 1] + box[..., 3])
  half = 0.5 * np.maximum(box[..., 2] - box[..., 0], box[..., 3] - box[..., 1])
  return np.stack([cx - half, cy - half, cx + half, cy + half], axis=-1)


def video_box(landmark_box, width: int, height: int, margin: float = VIDEO_MARGIN,
              shift_up: float = VIDEO_SHIFT_UP) -> np.ndarray:
  """SHeaP's video crop box (..., 4) of a face whose landmark box (..., 4) is given, in a
  width x height image.

  The release's rule in its own units: normalised coordinates u = (x + 0.5) / width,
  v = (y + 0.5) / height (0 and 1 are the image's outer edges); h0 = half the landmark box's
  larger side in those units; the box is u = c.u +- h0 (1 + margin) / (width / height),
  v = c.v - shift_up h0 +- h0 (1 + margin) about the landmark box's centre c: a square in
  pixels until it is clamped to the image, which it is without squaring again. The corners are
  then truncated to whole pixels, so the box is an array slice. h0 <= VIDEO_MIN_HALF_SIDE gives
  the whole image, and so does a box that clamping leaves empty (face entirely outside the
  image), where the release would fail.
  """
  box = _as_boxes(landmark_box, "landmark_box", allow_flat=True)
  size = np.array([width, height, width, height], np.float64)
  norm = (box + 0.5) / size
  cu, cv = 0.5 * (norm[..., 0] + norm[..., 2]), 0.5 * (norm[..., 1] + norm[..., 3])
  h0 = 0.5 * np.maximum(norm[..., 2] - norm[..., 0], norm[..., 3] - norm[..., 1])
  shift, h1 = shift_up * h0, h0 * (1.0 + margin)
  half_u = h1 / (width / height)
  norm = np.stack([cu - half_u, cv - shift - h1, cu + half_u, cv - shift + h1], axis=-1)
  whole = np.array([0.0, 0.0, 1.0, 1.0])
  norm = np.clip(np.where((h0 > VIDEO_MIN_HALF_SIDE)[..., None], norm, whole), 0.0, 1.0)
  edges = np.trunc(norm * size)
  empty = (edges[..., 2] <= edges[..., 0]) | (edges[..., 3] <= edges[..., 1])
  return _edges_to_box(np.where(empty[..., None], whole * size, edges))


def centre_square_box(width: int, height: int) -> np.ndarray:
  """The release's crop when no face is found: the centred square of side min(width, height),
  on whole pixels (the odd pixel left over goes to the far side)."""
  side = min(width, height)
  x0, y0 = (width - side) // 2, (height - side) // 2
  return _edges_to_box([x0, y0, x0 + side, y0 + side])


def landmark_box_from_detection(detection) -> np.ndarray:
  """The landmark box (4,) a face detection (4,) stands for, so that the video rule applies
  unchanged when a frame has no landmarks."""
  box = _as_boxes(detection, "detection")
  side = np.maximum(box[..., 2] - box[..., 0], box[..., 3] - box[..., 1])
  cx = 0.5 * (box[..., 0] + box[..., 2])
  cy = 0.5 * (box[..., 1] + box[..., 3]) + DETECTION_TO_LANDMARKS_SHIFT * side
  half_w, half_h = (0.5 * f * side for f in DETECTION_TO_LANDMARKS_SIZE)
  return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def now_box(detected_box, enlarge: float = NOW_ENLARGE) -> np.ndarray:
  """SHeaP's NoW crop box: `detected_box` (x0, y0, x1, y1) grown by `enlarge` of its width
  and height (half on each side), then padded to a square about the same centre."""
  box = _as_boxes(detected_box, "detected_box")
  width, height = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
  grown = box + 0.5 * enlarge * np.stack([-width, -height, width, height], axis=-1)
  return square_box(grown)


def smooth_boxes(boxes, smoothing: float = VIDEO_SMOOTHING) -> np.ndarray:
  """The release's moving average of per-frame boxes (T, 4) on whole pixels (as `video_box`
  gives): with integer corners c_t, b_0 = c_0 and b_t = trunc(smoothing c_t + (1 - smoothing)
  b_{t-1}), which steadies a jittery detector and keeps every box an array slice."""
  boxes = _as_boxes(boxes, "boxes")
  if boxes.ndim != 2:
    raise ValueError(f"sheap_jax/face/crop.py: boxes must be (T, 4), got {boxes.shape}")
  if not 0.0 < smoothing <= 1.0:
    raise ValueError(f"sheap_jax/face/crop.py: smoothing must be in (0, 1], got {smoothing}")
  edges = boxes + 0.5
  if np.any(edges != np.round(edges)):
    raise ValueError("sheap_jax/face/crop.py: boxes must lie on whole pixels (corners at integer "
                     "- 0.5, as video_box gives)")
  smoothed = edges.copy()
  for t in range(1, len(edges)):
    smoothed[t] = np.trunc(smoothing * edges[t] + (1.0 - smoothing) * smoothed[t - 1])
  return _edges_to_box(smoothed)


def points_to_crop(points, box, size: int = CROP_SIZE) -> np.ndarray:
  """Maps image points (..., 2) into the pixel coordinates of the `size` crop of `box`."""
  box = _as_boxes(box, "box")
  points = np.asarray(points, np.float64)
  scale = np.stack([size / (box[..., 2] - box[..., 0]), size / (box[..., 3] - box[..., 1])], -1)
  return ((points - box[..., None, :2]) * scale[..., None, :] - 0.5).astype(np.float32)


def points_from_crop(points, box, size: int = CROP_SIZE) -> np.ndarray:
  """Inverse of `points_to_crop`: crop pixel coordinates back to the original image."""
  box = _as_boxes(box, "box")
  points = np.asarray(points, np.float64)
  scale = np.stack([(box[..., 2] - box[..., 0]) / size, (box[..., 3] - box[..., 1]) / size], -1)
  return ((points + 0.5) * scale[..., None, :] + box[..., None, :2]).astype(np.float32)


def crop_image(image, box, size: int = CROP_SIZE, fill: float = 0.0) -> np.ndarray:
  """Resamples the `box` region of an (H, W, C) image to (size, size, C), antialiased when it
  shrinks (Pillow's bilinear resampling with a widened filter); outside the image is `fill`
  (in the image's own units: 0-255 for uint8). Returns the input's dtype."""
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"sheap_jax/face/crop.py: image must be (H, W, C), got {image.shape}")
  box = _as_boxes(box, "box")
  if box.shape != (4,):
    raise ValueError(f"sheap_jax/face/crop.py: crop_image takes one box (4,), got {box.shape}")
  height, width = image.shape[:2]
  # Pillow measures from pixel edges: our x is its x + 0.5. Take an integer window holding the
  # box plus the filter's reach (its half-width is one source pixel per output pixel).
  reach = int(np.ceil(max(box[2] - box[0], box[3] - box[1]) / size)) + 2
  x0, y0, x1, y1 = box + 0.5
  left, top = int(np.floor(x0)) - reach, int(np.floor(y0)) - reach
  right, bottom = int(np.ceil(x1)) + reach, int(np.ceil(y1)) + reach
  window = np.full((bottom - top, right - left, image.shape[2]), fill, image.dtype)
  src_x0, src_y0 = max(left, 0), max(top, 0)
  src_x1, src_y1 = min(right, width), min(bottom, height)
  if src_x1 > src_x0 and src_y1 > src_y0:
    window[src_y0 - top:src_y1 - top, src_x0 - left:src_x1 - left] = (
        image[src_y0:src_y1, src_x0:src_x1])
  pil_box = (x0 - left, y0 - top, x1 - left, y1 - top)
  if image.dtype == np.uint8 and image.shape[2] in (3, 4):
    return np.asarray(Image.fromarray(window).resize((size, size), Image.BILINEAR, box=pil_box))
  out = np.stack([
      np.asarray(Image.fromarray(window[..., c].astype(np.float32)).resize(
          (size, size), Image.BILINEAR, box=pil_box))
      for c in range(image.shape[2])], axis=-1)
  if np.issubdtype(image.dtype, np.integer):
    info = np.iinfo(image.dtype)
    out = np.clip(np.round(out), info.min, info.max)
  return out.astype(image.dtype)


@functools.lru_cache(maxsize=1)
def _face_cascade():
  # Imported lazily: scikit-image is needed only when no landmarks are given.
  from skimage import data as skimage_data  # pylint: disable=import-outside-toplevel
  from skimage import feature  # pylint: disable=import-outside-toplevel
  return feature.Cascade(skimage_data.lbp_frontal_face_cascade_filename())


def detect_faces(image, min_size: int = 32, max_size: Optional[int] = None,
                 scale_factor: float = 1.1, step_ratio: float = 1.0,
                 min_neighbors: int = 2) -> np.ndarray:
  """Frontal-face boxes (N, 4) in an (H, W, C) image (uint8, or float in [0, 1]), largest
  first; N = 0 when there is none. Uses scikit-image's LBP cascade (offline, CPU) on the
  histogram-equalised grey image (equalising raised recall on synthetic frames from 0.06 to
  0.66; docs/data_pipeline.md)."""
  from skimage import color, exposure  # pylint: disable=import-outside-toplevel
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"sheap_jax/face/crop.py: image must be (H, W, C), got {image.shape}")
  pixels = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(
      np.float32)
  height, width = image.shape[:2]
  largest = min(height, width) if max_size is None else max_size
  if largest < min_size:
    return np.zeros((0, 4), np.float32)
  grey = pixels[..., 0] if pixels.shape[2] == 1 else color.rgb2gray(pixels[..., :3])
  found = _face_cascade().detect_multi_scale(
      img=exposure.equalize_hist(grey), scale_factor=scale_factor, step_ratio=step_ratio,
      min_size=(min_size, min_size), max_size=(largest, largest),
      min_neighbor_number=min_neighbors)
  # The cascade reports the top-left pixel (r, c) and a size in pixels; its box therefore spans
  # from that pixel's outer edge, (c - 0.5, r - 0.5), to (c + width - 0.5, r + height - 0.5).
  boxes = np.array([[d["c"] - 0.5, d["r"] - 0.5, d["c"] + d["width"] - 0.5,
                     d["r"] + d["height"] - 0.5] for d in found], np.float32).reshape(-1, 4)
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return boxes[np.argsort(-areas, kind="stable")]


def box_iou(box_a, box_b) -> np.ndarray:
  """Intersection over union of boxes (..., 4), broadcasting."""
  a, b = _as_boxes(box_a, "box_a"), _as_boxes(box_b, "box_b")
  inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = inter_w * inter_h
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  return inter / (area(a) + area(b) - inter)
