"""Paired cluster-bootstrap intervals: is predictor X's pooled NoW median below the baseline's?

The unit of replication is the identity, not the point or the frame: the ~2,700 errors of one
frame, and the frames of one identity, are strongly correlated, so resampling points would
give intervals far too narrow. `paired_ratio` therefore resamples identities with replacement
(all frames of an identity together), recomputes both predictors' pooled medians on the same
draw and takes their ratio; the interval is the percentile interval of those ratios. Its
coverage was measured by simulation at the identity counts the project's evaluations use
(`bench/interval_coverage.py`, docs/evaluation.md): 95% nominal covers about 95% at 16
identities and more, about 93% at 8, while BCa (bias-corrected and accelerated, its
acceleration from a leave-one-identity-out jackknife, which is unreliable for medians)
covered less. A sign test on per-identity medians goes with it: on how many identities X
scores better.
"""
import dataclasses
from typing import Sequence

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
_CHUNK_ELEMENTS = 1 << 22  # resamples x points per vectorised block (32 MB of int64)


def resample_counts(num_clusters: int, resamples: int, seed: int) -> np.ndarray:
  """(resamples, num_clusters) int64: how often each cluster is drawn, n draws with
  replacement per resample (a multinomial with equal probabilities), from a fixed seed."""
  if num_clusters < 1:
    raise ValueError("resample_counts: no clusters to resample")
  rng = np.random.default_rng(seed)
  return rng.multinomial(num_clusters, np.full(num_clusters, 1.0 / num_clusters),
                         size=resamples)


