"""Scores predictors on geometry benchmarks; writes JSON and cumulative-error PNGs, prints a table.

  python -m sheap_jax.evaluate --benchmark synthetic_neutral --predictor mean_head,oracle \
      --data_dir ~/tensorflow_datasets --out /tmp/eval
  python -m sheap_jax.evaluate --benchmark now --now_dir /data/NoW --predictor checkpoint:DIR \
      --out /tmp/eval

Benchmarks (comma-separated): synthetic_neutral, synthetic_expressions (identities of
`synthetic_heads`: held out, or with `--split train` the training ones, which measures fitting
rather than generalisation; the config is built into --data_dir if absent), now (a NoW dataset
folder) and expression_probe (emotion classification from predicted expressions, fitted on the
train identities). Predictors (comma-separated): mean_head, oracle, the calibration predictors
oracle_scaled:A, oracle_noise:S, oracle_truncated:K, and checkpoint:DIR. Every geometry score
comes with its ratio to mean_head (scored too if not asked for) on the same identities and a
95% interval from a paired cluster bootstrap. Per benchmark it writes `<out>/<benchmark>.json`
and a PNG: for the geometry benchmarks the summary, comparison and per-item errors of every
predictor and `<benchmark>_cumulative.png`, for the probe the accuracies, chance levels and
confusion matrices and `expression_probe_confusion.png`. NoW predictions go to
`<out>/now_predictions/<predictor>/`. See docs/evaluation.md.
"""
import argparse
import json
import os
import re

import tensorflow_datasets as tfds

from data.synthetic_heads import assets
from data.synthetic_heads import builder
from sheap_jax.evaluation import benchmarks
from sheap_jax.evaluation import evaluators
from sheap_jax.evaluation import expression_probe
from sheap_jax.head import flame
from sheap_jax.evaluation import predictors
from sheap_jax.evaluation import scoring
from sheap_jax.metrics import now_data

SPLITS = ("train", "validation", "test")
BENCHMARKS = evaluators.names() + (benchmarks.PROBE,)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--benchmark", default="synthetic_neutral",
                      help=f"comma-separated, of {', '.join(BENCHMARKS)}")
  parser.add_argument("--predictor", default="mean_head,oracle",
                      help=f"comma-separated, of {', '.join(predictors.BUILT_IN)}, "
                           f"{', '.join(n + ':VALUE' for n in predictors.CALIBRATION)} or "
                           "checkpoint:DIR")
  parser.add_argument("--out", required=True, help="folder for the JSON, plots and predictions")
  parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"),
                      help="TFDS data folder holding (or to hold) synthetic_heads")
  parser.add_argument("--config", default="tiny", help="synthetic_heads config name")
  parser.add_argument("--split", default="validation", choices=sorted(SPLITS),
                      help="validation/test: held-out identities (generalisation); train: the "
                           "identities trained on (fitting)")
  parser.add_argument("--now_dir", help="NoW dataset folder (for --benchmark now)")
  parser.add_argument("--now_challenge", choices=now_data.CHALLENGES,
                      help="score only this NoW challenge (default: all images of the split)")
  parser.add_argument("--flame", help="FLAME model file or folder (default: the built-in head)")
  parser.add_argument("--max_items", type=int, help="score at most this many frames / images")
  parser.add_argument("--frames_per_identity", type=int,
                      help="synthetic frames scored per identity (default: 2 neutral, 4 posed)")
  parser.add_argument("--batch_size", type=int, default=8)
  args = parser.parse_args(argv)

  args.benchmarks = [b for b in args.benchmark.split(",") if b]
  unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
  if unknown or not args.benchmarks:
    parser.error(f"unknown benchmark {unknown or args.benchmark!r}: expected one or more of "
                 f"{', '.join(BENCHMARKS)}")
  if "now" in args.benchmarks:
    if not args.now_dir:
      parser.error("--benchmark now needs --now_dir, the NoW dataset folder")
    if not os.path.isdir(args.now_dir):
      parser.error(f"--now_dir {args.now_dir}: NoW dataset folder not found")
    if args.split not in evaluators.NOW_SPLITS:
      parser.error(f"--benchmark now has no {args.split!r} split: NoW lists only validation "
                   "and test images")
  if args.max_items is not None and args.max_items < 1:
    parser.error(f"--max_items must be >= 1, got {args.max_items}")
  try:
    args.predictors = {name: predictors.get_predictor(name)
                       for name in args.predictor.split(",") if name}
  except ValueError as error:
    parser.error(str(error))
  if not args.predictors:
    parser.error("--predictor names no predictor")
  return args


