"""What one record of `synthetic_heads` holds: the contract between the builder and its readers.

Layout: one record per frame, written in order (video 0 frames 0..T-1, video 1 frames 0..T-1,
...; TFDS shuffling is disabled). Record `i` of a split belongs to the video whose records are
`[i - frame_index, i - frame_index + video_num_frames)`, so a pair sampler picks a record, reads
its two small integer fields and draws a partner from that range: no index of videos is needed.

Training inputs have plain names; everything else is ground truth for evaluation only and is
prefixed `gt_`, so an input pipeline keeps training honest with `drop_ground_truth`.

The image is stored as PNG bytes (TFDS cannot encode numpy images without TensorFlow), written
by `data/png.py` so that it decodes fast; decode it with `decode_image`. Pixel centres and
camera axes follow `rasterizer/types.py`: landmark (x, y) = (column, row), pixel (i, j) centred
at (i, j); cameras are OpenCV (x right, y down).
"""
import numpy as np
import tensorflow_datasets as tfds

from data import png

NUM_LANDMARKS = 68  # iBUG 68 order
NUM_SH_COEFFS = 9  # order-2 spherical harmonics (sheap_jax.geometry.shading)
GT_PREFIX = "gt_"
# Labels of `gt_emotion` (index into this tuple); -1: expression not drawn from a prototype.
EMOTIONS = ("neutral", "happy", "sad", "surprise", "fear", "anger", "disgust")

# Training inputs.
IMAGE = "image"  # PNG bytes of the (H, W, 3) uint8 frame
LANDMARKS = "landmarks"  # (68, 2) float32 pixels, from the simulated detector
LANDMARKS_VALID = "landmarks_valid"  # (68,) bool: detector found the face and the point is inside
VIDEO_ID = "video_id"  # int64, unique over all splits (one video per identity)
FRAME_INDEX = "frame_index"  # int64 position of the frame in its video
VIDEO_NUM_FRAMES = "video_num_frames"  # int64 frames in this frame's video
TRAINING_KEYS = (IMAGE, LANDMARKS, LANDMARKS_VALID, VIDEO_ID, FRAME_INDEX, VIDEO_NUM_FRAMES)

# Ground truth (evaluation only).
GT_SHAPE = "gt_shape"  # (300,) FLAME shape coefficients
GT_EXPRESSION = "gt_expression"  # (100,) expression coefficients
GT_GLOBAL_POSE = "gt_global_pose"  # (3,) axis-angle
GT_NECK_POSE = "gt_neck_pose"  # (3,)
GT_JAW_POSE = "gt_jaw_pose"  # (3,)
GT_EYE_POSE = "gt_eye_pose"  # (6,) left eye, right eye
GT_EYELIDS = "gt_eyelids"  # (2,) left, right eyelid blendshape weights
GT_TRANSLATION = "gt_translation"  # (3,) metres, FLAME axes (camera.flame_viewmat's argument)
GT_VERTICES = "gt_vertices"  # (V, 3) posed mesh, FLAME/world frame, metres (optional per config)
GT_NEUTRAL_VERTICES = "gt_neutral_vertices"  # (V, 3) zero pose/expression mesh (optional)
GT_CAMERA_K = "gt_camera_K"  # (3, 3) intrinsics, pixels
GT_CAMERA_VIEWMAT = "gt_camera_viewmat"  # (4, 4) world-to-camera, OpenCV axes
GT_LANDMARKS = "gt_landmarks"  # (68, 2) exact projection of FLAME's 68 landmarks
GT_LANDMARKS_VISIBLE = "gt_landmarks_visible"  # (68,) bool: on a visible face, not occluded
GT_LIGHTING = "gt_lighting"  # (9, 3) SH radiance coefficients, camera frame
GT_EMOTION = "gt_emotion"  # int64 index into EMOTIONS, -1 if none
GT_OCCLUDED = "gt_occluded"  # bool: an occluder is drawn in this frame


def _tensor(shape, dtype=np.float32):
  return tfds.features.Tensor(shape=shape, dtype=dtype)


def features_dict(num_shape: int, num_expression: int,
                  store_vertices: bool) -> tfds.features.FeaturesDict:
  """The TFDS features of one frame. Vertex arrays keep a dynamic length (the head's V)."""
  features = {
      IMAGE: tfds.features.Tensor(shape=(), dtype=np.object_),
      LANDMARKS: _tensor((NUM_LANDMARKS, 2)),
      LANDMARKS_VALID: _tensor((NUM_LANDMARKS,), np.bool_),
      VIDEO_ID: tfds.features.Scalar(dtype=np.int64),
      FRAME_INDEX: tfds.features.Scalar(dtype=np.int64),
      VIDEO_NUM_FRAMES: tfds.features.Scalar(dtype=np.int64),
      GT_SHAPE: _tensor((num_shape,)),
      GT_EXPRESSION: _tensor((num_expression,)),
      GT_GLOBAL_POSE: _tensor((3,)),
      GT_NECK_POSE: _tensor((3,)),
      GT_JAW_POSE: _tensor((3,)),
      GT_EYE_POSE: _tensor((6,)),
      GT_EYELIDS: _tensor((2,)),
      GT_TRANSLATION: _tensor((3,)),
      GT_CAMERA_K: _tensor((3, 3)),
      GT_CAMERA_VIEWMAT: _tensor((4, 4)),
      GT_LANDMARKS: _tensor((NUM_LANDMARKS, 2)),
      GT_LANDMARKS_VISIBLE: _tensor((NUM_LANDMARKS,), np.bool_),
      GT_LIGHTING: _tensor((NUM_SH_COEFFS, 3)),
      GT_EMOTION: tfds.features.Scalar(dtype=np.int64),
      GT_OCCLUDED: tfds.features.Scalar(dtype=np.bool_),
  }
  if store_vertices:
    features[GT_VERTICES] = _tensor((None, 3))
    features[GT_NEUTRAL_VERTICES] = _tensor((None, 3))
  return tfds.features.FeaturesDict(features)


def encode_image(image: np.ndarray) -> bytes:
  """(H, W, 3) uint8 -> PNG bytes (lossless, so the stored frame is exactly the rendered one)."""
  return png.encode(image)


def decode_image(data: bytes) -> np.ndarray:
  """PNG bytes of a record's `image` -> (H, W, 3) uint8 (any PNG; fastest for encode_image's)."""
  return png.decode(data)


def drop_ground_truth(example: dict) -> dict:
  """The example without its `gt_` fields: what training may see."""
  return {k: v for k, v in example.items() if not k.startswith(GT_PREFIX)}
