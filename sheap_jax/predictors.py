"""Predictors the benchmarks score: anything that maps head images to FLAME parameters.

A predictor is a callable `(images, examples) -> flame.FlameParams`:
- `images` (B, H, W, 3) float32 in [0, 1], the head crops (synthetic frames as stored, NoW
  images cropped around their face box);
- `examples` a dict of batched per-item arrays. Synthetic items carry their ground truth under
  `gt_<FlameParams field>` keys (`gt_shape`, `gt_jaw_pose`, ...); only `oracle` may read them.

Built in: `mean_head` (all parameters zero: the template head, the floor any learnt predictor
must beat) and `oracle` (the ground-truth parameters: checks the benchmark itself, it must score
about zero). `get_predictor("checkpoint:DIR")` loads a trained model through
`sheap_jax.checkpoint_predictor.load(DIR)`, a module the training code provides.
"""
import dataclasses
import importlib
import importlib.util
from typing import Callable

import jax.numpy as jnp

from sheap_jax import flame

Predictor = Callable[[jnp.ndarray, dict], flame.FlameParams]
GROUND_TRUTH_PREFIX = "gt_"
CHECKPOINT_PREFIX = "checkpoint:"
CHECKPOINT_MODULE = "sheap_jax.checkpoint_predictor"


def mean_head(images, examples):
  """The template head: zero shape, expression, poses, eyelids and translation."""
  del examples
  return flame.FlameParams.zeros(images.shape[0])


def oracle(images, examples):
  """The ground-truth parameters of each item (`gt_<field>` for every FlameParams field)."""
  del images
  fields = [f.name for f in dataclasses.fields(flame.FlameParams)]
  missing = [GROUND_TRUTH_PREFIX + f for f in fields if GROUND_TRUTH_PREFIX + f not in examples]
  if missing:
    raise ValueError(f"the oracle predictor needs ground-truth FLAME parameters, but the items "
                     f"lack {missing}: it only runs on the synthetic benchmarks")
  return flame.FlameParams(**{f: jnp.asarray(examples[GROUND_TRUTH_PREFIX + f], jnp.float32)
                              for f in fields})


BUILT_IN = {"mean_head": mean_head, "oracle": oracle}


def load_checkpoint_predictor(directory):
  """The predictor of a training checkpoint, via `sheap_jax.checkpoint_predictor.load`."""
  if importlib.util.find_spec(CHECKPOINT_MODULE) is None:
    raise ValueError(f"cannot load checkpoint {directory!r}: {CHECKPOINT_MODULE} is not available "
                     "in this version (checkpoint predictors arrive with the training code); "
                     f"built-in predictors: {sorted(BUILT_IN)}")
  return importlib.import_module(CHECKPOINT_MODULE).load(directory)


def get_predictor(spec: str) -> Predictor:
  """A built-in predictor by name, or `checkpoint:DIR`."""
  if spec.startswith(CHECKPOINT_PREFIX):
    return load_checkpoint_predictor(spec[len(CHECKPOINT_PREFIX):])
  if spec not in BUILT_IN:
    raise ValueError(f"unknown predictor {spec!r}: expected one of {sorted(BUILT_IN)} or "
                     f"'{CHECKPOINT_PREFIX}DIR'")
  return BUILT_IN[spec]
