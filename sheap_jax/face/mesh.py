"""The 468-point face mesh (face_landmark.tflite) and its 68 iBUG points.

The input is built as MediaPipe's face landmark graphs build it (face_landmark_cpu.pbtxt): a
192 x 192 crop along a rotated square region of interest (edge pixels repeated outside the
frame), scaled to [0, 1]. The model returns 468 (x, y, z) points in input pixels and a face
presence logit; its sigmoid below PRESENCE_THRESHOLD means "no face here" (the tracker then
detects again). The region of interest for the next video frame comes from the points
(face_landmark_landmarks_to_roi.pbtxt): their box, turned by the outer eye corners, long side
1.5x, square.

Mesh points are 3D-type landmarks: on a turned face the jaw points stay on the 3D jaw line,
like FAN's 3D landmarks and unlike dlib's visible outline (LANDMARK_TYPE).
"""
import dataclasses

import numpy as np

from sheap_jax.face import geometry

INPUT_SIZE = 192
NUM_POINTS = 468
PRESENCE_THRESHOLD = 0.5
ROI_SCALE = 1.5
OUTER_EYE_CORNERS = (33, 263)  # the person's right, then left: the ROI's rotation
LANDMARK_TYPE = "3d"
# Mesh index of each iBUG 68 point, LatentSync 1.5's table (Apache-2.0; DESIGN.md 4.5): jaw,
# brows, nose bridge, nostrils, eyes, outer lips, inner lips.
IBUG68_FROM_MESH = np.array([
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87])


@dataclasses.dataclass(frozen=True)
class MeshResult:
  """`points` (468, 3): x, y in frame pixels, z (depth, pixels at the frame's scale, smaller
  is nearer) relative to the face; `score` the face presence probability; `roi` the input
  region the points came from."""
  points: np.ndarray
  score: float
  roi: geometry.RotatedRect

  @property
  def present(self) -> bool:
    return self.score >= PRESENCE_THRESHOLD

  def ibug68(self) -> np.ndarray:
    """(68, 2) iBUG points in frame pixels."""
    return self.points[IBUG68_FROM_MESH, :2]

  def next_roi(self) -> geometry.RotatedRect:
    """The region of interest for the next video frame."""
    xy = self.points[:, :2]
    box = np.concatenate([xy.min(0), xy.max(0)])
    start, end = OUTER_EYE_CORNERS
    return geometry.rect_from_keypoints(box, xy[start], xy[end]).scaled_square(ROI_SCALE)


def run(run_model, image: np.ndarray, roi: geometry.RotatedRect) -> MeshResult:
  """Face mesh of the uint8 (H, W, 3) `image` inside `roi`. `run_model` maps the (1, 192, 192,
  3) float32 input to [points (1, 1, 1, 1404), presence logit (1, 1, 1, 1)]."""
  pixels = geometry.warp(image, roi, INPUT_SIZE, replicate_border=True)
  tensor = (pixels.astype(np.float32) * np.float32(1 / 255))[None]
  raw, logit = run_model(tensor)
  raw = np.asarray(raw, np.float64).reshape(NUM_POINTS, 3)
  points = np.empty_like(raw)
  points[:, :2] = roi.tensor_to_frame(raw[:, :2], INPUT_SIZE)
  points[:, 2] = raw[:, 2] * roi.width / INPUT_SIZE
  score = float(1.0 / (1.0 + np.exp(-np.clip(logit.item(), -100.0, 100.0))))
  return MeshResult(points, score, roi)
