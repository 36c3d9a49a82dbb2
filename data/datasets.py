"""The training datasets, chosen by name (`config.data.name`).

An opener takes `config.data` and returns a TFDS builder whose records have the per-frame
layout of `data/synthetic_heads/features.py`, which `data/pairs.py` turns into frame pairs.
Registered: `synthetic_heads` (built on first use when `build_if_missing` is set).
`video_folder` (data/video_folder/) has that record layout too but is not registered yet: its
training wiring (landmarks from the face models, validation without ground truth) is its own
change.
"""
import os
from typing import Callable, Dict

from absl import logging
import jax

from data.synthetic_heads import builder as synthetic_builder

_FILE = "data/datasets.py"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"


def data_dir(data_config) -> str:
  """`config.data.data_dir`, or ~/tensorflow_datasets when empty."""
  return os.path.expanduser(data_config.data_dir or DEFAULT_DATA_DIR)


def open_synthetic_heads(data_config):
  """synthetic_heads/<variant> under `data_dir`, built first when absent and
  `build_if_missing` is set (by process 0; the others wait for it)."""
  directory = data_dir(data_config)
  variant = data_config.variant
  dataset = synthetic_builder.SyntheticHeads(config=variant, data_dir=directory,
                                             file_format="array_record")
  if not dataset.is_prepared():
    if not data_config.build_if_missing:
      raise FileNotFoundError(f"{_FILE}: synthetic_heads/{variant} is not built under "
                              f"{directory} (set --config.data.build_if_missing=True)")
    if jax.process_index() == 0:
      logging.info("building synthetic_heads/%s under %s", variant, directory)
      dataset.download_and_prepare()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("synthetic_heads built")
    dataset = synthetic_builder.SyntheticHeads(config=variant, data_dir=directory,
                                               file_format="array_record")
  return dataset


_REGISTRY: Dict[str, Callable] = {"synthetic_heads": open_synthetic_heads}


def registered_datasets():
  return tuple(_REGISTRY)


def open_dataset(data_config):
  """The TFDS builder `config.data` names, or one line naming the registered datasets."""
  if data_config.name not in _REGISTRY:
    raise ValueError(f"{_FILE}: config.data.name={data_config.name!r}; registered datasets: "
                     f"{list(_REGISTRY)}")
  return _REGISTRY[data_config.name](data_config)
