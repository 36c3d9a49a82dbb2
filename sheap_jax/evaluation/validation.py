"""Training validation: the evaluators `config.evals` names (`evaluators`, the functions
`python -m sheap_jax.evaluate` runs), scored on the model being trained, each against the mean
head on the same items.

`config.evals` maps an evaluator's name to its options (`OPTIONS`):
- `images`: items scored, at most (0: all). Synthetic frames interleave identities, so with
  one frame per identity these are the first `images` identities;
- `split`: the split scored: a `synthetic_heads` split for the synthetic evaluators
  (`validation`: generalisation; `train`: the identities trained on, fitting), `validation`
  or `test` for `now`;
- `frames_per_identity` (synthetic; default 1: the first frame of each identity),
  `batch_size` (default 8), `now_dir` (now: the NoW dataset folder), `challenge` (now).
Synthetic evaluators read the synthetic dataset of the training data
(`data.datasets.synthetic_dataset`) and are skipped, with a warning, when there is none. NoW
predictions are written under `<workdir>/now_predictions/`.
"""
import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional

from absl import logging

from data import datasets
from sheap_jax.evaluation import benchmarks
from sheap_jax.evaluation import evaluators
from sheap_jax.evaluation import predictors
from sheap_jax.evaluation import scoring
from sheap_jax.metrics import now_data

OPTIONS = ("images", "split", "frames_per_identity", "batch_size", "now_dir", "challenge")
DEFAULT_SPLIT = "validation"


def validation_metrics(result, baseline) -> Dict[str, float]:
  """The result's summary and its pooled median over the baseline's: ratio, 95% interval (a
  paired cluster bootstrap over identities) and the sign test."""
  paired = result.compare(baseline)
  return dict(result.summary(), ratio=paired.ratio, ratio_low=paired.low,
              ratio_high=paired.high, identities_better=paired.better, sign_p=paired.sign_p)


def validation_line(name, results) -> str:
  """One line: the model's median against the mean head's, ratio [lo, hi], sign test (and the
  shape recovery of neutral evaluators)."""
  m = results["model"]
  line = (f"{name} on {m['num_identities']} {results['split']} identities: median "
          f"{m['median_mm']:.3f} mm (mean head {results['mean_head']['median_mm']:.3f} mm), "
          f"ratio {m['ratio']:.3f} [{m['ratio_low']:.3f}, {m['ratio_high']:.3f}], "
          f"{m['identities_better']}/{m['num_identities']} identities better "
          f"(sign test p={m['sign_p']:.2g})")
  if "alpha" in m:
    line += (f", alpha {m['alpha']:.3f}, from_template_aligned_mm "
             f"{m['from_template_aligned_mm']:.3f}")
  return line


@dataclasses.dataclass
class _Evaluation:
  """One configured evaluator: its scoring of a predictor and the mean head's result."""

  name: str
  score: Callable[[predictors.Predictor], benchmarks.BenchmarkResult]
  baseline: benchmarks.BenchmarkResult
  results: Dict[str, Any]  # what `<name>.json` holds: split, mean_head, ground_truth, model


class Validation:
  """The evaluators of `config.evals` with their data, loaded once; `__call__` scores a
  predictor and returns the metrics to log."""

  def __init__(self, evaluations: List[_Evaluation]):
    self._evaluations = evaluations

  @classmethod
  def from_config(cls, config, model, synthetic_split: Optional[Callable[[str], Any]],
                  workdir: str) -> Optional["Validation"]:
    """`config.evals` with `model` (FLAME); `synthetic_split(split)` gives a synthetic split's
    records (None: no synthetic data). None when nothing is left to run."""
    evaluations = []
    for name, options in config.evals.items():
      options = dict(options)
      try:
        evaluator = evaluators.get(name)
      except ValueError as error:
        raise datasets.ConfigError(f"config.evals: {error}") from None
      unknown = sorted(set(options) - set(OPTIONS))
      if unknown:
        raise datasets.ConfigError(f"config.evals.{name}: unknown options {unknown}; accepted: "
                                   f"{', '.join(OPTIONS)}")
      split = options.get("split", DEFAULT_SPLIT)
      run = dict(max_items=options.get("images") or None, batch_size=options.get("batch_size", 8))
      if evaluator.reads == "synthetic":
        if synthetic_split is None:
          logging.warning("config.evals.%s skipped: the training data have no synthetic_heads "
                          "dataset (set config.data.synthetic_eval)", name)
          continue
        data = synthetic_split(split)
        run.update(frames_per_identity=options.get("frames_per_identity", 1))
      else:
        data = _now_dataset(name, options, split)
        run.update(split=evaluators.NOW_SPLITS[split], challenge=options.get("challenge"))
      evaluations.append(_evaluation(name, model, data, run, split, workdir))
    return cls(evaluations) if evaluations else None

  def baseline_metrics(self) -> Dict[str, float]:
    """`<name>/mean_head/<key>` of every evaluator: the scores to beat."""
    return {f"{e.name}/mean_head/{k}": v for e in self._evaluations
            for k, v in e.results["mean_head"].items()}

  def __call__(self, predictor, step: int) -> Dict[str, float]:
    """Scores `predictor` with every evaluator: `<name>/<key>` metrics (summary, ratio to the
    mean head with its interval, sign test); logs one line per evaluator."""
    metrics = {}
    for e in self._evaluations:
      model = validation_metrics(e.score(predictor), e.baseline)
      e.results["model"] = dict(model, step=step)
      metrics.update({f"{e.name}/{k}": v for k, v in model.items()})
      logging.info("step %d: %s", step, validation_line(e.name, e.results))
    return metrics

  def write(self, workdir: str) -> None:
    """`<workdir>/<name>.json` of every evaluator scored so far; logs their lines."""
    for e in self._evaluations:
      if "model" in e.results:
        with open(os.path.join(workdir, f"{e.name}.json"), "w") as f:
          json.dump(e.results, f, indent=2)
        logging.info("%s", validation_line(e.name, e.results))


def _now_dataset(name, options, split):
  if split not in evaluators.NOW_SPLITS:
    raise datasets.ConfigError(f"config.evals.{name}.split={split!r}: NoW lists only "
                               f"{', '.join(evaluators.NOW_SPLITS)} images")
  now_dir = options.get("now_dir", "")
  if not now_dir or not os.path.isdir(now_dir):
    raise datasets.ConfigError(f"config.evals.{name}.now_dir={now_dir!r}: not a NoW dataset "
                               "folder")
  return now_data.NowDataset(now_dir)


def _evaluation(name, model, data, run, split, workdir) -> _Evaluation:
  """The evaluator bound to its data and options, with the mean head scored once."""
  def score(predictor, label="model"):
    extra = ({"predictions_dir": os.path.join(workdir, "now_predictions", label)}
             if evaluators.get(name).reads == "now" else {})
    return evaluators.run(name, predictor, model, data, **run, **extra)

  baseline = score(predictors.mean_head_of(model), benchmarks.BASELINE)
  results = dict(split=scoring.split_label(split), mean_head=baseline.summary())
  if baseline.recovery:
    results["ground_truth"] = baseline.ground_truth()
  return _Evaluation(name, score, baseline, results)
