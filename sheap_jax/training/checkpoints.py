"""Training checkpoints: what a run needs to resume, and what prediction needs to rebuild it.

`workdir/checkpoints/<step>` (an Orbax `CheckpointManager`) holds three items: `state` (the
train state pytree: step, params, optimiser state, ...), `data` (the data iterator's state as
JSON) and `config` (the run's config as JSON). The stored config makes each checkpoint
self-describing: `load_config` rebuilds the networks without the training code, and `restore`
compares the stored parameter/optimiser tree with the one the current config builds before it
reads any array. So a workdir resumed under another renderer, model size or optimiser fails
with one message naming the differing config fields, not deep inside Orbax, and the checkpoint
stays as it was.
"""
import base64
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

_FILE = "sheap_jax/training/checkpoints.py"
# Config fields that shape the parameter / optimiser tree (measured: each changes the train
# state's tree or an array shape). Others - learning rate, losses, remat, bfloat16, DINOv2's
# input size, data - may change between runs of one workdir.
LAYOUT_FIELDS = ("renderer", "flame.n_shape", "flame.n_expression", "model.size",
                 "model.image_size", "model.identity_dim", "model.shape_source",
                 "model.output_tokens", "regressor.width", "regressor.depth",
                 "regressor.num_heads", "regressor.gaussians_per_face", "albedo",
                 "dinov2.variant", "dinov2.arch", "optimizer.name")
_SHOWN_ARRAYS = 3  # differing arrays quoted in a layout error


class LayoutMismatchError(ValueError):
  """A checkpoint's parameter / optimiser tree differs from the one the given config builds."""


def checkpoints_dir(workdir: str) -> str:
  """`workdir/checkpoints`, absolute."""
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


def open_manager(workdir: str, config) -> ocp.CheckpointManager:
  """The run's checkpoint manager: keeps the newest `config.keep_checkpoints`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
  return ocp.CheckpointManager(checkpoints_dir(workdir), options=options)


def _data_state_to_json(data_state):
  """Iterator states as JSON: Grain's are bytes (kept base64-encoded), others plain JSON."""
  if isinstance(data_state, bytes):
    return {"base64": base64.b64encode(data_state).decode("ascii")}
  return {"json": data_state}


def _data_state_from_json(stored):
  return base64.b64decode(stored["base64"]) if "base64" in stored else stored["json"]


def save(manager: ocp.CheckpointManager, state, data_state, config) -> None:
  """Saves (state, data-iterator state, config) as step `state.step` (once) and waits."""
  step = int(state.step)
  if step in manager.all_steps():
    return
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(_data_state_to_json(data_state)),
      config=ocp.args.JsonSave(config.to_dict())))
  manager.wait_until_finished()


def _read_config(directory: str, step: int) -> ml_collections.ConfigDict:
  manager = ocp.CheckpointManager(directory)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return ml_collections.ConfigDict(restored["config"])


def _latest_step(directory: str, step: Optional[int]) -> int:
  steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(f"{_FILE}: no checkpoint under {directory}")
  if step is None:
    return max(steps)
  if step not in steps:
    raise FileNotFoundError(f"{_FILE}: no checkpoint of step {step} under {directory} (has "
                            f"{sorted(steps)})")
  return step


def load_config(workdir: str, step: Optional[int] = None) -> ml_collections.ConfigDict:
  """The config a workdir's checkpoint (default: the newest) was trained with."""
  directory = checkpoints_dir(workdir)
  return _read_config(directory, _latest_step(directory, step))


