"""Contact sheet of a built `synthetic_heads` split: frames with detector landmarks (green),
missed or invalid ones absent, and hidden ground-truth landmarks (red crosses).

    python -m data.synthetic_heads.preview --data_dir DIR --config tiny \
        --out docs/images/synthetic_frames.png
"""
import argparse
import os

from PIL import Image
from PIL import ImageDraw
import tensorflow_datasets as tfds

from data.synthetic_heads import features as F


def contact_sheet(source, videos: int, frames: int, frame_step: int) -> Image.Image:
  """Rows of `frames` frames (every `frame_step`-th) from the first `videos` videos."""
  first = source[0]
  per_video = int(first[F.VIDEO_NUM_FRAMES])
  size = F.decode_image(first[F.IMAGE]).shape[0]
  sheet = Image.new("RGB", (frames * size, videos * size))
  draw = ImageDraw.Draw(sheet)
  for row in range(min(videos, len(source) // per_video)):
    for col in range(frames):
      record = source[row * per_video + min(col * frame_step, per_video - 1)]
      x0, y0 = col * size, row * size
      sheet.paste(Image.fromarray(F.decode_image(record[F.IMAGE])), (x0, y0))
      for (x, y), ok in zip(record[F.LANDMARKS], record[F.LANDMARKS_VALID]):
        if ok:
          draw.ellipse([x0 + x - 1, y0 + y - 1, x0 + x + 1, y0 + y + 1], fill=(40, 255, 60))
      for (x, y), seen in zip(record[F.GT_LANDMARKS], record[F.GT_LANDMARKS_VISIBLE]):
        if not seen:
          draw.line([x0 + x - 2, y0 + y - 2, x0 + x + 2, y0 + y + 2], fill=(255, 40, 40))
          draw.line([x0 + x - 2, y0 + y + 2, x0 + x + 2, y0 + y - 2], fill=(255, 40, 40))
  return sheet


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--split", default="train")
  parser.add_argument("--videos", type=int, default=4)
  parser.add_argument("--frames", type=int, default=4)
  parser.add_argument("--frame_step", type=int, default=2)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  path = os.path.join(args.data_dir, "synthetic_heads", args.config)
  if not os.path.isdir(path):
    raise SystemExit(f"data/synthetic_heads/preview.py: no built config at {path}")
  version = sorted(os.listdir(path))[-1]
  source = tfds.builder_from_directory(os.path.join(path, version)).as_data_source(args.split)
  contact_sheet(source, args.videos, args.frames, args.frame_step).save(args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
