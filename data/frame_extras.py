"""Optional per-frame training fields that real footage adds to the record layout of
`data/synthetic_heads/features.py`, and what a dataset without them stands for.

`video_folder` stores them; `synthetic_heads` does not, and its readers take the defaults
(`DEFAULTS`): landmarks of type "2d" (its simulated detector marks FLAME's dynamic-contour
landmarks, as DECA's 2D set), no matte. None of these is ground truth: a matte and landmarks
come from detectors that run on the frame alone.
"""
import io

import numpy as np
from PIL import Image

# The 68 landmarks' definition: "2d", the visible outline of a turned face (DECA's yaw-dependent
# contour, dlib, the synthetic detector); "3d", the jaw on the 3D jaw line (the face mesh, FAN
# 3D). The landmark loss compares them with the FLAME embedding of the same definition.
LANDMARK_TYPE = "landmark_type"  # bytes b"2d" or b"3d"
LANDMARK_TYPES = ("2d", "3d")
FACE_SCORE = "face_score"  # float32: the landmark model's face presence probability
MATTE = "matte"  # PNG bytes of the (H, W) uint8 person matte (255 person, 0 backdrop), b"" if none
FACE_OVAL = "face_oval"  # PNG bytes of the (H, W) uint8 face-oval mask from the mesh, b"" if none
OPTIONAL_TRAINING_KEYS = (LANDMARK_TYPE, FACE_SCORE, MATTE)
DEFAULTS = {LANDMARK_TYPE: b"2d", FACE_SCORE: np.float32(1.0), MATTE: b""}


def encode_mask(mask: np.ndarray) -> bytes:
  """(H, W) float in [0, 1] or uint8 -> grey PNG bytes (8 bits: a matte's own steps of 1/255)."""
  mask = np.asarray(mask)
  if mask.dtype != np.uint8:
    mask = np.round(np.clip(mask, 0.0, 1.0) * 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(mask, mode="L").save(out, format="PNG", optimize=False, compress_level=6)
  return out.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
  """Grey PNG bytes -> (H, W) uint8; b"" (no mask stored) -> None."""
  if not data:
    return None
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("L"))


def landmark_type(value) -> str:
  """A stored landmark type (bytes or str) as "2d" or "3d"; anything else raises, naming it."""
  text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
  if text not in LANDMARK_TYPES:
    raise ValueError(f"data/frame_extras.py: landmark type {text!r}; expected one of "
                     f"{LANDMARK_TYPES}")
  return text
