"""How synthetic_heads frames are framed against SHeaP's crops (scoring only: ground truth never
reaches training).

    python bench/crop_framing.py --data_dir ~/tensorflow_datasets/synthetic_heads/demo/1.0.0 \
        [--split train] [--frames 256] [--out bench/results/crop_framing.json]

Per frame: SHeaP's video crop box (`crop.video_box`, the release's rule) of the 68
`gt_landmarks`, against the whole frame: intersection over union, the box's side over the
frame's, and the box centre's offset from the frame's centre in frame sides (x right, y down).
A video_folder crop of real footage is that box, so an IoU near 1 means the synthetic frames
show heads as the real data's crops will.
"""
import argparse
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from data.synthetic_heads import features as F  # noqa: E402
from sheap_jax.face import crop  # noqa: E402


def framing(landmarks: np.ndarray, size: int):
  """(IoU with the frame, side ratio (2,), centre offset (2,)) of one frame's crop box."""
  box = crop.video_box(crop.landmarks_box(landmarks), size, size)
  frame = np.array([-0.5, -0.5, size - 0.5, size - 0.5])
  sides = (box[2:] - box[:2]) / size
  offset = ((box[:2] + box[2:]) / 2 - (size - 1) / 2) / size
  return float(crop.box_iou(box, frame)), sides, offset


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="a built synthetic_heads directory")
  parser.add_argument("--split", default="train")
  parser.add_argument("--frames", type=int, default=256)
  parser.add_argument("--out", default="bench/results/crop_framing.json")
  args = parser.parse_args(argv)
  source = tfds.builder_from_directory(args.data_dir).as_data_source(split=args.split)
  picks = np.unique(np.linspace(0, len(source) - 1, min(args.frames, len(source))).astype(int))
  ious, sides, offsets = [], [], []
  for index in picks:
    record = source[int(index)]
    size = F.decode_image(record[F.IMAGE]).shape[0]
    iou, side, offset = framing(np.asarray(record[F.GT_LANDMARKS]), size)
    ious.append(iou)
    sides.append(side)
    offsets.append(offset)
  ious, sides, offsets = np.array(ious), np.array(sides), np.array(offsets)
  quantiles = lambda x: {q: float(np.percentile(x, p)) for q, p in
                         (("p10", 10), ("median", 50), ("p90", 90))}
  result = dict(data_dir=args.data_dir, split=args.split, frames=len(picks), frame_size=size,
                iou=quantiles(ious), side_x=quantiles(sides[:, 0]), side_y=quantiles(sides[:, 1]),
                offset_x=quantiles(offsets[:, 0]), offset_y=quantiles(offsets[:, 1]))
  json_out.write_json(args.out, result)
  print(f"{len(picks)} frames of {args.data_dir} ({args.split}, {size} px)")
  print("| | p10 | median | p90 |\n| --- | --- | --- | --- |")
  for name in ("iou", "side_x", "side_y", "offset_x", "offset_y"):
    row = result[name]
    print(f"| {name} | {row['p10']:.3f} | {row['median']:.3f} | {row['p90']:.3f} |")


if __name__ == "__main__":
  main()