def load_model(path):
  """FLAME from a path, or the built-in head the synthetic data was rendered with."""
  if path:
    return flame.load_flame(path)
  return assets.head_assets().model


def synthetic_source(data_dir, config, split):
  """The split's random-access records, building the config into data_dir first if absent."""
  version_dir = os.path.join(data_dir, "synthetic_heads", config,
                             str(builder.SyntheticHeads.VERSION))
  if not os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
    known = [c.name for c in builder.SyntheticHeads.BUILDER_CONFIGS]
    if config not in known:
      raise ValueError(f"{version_dir}: no built synthetic_heads dataset, and {config!r} is not a "
                       f"config this command can build ({', '.join(known)})")
    print(f"building synthetic_heads/{config} into {data_dir} (once)")
    tfds.display_progress_bar(True)
    builder.SyntheticHeads(config=config, data_dir=data_dir,
                           file_format="array_record").download_and_prepare()
  reader = tfds.builder_from_directory(version_dir)
  if split not in reader.info.splits:
    raise ValueError(f"{version_dir}: no {split!r} split (has {sorted(reader.info.splits)})")
  return reader.as_data_source(split=split)


def run_benchmark(name, args, model, data):
  """{predictor name: BenchmarkResult} of one evaluator (`evaluators`), the baseline
  (mean_head) first."""
  results = {}
  ordered = {benchmarks.BASELINE: predictors.get_predictor(benchmarks.BASELINE),
             **args.predictors}
  for predictor_name, predictor in ordered.items():
    options = dict(max_items=args.max_items, batch_size=args.batch_size)
    if evaluators.get(name).reads == "now":
      options.update(predictions_dir=os.path.join(args.out, "now_predictions",
                                                  _safe_name(predictor_name)),
                     split=evaluators.NOW_SPLITS[args.split], challenge=args.now_challenge)
    elif args.frames_per_identity is not None:
      options.update(frames_per_identity=args.frames_per_identity)
    results[predictor_name] = evaluators.run(name, predictor, model, data, **options)
  return results


def _safe_name(name):
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def compare_to_baseline(results):
  """{predictor: intervals.PairedRatio against mean_head} for every other predictor."""
  baseline = results[benchmarks.BASELINE]
  return {p: r.compare(baseline) for p, r in results.items() if p != benchmarks.BASELINE}


def _predictor_report(result, comparison):
  report = {"summary": result.summary(), "items": result.per_item()}
  if comparison is not None:
    report["against_mean_head"] = comparison.as_dict()
  if result.recovery:
    report["shape_recovery"] = {
        "per_identity": result.recovery_by_identity(),
        "mean": {k: v.as_dict() for k, v in result.recovery_intervals().items()}}
  return report


def measures(name, split):
  """'fitting' or 'generalisation': NoW's subjects are never trained on."""
  return "generalisation" if name == "now" else scoring.split_role(split)


def split_text(name, split):
  """The split as printed (NoW: its image list) and what its scores measure."""
  return f"{evaluators.NOW_SPLITS[split] if name == 'now' else split} ({measures(name, split)})"


def write_outputs(name, results, comparisons, args):
  """<out>/<name>.json and <out>/<name>_cumulative.png; returns their paths."""
  os.makedirs(args.out, exist_ok=True)
  plot_path = benchmarks.write_cumulative_plot(
      results, os.path.join(args.out, f"{name}_cumulative.png"))
  report = {
      "benchmark": name,
      "split": args.split if name != "now" else evaluators.NOW_SPLITS[args.split],
      "measures": measures(name, args.split),
      "data": args.now_dir if name == "now" else os.path.join(args.data_dir, "synthetic_heads",
                                                               args.config),
      "flame": args.flame or "built-in head",
      "cumulative_plot": os.path.basename(plot_path),
      "predictors": {p: _predictor_report(r, comparisons.get(p)) for p, r in results.items()},
  }
  json_path = os.path.join(args.out, f"{name}.json")
  with open(json_path, "w") as f:
    json.dump(report, f, indent=2)
  return json_path, plot_path


