"""The training loop, big_vision style: data-parallel over every device of every host,
resumable, validated by the evaluators of `config.evals`.

The workdir holds Orbax checkpoints (`checkpoints/<step>`: train state, data-iterator state,
config; `training/checkpoints.py`), `metrics.jsonl`, TensorBoard events, preview PNGs and one
`<evaluator>.json` per validation evaluator (`evaluation/validation.py`). Rerunning the same
command resumes from the newest checkpoint (refused, with the differing config fields named, if
the config builds another parameter tree); SIGTERM saves one before exiting. The step itself is
`training/trainer.py`; the command line `sheap_jax/train.py`.

This module sits above `sheap_jax.evaluation` (tests/test_layout.py): the loop runs its
evaluators, the rest of `training/` does not.
"""
import functools
import json
import os
import signal
import time
from typing import Dict, Iterator, Optional

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
from PIL import Image
import tqdm

from data import datasets
from data import pairs
from sheap_jax.evaluation import heldout as heldout_validation
from sheap_jax.evaluation import validation as validation_lib
from sheap_jax.inference import checkpoint_predictor
from sheap_jax.training import checkpoints
from sheap_jax.training import objective
from sheap_jax.training import previews
from sheap_jax.training import trainer
from sheap_jax.training.trainer import TrainState


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
# Validation: the evaluators of `config.evals` on the model's predictor, and the held-out pairs.


def open_validation(config, dataset, flame_model, workdir
                    ) -> Optional[validation_lib.Validation]:
  """`config.evals` on the synthetic dataset of the training data (`datasets.synthetic_dataset`:
  the training data when synthetic, else `config.data.synthetic_eval`), or None."""
  synthetic = datasets.synthetic_dataset(config, dataset)
  split = None if synthetic is None else functools.partial(pairs.open_split, synthetic)
  return validation_lib.Validation.from_config(config, flame_model, split, workdir)


def make_predictor(networks, config):
  """(params, frozen) -> `predictors.Predictor` of the model being trained: what
  `checkpoint_predictor` does with a saved checkpoint, on the live parameters."""
  predict = jax.jit(functools.partial(checkpoint_predictor.predict, networks, config=config))
  return lambda params, frozen: (
      lambda images, examples: predict(params, frozen=frozen, images=jnp.asarray(images)).flame)


# ---------------------------------------------------------------------------------------------
# The loop.


def train(config, workdir: str, data_iterator: Optional[Iterator] = None,
          validation: Optional[validation_lib.Validation] = None,
          mesh: Optional[Mesh] = None, flame_model=None, stop_after: Optional[int] = None
          ) -> TrainState:
  """Trains (or resumes) to `config.total_steps`; returns the final state.

  By default the data come from `config.data` (pairs for training; `config.evals` validates on
  the synthetic data, held-out clips of video_folder data give `heldout/...`). Callers may pass
  `data_iterator` (process-local batches (local_devices, per_device_batch, ...) with
  get_state()/set_state()) and `validation` (`validation.Validation`, or None to skip
  validation) instead. `flame_model` overrides the model
  `config` names (tests pass a small one). `stop_after` ends this call after that many steps
  without a final checkpoint, as a killed run would (tests use it).
  """
  mesh = mesh or trainer.make_mesh()
  networks = objective.build_networks(config)
  flame_model = flame_model or objective.load_flame_model(config)
  frozen_host = objective.build_frozen(config, flame_model)
  frozen = trainer.replicate(frozen_host, mesh)
  optimizer = trainer.make_optimizer(config)
  heldout = None
  if data_iterator is None:
    dataset = datasets.open_dataset(config)
    data_iterator = trainer.make_data_iterator(config, mesh, dataset)
    if config.eval_every:
      validation = open_validation(config, dataset, flame_model, workdir)
    video = datasets.video_dataset(dataset) if config.eval_every else None
    if video is not None:
      heldout = heldout_validation.HeldOutPairs.load(networks, config, video)

  manager = checkpoints.open_manager(workdir, config)
  abstract = jax.eval_shape(lambda: trainer.init_state(networks, frozen, config, optimizer))
  if manager.latest_step() is not None:
    try:
      state, data_state = checkpoints.restore(manager, abstract, config)
    except checkpoints.LayoutMismatchError:
      manager.close()
      raise
    data_iterator.set_state(data_state)
    logging.info("resumed from step %d", int(state.step))
  else:
    state = jax.jit(lambda: trainer.init_state(networks, frozen, config, optimizer))()
    params = objective.init_from_weights(state.params, config)  # config.model_init
    state = state.replace(params=params, opt_state=optimizer.init(params))
  state = trainer.replicate(state, mesh)

  train_step = trainer.make_train_step(networks, config, optimizer, mesh)
  reanimate = jax.jit(lambda params, frozen, s, t: objective.reanimate(
      networks, params, frozen, config, s, t))
  predictor = make_predictor(networks, config)
  writer = MetricWriter(workdir)
  if validation is not None and int(state.step) == 0:
    writer.write(0, validation.baseline_metrics())
  stop_requested = []
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
  first_step = int(state.step)
  progress = tqdm.tqdm(total=config.total_steps, initial=first_step, unit="step",
                       disable=jax.process_index() != 0, dynamic_ncols=True)
  last_log = time.time()
  try:
    for step in range(first_step + 1, config.total_steps + 1):
      batch = next(data_iterator)
      state, metrics = train_step(state, frozen, trainer.shard_batch(batch, mesh))
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
      evaluate = config.eval_every and (step % config.eval_every == 0
                                        or step == config.total_steps)
      if validation is not None and evaluate:
        writer.write(step, validation(predictor(state.params, frozen), step))
      if heldout is not None and evaluate:
        writer.write(step, {f"heldout/{k}": v for k, v in heldout(state.params, frozen).items()})
      if step % config.checkpoint_every == 0 or step == config.total_steps or stop_requested:
        checkpoints.save(manager, state, data_iterator.get_state(), config)
      if stop_requested:
        logging.warning("SIGTERM: saved step %d, exiting", step)
        break
      if stop_after is not None and step - first_step >= stop_after:
        break
    if validation is not None and jax.process_index() == 0:
      validation.write(workdir)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    progress.close()
    writer.close()
    manager.close()
  return state