class PooledMedian:
  """Pooled medians of per-cluster samples under cluster multiplicities, all in one pass.

  The values are sorted once; with counts c (one per cluster), the pooled sample holds each
  value c[cluster] times, so its k-th smallest element is the first sorted value whose
  cumulative multiplicity exceeds k. The median is np.median's: the mean of the elements at
  (M - 1) // 2 and M // 2 of the M pooled values.
  """

  def __init__(self, values_by_cluster: Sequence[np.ndarray]):
    if not len(values_by_cluster):
      raise ValueError("PooledMedian: no clusters")
    values = [np.ravel(np.asarray(v, np.float64)) for v in values_by_cluster]
    empty = [i for i, v in enumerate(values) if v.size == 0]
    if empty:
      raise ValueError(f"PooledMedian: clusters {empty[:5]} hold no values")
    labels = np.concatenate([np.full(v.size, i) for i, v in enumerate(values)])
    pooled = np.concatenate(values)
    order = np.argsort(pooled, kind="stable")
    self.sorted_values = pooled[order]
    self.sorted_labels = labels[order]

  def __call__(self, counts: np.ndarray) -> np.ndarray:
    """(R, n) cluster counts -> (R,) pooled medians."""
    counts = np.atleast_2d(np.asarray(counts, np.int64))
    chunk = max(1, _CHUNK_ELEMENTS // self.sorted_values.size)
    medians = np.empty(len(counts))
    for start in range(0, len(counts), chunk):
      cumulative = np.cumsum(counts[start:start + chunk][:, self.sorted_labels], axis=1)
      total = cumulative[:, -1]
      if np.any(total == 0):
        raise ValueError("PooledMedian: a resample draws no values")
      low = (cumulative <= ((total - 1) // 2)[:, None]).sum(axis=1)
      high = (cumulative <= (total // 2)[:, None]).sum(axis=1)
      medians[start:start + chunk] = 0.5 * (self.sorted_values[low] + self.sorted_values[high])
    return medians


def percentile_interval(replicates: np.ndarray, level: float = DEFAULT_LEVEL):
  """(low, high): the replicates' (1 - level) / 2 and (1 + level) / 2 quantiles."""
  low, high = np.quantile(np.asarray(replicates, np.float64), [(1 - level) / 2, (1 + level) / 2])
  return float(low), float(high)


def sign_test(better: int, worse: int) -> float:
  """Two-sided exact binomial p-value of `better` against `worse` (ties dropped), p = 1/2."""
  if better + worse == 0:
    return 1.0
  return float(stats.binomtest(better, better + worse, 0.5).pvalue)


@dataclasses.dataclass(frozen=True)
class PairedRatio:
  """Pooled median of X over the baseline's on the same identities, with its interval."""

  ratio: float
  low: float
  high: float
  level: float
  resamples: int
  identities: int
  better: int  # identities whose pooled median X lowers
  worse: int  # identities whose pooled median X raises
  ties: int
  sign_p: float  # two-sided sign test of better against worse

  def text(self):
    return f"{self.ratio:.3f} [{self.low:.3f}, {self.high:.3f}]"

  def sign_text(self):
    return f"{self.better}/{self.better + self.worse} better, p={self.sign_p:.2g}"

  def as_dict(self):
    return dataclasses.asdict(self)


def group_by_cluster(errors: Sequence[np.ndarray], clusters: Sequence) -> tuple:
  """(cluster names in first-seen order, per-cluster concatenated errors)."""
  names, grouped = [], {}
  for error, cluster in zip(errors, clusters, strict=True):
    if cluster not in grouped:
      names.append(cluster)
      grouped[cluster] = []
    grouped[cluster].append(np.ravel(np.asarray(error, np.float64)))
  return names, [np.concatenate(grouped[name]) for name in names]


def paired_ratio(errors: Sequence[np.ndarray], baseline_errors: Sequence[np.ndarray],
                 clusters: Sequence, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> PairedRatio:
  """X against the baseline: per-item error arrays of both on the same items, each item's
  cluster (identity). Both pooled medians are recomputed on every resample of identities."""
  if len(errors) != len(baseline_errors):
    raise ValueError(f"paired_ratio: {len(errors)} items against {len(baseline_errors)} "
                     "baseline items; both must score the same items")
  names, grouped = group_by_cluster(errors, clusters)
  _, baseline_grouped = group_by_cluster(baseline_errors, clusters)
  x, base = PooledMedian(grouped), PooledMedian(baseline_grouped)
  ones = np.ones((1, len(names)), np.int64)
  estimate = _ratio(x(ones), base(ones))[0]
  counts = resample_counts(len(names), resamples, seed)
  low, high = percentile_interval(_ratio(x(counts), base(counts)), level)
  per_x = np.array([np.median(g) for g in grouped])
  per_base = np.array([np.median(g) for g in baseline_grouped])
  better, worse = int(np.sum(per_x < per_base)), int(np.sum(per_x > per_base))
  return PairedRatio(float(estimate), low, high, level, resamples, len(names), better, worse,
                     len(names) - better - worse, sign_test(better, worse))


def _ratio(numerator, denominator):
  """numerator / denominator, with 0 / 0 = 1 (two predictors both exact)."""
  numerator, denominator = np.asarray(numerator), np.asarray(denominator)
  both_zero = (numerator == 0) & (denominator == 0)
  return np.where(both_zero, 1.0, numerator / np.where(denominator == 0, np.nan, denominator))


@dataclasses.dataclass(frozen=True)
class MeanInterval:
  """Mean of per-identity values with its cluster-bootstrap percentile interval."""

  mean: float
  low: float
  high: float
  level: float
  identities: int

  def text(self, digits=3):
    return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

  def as_dict(self):
    return dataclasses.asdict(self)


def mean_interval(values: Sequence[float], resamples: int = DEFAULT_RESAMPLES,
                  seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> MeanInterval:
  """The mean of one value per identity, resampling identities (percentile interval)."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f"mean_interval: expected one value per identity, got shape {values.shape}")
  replicates = resample_counts(values.size, resamples, seed) @ values / values.size
  low, high = percentile_interval(replicates, level)
  return MeanInterval(float(values.mean()), low, high, level, int(values.size))
