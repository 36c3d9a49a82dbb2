"""Trains SHeaP: data-parallel over every device of every host, resumable, big_vision style.

    python -m sheap_jax.train --config configs/base.py:cpu --workdir runs/cpu
    python -m sheap_jax.train --config configs/base.py --workdir runs/paper \
        --config.losses.ssim.weight=0

The step is written per device (pmap semantics: a `data` axis, `lax.pmean` of gradients) and
run with `jax.shard_map` over a one-axis mesh of all devices. The loss is a mean over pairs, so
1 and N devices give the same update. A step whose gradient or loss is not finite leaves the
parameters and optimiser state unchanged and is counted in `skipped_steps`.

The workdir holds Orbax checkpoints (`checkpoints/<step>`: train state, data-iterator state,
config; `sheap_jax/training/checkpoints.py`), `metrics.jsonl`, TensorBoard events and preview PNGs.
Rerunning the same command resumes from the newest checkpoint (refused, with the differing
config fields named, if the config builds another parameter tree); SIGTERM saves one before
exiting.
"""
import functools
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
from flax import struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_flags
import numpy as np
import optax
from PIL import Image
import tqdm

from data import datasets
from data import pairs
from sheap_jax.evaluation import benchmarks
from sheap_jax.training import checkpoints
from sheap_jax.head import flame as flame_lib
from sheap_jax.training import objective
from sheap_jax.training import previews
from sheap_jax.evaluation import heldout as heldout_validation
from sheap_jax.evaluation import scoring

_FILE = "sheap_jax/train.py"
DATA_AXIS = "data"
# Batch keys the objective reads: the two frames, then the target's landmarks (their type) and
# person matte if present.
MODEL_INPUTS = ("source_image", "target_image", "target_landmarks", "target_landmarks_valid",
                "target_landmarks_3d", "target_matte", "target_matte_valid")


@struct.dataclass
class TrainState:
  step: jnp.ndarray  # () int32 updates attempted
  params: Any  # objective.init_params: {"predictor", "regressor"}, or "albedo" for the mesh
  opt_state: Any
  skipped_steps: jnp.ndarray  # () int32 updates skipped for non-finite gradients


def make_optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (or plain SGD) on a linear warm-up + cosine schedule."""
  o = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=max(config.total_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.end_factor)
  if o.name == "adamw":
    inner = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  elif o.name == "sgd":
    inner = optax.sgd(schedule)
  else:
    raise ValueError(f"{_FILE}: config.optimizer.name={o.name!r}; expected 'adamw' or 'sgd'")
  return optax.chain(optax.clip_by_global_norm(o.clip_norm), inner)


def make_mesh(devices=None) -> Mesh:
  """A one-axis `data` mesh over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def make_train_step(networks: objective.Networks, config, optimizer, mesh: Mesh) -> Callable:
  """jit(shard_map(per-device step)): (state, frozen, batch) -> (state, metrics).

  `batch` arrays are global, sharded along the `data` axis (see `shard_batch`); state, frozen
  inputs and metrics are replicated.
  """
  def per_device_step(state: TrainState, frozen: objective.Frozen, batch):
    loss_fn = functools.partial(objective.mean_loss, networks, frozen=frozen, config=config,
                                batch=batch)
    (loss, (terms, counters)), grads = jax.value_and_grad(
        lambda params: loss_fn(params=params), has_aux=True)(state.params)
    grads, loss, terms, counters = jax.lax.pmean((grads, loss, terms, counters), DATA_AXIS)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state),
                           skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    metrics = dict(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32),
                   skipped_steps=new_state.skipped_steps,
                   **{f"loss/{k}": v for k, v in terms.items()},
                   **{f"render/{k}_per_pair": v for k, v in counters.items()})
    return new_state, metrics

  step = jax.shard_map(per_device_step, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)),
                       out_specs=(P(), P()), check_vma=False)
  return jax.jit(step, donate_argnums=(0,))


