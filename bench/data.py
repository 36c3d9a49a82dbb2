"""Data throughput: synthetic frames generated per second and training pairs read per second.

  python bench/data.py                       # builds synthetic_heads/tiny in a temp folder
  python bench/data.py --data_dir PATH       # pairs/s from an already built dataset
  python bench/data.py --figure docs/images/sample_pairs.png

frames_generated_per_s: frames of the `synthetic_heads` builder's tiny config per second of
`download_and_prepare` (rendering, the simulated detector, PNG encoding and writing).
pairs_per_s: pairs per second out of `data.pairs.make_pair_iterator` at image_size^2 with
augmentation, after a warm-up batch, median over runs, for each (worker processes, threads)
setting (runs take the settings in turn), with the median load average just before;
pairs_per_cpu_s: pairs per CPU second of the process and its workers (what the pipeline
costs, steadier than wall time on a shared, loaded machine). stage_ms: the CPU milliseconds of each step of the pipeline on one thread, medians
over many calls (the work the settings above spread over cores).
When the dataset has ground-truth landmarks, also the recall of `sheap_jax.face.crop.detect_faces`
on held-out splits (a detection whose IoU with the true 68-landmark box, mapped by
`landmark_box_from_detection`, is >= 0.5) and, fitted on the training split, the
detection-to-landmark-box constants that `sheap_jax/face/crop.py` holds. Prints a table and writes
JSON records.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from bench import json_out  # noqa: E402
from data import pairs  # noqa: E402
from data.synthetic_heads import features as frame_features  # noqa: E402
from sheap_jax.face import crop  # noqa: E402


def build_synthetic(data_dir: str, config: str):
  """Builds synthetic_heads/<config>; returns (dataset directory, frames per second)."""
  import data.synthetic_heads  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
  builder = tfds.builder(f"synthetic_heads/{config}", data_dir=data_dir)
  start = time.perf_counter()
  builder.download_and_prepare(file_format="array_record")
  elapsed = time.perf_counter() - start
  frames = sum(split.num_examples for split in builder.info.splits.values())
  return str(builder.data_path), frames / elapsed


def _cpu_seconds() -> float:
  """CPU seconds used so far by this process and its live descendants (Grain's workers),
  from /proc (Linux); elsewhere this process alone."""
  try:
    ticks, usage = os.sysconf("SC_CLK_TCK"), {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()  # after "pid (name)"
      except OSError:
        continue  # the process ended meanwhile
      usage[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
  except (OSError, ValueError, IndexError):
    return time.process_time()
  family = {os.getpid()}
  for _ in range(3):  # children, grandchildren, great-grandchildren
    family |= {pid for pid, (parent, _) in usage.items() if parent in family}
  return sum(usage[pid][1] for pid in family if pid in usage)


def pairs_per_second(data_dir: str, split: str, image_size: int, batch_size: int,
                     batches: int, seed: int, worker_count: int, num_threads: int):
  """(pairs per wall second, pairs per CPU second of this process and its workers) over
  `batches` batches after a warm-up one. On a loaded machine the second says what the
  pipeline costs; the first, what it got."""
  iterator = pairs.make_pair_iterator(
      data_dir, split=split, global_batch_size=batch_size, seed=seed, max_gap=4, augment=True,
      image_size=image_size, worker_count=worker_count, num_threads=num_threads,
      num_local_devices=1)
  next(iterator)  # warm-up: worker start, first reads
  wall, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    next(iterator)
  rates = (batches * batch_size / (time.perf_counter() - wall),
           batches * batch_size / (_cpu_seconds() - cpu))
  iterator.close()  # stops worker processes and threads now rather than at exit
  return rates


def _cpu_ms(function, items, repeats: int = 3) -> float:
  """Median CPU milliseconds (this thread) of function(item) over items, repeated."""
  costs = []
  for _ in range(repeats):
    for item in items:
      start = time.thread_time()
      function(item)
      costs.append(time.thread_time() - start)
  return 1e3 * float(np.median(costs))


def stage_costs(data_dir: str, split: str, image_size: int, batch_size: int) -> dict:
  """CPU ms of each pipeline step on one thread: reading a record whole (what TFDS decodes)
  and only its training fields, decoding its PNG, then per pair sampling (two reads and
  decodes), augmenting and batching."""
  source = pairs.open_split(data_dir, split)
  fields = pairs.TrainingFields(source)
  indices = list(range(len(source)))
  records = [fields[i] for i in indices]
  sample = pairs.SamplePair(fields, max_gap=4)
  augment = pairs.AugmentPair(pairs.Augmentation(), image_size)
  rng = np.random.default_rng(0)
  sampled = [sample.random_map(i, rng) for i in indices]
  augmented = [augment.random_map(dict(p), rng) for p in sampled]
  batches = [augmented[i:i + batch_size] for i in range(0, len(augmented) - batch_size + 1,
                                                         batch_size)] or [augmented]
  batcher = pairs.BatchPairs(num_devices=1)
  return {"read_record_all_fields": _cpu_ms(lambda i: source[i], indices),
          "read_record_training_fields": _cpu_ms(lambda i: fields[i], indices),
          "decode_png": _cpu_ms(lambda r: frame_features.decode_image(r[frame_features.IMAGE]),
                                records),
          "sample_pair": _cpu_ms(lambda i: sample.random_map(i, rng), indices),
          "augment_pair": _cpu_ms(lambda p: augment.random_map(dict(p), rng), sampled),
          "batch_per_pair": _cpu_ms(batcher, batches, repeats=8) / len(batches[0])}


def detections(data_dir: str, split: str, limit: int):
  """[(largest detection or None, true 68-landmark box)] over up to `limit` frames, or None
  when the dataset has no ground-truth landmarks."""
  builder = tfds.builder_from_directory(data_dir)
  if frame_features.GT_LANDMARKS not in builder.info.features:
    return None
  source = builder.as_data_source(split=split)
  found = []
  for index in np.linspace(0, len(source) - 1, min(limit, len(source))).astype(int):
    record = source[int(index)]
    boxes = crop.detect_faces(frame_features.decode_image(record[frame_features.IMAGE]))
    found.append((boxes[0] if len(boxes) else None,
                  crop.landmarks_box(record[frame_features.GT_LANDMARKS])))
  return found


def detector_calibration(found):
  """Medians of (landmark-box centre below the detection's centre, landmark-box width,
  height), each over the detection's side: what `crop.DETECTION_TO_LANDMARKS_*` hold."""
  rows = []
  for box, truth in found:
    if box is not None:
      side = box[2] - box[0]
      rows.append(((truth[1] + truth[3] - box[1] - box[3]) / (2 * side),
                   (truth[2] - truth[0]) / side, (truth[3] - truth[1]) / side))
  return np.median(np.array(rows), axis=0).tolist()


def detector_recall(found):
  """(recall, found rate, median IoU of found): a frame counts when its largest detection,
  mapped by `landmark_box_from_detection`, has IoU >= 0.5 with the true landmark box."""
  ious = np.array([0.0 if box is None else float(crop.box_iou(
      crop.landmark_box_from_detection(box), truth)) for box, truth in found])
  found_any = np.array([box is not None for box, _ in found])
  return (float(np.mean(ious >= 0.5)), float(np.mean(found_any)),
          float(np.median(ious[found_any])) if found_any.any() else 0.0)


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
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--settings", default="0:0,0:2,2:0,2:1",
                      help="comma-separated worker_count:num_threads settings to time")
  parser.add_argument("--recall_frames", type=int, default=200, help="per split")
  parser.add_argument("--recall_splits", default="validation,test",
                      help="splits for the detector's recall (its constants are fitted on train)")
  parser.add_argument("--figure", help="also write a PNG of sample pairs here")
  parser.add_argument("--out", default="bench/results/data_cpu.json")
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as scratch:
    frames_per_s = None
    data_dir = args.data_dir
    if data_dir is None:
      data_dir, frames_per_s = build_synthetic(scratch, args.config)
    stages = stage_costs(data_dir, args.split, args.image_size, args.batch_size)
    # Runs take the settings in turn, so every setting meets the same mix of other jobs.
    settings = [tuple(int(v) for v in setting.split(":")) for setting in args.settings.split(",")]
    measured = {setting: [] for setting in settings}
    for run in range(args.runs):
      for setting in settings:
        load = os.getloadavg()[0]  # other jobs' share of the cores, just before
        measured[setting].append((load,) + pairs_per_second(
            data_dir, args.split, args.image_size, args.batch_size, args.batches, run,
            *setting))
    records = []
    for (workers, threads), runs in measured.items():
      load, rate, per_cpu = np.median(np.array(runs), axis=0).tolist()
      records.append({"pairs_per_s": rate, "pairs_per_cpu_s": per_cpu,
                      "worker_count": workers, "num_threads": threads, "load_average": load,
                      "pairs_per_s_runs": [r[1] for r in runs]})
    held_out = [d for split in args.recall_splits.split(",")
                for d in (detections(data_dir, split, args.recall_frames) or [])]
    recall = detector_recall(held_out) if held_out else None
    if recall is not None:
      fitted = detector_calibration(detections(data_dir, args.split, args.recall_frames))
    if args.figure:
      draw_pairs(data_dir, args.split, args.figure)

  common = {"frames_generated_per_s": frames_per_s, "image_size": args.image_size,
            "device": f"cpu ({platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} cores)",
            "dataset": os.path.relpath(data_dir, scratch) if args.data_dir is None else data_dir,
            "batch_size": args.batch_size, "stage_ms": stages}
  if recall is not None:
    common.update(detector_recall=recall[0], detector_found=recall[1],
                  detector_median_iou=recall[2], detector_frames=len(held_out),
                  detector_to_landmarks_fitted=fitted)
  records = [dict(common, **r) for r in records]
  print(f"{'workers':>8} {'threads':>8} {'pairs/s':>9} {'pairs/CPU s':>12} {'load':>5} "
        f"{'frames generated/s':>19}")
  for r in records:
    generated = "-" if frames_per_s is None else f"{frames_per_s:.1f}"
    print(f"{r['worker_count']:>8} {r['num_threads']:>8} {r['pairs_per_s']:>9.1f} "
          f"{r['pairs_per_cpu_s']:>12.1f} {r['load_average']:>5.1f} {generated:>19}")
  print("CPU ms per step: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
  print(f"medians of {args.runs} runs; load: 1-minute load average before a run, on "
        f"{os.cpu_count()} cores")
  if recall is not None:
    print(f"detector on {len(held_out)} held-out frames: recall (IoU >= 0.5) {recall[0]:.3f}, "
          f"found {recall[1]:.3f}, median IoU {recall[2]:.3f}")
    print("detection -> landmark box fitted on the training split (shift, width, height): "
          + ", ".join(f"{v:.3f}" for v in fitted))
  json_out.write_json(args.out, records)


if __name__ == "__main__":
  main()
