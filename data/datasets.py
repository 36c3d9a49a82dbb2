"""The datasets a training run reads, chosen by name from `config.data`.

An opener takes (variant, config) and returns a TFDS builder whose records have the per-frame
layout of `data/synthetic_heads/features.py` (plus the optional fields of
`data/frame_extras.py`), which `data/pairs.py` turns into frame pairs. Registered:

- `synthetic_heads/<variant>`: built on first use when `config.data.build_if_missing`;
- `video_folder/<variant>`: built beforehand from the user's videos with
  `python -m data.video_folder`.

`config.data.mix_with` ("name/variant", empty: none) draws that share of every epoch
(`config.data.mix_weight`) from a second dataset (`data.pairs.Mixture`);
`config.data.synthetic_eval` ("synthetic_heads/variant", empty: none) names the synthetic
dataset whose held-out identities the synthetic_neutral validation scores when the training
data are not synthetic (a synthetic run scores its own `eval_split`).

Every problem of the configuration or of a missing build raises `ConfigError`, one line that
`sheap_jax.train` prints without a traceback.
"""
import os
from typing import Callable, Dict, Optional, Tuple

from absl import logging
import jax
import tensorflow_datasets as tfds

from data import pairs
from data.synthetic_heads import builder as synthetic_builder
from data.video_folder import VideoFolder

VIDEO_FOLDER_COMMAND = "python -m data.video_folder --videos DIR --data_dir {data_dir} {which}"


class ConfigError(ValueError):
  """A training configuration that cannot run; the message is one line for the user."""


def data_dir(config) -> str:
  """`config.data.data_dir`, or ~/tensorflow_datasets when empty."""
  return os.path.expanduser(config.data.data_dir or "~/tensorflow_datasets")


def _open_synthetic(variant: str, config):
  """synthetic_heads/<variant> under `data_dir`, built first when absent and
  `build_if_missing` is set (by process 0; the others wait for it). A variant that is not
  registered (a test's or a study's own builder config) is read from its build there."""
  root = data_dir(config)
  registered = [c.name for c in synthetic_builder.SyntheticHeads.BUILDER_CONFIGS]
  built = os.path.join(root, "synthetic_heads", variant,
                       str(synthetic_builder.SyntheticHeads.VERSION))
  if variant not in registered and os.path.isfile(os.path.join(built, "dataset_info.json")):
    return tfds.builder_from_directory(built)  # a variant built by a test or a study
  try:
    dataset = synthetic_builder.SyntheticHeads(config=variant, data_dir=root,
                                               file_format="array_record")
  except ValueError as error:
    raise ConfigError(f"synthetic_heads has no variant {variant!r} ({str(error).splitlines()[0]})"
                      ) from None
  if dataset.is_prepared():
    return dataset
  if not config.data.build_if_missing:
    raise ConfigError(f"synthetic_heads/{variant} is not built under {root} (set "
                      "--config.data.build_if_missing=True)")
  if jax.process_index() == 0:
    logging.info("building synthetic_heads/%s under %s", variant, root)
    dataset.download_and_prepare()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("synthetic_heads built")
  return synthetic_builder.SyntheticHeads(config=variant, data_dir=root,
                                          file_format="array_record")


def _open_video_folder(variant: str, config):
  """The build of video_folder/<variant> whose version this code reads (builds of an older
  builder version hold other features: rebuild them)."""
  root = data_dir(config)
  folder = os.path.join(root, "video_folder", variant)
  named = [c.name for c in VideoFolder.BUILDER_CONFIGS]
  command = VIDEO_FOLDER_COMMAND.format(data_dir=root, which=(
      f"--config {variant}" if variant in named else f"--name {variant} [options]"))
  versions = sorted((v for v in (os.listdir(folder) if os.path.isdir(folder) else [])
                     if os.path.isfile(os.path.join(folder, v, "dataset_info.json"))),
                    key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))
  if not versions:
    raise ConfigError(f"video_folder/{variant} is not built under {root}: build it from your "
                      f"videos with `{command}`")
  current = str(VideoFolder.VERSION)
  if current not in versions:
    raise ConfigError(f"video_folder/{variant} under {root} was built by builder version "
                      f"{versions[-1]}, whose features differ from {current}'s; rebuild it with "
                      f"`{command}`")
  return tfds.builder_from_directory(os.path.join(folder, current))


_REGISTRY: Dict[str, Callable] = {"synthetic_heads": _open_synthetic,
                                  "video_folder": _open_video_folder}


def registered_datasets() -> Tuple[str, ...]:
  return tuple(_REGISTRY)


def split_spec(spec: str, field: str) -> Tuple[str, str]:
  """"name/variant" -> (name, variant), checked."""
  name, _, variant = spec.partition("/")
  if name not in _REGISTRY or not variant:
    raise ConfigError(f"config.data.{field}={spec!r}: expected 'name/variant' with name one of "
                      f"{list(_REGISTRY)}, e.g. 'synthetic_heads/demo'")
  return name, variant


def open_named(name: str, variant: str, config):
  """The TFDS builder of one registered dataset, or one line naming the registered ones."""
  if name not in _REGISTRY:
    raise ConfigError(f"config.data.name={name!r}; registered datasets: {list(_REGISTRY)}")
  return _REGISTRY[name](variant, config)


def open_dataset(config):
  """What `data.pairs.make_pair_iterator` reads: the builder `config.data` names, or a
  `Mixture` with `config.data.mix_with`."""
  dataset = open_named(config.data.name, config.data.variant, config)
  mix_with = config.data.get("mix_with", "")
  if not mix_with:
    return dataset
  weight = float(config.data.get("mix_weight", 0.5))
  if not 0.0 < weight < 1.0:
    raise ConfigError(f"config.data.mix_weight={weight}: the share of {mix_with!r} must lie "
                      "strictly between 0 and 1")
  other = open_named(*split_spec(mix_with, "mix_with"), config)
  return pairs.Mixture(((dataset, 1.0 - weight), (other, weight)))


def parts(dataset) -> Tuple:
  """The builders inside what `open_dataset` returned."""
  return tuple(d for d, _ in dataset.parts) if hasattr(dataset, "parts") else (dataset,)


def synthetic_dataset(config, dataset) -> Optional[object]:
  """The synthetic_heads builder the synthetic_neutral validation scores, or None: the training
  data when synthetic, else `config.data.synthetic_eval` when set."""
  primary = parts(dataset)[0]
  if primary.name == "synthetic_heads":
    return primary
  spec = config.data.get("synthetic_eval", "")
  if not spec:
    return None
  name, variant = split_spec(spec, "synthetic_eval")
  if name != "synthetic_heads":
    raise ConfigError(f"config.data.synthetic_eval={spec!r}: synthetic_neutral needs ground "
                      "truth, which only synthetic_heads has")
  if config.get("flame_path"):
    raise ConfigError(f"config.data.synthetic_eval={spec!r} scores against the built-in head "
                      "the synthetic data were rendered with, not the FLAME model of "
                      "config.flame_path: leave synthetic_eval empty with real FLAME")
  return open_named(name, variant, config)


def video_dataset(dataset) -> Optional[object]:
  """The first video_folder builder among the training data, or None."""
  return next((d for d in parts(dataset) if d.name == "video_folder"), None)
