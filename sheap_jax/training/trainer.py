"""The data-parallel train step: state, optimiser, device mesh, batch sharding, data iterator.

The step is written per device (pmap semantics: a `data` axis, `lax.pmean` of gradients) and
run with `jax.shard_map` over a one-axis mesh of all devices. The loss is a mean over pairs, so
1 and N devices give the same update. A step whose gradient or loss is not finite leaves the
parameters and optimiser state unchanged and is counted in `skipped_steps`. The loop that runs
it is `training/loop.py`.
"""
import functools
from typing import Any, Callable, Dict

from flax import struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax

from data import pairs
from sheap_jax.training import objective

_FILE = "sheap_jax/training/trainer.py"
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
