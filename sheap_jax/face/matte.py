"""Person matte from MediaPipe's selfie segmentation (selfie_segmentation.tflite, general
256 x 256 model), as selfie_segmentation_cpu.pbtxt runs it: the whole frame stretched to the
input (aspect ratio not kept), scaled to [0, 1]; the output is already a probability.

The matte separates the person from the backdrop only: hair, neck, torso and clothes are all
foreground. It is not a face or head mask.
"""
import numpy as np
from PIL import Image

from sheap_jax.face import geometry

INPUT_SIZE = 256


def run(run_model, image: np.ndarray) -> np.ndarray:
  """(H, W) float32 foreground probability (in steps of 1/255) of the uint8 (H, W, 3) `image`.
  `run_model` maps the (1, 256, 256, 3) float32 input to [the (1, 256, 256, 1) matte]."""
  height, width = image.shape[:2]
  whole = geometry.RotatedRect((width - 1) / 2, (height - 1) / 2, width, height)
  pixels = geometry.warp(image, whole, INPUT_SIZE, replicate_border=False)  # all inside
  [small] = run_model((pixels.astype(np.float32) * np.float32(1 / 255))[None])
  small = small.reshape(INPUT_SIZE, INPUT_SIZE).astype(np.float32)
  # PIL resizes edge to edge, as the input covered the frame; in 8 bits, which is 3x faster
  # than in float, so the matte comes in steps of 1/255.
  levels = np.round(np.clip(small, 0.0, 1.0) * 255).astype(np.uint8)
  full = Image.fromarray(levels).resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(full).astype(np.float32) * np.float32(1 / 255)
