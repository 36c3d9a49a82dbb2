"""A picture of what the face models find in one image: detection, landmarks, matte.

  python -m sheap_jax.face draw [IMAGE] --out face.png   (IMAGE: default the astronaut)

Three panels: the frame with the detector's box (green) and keypoints (blue), the landmark
model's rotated input region (yellow) and the 68 points (red); the face close up with the 468
mesh points (cyan) under the 68; the matte, the backdrop greyed out.
"""
import numpy as np
from PIL import Image, ImageDraw

from sheap_jax.face.models import FaceModels

PANEL = 256


def _dots(draw, points, radius, fill):
  for x, y in points:
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)


def draw(models: FaceModels, image: np.ndarray) -> Image.Image:
  """The three-panel picture (RGB, PANEL high) of `image`, uint8 (H, W, 3)."""
  height, width = image.shape[:2]
  scale = PANEL / max(height, width)
  size = (round(width * scale), round(height * scale))
  face = models.landmarks(image)
  alpha = models.matte(image)

  def to_panel(points, origin=(-0.5, -0.5), factor=scale):
    """Frame pixels -> panel pixels (both centred at integers) of a panel showing the frame
    from `origin` (a pixel corner) at `factor` panel pixels per frame pixel."""
    return (np.asarray(points)[:, :2] - origin) * factor - 0.5

  overview = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
  pen = ImageDraw.Draw(overview)
  if face is not None:
    pen.rectangle(list(to_panel(face.detection.box.reshape(2, 2)).ravel()), outline=(0, 255, 0))
    pen.polygon([tuple(p) for p in to_panel(face.mesh.roi.corners())], outline=(255, 255, 0))
    _dots(pen, to_panel(face.detection.keypoints), 2, (0, 128, 255))
    _dots(pen, to_panel(face.points), 1, (255, 0, 0))

  if face is not None:  # close-up: the ROI's axis-aligned bounds
    x0, y0, x1, y1 = face.mesh.roi.bounds()
    side = max(x1 - x0, y1 - y0)
    corner = np.array([x0 + x1 - side, y0 + y1 - side]) / 2
    close = Image.fromarray(image).transform(  # EXTENT: edge-based coordinates
        (PANEL, PANEL), Image.Transform.EXTENT, tuple(np.concatenate([corner, corner + side])
                                                      + 0.5), resample=Image.Resampling.BILINEAR)
    pen = ImageDraw.Draw(close)
    _dots(pen, to_panel(face.mesh.points, corner, PANEL / side), 1, (0, 230, 230))
    _dots(pen, to_panel(face.points, corner, PANEL / side), 2, (255, 0, 0))
  else:
    close = Image.new("RGB", (PANEL, PANEL), (60, 60, 60))

  grey = np.full_like(image, 90)
  matted = (image * alpha[..., None] + grey * (1 - alpha[..., None])).astype(np.uint8)
  matted = Image.fromarray(matted).resize(size, Image.Resampling.BILINEAR)

  out = Image.new("RGB", (2 * size[0] + PANEL, size[1]), (255, 255, 255))
  for x, panel in ((0, overview), (size[0], close), (size[0] + PANEL, matted)):
    out.paste(panel, (x, 0))
  return out
