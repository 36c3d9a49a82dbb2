"""Coverage of the paired cluster-bootstrap ratio interval (`evaluation.intervals`) by simulation.

    python bench/interval_coverage.py --identities 8,16,50 --datasets 1000 \
        --out bench/results/interval_coverage.json

Each simulated evaluation has n identities with `points` errors each, for a baseline and for
a predictor X. Identity i has a difficulty s_i (log-normal, sd `--identity_sd` in log) that both
predictors share, and X an identity-specific gain r_i (log-normal about `--ratio`, sd
`--gain_sd`); each point's error is s_i (r_i for X) times a log-normal factor (sd
`--point_sd`), so the pooled log errors are Gaussian and the population pooled medians are
exactly 1 and `--ratio`: the true ratio is known. The defaults mimic `synthetic_neutral`: per
point, a mean 1.5x the median (log sd 0.9); per identity, medians spread by 0.4 in log. The
table gives, per identity count and method, how often the 95% interval holds the true ratio,
and the median interval width.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from scipy import special

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sheap_jax.evaluation import intervals  # noqa: E402  pylint: disable=wrong-import-position


def simulate(rng, datasets, identities, points, ratio=0.9, identity_sd=0.4, gain_sd=0.15,
             point_sd=0.9):
  """(baseline errors, X errors), each (datasets, identities, points), positive."""
  difficulty = identity_sd * rng.standard_normal((datasets, identities, 1))
  gain = np.log(ratio) + gain_sd * rng.standard_normal((datasets, identities, 1))
  baseline = np.exp(difficulty + point_sd * rng.standard_normal((datasets, identities, points)))
  x = np.exp(difficulty + gain + point_sd * rng.standard_normal((datasets, identities, points)))
  return baseline, x


def bca_interval(estimate, replicates, jackknife, level):
  """The BCa interval (Efron 1987), the alternative `evaluation.intervals` was measured against:
  z0 = Phi^-1(share of replicates below the estimate, ties half) corrects median bias,
  a = sum(d^3) / (6 sum(d^2)^1.5), d = mean(jackknife) - jackknife, skewness."""
  below = np.mean(replicates < estimate) + 0.5 * np.mean(replicates == estimate)
  z0 = special.ndtri(np.clip(below, 1 / (len(replicates) + 1), 1 - 1 / (len(replicates) + 1)))
  d = np.mean(jackknife) - jackknife
  spread = np.sum(d ** 2)
  acceleration = np.sum(d ** 3) / (6.0 * spread ** 1.5) if spread > 0 else 0.0
  shifted = z0 + special.ndtri(np.array([(1 - level) / 2, (1 + level) / 2]))
  return tuple(np.quantile(replicates,
                           special.ndtr(z0 + shifted / (1.0 - acceleration * shifted))))


def coverage(rng, datasets, identities, points, resamples, level=0.95, **model):
  """{method: (share of intervals holding the true ratio, median width)}."""
  baseline, x = simulate(rng, datasets, identities, points, **model)
  truth = model.get("ratio", 0.9)
  counts = intervals.resample_counts(identities, resamples, seed=int(rng.integers(1 << 31)))
  jack = 1 - np.eye(identities, dtype=np.int64)  # leave one identity out
  ones = np.ones((1, identities), np.int64)
  hits, widths = {"percentile": [], "bca": []}, {"percentile": [], "bca": []}
  for b, xs in zip(baseline, x):
    med_x, med_b = intervals.PooledMedian(list(xs)), intervals.PooledMedian(list(b))
    estimate = med_x(ones)[0] / med_b(ones)[0]
    replicates = med_x(counts) / med_b(counts)
    bounds = {"percentile": intervals.percentile_interval(replicates, level),
              "bca": bca_interval(estimate, replicates, med_x(jack) / med_b(jack), level)}
    for method, (low, high) in bounds.items():
      hits[method].append(low <= truth <= high)
      widths[method].append(high - low)
  return {m: (float(np.mean(hits[m])), float(np.median(widths[m]))) for m in hits}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--identities", default="8,16,50")
  parser.add_argument("--datasets", type=int, default=1000)
  parser.add_argument("--points", type=int, default=40)
  parser.add_argument("--resamples", type=int, default=intervals.DEFAULT_RESAMPLES)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--gain_sd", type=float, default=0.15)
  parser.add_argument("--identity_sd", type=float, default=0.4)
  parser.add_argument("--out", default="bench/results/interval_coverage.json")
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  records = []
  print("identities  method      coverage  median width  seconds")
  for n in [int(v) for v in args.identities.split(",")]:
    start = time.time()
    result = coverage(rng, args.datasets, n, args.points, args.resamples,
                      gain_sd=args.gain_sd, identity_sd=args.identity_sd)
    seconds = time.time() - start
    for method, (share, width) in result.items():
      records.append(dict(identities=n, method=method, coverage=share, median_width=width,
                          datasets=args.datasets, points=args.points,
                          resamples=args.resamples, gain_sd=args.gain_sd,
                          identity_sd=args.identity_sd, seconds=seconds))
      print(f"{n:10d}  {method:10s}  {share:8.3f}  {width:12.3f}  {seconds:7.1f}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(records=records, loadavg=open("/proc/loadavg").read().split()[:3]), f,
              indent=1)


if __name__ == "__main__":
  main()
