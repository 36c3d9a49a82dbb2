"""Validation without ground truth: reanimation of held-out clips.

For a fixed set of (source, target) pairs of the held-out clips (`config.data.eval_split` of
the training's video_folder data; no augmentation, the same pairs at every evaluation), the
model reanimates each target from its source, as in training, and two errors are measured:

- `landmark_error`: mean distance between the detected landmarks and the projected FLAME
  landmarks of the matching embedding (`objective.matching_landmarks`), over the valid points,
  in units of the crop side (0.01 = 2.24 px at 224);
- `photometric_l1`: mean |render - target| over all pixels and channels, colours in [0, 1].

Neither reads a `gt_*` field: real footage has none.
"""
import functools
from typing import Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from sheap_jax.training import objective

CHUNK = 8  # pairs reanimated at once


def _pair_errors(networks, config, params, frozen, batch):
  """(landmark error (B,), photometric L1 (B,)) of one chunk of pairs."""
  out = objective.reanimate(networks, params, frozen, config, batch["source_image"],
                            batch["target_image"])
  size = config.render.size
  context = objective.loss_context(networks, frozen, config, batch, out)
  distance = jnp.linalg.norm(context.landmarks - context.landmarks_target, axis=-1) / size
  valid = batch["target_landmarks_valid"].astype(jnp.float32)
  landmark = jnp.sum(distance * valid, -1) / jnp.maximum(jnp.sum(valid, -1), 1.0)
  photometric = jnp.mean(jnp.abs(out.render.color - out.image), axis=(1, 2, 3))
  return landmark, photometric, jnp.sum(valid, -1)


class HeldOutPairs:
  """The held-out pairs, loaded once, and their errors under given parameters."""

  def __init__(self, networks, config, batch: Dict[str, np.ndarray]):
    self._config = config
    self._batch = batch
    self._errors = jax.jit(functools.partial(_pair_errors, networks, config))

  @property
  def num_pairs(self) -> int:
    return len(self._batch["source_image"])

  @classmethod
  def load(cls, networks, config, dataset) -> Optional["HeldOutPairs"]:
    """Pairs of `dataset`'s `config.data.eval_split` (at most `config.data.eval_pairs`, a multiple
    of CHUNK when there are more), or None with a log line when it has no such split."""
    from data import pairs  # pylint: disable=import-outside-toplevel
    split = config.data.eval_split
    if split not in dataset.info.splits:
      logging.warning("held-out validation skipped: %s has no %r split (build it with "
                      "`python -m data.video_folder ... --validation_every K`)",
                      dataset.info.full_name, split)
      return None
    count = min(config.data.eval_pairs, dataset.info.splits[split].num_examples)
    if count > CHUNK:
      count -= count % CHUNK
    iterator = pairs.make_pair_iterator(
        dataset, split=split, global_batch_size=count, seed=config.seed,
        max_gap=config.data.max_gap, augment=False, image_size=config.model.image_size,
        num_epochs=None, shuffle=False, num_threads=1, shard_index=0, shard_count=1,
        num_local_devices=1)
    batch = {k: np.asarray(v)[0] for k, v in next(iterator).items()
             if k in ("source_image", "target_image", "target_landmarks",
                      "target_landmarks_valid", "target_landmarks_3d")}
    return cls(networks, config, batch)

  def __call__(self, params, frozen) -> Dict[str, float]:
    landmark, photometric, points = [], [], []
    size = min(CHUNK, self.num_pairs)
    for start in range(0, self.num_pairs, size):
      chunk = {k: jnp.asarray(v[start:start + size]) for k, v in self._batch.items()}
      errors = jax.device_get(self._errors(params, frozen, chunk))
      landmark.append(errors[0])
      photometric.append(errors[1])
      points.append(errors[2])
    landmark, points = np.concatenate(landmark), np.concatenate(points)
    with_points = points > 0
    return {"landmark_error": float(np.mean(landmark[with_points])) if with_points.any()
            else float("nan"),
            "photometric_l1": float(np.mean(np.concatenate(photometric))),
            "pairs": float(self.num_pairs)}
