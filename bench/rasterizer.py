"""Rasterizer benchmark: forward and forward+backward time per implementation on head scenes.

  python bench/rasterizer.py --impls reference,tiled,pallas --sizes 256,512 \
      --splats 10000,20000,100000 --repeats 5 --out bench/results/rasterizer.json

Times are medians over `--repeats` runs after compilation, binning included (the whole
`rasterize` call). For the tiled paths the record also times projection + binning alone
(`bin_ms`), so fwd_ms - bin_ms is the compositing, and counts the (splat, tile) pairs the scene
needs (`pairs_needed`, against `capacity`) and the longest tile list (`max_tile_pairs`: a GPU
runs one program per tile, so that tile's serial walk bounds the compositing time). Ratios are
to `reference` measured in the same run, or taken from an earlier JSON with `--reference-json`
(the dense reference takes ~7 min at 256^2/20k on 2 quiet CPU cores; reuse it only while its
code is unchanged). Each implementation's failure is recorded in its JSON record instead of
ending the run, and the JSON is rewritten after every record, so a run stopped by a time limit
keeps what it measured. The load average is recorded. Plain jax only.
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from bench import scenes  # noqa: E402
import rasterizer  # noqa: E402
from rasterizer import binning  # noqa: E402


def _median_ms(compiled, args, repeats):
  """Median wall time of an ahead-of-time compiled function (no warm-up run is needed), and
  its last result."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), result


def _loss(output: rasterizer.RasterOutput):
  """Touches every differentiable output, as training losses do."""
  return (jnp.sum(output.color) + jnp.sum(output.depth) + jnp.sum(output.normals)
          + jnp.sum(output.distortion) + jnp.sum(output.alpha))


