"""Which shape modes of a head model survive NoW's crop and similarity alignment, and how much
of the shape variance they carry: the decomposition in docs/head_model.md.

    python tools/shape_space.py [--flame PATH] [--modes 16] [--out shape_space.json]

Per mode at 1 sd (`shape_recovery.mode_survival`): RMS displacement over the whole head, over
the vertices in the template's NoW crop, and over those once the first-order similarity motions
are removed (what the NoW protocol can see); the share of the in-crop displacement that
survives; the mode's share of the expected aligned variance of a N(0, I) shape. Then the
cumulative share of the first K modes: the expected aligned RMS `oracle_truncated:K` leaves.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sheap_jax import evaluate  # noqa: E402  pylint: disable=wrong-import-position
from sheap_jax.evaluation import shape_recovery  # noqa: E402  pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flame", help="FLAME model (default: the built-in head)")
  parser.add_argument("--modes", type=int, default=16, help="modes listed one by one")
  parser.add_argument("--out", help="also write the full per-mode arrays as JSON")
  args = parser.parse_args()
  model = evaluate.load_model(args.flame)
  s = shape_recovery.mode_survival(model)
  variance = {k: np.asarray(s[k]) ** 2 for k in ("whole_rms_mm", "crop_rms_mm", "aligned_rms_mm")}
  print(f"{model.shapedirs.shape[-1]} shape modes, {s['crop_vertices']} of {model.num_vertices} "
        "vertices in the template's NoW crop\n")
  print("| mode | whole head RMS mm | in-crop RMS mm | in-crop aligned RMS mm | surviving share "
        "of in-crop | share of aligned variance |")
  print("|---:|---:|---:|---:|---:|---:|")
  for k in range(min(args.modes, len(s["aligned_share"]))):
    print(f"| {k} | {s['whole_rms_mm'][k]:.2f} | {s['crop_rms_mm'][k]:.2f} | "
          f"{s['aligned_rms_mm'][k]:.2f} | {100 * s['surviving'][k]:.0f}% | "
          f"{100 * s['aligned_share'][k]:.1f}% |")
  print("\n| first K modes | share of whole-head variance | share of in-crop variance | share "
        "of aligned variance | aligned RMS mm left by the others |")
  print("|---:|---:|---:|---:|---:|")
  total = len(s["aligned_share"])
  for k in sorted({1, 3, 12, 50, 100, total}):
    if k > total:
      continue
    share = lambda v: 100 * v[:k].sum() / v.sum()
    print(f"| {k} | {share(variance['whole_rms_mm']):.1f}% | "
          f"{share(variance['crop_rms_mm']):.1f}% | {share(variance['aligned_rms_mm']):.1f}% | "
          f"{np.sqrt(variance['aligned_rms_mm'][k:].sum()):.3f} |")
  rms = {k: np.sqrt(v.sum()) for k, v in variance.items()}
  print(f"\nexpected RMS of a N(0, I) shape: whole head {rms['whole_rms_mm']:.2f} mm, in crop "
        f"{rms['crop_rms_mm']:.2f} mm, in crop aligned {rms['aligned_rms_mm']:.2f} mm")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({k: np.asarray(v).tolist() for k, v in s.items()}, f, indent=1)


if __name__ == "__main__":
  main()
