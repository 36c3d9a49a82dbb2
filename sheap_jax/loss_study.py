"""Trains one config under several loss (or renderer) variants and seeds; tabulates
`synthetic_neutral` against the `mean_head` baseline.

    python -m sheap_jax.loss_study --config configs/base.py:cpu --workdir runs/study \
        --variants landmarks_only,no_landmarks,full --seeds 0,1,2

A variant is a named argument of `configs/base.py` (`VARIANTS`: `landmarks_only` is
`losses=landmarks_only`, `mesh_renderer` is `renderer=mesh`, ...), applied on top of --config.
Each (variant, seed) is an ordinary training run in `<workdir>/<variant>/seed<k>` (rerunning the
command resumes unfinished runs and skips finished ones). Every run uses the same config, data
and step budget; only the variant's overrides and `config.seed` (initialisation and data order)
differ, and runs are validated only at their last step, without previews. Set
`JAX_COMPILATION_CACHE_DIR` so that the seeds of a variant compile once. Writes
`<workdir>/study.json` (per run and per variant: median mm, mean and sample standard deviation
over seeds, each run's ratio to `mean_head` with its 95% interval over the held-out identities
(training validation's paired cluster bootstrap), and how far the predicted heads moved from
the template) and `<workdir>/study.png`, and prints a Markdown table.
"""
import json
import os
from typing import Dict, List

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

from configs import base
from sheap_jax import train  # pylint: disable=unused-import  (defines --config, --workdir)
from sheap_jax.training import loop

_FILE = "sheap_jax/loss_study.py"
# name -> (what it trains with, its named arguments of configs/base.py)
VARIANTS = {
    "full": ("the full objective (config.losses as given)", {}),
    "landmarks_only": ("landmark reprojection and FLAME priors only",
                       {"losses": "landmarks_only"}),
    "no_landmarks": ("photometric and geometry losses, landmark weight 0",
                     {"losses": "no_landmarks"}),
    "mesh_renderer": ("the full objective rendered by the textured-mesh baseline",
                      {"renderer": "mesh"}),
}


