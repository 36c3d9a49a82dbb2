"""Checkpoints: save/restore round trips (train state, Grain-style bytes and JSON data states,
keep-N), the params-only restore, and the refusal to resume under another parameter layout - a
real tiny Gaussians run resumed with the mesh renderer must fail before Orbax reads an array,
name the differing fields, and leave the checkpoint intact."""
import hashlib
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sheap_jax.training import checkpoints
from sheap_jax.head import flame_io
from sheap_jax.training import loop
from sheap_jax.training import trainer
from tests.test_objective import small_flame_assets, small_flame_model
from tests.test_train import PER_DEVICE, PairBatches, sgd_config


def toy_state(rng, shape=(3, 4), step=3):
  """A TrainState of random arrays under AdamW (what the train loop saves, in miniature)."""
  params = {"layer": {"kernel": jnp.asarray(rng.standard_normal(shape), jnp.float32)},
            "bias": jnp.asarray(rng.standard_normal(shape[-1:]), jnp.float32)}
  opt_state = optax.adamw(1e-3).init(params)
  opt_state = jax.tree.map(lambda x: x + jnp.asarray(rng.random(x.shape), x.dtype), opt_state)
  return trainer.TrainState(step=jnp.int32(step), params=params, opt_state=opt_state,
                          skipped_steps=jnp.int32(rng.integers(5)))


def tree_bytes(directory):
  """{relative path: sha256} of every file under `directory`."""
  digests = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digests


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_state_data_state_and_config(tmp_path):
  rng = np.random.default_rng(0)
  config = ml_collections.ConfigDict(dict(keep_checkpoints=2, renderer="gaussians",
                                          model=dict(size="tiny", image_size=32)))
  manager = checkpoints.open_manager(str(tmp_path), config)
  states = [toy_state(rng, step=step) for step in (1, 2, 3)]
  grain_state = bytes(rng.integers(0, 256, 40, dtype=np.uint8))  # Grain: opaque bytes
  for state, data_state in zip(states, [{"index": 1}, {"index": 2}, grain_state]):
    checkpoints.save(manager, state, data_state, config)
  checkpoints.save(manager, states[2].replace(skipped_steps=jnp.int32(99)), {}, config)  # once
  abstract = jax.eval_shape(lambda: states[0])
  assert manager.all_steps() == [2, 3]  # keep_checkpoints
  restored, data_state = checkpoints.restore(manager, abstract, config)
  assert data_state == grain_state
  assert_trees_equal(restored, states[2])
  restored, data_state = checkpoints.restore(manager, abstract, config, step=2)
  assert data_state == {"index": 2}
  assert_trees_equal(restored, states[1])
  manager.close()

  assert checkpoints.load_config(str(tmp_path)).to_dict() == {
      "keep_checkpoints": 2, "renderer": "gaussians", "model": {"size": "tiny", "image_size": 32}}
  params, step = checkpoints.restore_params(str(tmp_path), abstract.params, config, step=2)
  assert step == 2
  assert_trees_equal(params, states[1].params)
  with pytest.raises(FileNotFoundError, match=re.escape(f"under {tmp_path / 'checkpoints'}")):
    checkpoints.load_config(str(tmp_path), step=1)
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    checkpoints.load_config(str(tmp_path / "empty"))


def test_a_changed_tree_with_the_same_config_blames_the_code(tmp_path):
  rng = np.random.default_rng(1)
  config = ml_collections.ConfigDict(dict(keep_checkpoints=1, renderer="gaussians"))
  manager = checkpoints.open_manager(str(tmp_path), config)
  checkpoints.save(manager, toy_state(rng), {"index": 0}, config)
  other = jax.eval_shape(lambda: toy_state(rng, shape=(5, 4)))
  where = re.escape(str(tmp_path / "checkpoints" / "3"))
  with pytest.raises(checkpoints.LayoutMismatchError, match=where) as error:
    checkpoints.restore(manager, other, config)
  message = str(error.value)
  assert "params/layer/kernel: stored (3, 4) float32, given (5, 4) float32" in message
  assert "3 arrays differ" in message  # the kernel and its two Adam moments
  assert "the code that builds the networks changed" in message
  with pytest.raises(checkpoints.LayoutMismatchError, match="1 arrays differ"):
    checkpoints.restore_params(str(tmp_path), other.params, config)
  manager.close()


def test_resuming_a_gaussians_run_with_the_mesh_renderer_is_refused(tmp_path):
  model = small_flame_model()
  gaussians_config = sgd_config()
  workdir = str(tmp_path / "run")
  with pytest.warns(UserWarning, match="random initialisation"):  # DINOv2
    state = loop.train(gaussians_config, workdir, PairBatches(4, PER_DEVICE),
                        flame_model=model, stop_after=2)  # checkpoint_every = 2: saved at 2
  saved = tree_bytes(workdir + "/checkpoints")
  assert int(state.step) == 2 and "2/state/_METADATA" in saved

  head = str(tmp_path / "head_with_uvs.npz")
  flame_io.save_flame(head, small_flame_assets(outward_winding=True))
  mesh_config = sgd_config()
  mesh_config.renderer = "mesh"
  mesh_config.flame_path = head
  with pytest.warns(UserWarning, match="random initialisation"):
    with pytest.raises(checkpoints.LayoutMismatchError) as error:
      loop.train(mesh_config, workdir, PairBatches(4, PER_DEVICE))
  message = str(error.value)
  assert os.path.join(workdir, "checkpoints", "2") in message
  assert "renderer: 'gaussians' vs 'mesh'" in message
  assert "fresh --workdir" in message and "--config.renderer=gaussians" in message
  assert re.search(r"params/albedo/\S+: stored absent, given \(", message)  # first in order
  assert "flame_path" not in message  # not a layout field: the tree does not depend on it

  # Untouched: same files, same bytes, and the stored run restores under its own config.
  assert tree_bytes(workdir + "/checkpoints") == saved
  params, step = checkpoints.restore_params(workdir, state.params, gaussians_config)
  assert step == 2
  assert_trees_equal(params, jax.device_get(state.params))
  with pytest.raises(checkpoints.LayoutMismatchError, match="renderer: 'gaussians' vs 'mesh'"):
    checkpoints.restore_params(workdir, {"albedo": {}, "predictor": state.params["predictor"]},
                               mesh_config)
