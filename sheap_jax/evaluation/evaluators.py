"""The geometry evaluators, chosen by name: `python -m sheap_jax.evaluate --benchmark NAME` and
training validation (`config.evals`, `evaluation/validation.py`) run the same functions.

An evaluator scores one predictor (`predictors.Predictor`) with one FLAME model on its data and
returns a `benchmarks.BenchmarkResult`, which pairs with the `mean_head` baseline's result on
the same items (`BenchmarkResult.compare`). What its data are (`reads`):

- "synthetic": the records of one `synthetic_heads` split (`synthetic_neutral`,
  `synthetic_expressions`); option `frames_per_identity`;
- "now": a NoW dataset folder (`now_data.NowDataset`; `now`); options `predictions_dir`,
  `split` (NoW's image list: `NOW_SPLITS` of the split's name) and `challenge`.

Every evaluator also takes `max_items` and `batch_size`. `expression_probe` is not one of them:
it fits a classifier on one split and scores another, and returns accuracies, not geometry.
"""
import dataclasses
from typing import Any, Callable, Dict, Tuple

from sheap_jax.evaluation import benchmarks

_FILE = "sheap_jax/evaluation/evaluators.py"
# A split's name -> NoW's image list of it (NoW has no training list).
NOW_SPLITS = {"validation": "val", "test": "test"}


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """One benchmark: `run(predictor, model, data, max_items=, batch_size=, **options)`."""

  run: Callable[..., benchmarks.BenchmarkResult]
  reads: str  # "synthetic" or "now": what `data` is (module docstring)
  options: Tuple[str, ...]  # the keyword options `run` takes beyond max_items and batch_size


_REGISTRY: Dict[str, Evaluator] = {
    "synthetic_neutral": Evaluator(benchmarks.synthetic_neutral, "synthetic",
                                   ("frames_per_identity",)),
    "synthetic_expressions": Evaluator(benchmarks.synthetic_expressions, "synthetic",
                                       ("frames_per_identity",)),
    "now": Evaluator(benchmarks.now_benchmark, "now", ("predictions_dir", "split", "challenge")),
}


def names() -> Tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Evaluator:
  """The evaluator of that name, or one line naming the accepted ones."""
  if name not in _REGISTRY:
    raise ValueError(f"{_FILE}: unknown evaluator {name!r}; accepted: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def run(name: str, predictor, model, data: Any, **options) -> benchmarks.BenchmarkResult:
  """Scores `predictor` with evaluator `name`; options it does not take are refused."""
  evaluator = get(name)
  unknown = sorted(set(options) - set(evaluator.options) - {"max_items", "batch_size"})
  if unknown:
    raise ValueError(f"{_FILE}: evaluator {name!r} takes no option {unknown}; accepted: "
                     f"{', '.join(('max_items', 'batch_size') + evaluator.options)}")
  return evaluator.run(predictor, model, data, **options)
