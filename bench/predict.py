"""Prediction throughput: frames per second from decoded head crops to FLAME meshes on the host.

    python bench/predict.py --sizes tiny,S/16,B/16 --batches 1,32,256 --out FILE
    python bench/predict.py --checkpoint runs/cpu --batches 1,32 --out FILE

Each timed call takes a batch of decoded 224 x 224 uint8 crops on the host (face detection and
cropping excluded: the crops are given) and runs what `python -m sheap_jax.predict` runs per
batch before drawing: transfer to the device, uint8 -> float, resize to the model's input size,
the predictor ViT, the FLAME layer (posed vertices and landmarks), and the transfer of the FLAME
parameters, camera and vertices back to the host. The Gaussian avatar (DINOv2 + regressor) is
not included. Figures are medians over `--repeats` calls after compilation and two warm-up
calls.

Without `--checkpoint`, each `--sizes` entry is a freshly initialised predictor of that size
(the paper config otherwise: 224 px, 300 shape + 100 expression components, the built-in head,
`--dtype` matmuls); with one, the checkpoint's model and config. Prints a table and writes JSON
records {model, batch, frames_per_s, device, dtype, image_size, median_ms, compile_s, repeats,
vertices}.
"""
import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from configs import base  # noqa: E402
from sheap_jax.inference import checkpoint_predictor  # noqa: E402
from sheap_jax.face import crop  # noqa: E402
from sheap_jax.training import objective  # noqa: E402

DTYPES = ("bfloat16", "float32")


def fresh_model(size: str, dtype: str, flame_model) -> checkpoint_predictor.CheckpointPredictor:
  """An initialised (untrained) predictor of `size` in the paper config; no avatar parts."""
  config = base.get_config()
  config.model.size = size
  config.bfloat16 = dtype == "bfloat16"
  networks = objective.build_networks(config)
  images = np.zeros((1, config.model.image_size, config.model.image_size, 3), np.float32)
  params = {"predictor": jax.jit(networks.predictor.init)(jax.random.key(0), images)["params"]}
  frozen = objective.Frozen(flame=flame_model, layout=None, dinov2=None)
  return checkpoint_predictor.CheckpointPredictor(config, params, frozen)


def time_batches(model, name: str, batches, repeats: int):
  """One record per batch size."""
  device = jax.devices()[0]
  rng = np.random.default_rng(0)
  records = []
  for batch in batches:
    crops = rng.integers(0, 256, (batch, crop.CROP_SIZE, crop.CROP_SIZE, 3), np.uint8)

    def call():
      out = model.predict(crops)
      return jax.device_get((out.flame, out.camera_translation, out.vertices))

    start = time.perf_counter()
    call()
    compile_s = time.perf_counter() - start
    call()
    call()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      call()
      times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    records.append(dict(
        model=name, batch=batch, frames_per_s=batch / seconds,
        device=f"{device.platform}:{device.device_kind}",
        dtype="bfloat16" if model.config.get("bfloat16") else "float32",
        image_size=model.image_size, median_ms=1e3 * seconds, compile_s=compile_s,
        repeats=repeats, vertices=model.flame_model.num_vertices))
    r = records[-1]
    print(f"{r['model']:>22} {r['batch']:>6} {r['dtype']:>9} {r['frames_per_s']:>10.1f} "
          f"{r['median_ms']:>10.2f} {r['compile_s']:>9.1f}  {r['device']}", flush=True)
  return records


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", help="training workdir (default: fresh models of --sizes)")
  parser.add_argument("--sizes", default="tiny,S/16,B/16", help="comma-separated predictor sizes")
  parser.add_argument("--batches", default="1,32,256", help="comma-separated batch sizes")
  parser.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                      help="matmul dtype of fresh models")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", help="JSON file for the records")
  args = parser.parse_args(argv)
  batches = [int(b) for b in args.batches.split(",") if b]

  print(f"{'model':>22} {'batch':>6} {'dtype':>9} {'frames/s':>10} {'median ms':>10} "
        f"{'compile s':>9}  device")
  records = []

  def keep(model_records):  # written after every model: a run cut short keeps what it timed
    records.extend(model_records)
    if args.out:
      json_out.write_json(args.out, records)

  if args.checkpoint:
    model = checkpoint_predictor.load(args.checkpoint)
    name = f"{model.config.model.size} ({os.path.basename(os.path.abspath(args.checkpoint))})"
    keep(time_batches(model, name, batches, args.repeats))
  else:
    flame_model = objective.load_flame_model(base.get_config())
    for size in args.sizes.split(","):
      keep(time_batches(fresh_model(size, args.dtype, flame_model), size, batches, args.repeats))
  if args.out:
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
