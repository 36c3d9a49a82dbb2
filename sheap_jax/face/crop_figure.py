"""A picture of SHeaP's crops from the face models on a clip, with their mattes.

  python -m sheap_jax.face crops --out crops.png   (a clip made from scikit-image's astronaut)

Per frame (a column): the frame with the crop box from the tracked 68 landmarks (green, what
`predict` and `data.video_folder` cut out) and the LBP cascade's box (orange, the fallback
without the models); the crop with its 68 points (red); the crop's person matte, backdrop grey.
"""
import numpy as np
from PIL import Image, ImageDraw

from sheap_jax.face import crop
from sheap_jax.face import crops as face_crops
from sheap_jax.face import demo_clip
from sheap_jax.face.models import FaceModels

PANEL = 128
FRAME_SIZE = (320, 240)


def _frame_panel(frame, boxes_and_colours):
  scale = PANEL / frame.shape[0]
  panel = Image.fromarray(frame).resize((round(frame.shape[1] * scale), PANEL),
                                        Image.Resampling.BILINEAR)
  pen = ImageDraw.Draw(panel)
  for box, colour in boxes_and_colours:
    pen.rectangle(list((np.asarray(box) + 0.5) * scale - 0.5), outline=colour, width=2)
  return panel


def draw(models: FaceModels, photo: np.ndarray, count: int = 4, clip_frames: int = 24
         ) -> Image.Image:
  """Columns for `count` frames, evenly spread, of a `clip_frames` clip of `photo` moving,
  turning and zooming (tracked and smoothed through all its frames)."""
  frames, _ = demo_clip.make_clip(photo, clip_frames, FRAME_SIZE, shift=0.1)
  found = face_crops.video_faces(models, frames)
  boxes = crop.smooth_boxes(np.stack(found.boxes))
  width = round(FRAME_SIZE[0] * PANEL / FRAME_SIZE[1])
  out = Image.new("RGB", (count * width, 3 * PANEL), (255, 255, 255))
  shown = np.round(np.linspace(0, clip_frames - 1, count)).astype(int)
  for column, t in enumerate(shown):
    frame = frames[t]
    marks = [(boxes[t], (0, 220, 0))]
    detections = crop.detect_faces(frame)
    if len(detections):
      lbp = crop.video_box(crop.landmark_box_from_detection(detections[0]), *FRAME_SIZE)
      marks.append((lbp, (255, 140, 0)))
    out.paste(_frame_panel(frame, marks), (column * width, 0))
    cut = Image.fromarray(crop.crop_image(frame, boxes[t], PANEL))
    pen = ImageDraw.Draw(cut)
    for x, y in crop.points_to_crop(found.points[t], boxes[t], PANEL):
      pen.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(255, 0, 0))
    out.paste(cut, (column * width + (width - PANEL) // 2, PANEL))
    levels = np.round(models.matte(frame) * 255).astype(np.uint8)
    alpha = crop.crop_image(levels[..., None], boxes[t], PANEL).astype(np.float32) / 255
    image = crop.crop_image(frame, boxes[t], PANEL).astype(np.float32)
    matted = (image * alpha + 90 * (1 - alpha)).astype(np.uint8)
    out.paste(Image.fromarray(matted), (column * width + (width - PANEL) // 2, 2 * PANEL))
  return out