def run_expression_probe(args, test_source):
  """Fits and scores the probe for every predictor (train identities -> `args.split`), writes
  `<out>/expression_probe.json` and `_confusion.png`; returns (benchmark, predictor, result)."""
  train_source = synthetic_source(args.data_dir, args.config, "train")
  results = {name: benchmarks.expression_probe(predictor, train_source, test_source,
                                               max_items=args.max_items,
                                               batch_size=args.batch_size)
             for name, predictor in args.predictors.items()}
  os.makedirs(args.out, exist_ok=True)
  plot_path = expression_probe.plot_confusion(
      results, os.path.join(args.out, f"{benchmarks.PROBE}_confusion.png"))
  json_path = os.path.join(args.out, f"{benchmarks.PROBE}.json")
  with open(json_path, "w") as f:
    json.dump({"benchmark": benchmarks.PROBE, "train_split": "train", "split": args.split,
               "measures": measures(benchmarks.PROBE, args.split),
               "data": os.path.join(args.data_dir, "synthetic_heads", args.config),
               "confusion_plot": os.path.basename(plot_path), "predictors": results}, f, indent=2)
  print(f"wrote {json_path} and {plot_path}")
  split = split_text(benchmarks.PROBE, args.split)
  return [(benchmarks.PROBE, split, name, result) for name, result in results.items()]


def format_table(rows):
  """Fixed-width table of (benchmark, split, predictor, summary, comparison or None) rows."""
  header = ("benchmark", "split", "predictor", "items", "identities", "median mm", "mean mm",
            "std mm", "ratio to mean_head [95%]", "identities better (sign test)")
  lines = [(b, split, p, str(s["num_items"]), str(s["num_identities"]), f"{s['median_mm']:.4f}",
            f"{s['mean_mm']:.4f}", f"{s['std_mm']:.4f}", c.text() if c else "baseline",
            c.sign_text() if c else "") for b, split, p, s, c in rows]
  return _fixed_width(header, lines, left=3)


def format_recovery_table(rows):
  """Fixed-width table of (benchmark, split, predictor, BenchmarkResult) shape recovery rows:
  means over identities with their 95% intervals."""
  header = ("benchmark", "split", "predictor", "alpha [95%]", "cos [95%]",
            "aligned RMS mm [95%]", "from template aligned mm")
  lines = []
  for b, split, p, result in rows:
    r = result.recovery_intervals()
    lines.append((b, split, p, r["alpha"].text(), r["cos"].text(), r["aligned_rms_mm"].text(),
                  f"{r['from_template_aligned_mm'].mean:.3f}"))
  return _fixed_width(header, lines, left=3)


def format_probe_table(rows):
  """Fixed-width table of (benchmark, split, predictor, probe result) rows: accuracy against
  chance."""
  header = ("benchmark", "split", "predictor", "train", "test", "accuracy", "majority",
            "uniform")
  lines = [(b, split, p, str(r["num_train"]), str(r["num_test"]), f"{r['accuracy']:.4f}",
            f"{r['chance_majority']:.4f}", f"{r['chance_uniform']:.4f}")
           for b, split, p, r in rows]
  return _fixed_width(header, lines, left=3)


def _fixed_width(header, lines, left):
  """Columns padded to their widest cell: the first `left` left-aligned, the rest
  right-aligned."""
  widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
  fmt = lambda r: "  ".join(c.ljust(w) if i < left else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


def main(argv=None):
  args = parse_args(argv)
  model, rows, recovery_rows, probe_rows, source = None, [], [], [], None
  for name in args.benchmarks:
    if name != "now" and source is None:
      source = synthetic_source(args.data_dir, args.config, args.split)
    if name == benchmarks.PROBE:
      probe_rows.extend(run_expression_probe(args, source))
      continue
    data = now_data.NowDataset(args.now_dir) if name == "now" else source
    if model is None:  # loaded once, and only for the geometry benchmarks
      model = load_model(args.flame)
    results = run_benchmark(name, args, model, data)
    comparisons = compare_to_baseline(results)
    json_path, plot_path = write_outputs(name, results, comparisons, args)
    print(f"wrote {json_path} and {plot_path}")
    split = split_text(name, args.split)
    rows.extend((name, split, p, r.summary(), comparisons.get(p)) for p, r in results.items())
    recovery_rows.extend((name, split, p, r) for p, r in results.items() if r.recovery)
  if rows:
    print(format_table(rows))
  if recovery_rows:
    print(format_recovery_table(recovery_rows))
  if probe_rows:
    print(format_probe_table(probe_rows))
  return rows + probe_rows


if __name__ == "__main__":
  main()
