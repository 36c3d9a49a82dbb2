"""Fits the FLAME-rigged Gaussian head to one video with the training objective, no network.

Each step renders a set of the video's frames (`config.fit.frames_per_step`, 0: all) from the
free variables (`variables.py`) through `objective.render_target` and `objective.draw_gaussians`
(the same rig, camera, shading and rasteriser as training) and scores them with
`objective.per_pair_losses` (the loss registry, `config.losses`); one Adam per variable group
(`optimizer.py`) takes the step. A step whose loss or gradient is not finite is skipped.

The workdir holds `metrics.jsonl` (every `config.fit.log_every` steps: the loss, every term,
the render counters and, when the caller gives a scorer, its scores), `state.msgpack` (every
`checkpoint_every` steps: rerunning resumes from it), and at the end `outputs.py`'s files and
`fit.json`, whose presence makes a rerun skip the finished fit.
"""
import functools
import json
import os
import time
from typing import Callable, Dict, Optional

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sheap_jax.fitting import optimizer as optimizer_lib
from sheap_jax.fitting import outputs
from sheap_jax.fitting import variables as variables_lib
from sheap_jax.head import flame as flame_lib
from sheap_jax.training import objective
from sheap_jax.training import renderers

_FILE = "sheap_jax/fitting/fitter.py"
STATE_FILE = "state.msgpack"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "fit.json"
# Scores of the current variables (e.g. against ground truth, by the entry point): a flat
# {name: float}.
Scorer = Callable[[Dict], Dict[str, float]]


def build_frozen(config, flame_model: flame_lib.FlameModel) -> objective.Frozen:
  """The head and the triangles that carry Gaussians; no DINOv2 (no network, no perceptual)."""
  if config.renderer != "gaussians":
    raise ValueError(f"{_FILE}: fitting draws Gaussians (config.renderer='gaussians'), got "
                     f"{config.renderer!r}")
  topology = renderers.get(config.renderer).build_topology(config, flame_model)
  return objective.Frozen(flame=flame_model, dinov2=None, **topology)


def reanimate(config, frozen, variables, frames: Dict[str, jnp.ndarray], frame_ids
              ) -> objective.Reanimation:
  """The render of frames `frame_ids` (B,) from the variables (`frames`: the clip's inputs)."""
  source, target = variables_lib.predictions(variables, frame_ids)
  local = variables_lib.local_gaussians(variables, frame_ids.shape[0])
  draw = functools.partial(objective.draw_gaussians, config, frozen, local)
  return objective.render_target(frozen, config, source, target,
                                 frames["target_image"][frame_ids], draw)


def frame_losses(config, frozen, variables, frames, frame_ids):
  """(mean loss, ({term: mean}, {render counter: mean})) over the frames `frame_ids`."""
  out = reanimate(config, frozen, variables, frames, frame_ids)
  batch = {key: value[frame_ids] for key, value in frames.items()}
  totals, terms = objective.per_pair_losses(config, objective.render_loss_context(
      config, batch, out))
  counters = dict(pairs_dropped=out.render.pairs_dropped, pairs_needed=out.render.pairs_needed)
  return jnp.mean(totals), (jax.tree.map(jnp.mean, terms), jax.tree.map(
      lambda c: jnp.mean(c.astype(jnp.float32)), counters))


def make_step(config, frozen, optimizer):
  """jit((state, frames, frame_ids) -> (state, metrics))."""
  @jax.jit
  def step(state, frames, frame_ids):
    (loss, (terms, counters)), grads = jax.value_and_grad(
        lambda v: frame_losses(config, frozen, v, frames, frame_ids), has_aux=True
    )(state["variables"])
    grad_norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["variables"])
    new = jax.tree.map(lambda a, b: a + b, state["variables"], updates)
    keep = lambda n, o: jax.tree.map(lambda x, y: jnp.where(finite, x, y), n, o)
    state = dict(step=state["step"] + 1, variables=keep(new, state["variables"]),
                 opt_state=keep(opt_state, state["opt_state"]),
                 skipped=state["skipped"] + (~finite).astype(jnp.int32))
    metrics = dict(loss=loss, grad_norm=grad_norm, skipped_steps=state["skipped"],
                   **{f"loss/{k}": v for k, v in terms.items()},
                   **{f"render/{k}": v for k, v in counters.items()})
    return state, metrics
  return step