def _flat_config(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{"a.b": leaf}; tuples as lists, as the stored JSON has them."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict) and value:
      flat.update(_flat_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = json.loads(json.dumps(value))
  return flat


def _layout_field_differences(stored, given) -> Dict[str, Tuple[Any, Any]]:
  """{field: (stored value, given value)} over `LAYOUT_FIELDS` ("<absent>" where a config
  lacks the field)."""
  stored, given = _flat_config(stored.to_dict()), _flat_config(given.to_dict())
  differences = {}
  for key in sorted(set(stored) | set(given)):
    if not any(key == field or key.startswith(field + ".") for field in LAYOUT_FIELDS):
      continue
    old, new = stored.get(key, "<absent>"), given.get(key, "<absent>")
    if old != new:
      differences[key] = (old, new)
  return differences


def _key_name(key) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _array_specs(tree) -> Dict[str, Tuple[Tuple[int, ...], str]]:
  """{"params/predictor/...": (shape, dtype)} of a tree of arrays, abstract arrays or Orbax
  array metadata (whose optimiser containers are dicts and lists: only key names compare)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
          for path, leaf in leaves}


def _array_differences(stored, expected) -> List[str]:
  describe = lambda spec: "absent" if spec is None else f"{spec[0]} {spec[1]}"
  return [f"{path}: stored {describe(stored.get(path))}, given {describe(expected.get(path))}"
          for path in sorted(set(stored) | set(expected)) if stored.get(path) != expected.get(path)]


def _stored_tree(directory: str, step: int):
  """The metadata (shapes, dtypes) of a checkpoint's `state` item, read without its arrays."""
  path = epath.Path(directory) / str(step) / "state"
  return ocp.PyTreeCheckpointHandler().metadata(path).tree


def _flag(key: str, value) -> str:
  return f"--config.{key}={value if isinstance(value, str) else json.dumps(value)}"


def check_layout(directory: str, step: int, config, abstract, subtree: Optional[str] = None
                 ) -> None:
  """Raises `LayoutMismatchError` unless checkpoint `step`'s state (or its `subtree`) has the
  arrays of `abstract` (paths, shapes, dtypes): the message names the directory, the layout
  fields where the stored config and `config` differ, a few differing arrays and the two ways
  out. Reads only metadata and the stored config."""
  stored = _stored_tree(directory, step)
  if subtree is not None:
    stored = stored.get(subtree, {})
  arrays = _array_differences(_array_specs(stored), _array_specs(abstract))
  if not arrays:
    return
  fields = _layout_field_differences(_read_config(directory, step), config)
  if fields:
    cause = "it was trained with other values of these config fields (stored vs given): " + (
        "; ".join(f"{key}: {old!r} vs {new!r}" for key, (old, new) in fields.items()))
    flags = " ".join(_flag(key, old) for key, (old, new) in fields.items()
                     if old != "<absent>" and new != "<absent>")
    remedy = (f"use a fresh --workdir, or rerun with the stored values"
              f"{' (' + flags + ')' if flags else ''}")
  else:
    cause = ("no config field that shapes the parameters differs, so the code that builds the "
             "networks changed since it was saved")
    remedy = "use a fresh --workdir, or the code the checkpoint was trained with"
  shown = "; ".join(arrays[:_SHOWN_ARRAYS]) + ("; ..." if len(arrays) > _SHOWN_ARRAYS else "")
  raise LayoutMismatchError(
      f"{_FILE}: cannot restore the checkpoint {os.path.join(directory, str(step))}: {cause}. "
      f"Its parameter/optimiser tree differs from the one this config builds ({len(arrays)} "
      f"arrays differ: {shown}). To go on, {remedy}. The checkpoint was left unchanged.")


def restore(manager: ocp.CheckpointManager, abstract_state, config, step: Optional[int] = None
            ) -> Tuple[Any, Any]:
  """(state, data-iterator state) of `step` (default: the newest), after `check_layout`
  against `abstract_state` (the state `config` builds, e.g. from `jax.eval_shape`)."""
  step = manager.latest_step() if step is None else step
  directory = str(manager.directory)
  check_layout(directory, step, config, abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], _data_state_from_json(restored["data"])


def restore_params(workdir: str, abstract_params, config, step: Optional[int] = None
                   ) -> Tuple[Any, int]:
  """(params on the default device, step) of a workdir's checkpoint (default: the newest):
  only the train state's `params` subtree is read (Orbax partial restore), so prediction needs
  no optimiser. `abstract_params` is what `config` builds (`objective.init_params` under
  `jax.eval_shape`)."""
  directory = checkpoints_dir(workdir)
  step = _latest_step(directory, step)
  check_layout(directory, step, config, abstract_params, subtree="params")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"params": jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params)}
  manager = ocp.CheckpointManager(directory)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
  finally:
    manager.close()
  return restored["state"]["params"], step
