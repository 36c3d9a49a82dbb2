"""The fitting study's runs (issue 17, docs/fitting.md): variants x identities of a synthetic
variant, each one `python -m sheap_jax.fit` run in its own workdir (finished fits are skipped,
so the study resumes), then a per-identity table of the final scores against the mean head.

Variants (equal steps and frames; `configs/fit.py` plus these overrides):
- control: the full objective started at the TRUE parameters (a check, not a result);
- landmarks: landmarks + FLAME priors only;
- photometric: landmark weight 0, with the silhouette term against the face-model matte;
- full: every term of configs/fit.py (no matte).

    python bench/fit_study.py --variant fit --identities 0,1 --workdir runs/fit_study \
        --out bench/results/fit_study_dev_cpu.json [--steps 100]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from configs import fit as fit_config  # noqa: E402
from data.synthetic_heads import variants  # noqa: E402
from sheap_jax import fit  # noqa: E402

VARIANTS = {
    "control": ("losses=full", {}, "ground_truth_control"),
    "landmarks": ("losses=landmarks_only", {}, "mean_head"),
    "photometric": ("losses=no_landmarks,matte=face_model", {"silhouette": 1.0}, "mean_head"),
    "full": ("losses=full", {}, "mean_head"),
}
SCORES = ("score/median_mm", "score/median_ratio_to_mean_head", "score/alpha", "score/cos",
          "score/jaw_error_deg", "score/camera_error_mm")


def variant_config(name, args):
  arg, weights, init = VARIANTS[name]
  config = fit_config.get_config(arg)
  for term, weight in weights.items():
    config.losses[term].weight = weight
  config.fit.steps = args.steps
  config.fit.max_frames = args.frames
  config.fit.frames_per_step = args.frames_per_step
  config.data.data_dir = args.data_dir
  return config, init


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="fit", help="synthetic_heads variant")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--identities", default="0,1", help="positions in the split")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--frames", type=int, default=8)
  parser.add_argument("--frames_per_step", type=int, default=4)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--workdir", default="runs/fit_study")
  parser.add_argument("--out", default="bench/results/fit_study_dev_cpu.json")
  args = parser.parse_args()
  config_of = {c.name: c for c in variants.BUILDER_CONFIGS}[args.variant]
  first_id = config_of.splits[args.split].start
  results = dict(args=vars(args), load=open("/proc/loadavg").read().split()[:3], runs=[])
  for position in [int(i) for i in args.identities.split(",")]:
    for name in args.variants.split(","):
      config, init = variant_config(name, args)
      video = f"synthetic_heads:{args.variant}/{args.split}/{first_id + position}"
      workdir = os.path.join(args.workdir, name, str(first_id + position))
      started = time.time()
      summary = fit.run(config, video, workdir, init=init)
      final = summary["final"]
      row = dict(variant=name, video=video, init=init, wall_seconds=round(time.time() - started),
                 mean_head_median_mm=summary.get("mean_head", {}).get("median_mm"),
                 **{key.split("/")[1]: final.get(key) for key in SCORES})
      results["runs"].append(row)
      json_out.write_json(args.out, results)
      print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items()), flush=True)
  by_variant = {}
  for row in results["runs"]:
    by_variant.setdefault(row["variant"], []).append(row)
  print(f"{'variant':12s} {'n':>2s} {'median ratio':>13s} {'alpha':>7s} {'cos':>7s}")
  for name, rows in by_variant.items():
    mean = lambda key: np.mean([r[key] for r in rows])  # pylint: disable=cell-var-from-loop
    print(f"{name:12s} {len(rows):2d} {mean('median_ratio_to_mean_head'):13.3f}"
          f" {mean('alpha'):7.3f} {mean('cos'):7.3f}")


if __name__ == "__main__":
  main()