def _frame_ids(config, step: int, num_frames: int) -> jnp.ndarray:
  """The frames of one step: all, or `frames_per_step` drawn without replacement (seeded)."""
  count = config.fit.frames_per_step
  if not count or count >= num_frames:
    return jnp.arange(num_frames)
  rng = np.random.default_rng([config.seed, step])
  return jnp.asarray(np.sort(rng.choice(num_frames, count, replace=False)))


def _resume(workdir: str, state):
  """The saved state when the workdir holds one (metrics lines after it are dropped)."""
  path = os.path.join(workdir, STATE_FILE)
  if not os.path.isfile(path):
    return state
  with open(path, "rb") as f:
    state = serialization.from_bytes(state, f.read())
  step = int(state["step"])
  metrics = os.path.join(workdir, METRICS_FILE)
  if os.path.isfile(metrics):
    with open(metrics) as f:
      kept = [line for line in f if json.loads(line)["step"] <= step]
    with open(metrics, "w") as f:
      f.writelines(kept)
  return state


def _save(workdir: str, state) -> None:
  path = os.path.join(workdir, STATE_FILE)
  with open(path + ".tmp", "wb") as f:
    f.write(serialization.to_bytes(jax.device_get(state)))
  os.replace(path + ".tmp", path)


def finished(workdir: str) -> Optional[dict]:
  """The summary of a finished fit in `workdir`, or None."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def fit(config, frames: Dict[str, np.ndarray], workdir: str, flame_model: flame_lib.FlameModel,
        scorer: Optional[Scorer] = None, initial: Optional[flame_lib.FlameParams] = None,
        about: Optional[dict] = None) -> dict:
  """Fits one clip (`clip.load_clip`'s frames) in `workdir`; returns the summary written to
  `fit.json` (`about` is copied into it: what was fitted, how it was initialised). A finished
  fit is returned as it is; a started one resumes."""
  done = finished(workdir)
  if done is not None:
    return done
  os.makedirs(workdir, exist_ok=True)
  frozen = build_frozen(config, flame_model)
  frames = {key: jnp.asarray(value) for key, value in frames.items()}
  num_frames = frames["target_image"].shape[0]
  variables = variables_lib.init_variables(
      num_frames, frozen.splat_faces.shape[0], config.regressor.gaussians_per_face,
      config.flame.n_shape, config.flame.n_expression, initial)
  optimizer = optimizer_lib.make_optimizer(config, variables)
  state = dict(step=jnp.int32(0), variables=variables, opt_state=optimizer.init(variables),
               skipped=jnp.int32(0))
  state = _resume(workdir, state)
  step_fn = make_step(config, frozen, optimizer)
  total = config.fit.steps
  started, first = time.time(), int(state["step"])
  with open(os.path.join(workdir, METRICS_FILE), "a") as log, \
      tqdm.tqdm(total=total, initial=first, desc="fit", unit="step", disable=None) as progress:
    for step in range(first, total):
      state, metrics = step_fn(state, frames, _frame_ids(config, step, num_frames))
      done_steps = step + 1
      if done_steps % config.fit.log_every == 0 or done_steps == total:
        line = {"step": done_steps, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
        if scorer is not None and (done_steps % config.fit.score_every == 0
                                   or done_steps == total):
          line.update(scorer(jax.device_get(state["variables"])))
        log.write(json.dumps(line) + "\n")
        log.flush()
        progress.set_postfix(loss=f"{line['loss']:.4f}")
      if done_steps % config.fit.checkpoint_every == 0 and done_steps != total:
        _save(workdir, state)
      progress.update(1)
  wall = time.time() - started
  variables = jax.device_get(state["variables"])
  last = jax.jit(functools.partial(reanimate, config, frozen))(variables, frames,
                                                                jnp.arange(num_frames))
  files = outputs.write_outputs(workdir, config, frozen, variables, last)
  summary = dict(about or {}, steps=total, frames=num_frames,
                 wall_seconds_this_run=round(wall, 1), resumed_from_step=first,
                 skipped_steps=int(state["skipped"]), files=files,
                 final=_last_metrics(workdir), config=json.loads(config.to_json()))
  _save(workdir, state)
  with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def _last_metrics(workdir: str) -> dict:
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return lines[-1] if lines else {}