def shard_batch(batch: Dict[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """Process-local batches (local_devices, per_device_batch, ...) -> global arrays sharded
  along `data` (each device gets its own per-device slice), for the keys the objective reads
  (`MODEL_INPUTS`; bookkeeping such as video ids stays on the host)."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  local_devices = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])

  def put(name, x):
    x = np.asarray(x)
    if x.shape[0] != local_devices:
      raise ValueError(f"{_FILE}: batch[{name!r}] has leading dimension {x.shape[0]}, expected "
                       f"this process's {local_devices} devices")
    return jax.make_array_from_process_local_data(sharding, x.reshape((-1,) + x.shape[2:]))

  missing = [name for name in MODEL_INPUTS[:2] if name not in batch]
  if missing:
    raise ValueError(f"{_FILE}: the batch lacks {missing} (has {sorted(batch)})")
  return {name: put(name, batch[name]) for name in MODEL_INPUTS if name in batch}


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def init_state(networks, frozen, config, optimizer) -> TrainState:
  params = objective.init_params(networks, frozen, config, jax.random.PRNGKey(config.seed))
  return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                    skipped_steps=jnp.int32(0))


# ---------------------------------------------------------------------------------------------
# Logging: JSON lines + TensorBoard, previews.


class MetricWriter:
  """Scalars to `metrics.jsonl` and TensorBoard events (process 0 only)."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if self._active:
      from tensorboardX import SummaryWriter
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: Dict[str, float]):
    if not self._active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def close(self):
    if self._active:
      self._jsonl.close()
      self._tb.close()


def preview_image(out: objective.Reanimation, source_image, faces) -> np.ndarray:
  """(H, 6 W, 3) uint8 strip of pair 0: source | target | render | mesh overlay | depth |
  normals."""
  size = out.image.shape[1]
  return previews.strip([objective.resize_images(source_image[:1], size)[0]]
                        + previews.reanimation_panels(out, faces))


def write_preview(workdir, step, reanimate, state, frozen, batch, flame_model):
  """Renders the first device's pairs of the (local) batch on one device and writes the first
  as `previews/<step>.png`."""
  source = jnp.asarray(np.asarray(batch["source_image"])[0])
  target = jnp.asarray(np.asarray(batch["target_image"])[0])
  out = reanimate(jax.device_get(state.params), frozen, source, target)
  strip = preview_image(out, source, flame_model.faces)
  os.makedirs(os.path.join(workdir, "previews"), exist_ok=True)
  Image.fromarray(strip).save(os.path.join(workdir, "previews", f"{step:08d}.png"))


# ---------------------------------------------------------------------------------------------
# Data: the dataset `config.data.name` names (`data/datasets.py`), as frame pairs.


def make_data_iterator(config, mesh: Mesh, dataset):
  """The pair iterator of `data/pairs.py` for this process's devices (with get_state/set_state)."""
  local_devices = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  if config.batch_size % mesh.devices.size:
    raise ValueError(f"{_FILE}: config.batch_size={config.batch_size} is not divisible by the "
                     f"{mesh.devices.size} devices")
  return pairs.make_pair_iterator(
      dataset, split=config.data.split, global_batch_size=config.batch_size, seed=config.seed,
      max_gap=config.data.max_gap, augment=config.data.augment,
      image_size=config.model.image_size, worker_count=config.data.num_workers,
      num_local_devices=local_devices)


# ---------------------------------------------------------------------------------------------
# Validation: `benchmarks`' synthetic_neutral scoring on the first frame of each identity of
# `config.data.eval_split` (held out: generalisation; `train`: fitting), against the mean head.


def predict_neutral(networks, params, flame_model, images) -> jnp.ndarray:
  """(B, V, 3) neutral meshes (zero pose, expression, eyelids) of the predicted shapes."""
  out = networks.predictor.apply({"params": params["predictor"]}, images)
  return flame_lib.neutral_vertices(flame_model, out.shape)


def validation_set(config, dataset, flame_model) -> Tuple[np.ndarray, np.ndarray, tuple]:
  """(images at the predictor's size, GT neutral meshes, identities): the first frame of each
  identity of `config.data.eval_split`, at most `config.eval_images` (`benchmarks`)."""
  source = pairs.open_split(dataset, config.data.eval_split)
  return benchmarks.validation_set(flame_model, source, config.model.image_size,
                                   config.eval_images)


def score_validation(flame_model, meshes, validation) -> benchmarks.BenchmarkResult:
  """`synthetic_neutral` of neutral meshes against validation = (images, GT meshes[,
  identities]); without identities every mesh is its own identity."""
  gt = validation[1]
  identities = validation[2] if len(validation) > 2 else tuple(range(len(gt)))
  return benchmarks.score_neutral_meshes(flame_model, meshes, gt,
                                         [f"item{i}" for i in range(len(gt))], identities)


def validation_metrics(result, baseline) -> Dict[str, float]:
  """The result's summary and its pooled median over the baseline's: ratio, 95% interval (a
  paired cluster bootstrap over identities) and the sign test."""
  paired = result.compare(baseline)
  return dict(result.summary(), ratio=paired.ratio, ratio_low=paired.low,
              ratio_high=paired.high, identities_better=paired.better, sign_p=paired.sign_p)


def validation_line(results, split) -> str:
  """One line: the model's median against the mean head's, ratio [lo, hi], sign test."""
  m = results["model"]
  return (f"synthetic_neutral on {m['num_identities']} {split} identities: median "
          f"{m['median_mm']:.3f} mm (mean head {results['mean_head']['median_mm']:.3f} mm), "
          f"ratio {m['ratio']:.3f} [{m['ratio_low']:.3f}, {m['ratio_high']:.3f}], "
          f"{m['identities_better']}/{m['num_identities']} identities better "
          f"(sign test p={m['sign_p']:.2g}), alpha {m['alpha']:.3f}, "
          f"from_template_aligned_mm {m['from_template_aligned_mm']:.3f}")


# ---------------------------------------------------------------------------------------------
# The loop.


def train(config, workdir: str, data_iterator: Optional[Iterator] = None,
          validation: Optional[Tuple] = None,
          mesh: Optional[Mesh] = None, flame_model=None, stop_after: Optional[int] = None
          ) -> TrainState:
  """Trains (or resumes) to `config.total_steps`; returns the final state.

  By default the data come from `config.data` (pairs for training, held-out identities for
  validation). Callers may pass `data_iterator` (process-local batches (local_devices,
  per_device_batch, ...) with get_state()/set_state()) and `validation` ((images, gt neutral
  meshes[, identities]), or None to skip validation) instead. `flame_model` overrides the model
  `config` names (tests pass a small one). `stop_after` ends this call after that many steps
  without a final checkpoint, as a killed run would (tests use it).
  """
  mesh = mesh or make_mesh()
  networks = objective.build_networks(config)
  flame_model = flame_model or objective.load_flame_model(config)
  frozen_host = objective.build_frozen(config, flame_model)
  frozen = replicate(frozen_host, mesh)
  optimizer = make_optimizer(config)
  heldout = None
  if data_iterator is None:
    dataset = datasets.open_dataset(config)
    data_iterator = make_data_iterator(config, mesh, dataset)
    synthetic = datasets.synthetic_dataset(config, dataset) if config.eval_every else None
    validation = None if synthetic is None else validation_set(config, synthetic, flame_model)
    video = datasets.video_dataset(dataset) if config.eval_every else None
    if video is not None:
      heldout = heldout_validation.HeldOutPairs.load(networks, config, video)

  manager = checkpoints.open_manager(workdir, config)
  abstract = jax.eval_shape(lambda: init_state(networks, frozen, config, optimizer))
  if manager.latest_step() is not None:
    try:
      state, data_state = checkpoints.restore(manager, abstract, config)
    except checkpoints.LayoutMismatchError:
      manager.close()
      raise
    data_iterator.set_state(data_state)
    logging.info("resumed from step %d", int(state.step))
  else:
    state = jax.jit(lambda: init_state(networks, frozen, config, optimizer))()
    params = objective.init_from_weights(state.params, config)  # config.model_init
    state = state.replace(params=params, opt_state=optimizer.init(params))
  state = replicate(state, mesh)

  train_step = make_train_step(networks, config, optimizer, mesh)
  reanimate = jax.jit(lambda params, frozen, s, t: objective.reanimate(
      networks, params, frozen, config, s, t))
  neutral = jax.jit(functools.partial(predict_neutral, networks))
  writer = MetricWriter(workdir)
  results = {}
  split = scoring.split_label(config.data.eval_split)
  if validation is not None:
    mean_head = score_validation(
        flame_model, np.broadcast_to(np.asarray(flame_model.v_template), validation[1].shape),
        validation)
    results["split"] = split
    results["mean_head"] = mean_head.summary()
    results["ground_truth"] = dict(
        from_template_mm=scoring.distance_from_template_mm(validation[1], flame_model),
        from_template_aligned_mm=float(np.mean(
            [r["truth_from_template_aligned_mm"] for r in mean_head.recovery])))
    if int(state.step) == 0:
      writer.write(0, {f"synthetic_neutral/mean_head/{k}": v
                       for k, v in results["mean_head"].items()})
  stop_requested = []
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
  first_step = int(state.step)
  progress = tqdm.tqdm(total=config.total_steps, initial=first_step, unit="step",
                       disable=jax.process_index() != 0, dynamic_ncols=True)
  last_log = time.time()
  try:
    for step in range(first_step + 1, config.total_steps + 1):
      batch = next(data_iterator)
      state, metrics = train_step(state, frozen, shard_batch(batch, mesh))
      progress.update(1)
      if step % config.log_every == 0 or step == config.total_steps:
        metrics = jax.device_get(metrics)
        now_time = time.time()
        metrics["steps_per_s"] = config.log_every / max(now_time - last_log, 1e-9)
        last_log = now_time
        writer.write(step, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", skipped=int(metrics["skipped_steps"]))
        if metrics["render/pairs_dropped_per_pair"] > 0:
          logging.warning("step %d: the rasteriser dropped %.0f (splat, tile) pairs per image "
                          "over its capacity (%.0f asked for on average); raise "
                          "--config.render.capacity", step,
                          metrics["render/pairs_dropped_per_pair"],
                          metrics["render/pairs_needed_per_pair"])
      if config.preview_every and step % config.preview_every == 0 and jax.process_index() == 0:
        write_preview(workdir, step, reanimate, state, frozen_host, batch, flame_model)
      if validation is not None and (step % config.eval_every == 0
                                     or step == config.total_steps):
        meshes = np.asarray(neutral(state.params, flame_model, jnp.asarray(validation[0])))
        results["model"] = dict(validation_metrics(score_validation(flame_model, meshes,
                                                                    validation), mean_head),
                                step=step)
        writer.write(step, {f"synthetic_neutral/{k}": v for k, v in results["model"].items()
                            if k != "step"})
        logging.info("step %d: %s", step, validation_line(results, split))
      if heldout is not None and (step % config.eval_every == 0 or step == config.total_steps):
        writer.write(step, {f"heldout/{k}": v for k, v in heldout(state.params, frozen).items()})
      if step % config.checkpoint_every == 0 or step == config.total_steps or stop_requested:
        checkpoints.save(manager, state, data_iterator.get_state(), config)
      if stop_requested:
        logging.warning("SIGTERM: saved step %d, exiting", step)
        break
      if stop_after is not None and step - first_step >= stop_after:
        break
    if "model" in results and jax.process_index() == 0:
      with open(os.path.join(workdir, "synthetic_neutral.json"), "w") as f:
        json.dump(results, f, indent=2)
      logging.info("%s", validation_line(results, split))
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    progress.close()
    writer.close()
    manager.close()
  return state


# ---------------------------------------------------------------------------------------------
# Command line.


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (path[:arguments], e.g. configs/base.py:cpu).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, previews.")


def main(argv):
  del argv
  if os.environ.get("SHEAP_JAX_COORDINATOR"):  # several processes: join them first
    jax.distributed.initialize(
        coordinator_address=os.environ["SHEAP_JAX_COORDINATOR"],
        num_processes=int(os.environ["SHEAP_JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["SHEAP_JAX_PROCESS_ID"]))
  try:
    train(_CONFIG.value, _WORKDIR.value)
  except (checkpoints.LayoutMismatchError, datasets.ConfigError) as error:  # a user error:
    # the message, no traceback
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