def _peak_bytes(compiled):
  """Device peak if the backend reports it, else XLA's static temp + output estimate."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"], "device_peak"
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None, None
  return analysis.temp_size_in_bytes + analysis.output_size_in_bytes, "xla_temp_plus_output"


def measure(impl, size, n_splats, repeats, pairs_per_splat=None):
  splats = scenes.head_scene(n_splats)
  viewmat, K = scenes.camera(size, size)
  viewmats, Ks = viewmat[None], K[None]
  background = jnp.ones((3,), jnp.float32)
  capacity = (binning.default_capacity(n_splats, size, size) if pairs_per_splat is None
              else math.ceil(pairs_per_splat * n_splats))

  def render(splats, viewmats):
    return rasterizer.rasterize(splats, viewmats, Ks, size, size, background, impl=impl,
                                capacity=capacity)

  args = (splats, viewmats)
  start = time.perf_counter()
  forward = jax.jit(render).lower(*args).compile()
  forward_backward = jax.jit(
      jax.grad(lambda s, v: _loss(render(s, v)), argnums=(0, 1))).lower(*args).compile()
  record = dict(impl=impl, height=size, width=size, n_splats=n_splats,
                device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                jax_version=jax.__version__, repeats=repeats, capacity=capacity,
                compile_s=time.perf_counter() - start)
  record["fwd_ms"], output = _median_ms(forward, args, repeats)
  record["pairs_dropped"] = int(output.pairs_dropped[0])
  if impl != "reference":
    def bin_only(splats, viewmats):
      projected = rasterizer.project_splats(splats, viewmats[0], Ks[0], size, size)
      return binning.bin_splats(projected, size, size, capacity)
    record["bin_ms"], bins = _median_ms(jax.jit(bin_only).lower(*args).compile(), args, repeats)
    record["pairs_needed"] = int(bins.pairs_total)
    ranges = bins.tile_ranges
    record["max_tile_pairs"] = int(jnp.max(ranges[:, 1] - ranges[:, 0]))
  record["fwd_bwd_ms"], _ = _median_ms(forward_backward, args, repeats)
  record["fwd_bwd_peak_bytes"], record["peak_bytes_method"] = _peak_bytes(forward_backward)
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--impls", default="reference,tiled,pallas")
  parser.add_argument("--sizes", default="256,512")
  parser.add_argument("--splats", default="10000,20000,50000,100000")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--reference-repeats", type=int, default=None,
                      help="repeats for the (slow) reference; default --repeats")
  parser.add_argument("--pairs-per-splat", type=float, default=None,
                      help="(splat, tile) pair capacity per splat for the tiled paths; default "
                      "binning.default_capacity (8). The head scenes need 1.5-4.8 (docs/pallas.md)")
  parser.add_argument("--reference-json", default=None,
                      help="take `reference` records from this earlier result instead of "
                      "measuring them")
  parser.add_argument("--note", default="", help="free text stored in the JSON")
  parser.add_argument("--out", default="bench/results/rasterizer.json")
  args = parser.parse_args(argv)
  impls = args.impls.split(",")
  reused = {}
  if args.reference_json:
    with open(args.reference_json) as f:
      reused = {(r["height"], r["n_splats"]): dict(r, reused_from=args.reference_json)
                for r in json.load(f)["records"] if r["impl"] == "reference"}
  load_before = os.getloadavg()
  records = []
  for size in [int(s) for s in args.sizes.split(",")]:
    for n_splats in [int(n) for n in args.splats.split(",")]:
      row = {}
      for impl in impls:
        if impl == "reference" and (size, n_splats) in reused:
          row[impl] = reused[(size, n_splats)]
          records.append(row[impl])
          continue
        try:
          repeats = args.reference_repeats if impl == "reference" else None
          record = measure(impl, size, n_splats, repeats or args.repeats, args.pairs_per_splat)
        except Exception as error:  # one implementation failing must not end the run
          record = dict(impl=impl, height=size, width=size, n_splats=n_splats,
                        device=str(jax.devices()[0].device_kind), fwd_ms=None, fwd_bwd_ms=None,
                        error=f"{type(error).__name__}: {error}",
                        traceback=traceback.format_exc(limit=3))
        row[impl] = record
        records.append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "traceback"}), flush=True)
        _write(args, records, load_before)  # after every record: a killed run keeps its results
      base = row.get("reference")
      for record in row.values():
        for key in ("fwd_ms", "fwd_bwd_ms"):
          if base and base.get(key) and record.get(key):
            record[f"speedup_{key[:-3]}_vs_reference"] = base[key] / record[key]
  _print_table(records)
  _write(args, records, load_before)
  print(f"wrote {args.out}")


def _write(args, records, load_before):
  json_out.write_json(args.out, dict(
      host=platform.node(), cpu_count=os.cpu_count(), note=args.note,
      load_avg_1_5_15_min=dict(start=load_before, end=os.getloadavg()), records=records))


def _print_table(records):
  header = (f"{'impl':>10} {'size':>5} {'splats':>7} {'fwd ms':>10} {'fwd+bwd ms':>11} "
            f"{'bin ms':>8} {'pairs used':>10} {'longest tile':>12} {'x ref fwd':>9} "
            f"{'x ref f+b':>9}  note")
  print(header)
  print("-" * len(header))
  fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else format(
      "-", ">" + spec.rstrip("dfg%").split(".")[0])
  used = lambda r: r["pairs_needed"] / r["capacity"] if "pairs_needed" in r else None
  for r in records:
    print(f"{r['impl']:>10} {r['height']:>5} {r['n_splats']:>7} {fmt(r['fwd_ms'], '10.1f')} "
          f"{fmt(r['fwd_bwd_ms'], '11.1f')} {fmt(r.get('bin_ms'), '8.2f')} "
          f"{fmt(used(r), '10.0%')} {fmt(r.get('max_tile_pairs'), '12d')} "
          f"{fmt(r.get('speedup_fwd_vs_reference'), '9.1f')} "
          f"{fmt(r.get('speedup_fwd_bwd_vs_reference'), '9.1f')}  {r.get('error', '')[:60]}")


if __name__ == "__main__":
  main()
