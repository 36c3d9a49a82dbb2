"""Data throughput: synthetic frames generated per second and training pairs read per second.

  python bench/data.py                       # builds synthetic_heads/tiny in a temp folder
  python bench/data.py --data_dir PATH       # pairs/s from an already built dataset
  python bench/data.py --figure docs/images/sample_pairs.png

frames_generated_per_s: frames of the `synthetic_heads` builder's tiny config per second of
`download_and_prepare` (rendering, the simulated detector, PNG encoding and writing).
pairs_per_s: pairs per second out of `data.pairs.make_pair_iterator` at image_size^2 with
augmentation, after a warm-up batch, median over runs, for each worker count; without workers
also pairs per CPU second (the steadier figure on a shared, loaded machine).
When the dataset has ground-truth landmarks, also the recall of `sheap_jax.crop.detect_faces`
(a detection whose IoU with the true 68-landmark box, mapped by `landmark_box_from_detection`,
is >= 0.5) and the median IoU. Prints a table and writes JSON records.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from data import pairs  # noqa: E402
from data.synthetic_heads import features as frame_features  # noqa: E402
from sheap_jax import crop  # noqa: E402


def build_synthetic(data_dir: str, config: str):
  """Builds synthetic_heads/<config>; returns (dataset directory, frames per second)."""
  import data.synthetic_heads  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
  builder = tfds.builder(f"synthetic_heads/{config}", data_dir=data_dir)
  start = time.perf_counter()
  builder.download_and_prepare(file_format="array_record")
  elapsed = time.perf_counter() - start
  frames = sum(split.num_examples for split in builder.info.splits.values())
  return str(builder.data_path), frames / elapsed


def pairs_per_second(data_dir: str, split: str, image_size: int, batch_size: int,
                     batches: int, runs: int, worker_count: int):
  """(pairs per wall second, pairs per CPU second of this process), medians over runs. The
  second is what one core sustains without workers; meaningful only for worker_count 0."""
  wall_rates, cpu_rates = [], []
  for run in range(runs):
    iterator = pairs.make_pair_iterator(
        data_dir, split=split, global_batch_size=batch_size, seed=run, max_gap=4, augment=True,
        image_size=image_size, worker_count=worker_count, num_local_devices=1)
    next(iterator)  # warm-up: worker start, first reads
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
      next(iterator)
    wall_rates.append(batches * batch_size / (time.perf_counter() - wall))
    cpu_rates.append(batches * batch_size / (time.process_time() - cpu))
  return float(np.median(wall_rates)), float(np.median(cpu_rates))


def detector_recall(data_dir: str, split: str, limit: int):
  """(recall, median IoU, frames) of the LBP detector against the true landmark boxes."""
  source = tfds.builder_from_directory(data_dir).as_data_source(split=split)
  ious = []
  for index in np.linspace(0, len(source) - 1, min(limit, len(source))).astype(int):
    record = source[int(index)]
    if frame_features.GT_LANDMARKS not in record:
      return None
    truth = crop.landmarks_box(record[frame_features.GT_LANDMARKS])
    found = crop.detect_faces(frame_features.decode_image(record[frame_features.IMAGE]))
    ious.append(max((float(crop.box_iou(crop.landmark_box_from_detection(box), truth))
                     for box in found), default=0.0))
  ious = np.array(ious)
  return float(np.mean(ious >= 0.5)), float(np.median(ious[ious > 0])) if (ious > 0).any() else (
      0.0), len(ious)


def draw_pairs(data_dir: str, split: str, path: str, count: int = 4):
  """A PNG of `count` augmented training pairs (source above target) with their landmarks."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  batch = next(pairs.make_pair_iterator(data_dir, split=split, global_batch_size=count, seed=0,
                                        max_gap=4, augment=True, num_local_devices=1))
  batch = {k: v[0] for k, v in batch.items()}
  figure, axes = plt.subplots(2, count, figsize=(2.4 * count, 5.0))
  for column in range(count):
    for row, prefix in enumerate(("source", "target")):
      axis = axes[row, column]
      axis.imshow(batch[f"{prefix}_image"][column])
      valid = batch[f"{prefix}_landmarks_valid"][column]
      points = batch[f"{prefix}_landmarks"][column][valid]
      axis.scatter(points[:, 0], points[:, 1], s=4, c="#00ff66")
      axis.set_title(f"video {batch['video_id'][column]} frame {batch[f'{prefix}_frame'][column]}",
                     fontsize=8)
      axis.axis("off")
  figure.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  figure.savefig(path, dpi=100)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", help="a built dataset directory; default: build "
                      "synthetic_heads/<config> in a temporary folder")
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--split", default="train")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--workers", default="0,2", help="comma-separated Grain worker counts")
  parser.add_argument("--recall_frames", type=int, default=200)
  parser.add_argument("--figure", help="also write a PNG of sample pairs here")
  parser.add_argument("--out", default="bench/results/data_cpu.json")
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as scratch:
    frames_per_s = None
    data_dir = args.data_dir
    if data_dir is None:
      data_dir, frames_per_s = build_synthetic(scratch, args.config)
    records = []
    for workers in [int(w) for w in args.workers.split(",")]:
      rate, per_cpu = pairs_per_second(data_dir, args.split, args.image_size, args.batch_size,
                                       args.batches, args.runs, workers)
      record = {"pairs_per_s": rate, "worker_count": workers}
      if not workers:
        record["pairs_per_cpu_s"] = per_cpu
      records.append(record)
    recall = detector_recall(data_dir, args.split, args.recall_frames)
    if args.figure:
      draw_pairs(data_dir, args.split, args.figure)

  common = {"frames_generated_per_s": frames_per_s, "image_size": args.image_size,
            "device": f"cpu ({platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} cores)",
            "dataset": os.path.relpath(data_dir, scratch) if args.data_dir is None else data_dir,
            "batch_size": args.batch_size, "load_average": os.getloadavg()[0]}
  if recall is not None:
    common.update(detector_recall=recall[0], detector_median_iou=recall[1],
                  detector_frames=recall[2])
  records = [dict(common, **r) for r in records]
  print(f"{'workers':>8} {'pairs/s':>9} {'pairs/CPU s':>12} {'frames generated/s':>19}")
  for r in records:
    generated = "-" if frames_per_s is None else f"{frames_per_s:.1f}"
    per_cpu = f"{r['pairs_per_cpu_s']:.1f}" if "pairs_per_cpu_s" in r else "-"
    print(f"{r['worker_count']:>8} {r['pairs_per_s']:>9.1f} {per_cpu:>12} {generated:>19}")
  print(f"load average {common['load_average']:.1f} on {os.cpu_count()} cores")
  if recall is not None:
    print(f"detector recall (IoU >= 0.5) {recall[0]:.3f}, median IoU {recall[1]:.3f} "
          f"over {recall[2]} frames")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(records, f, indent=1)


if __name__ == "__main__":
  main()
