"""Smoke test of the Pallas rasteriser on a GPU: does each lowering compile, is it right, how fast.

For each lowering of the platform (Triton and Mosaic GPU on GPUs, Mosaic TPU on TPUs) it
renders a head-like scene (`bench/scenes.py`) with impl="pallas" (compiled, not interpreted)
and impl="reference", prints the largest output and gradient differences, then times forward
and forward+backward (binning included) at the benchmark sizes. Needs only jax, numpy and the
rasterizer package:

  python bench/pallas_smoke.py --out smoke.json
"""
import argparse
import json
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo
from bench import json_out  # noqa: E402
from bench import scenes  # noqa: E402
import rasterizer  # noqa: E402

FIELDS = ("color", "alpha", "depth", "median_depth", "normals", "distortion")


def make_fns(size, impl, **options):
  viewmat, K = scenes.camera(size, size)
  viewmats, Ks = viewmat[None], K[None]
  background = jnp.array([0.1, 0.2, 0.3])

  def render(splats, viewmats):
    return rasterizer.rasterize(splats, viewmats, Ks, size, size, background, impl=impl,
                                **options)

  def loss(splats, viewmats):
    out = render(splats, viewmats)
    return sum(jnp.sum(getattr(out, f) * (0.5 + jnp.cos(jnp.arange(getattr(out, f).size)
                                                      .reshape(getattr(out, f).shape))))
               for f in FIELDS)

  return jax.jit(render), jax.jit(jax.grad(loss, (0, 1))), viewmats


def time_call(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def max_errors(triples):
  """{name: max |got - want| / max |want|} over (name, got, want) triples."""
  return {k: float(jnp.max(jnp.abs(g - w))) / max(float(jnp.max(jnp.abs(w))), 1e-12)
          for k, g, w in triples}


def fraction_close(got, want, atol=1e-5):
  """Share of pixels whose every channel is within atol (the rest: threshold flips)."""
  diff = jnp.abs(got - want).reshape(got.shape[0], got.shape[1], got.shape[2], -1)
  return float(jnp.mean(jnp.max(diff, axis=-1) <= atol))


def check(backend, size, num_splats, interpret):
  """Relative max errors (by the reference's largest value) of outputs and gradients."""
  splats = scenes.head_scene(num_splats, seed=0)
  render_p, grad_p, viewmats = make_fns(size, "pallas", backend=backend, interpret=interpret)
  render_r, grad_r, _ = make_fns(size, "reference")
  out_p, out_r = render_p(splats, viewmats), render_r(splats, viewmats)
  errors = max_errors([(f, getattr(out_p, f), getattr(out_r, f)) for f in FIELDS])
  errors.update({f"close_{f}": fraction_close(getattr(out_p, f), getattr(out_r, f))
                 for f in FIELDS})
  errors["pairs_dropped"] = int(out_p.pairs_dropped[0])
  names = ("means", "quats", "scales", "opacities", "features", "viewmat")
  grads = zip(names, jax.tree.leaves(grad_p(splats, viewmats)),
              jax.tree.leaves(grad_r(splats, viewmats)))
  errors.update({f"d_{k}": v for k, v in max_errors(grads).items()})
  return errors


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backends", default="mosaic_tpu" if jax.default_backend() == "tpu"
                      else "triton,mosaic_gpu")
  parser.add_argument("--check-size", type=int, default=128)
  parser.add_argument("--check-splats", type=int, default=2000)
  parser.add_argument("--sizes", default="512")
  parser.add_argument("--splats", default="10000,100000")
  parser.add_argument("--impls", default="pallas,tiled,reference",
                      help="timed implementations (reference only at the smallest count)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--exit-check-every", default="1,16",
                      help="pallas forward: pairs between all-pixels-done tests (each timed)")
  parser.add_argument("--unroll", default="1",
                      help="pallas forward: pairs per inner-loop step (each timed, with every "
                      "--exit-check-every it divides)")
  parser.add_argument("--interpret", action="store_true", help="interpret mode (CPU dry run)")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, device {jax.devices()[0].device_kind}", flush=True)
  report = dict(jax=jax.__version__, device=jax.devices()[0].device_kind, backends={},
                timings=[])
  working = []
  for backend in args.backends.split(","):
    try:
      errors = check(backend, args.check_size, args.check_splats, args.interpret)
      report["backends"][backend] = dict(ok=True, errors=errors)
      working.append(backend)
      print(f"[{backend}] compiled; relative max errors vs reference, share of pixels within "
            "1e-5:", flush=True)
      for k, v in errors.items():
        print(f"  {k:16s} {v:.3g}")
    except Exception as e:  # pylint: disable=broad-except
      message = "".join(traceback.format_exception_only(type(e), e)).strip()
      report["backends"][backend] = dict(ok=False, error=message[-2000:])
      print(f"[{backend}] FAILED: {message[-600:]}", flush=True)
    write_report(report, args.out)

  counts = [int(n) for n in args.splats.split(",")]
  first_pallas = {}
  for size in (int(s) for s in args.sizes.split(",")):
    for num_splats in counts:
      splats = scenes.head_scene(num_splats, seed=1)
      impls = args.impls.split(",")
      runs = [("pallas", dict(backend=b, interpret=args.interpret, exit_check_every=e,
                              unroll=u))
              for b in working if "pallas" in impls
              for e in map(int, args.exit_check_every.split(","))
              for u in map(int, args.unroll.split(",")) if e % u == 0]
      runs += [(impl, {}) for impl in impls if impl != "pallas"]
      for impl, options in runs:
        if impl == "reference" and num_splats != min(counts):
          continue
        name = impl + (f"/{options['backend']}/exit{options['exit_check_every']}"
                       f"/unroll{options['unroll']}" if options else "")
        try:
          render, grad, viewmats = make_fns(size, impl, **options)
          record = dict(impl=name, height=size, width=size, n_splats=num_splats,
                        fwd_ms=time_call(render, splats, viewmats, repeats=args.repeats),
                        fwd_bwd_ms=time_call(grad, splats, viewmats, repeats=args.repeats),
                        device=report["device"])
          output = render(splats, viewmats)
          record["pairs_dropped"] = int(output.pairs_dropped[0])
          if impl == "pallas":  # every kernel setting must render what the first one does
            first = first_pallas.setdefault((size, num_splats), output)
            record["max_diff_vs_first_setting"] = max(
                float(jnp.max(jnp.abs(getattr(output, f) - getattr(first, f)))) for f in FIELDS)
        except Exception as e:  # pylint: disable=broad-except
          record = dict(impl=name, height=size, width=size, n_splats=num_splats,
                        error=str(e)[-600:])
        report["timings"].append(record)
        print(json.dumps(record), flush=True)
        write_report(report, args.out)


def write_report(report, path):
  if path:
    json_out.write_json(path, report)


if __name__ == "__main__":
  main()
