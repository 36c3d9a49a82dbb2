"""Fits the FLAME-rigged Gaussian head to one video, with the training objective and no network.

    python -m sheap_jax.fit --config configs/fit.py --video synthetic_heads:tiny/validation/8 \
        --workdir runs/fit/tiny8
    python -m sheap_jax.fit --config configs/fit.py:losses=landmarks_only --video \
        video_folder:mine/train/0 --workdir runs/fit/mine --config.flame_path=/path/to/FLAME2020

The fit reads only the frames, the detector's landmarks and (`config.fit.matte`) a person matte
(`sheap_jax/fitting`, docs/fitting.md). On `synthetic_heads` this entry point also scores the fit
against the video's ground truth every `config.fit.score_every` steps (`score/...` in
metrics.jsonl: NoW median against the mean head's, alpha, cos, jaw and camera errors;
`sheap_jax/evaluation/fit_scores.py`). `--init=ground_truth_control` starts from the true
parameters: the control run only, labelled so in fit.json. The camera is SHeaP's (vertical field
of view 14.25 degrees, 1 m), as in training. Rerunning resumes an unfinished fit and skips a
finished one.
"""
import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from data import datasets
from data import pairs
from sheap_jax.evaluation import fit_scores
from sheap_jax.fitting import clip as clip_lib
from sheap_jax.fitting import fitter
from sheap_jax.training import objective

INITS = ("mean_head", "ground_truth_control")


def run(config, video: str, workdir: str, init: str = "mean_head") -> dict:
  """One fit (or its finished summary); the scores need synthetic ground truth."""
  done = fitter.finished(workdir)
  if done is not None:
    print(f"{workdir}: finished fit found (fit.json), skipped")
    return done
  spec = clip_lib.parse_video_spec(video)
  frames, records = clip_lib.load_clip(spec, config)
  model = objective.load_flame_model(config)
  truth = None
  if spec.dataset == "synthetic_heads" and not config.flame_path:
    source = pairs.open_split(datasets.open_named(spec.dataset, spec.variant, config), spec.split)
    truth = fit_scores.GroundTruth(model, source, records, str(spec))
  if init == "ground_truth_control" and truth is None:
    raise datasets.ConfigError("--init=ground_truth_control needs a synthetic_heads video "
                               "(ground truth) and the built-in head")
  about = dict(video=str(spec), frames_used=[int(r) for r in records],
               inputs=sorted(frames), init=init)
  if truth is not None:
    about["mean_head"] = truth.mean_head
  if init == "ground_truth_control":
    about["init_note"] = "CONTROL: started at the ground-truth parameters (not a fit result)"
  initial = (truth.initial_params(config.flame.n_shape, config.flame.n_expression)
             if init == "ground_truth_control" else None)
  return fitter.fit(config, frames, workdir, model, scorer=truth and truth.scorer,
                    initial=initial, about=about)


def define_flags():
  """The command line's flags, defined only when this module runs as the program, so that
  importing `run` (tests, notebooks) beside `sheap_jax.train` defines no flag twice."""
  config_flags.DEFINE_config_file(
      "config", None, "Fit config file (path[:arguments], e.g. configs/fit.py:losses=full).")
  flags.DEFINE_string("video", None, "NAME:VARIANT/SPLIT/VIDEO_ID, e.g. "
                      "synthetic_heads:tiny/validation/8.")
  flags.DEFINE_string("workdir", None, "Directory for the fit's outputs.")
  flags.DEFINE_enum("init", "mean_head", INITS, "Start: the mean head, or (the control "
                    "only, synthetic data) the ground-truth parameters.")


def main(argv):
  del argv
  try:
    summary = run(flags.FLAGS.config, flags.FLAGS.video, flags.FLAGS.workdir, flags.FLAGS.init)
  except datasets.ConfigError as error:
    sys.exit(f"error: {error}")
  print(json.dumps({k: summary[k] for k in ("video", "init", "steps", "final")
                    if k in summary}, indent=1))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "video", "workdir"])
  app.run(main)