def variant_config(config: ml_collections.ConfigDict, variant: str, seed: int
                   ) -> ml_collections.ConfigDict:
  """A copy of `config` with the variant's named arguments and `seed`."""
  if variant not in VARIANTS:
    raise ValueError(f"{_FILE}: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
  config = ml_collections.ConfigDict(config.to_dict())
  base.apply_arguments(config, VARIANTS[variant][1])
  config.seed = seed
  # Runs are scored once, at their last step, and draw no previews: neither changes training.
  config.eval_every = config.total_steps
  config.preview_every = 0
  return config


def summarize(runs: List[Dict]) -> Dict[str, Dict]:
  """Per variant: median mm of each seed, their mean, sample std, min and max, each seed's
  ratio to the mean head as [ratio, low, high] (runs validated before the intervals existed
  have none), and the mean distance of the predicted heads from the template
  (`from_template_mm`)."""
  by_variant = {}
  for run in runs:
    by_variant.setdefault(run["variant"], []).append(run)
  summary = {}
  for variant, variant_runs in by_variant.items():
    values = np.asarray([run["median_mm"] for run in variant_runs], np.float64)
    summary[variant] = dict(
        median_mm=values.tolist(), mean=float(values.mean()),
        std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        min=float(values.min()), max=float(values.max()), seeds=len(values),
        ratios=[[run["ratio"], run["ratio_low"], run["ratio_high"]] for run in variant_runs
                if run.get("ratio") is not None],
        from_template_mm=float(np.mean([run["from_template_mm"] for run in variant_runs])))
  return summary


def markdown_table(summary: Dict[str, Dict], ground_truth_from_template_mm: float) -> str:
  """The study as Markdown; the last column says how far training moved the heads from the
  template, against how far the true heads are from it."""
  rows = ["| variant | trains with | synthetic_neutral median (mm), mean ± std over seeds | "
          "ratio to mean_head (per seed: ratio [95% interval over identities]) | "
          "predicted heads' distance from the template (mm RMS; true "
          f"heads: {ground_truth_from_template_mm:.2f}) |", "|---|---|---|---|---|"]
  baseline = summary["mean_head"]["mean"]
  for variant, s in summary.items():
    if variant == "mean_head":
      rows.append(f"| `mean_head` | no training: the template head | {s['mean']:.3f} "
                  "(deterministic) | 1.00 | 0 |")
      continue
    per_seed = "; ".join(f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, lo, hi in s.get("ratios", []))
    rows.append(f"| `{variant}` | {VARIANTS[variant][0]} | {s['mean']:.3f} ± {s['std']:.3f} "
                f"(range {s['min']:.3f}–{s['max']:.3f}, {s['seeds']} seeds) | "
                f"{s['mean'] / baseline:.2f}" + (f" ({per_seed})" if per_seed else "")
                + f" | {s['from_template_mm']:.2f} |")
  return "\n".join(rows)


def plot(summary: Dict[str, Dict], path: str):
  """Each seed's median as a dot, the variant's mean as a bar."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = list(summary)
  fig, ax = plt.subplots(figsize=(1.6 * len(names) + 1.5, 3.2))
  ax.bar(range(len(names)), [summary[n]["mean"] for n in names], color="#9ecae1")
  for i, name in enumerate(names):
    values = summary[name]["median_mm"]
    ax.plot(np.full(len(values), i), values, "o", color="#08519c", markersize=4)
  ax.set_xticks(range(len(names)), names, rotation=15)
  ax.set_ylabel("synthetic_neutral median (mm)")
  ax.set_title("lower is better; dots: seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_study(config, workdir: str, variants: List[str], seeds: List[int]) -> Dict:
  """Trains every (variant, seed) not finished yet and writes study.json / study.png."""
  for variant in variants:  # fail on a bad name before hours of training
    variant_config(config, variant, 0)
  runs, mean_head, ground_truth = [], [], []
  for seed in seeds:
    for variant in variants:
      run_dir = os.path.join(workdir, variant, f"seed{seed}")
      result_path = os.path.join(run_dir, "synthetic_neutral.json")
      cfg = variant_config(config, variant, seed)
      if not _finished(result_path, cfg.total_steps):
        logging.info("training %s, seed %d -> %s", variant, seed, run_dir)
        loop.train(cfg, run_dir)
      with open(result_path) as f:
        result = json.load(f)
      runs.append(dict(variant=variant, seed=seed, median_mm=result["model"]["median_mm"],
                       mean_mm=result["model"]["mean_mm"], step=result["model"]["step"],
                       from_template_mm=result["model"]["from_template_mm"],
                       **{k: result["model"].get(k) for k in ("ratio", "ratio_low",
                                                               "ratio_high")}))
      mean_head.append(result["mean_head"]["median_mm"])
      ground_truth.append(result["ground_truth"]["from_template_mm"])
  summary = summarize(runs)
  summary = {"mean_head": dict(median_mm=[mean_head[0]], mean=mean_head[0], std=0.0,
                               min=mean_head[0], max=mean_head[0], seeds=1,
                               from_template_mm=0.0), **summary}
  study = dict(config=config.to_dict(), runs=runs, summary=summary,
               ground_truth_from_template_mm=ground_truth[0])
  with open(os.path.join(workdir, "study.json"), "w") as f:
    json.dump(study, f, indent=2)
  plot(summary, os.path.join(workdir, "study.png"))
  print(markdown_table(summary, ground_truth[0]))
  return study


def _finished(result_path: str, total_steps: int) -> bool:
  if not os.path.exists(result_path):
    return False
  with open(result_path) as f:
    return json.load(f).get("model", {}).get("step") == total_steps


_VARIANTS = flags.DEFINE_list("variants", ["landmarks_only", "no_landmarks", "full"],
                              f"Comma-separated, of {sorted(VARIANTS)}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Comma-separated integer seeds.")


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir  # the folder of all runs: <workdir>/<variant>/seed<k>
  os.makedirs(workdir, exist_ok=True)
  run_study(flags.FLAGS.config, workdir, _VARIANTS.value, [int(s) for s in _SEEDS.value])


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
