"""Predictors the benchmarks score: anything that maps head images to FLAME parameters.

A predictor is a callable `(images, examples) -> flame.FlameParams`:
- `images` (B, H, W, 3) float32 in [0, 1], the head crops (synthetic frames as stored, NoW
  images cropped around their face box);
- `examples` a dict of batched per-item arrays. Synthetic items carry their ground truth under
  `gt_<FlameParams field>` keys (`gt_shape`, `gt_jaw_pose`, ...); only `oracle` may read them.

Built in: `mean_head` (all parameters zero: the template head, the floor any learnt predictor
must beat) and `oracle` (the ground-truth parameters: checks the benchmark itself, it must score
about zero). Calibration predictors, the reference lines scores are quoted against ("scores
like oracle_scaled:0.5"), change only the true shape and keep the true pose, expression,
eyelids and translation:
- `oracle_scaled:A`: the true shape times A (A = 0 is the mean head's neutral geometry);
- `oracle_noise:S`: the true shape plus N(0, S^2) per coefficient, drawn per identity (the
  same offset on every frame of a video) from a generator seeded by (NOISE_SEED, video id), so
  it does not depend on batching or on which frames are scored;
- `oracle_truncated:K`: the true shape's first K coefficients, the rest zero: the best a
  K-component shape model can do.
`get_predictor("checkpoint:DIR")` loads a trained model through
`sheap_jax.inference.checkpoint_predictor.load(DIR)`, a module the training code provides.
"""
import dataclasses
import functools
import importlib
import importlib.util
from typing import Callable

import jax.numpy as jnp
import numpy as np

from sheap_jax.head import flame

Predictor = Callable[[jnp.ndarray, dict], flame.FlameParams]
GROUND_TRUTH_PREFIX = "gt_"
CHECKPOINT_PREFIX = "checkpoint:"
CHECKPOINT_MODULE = "sheap_jax.inference.checkpoint_predictor"
NOISE_SEED = 0


def mean_head(images, examples):
  """The template head: zero shape, expression, poses, eyelids and translation."""
  del examples
  return flame.FlameParams.zeros(images.shape[0])


def mean_head_of(model) -> Predictor:
  """`mean_head` with `model`'s coefficient counts (FLAME's 300/100 by default; a small model
  keeps fewer), for models other than the built-in head."""
  sizes = dict(n_shape=model.shapedirs.shape[-1], n_expr=model.exprdirs.shape[-1])
  return lambda images, examples: flame.FlameParams.zeros(images.shape[0], **sizes)


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


def _with_shape(examples, shape_of):
  """The oracle's parameters with the shape replaced by shape_of(true shape (B, S) float32)."""
  params = oracle(None, examples)
  return params.replace(shape=jnp.asarray(shape_of(np.asarray(params.shape)), jnp.float32))


def oracle_scaled(factor, images, examples):
  """The true shape times `factor`."""
  del images
  return _with_shape(examples, lambda shape: np.float32(factor) * shape)


def oracle_noise(sd, images, examples):
  """The true shape plus N(0, sd^2) per coefficient, one draw per identity (video id)."""
  del images
  if "video_id" not in examples:
    raise ValueError("oracle_noise seeds its noise by identity and needs the items' video_id")
  def noisy(shape):
    noise = [np.random.default_rng([NOISE_SEED, int(v)]).standard_normal(shape.shape[1])
             for v in np.asarray(examples["video_id"]).reshape(-1)]
    return shape + np.float32(sd) * np.stack(noise).astype(np.float32)
  return _with_shape(examples, noisy)


def oracle_truncated(components, images, examples):
  """The true shape's first `components` coefficients, the others zero."""
  del images
  return _with_shape(examples, lambda shape: np.where(np.arange(shape.shape[1]) < components,
                                                      shape, np.float32(0)))


BUILT_IN = {"mean_head": mean_head, "oracle": oracle}
# name -> (predictor of a parameter, parse of the parameter, what the parameter must be)
CALIBRATION = {
    "oracle_scaled": (oracle_scaled, float, lambda a: np.isfinite(a), "a finite number"),
    "oracle_noise": (oracle_noise, float, lambda s: np.isfinite(s) and s >= 0,
                     "a standard deviation >= 0"),
    "oracle_truncated": (oracle_truncated, int, lambda k: k >= 0, "a component count >= 0"),
}


def load_checkpoint_predictor(directory):
  """The predictor of a training checkpoint, via `sheap_jax.inference.checkpoint_predictor.load`."""
  if importlib.util.find_spec(CHECKPOINT_MODULE) is None:
    raise ValueError(f"cannot load checkpoint {directory!r}: {CHECKPOINT_MODULE} is not available "
                     "in this version (checkpoint predictors arrive with the training code); "
                     f"built-in predictors: {sorted(BUILT_IN)}")
  return importlib.import_module(CHECKPOINT_MODULE).load(directory)


def get_predictor(spec: str) -> Predictor:
  """A built-in predictor by name, a calibration predictor `NAME:VALUE`, or `checkpoint:DIR`."""
  if spec.startswith(CHECKPOINT_PREFIX):
    return load_checkpoint_predictor(spec[len(CHECKPOINT_PREFIX):])
  name, _, value = spec.partition(":")
  if name in CALIBRATION:
    predictor, parse, valid, expected = CALIBRATION[name]
    try:
      parsed = parse(value)
    except ValueError:
      parsed = None
    if parsed is None or not valid(parsed):
      raise ValueError(f"predictor {spec!r}: the value after '{name}:' must be {expected}")
    return functools.partial(predictor, parsed)
  if spec not in BUILT_IN:
    raise ValueError(f"unknown predictor {spec!r}: expected one of {sorted(BUILT_IN)}, "
                     f"{', '.join(n + ':VALUE' for n in CALIBRATION)} or "
                     f"'{CHECKPOINT_PREFIX}DIR'")
  return BUILT_IN[spec]
