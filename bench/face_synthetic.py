"""Scores the face models on synthetic_heads frames against their ground truth (scoring only:
ground truth never reaches training).

    python bench/face_synthetic.py --data_dir ~/tensorflow_datasets/synthetic_heads/demo/1.0.0 \
        [--split validation] [--frames 128] [--out bench/results/face_synthetic_cpu.json]

Per landmark group (jaw, brows, nose, eyes, mouth): the mean distance of the face mesh's 68
points (models.landmarks68 on the whole frame) to `gt_landmarks`, over the points marked
`gt_landmarks_visible`, divided by the frame's inter-ocular distance (outer eye corners 36-45
of `gt_landmarks`); beside it the same for the dataset's simulated detector (`landmarks`, where
`landmarks_valid`). Frames where either finds no face are counted, not scored. Both sets of
points are scored on the frames where both have them.

`gt_landmarks` are FLAME's 68 landmark embedding projected; the mesh's points are 3D-type
(docs/face.md): on turned faces their jaw differs from FLAME's contour by definition, so the jaw
row measures definitions as much as accuracy.

The synthetic data stores no person mask, so the matte cannot be scored against one here.
"""
import argparse
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from data.synthetic_heads import features as F  # noqa: E402
from sheap_jax.face import FaceModels  # noqa: E402

GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36),
          "eyes": range(36, 48), "mouth": range(48, 68)}


def group_errors(points, truth, usable, inter_ocular):
  """{group: mean normalised error over the usable points of all frames}."""
  distance = np.linalg.norm(points - truth, axis=-1) / inter_ocular[:, None]
  out = {}
  for name, ids in list(GROUPS.items()) + [("all", range(68))]:
    ids = list(ids)
    out[name] = float(distance[:, ids][usable[:, ids]].mean())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", required=True, help="a synthetic_heads CONFIG/VERSION folder")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--frames", type=int, default=128)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "face_synthetic_cpu.json"))
  args = parser.parse_args()
  source = tfds.builder_from_directory(os.path.expanduser(args.data_dir)).as_data_source(
      split=args.split)
  models = FaceModels.load()
  mesh_points, detector_points, truth, visible, mesh_found, detector_found = [], [], [], [], [], []
  count = min(args.frames, len(source))
  for index in range(count):
    record = source[index]
    points, _, valid = models.landmarks68(F.decode_image(record[F.IMAGE]))
    mesh_points.append(points)
    mesh_found.append(valid.any())
    detector_points.append(record[F.LANDMARKS])
    detector_found.append(record[F.LANDMARKS_VALID].any())
    truth.append(record[F.GT_LANDMARKS])
    visible.append(record[F.GT_LANDMARKS_VISIBLE])
  truth, visible = np.array(truth), np.array(visible, bool)
  both = np.array(mesh_found) & np.array(detector_found)
  inter_ocular = np.linalg.norm(truth[:, 45] - truth[:, 36], axis=-1)
  usable = visible[both]
  report = {
      "data": os.path.expanduser(args.data_dir), "split": args.split, "frames": count,
      "frame_size": list(F.decode_image(source[0][F.IMAGE]).shape[:2]),
      "mesh_found": int(np.sum(mesh_found)), "detector_found": int(np.sum(detector_found)),
      "scored_frames": int(both.sum()),
      "median_inter_ocular_px": float(np.median(inter_ocular)),
      "face_mesh": group_errors(np.array(mesh_points)[both], truth[both], usable,
                                inter_ocular[both]),
      "simulated_detector": group_errors(np.array(detector_points)[both], truth[both], usable,
                                         inter_ocular[both]),
      "matte": "not scored: the synthetic data stores no person mask"}
  json_out.write_json(args.out, report)
  print(f"{count} frames of {report['data']} ({args.split}, {report['frame_size'][1]} x "
        f"{report['frame_size'][0]} px, inter-ocular median {report['median_inter_ocular_px']:.1f}"
        f" px): face found by the mesh {report['mesh_found']}, by the simulated detector "
        f"{report['detector_found']}; scored on {report['scored_frames']}")
  print("error / inter-ocular distance, visible ground-truth points")
  print(f"{'group':>7} {'face mesh':>10} {'simulated':>10}")
  for group in list(GROUPS) + ["all"]:
    print(f"{group:>7} {report['face_mesh'][group]:10.3f} "
          f"{report['simulated_detector'][group]:10.3f}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
