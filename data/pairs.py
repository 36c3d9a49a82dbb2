"""The training input pipeline: (source, target) frame pairs of one video, batched per device.

Reads any dataset with the per-frame record layout of `data/synthetic_heads/features.py`
(`synthetic_heads`, `video_folder`): records of a video are consecutive, and each record holds
its `frame_index` and `video_num_frames`. A Grain dataset pipeline:

  record ids of this process's shard, shuffled afresh each epoch (seeded), repeated
    -> SamplePair: the record is the source frame; the target is a frame of the same video at
       a random gap 1..max_gap (either direction); only training fields are ever parsed
       (`TrainingFields`, with the optional ones of `data/frame_extras.py`: landmark type,
       matte), so ground truth never leaves the files; a `Mixture` draws records from several
       datasets by weight
    -> AugmentPair: optional flip (both frames), colour change (both frames), zoom and shift
       (each frame), applied to image and landmarks alike; resize to image_size
    -> (both steps run in `num_threads` threads: PNG decoding and resampling release the GIL)
    -> BatchPairs: arrays of (local devices, per-device batch, ...), uint8 -> float32 through
       the colour change in one pass, into shared memory when worker processes hand it over
    -> optional worker processes (`worker_count`)

Every random choice comes from Grain's per-element generators, so a seed fixes the stream and
the iterator's `get_state()` / `set_state()` resume it exactly.
"""
import dataclasses
import os
import sys
from typing import Optional, Tuple, Union

from absl import flags
import grain.experimental as grain_experimental
import grain.python as grain
import jax
import numpy as np

from data import frame_extras
from data.synthetic_heads import features as frame_features
from sheap_jax.face import crop

NUM_LANDMARKS = frame_features.NUM_LANDMARKS
# iBUG 68 landmark i of a mirrored face is landmark FLIP_PERMUTATION[i] of the original.
FLIP_PERMUTATION = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nose base
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65])  # inner lips
COLOUR = "colour_change"  # (2,) float32 (scale, offset) of a pair's uint8 levels, until batching
BATCH_KEYS = ("source_image", "target_image", "source_landmarks", "target_landmarks",
              "source_landmarks_valid", "target_landmarks_valid", "source_landmarks_3d",
              "target_landmarks_3d", "target_matte", "target_matte_valid", "video_id",
              "source_frame", "target_frame")
DEFAULT_THREADS = 2


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Random changes that keep image and landmarks consistent. Flip and colour act on both
  frames of a pair alike (the target is rendered with the source's identity and lighting);
  zoom and shift act on each frame (each has its own camera)."""
  flip_probability: float = 0.5
  zoom: Tuple[float, float] = (0.9, 1.1)  # crop side relative to the stored frame
  shift: float = 0.05  # crop centre moves up to this fraction of the frame, each axis
  brightness: float = 0.15  # multiply by 1 +- this
  contrast: float = 0.15  # scale about mid-grey by 1 +- this


NO_AUGMENTATION = Augmentation(flip_probability=0.0, zoom=(1.0, 1.0), shift=0.0,
                               brightness=0.0, contrast=0.0)


class TrainingFields:
  """Random access to the training fields (`features.TRAINING_KEYS`, and those of
  `frame_extras.OPTIONAL_TRAINING_KEYS` the dataset has; the others take their defaults) of a
  split's records.

  A TFDS ArrayRecord source is read as raw bytes and only those fields are taken from the
  tf.train.Example (0.07 ms a record against 0.19 ms for TFDS decoding the same fields and
  0.45 ms for all ~23; TFDS writes fixed-shape arrays as plain value lists), checked once
  against TFDS's own decoding of the first record; if they differ, TFDS decodes every read.
  Any other source (len + getitem of feature dicts) is read whole."""

  def __init__(self, source):
    self._source = source
    info = getattr(source, "dataset_info", None)
    raw = getattr(source, "data_source", None)
    self._raw = self._specs = None
    if (info is not None and raw is not None and len(source)
        and all(key in info.features for key in frame_features.TRAINING_KEYS)):
      self._raw = raw
      self._specs = {key: info.features[key] for key in frame_features.TRAINING_KEYS
                     + frame_extras.OPTIONAL_TRAINING_KEYS if key in info.features}
      reference = source[0]
      direct = self._parse(raw[0])
      if not all(np.array_equal(direct[key], reference[key]) for key in direct):
        self._raw = None

  def __len__(self) -> int:
    return len(self._source)

  def _parse(self, data: bytes) -> dict:
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=import-outside-toplevel
    stored = tf_example_pb2.Example.FromString(data).features.feature
    fields = {}
    for key, spec in self._specs.items():
      if spec.np_dtype == np.object_:
        fields[key] = stored[key].bytes_list.value[0]
        continue
      floating = np.issubdtype(spec.np_dtype, np.floating)
      values = stored[key].float_list.value if floating else stored[key].int64_list.value
      value = np.array(values).astype(spec.np_dtype).reshape(spec.shape)
      fields[key] = value.item() if value.ndim == 0 else value  # scalars as TFDS gives them
    return fields

  def __getitem__(self, index: int) -> dict:
    if self._raw is not None:
      return {**frame_extras.DEFAULTS, **self._parse(self._raw[index])}
    record = self._source[index]
    missing = [key for key in frame_features.TRAINING_KEYS if key not in record]
    if missing:
      raise ValueError(f"data/pairs.py: record {index} has no {missing}; frame records need "
                       "the fields of data/synthetic_heads/features.py")
    return {key: record.get(key, frame_extras.DEFAULTS.get(key)) for key in
            frame_features.TRAINING_KEYS + frame_extras.OPTIONAL_TRAINING_KEYS}


class MixedFields:
  """Several datasets' `TrainingFields` as one: record ids run through them in turn, and video
  ids are made unique by adding `VIDEO_ID_STRIDE` times the dataset's position (each dataset's
  videos stay consecutive, the layout `SamplePair` relies on)."""

  VIDEO_ID_STRIDE = 1 << 40

  def __init__(self, parts):
    self._parts = list(parts)
    self.starts = np.cumsum([0] + [len(p) for p in self._parts])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getitem__(self, index: int) -> dict:
    part = int(np.searchsorted(self.starts, index, side="right")) - 1
    if not 0 <= index < len(self):
      raise IndexError(f"data/pairs.py: record {index} outside {len(self)}")
    record = dict(self._parts[part][index - int(self.starts[part])])
    record[frame_features.VIDEO_ID] = (int(record[frame_features.VIDEO_ID])
                                       + part * self.VIDEO_ID_STRIDE)
    return record


class ShuffledEpochs(grain.MapDataset):
  """Element i is a record id: the ids in a new random order each epoch (permutation e of
  epoch e = i // len(ids)), for `num_epochs` epochs or forever (None). A NumPy permutation per
  epoch, made once, where Grain's `shuffle` runs a Feistel network per element (0.4 ms each
  on a 64-record split)."""

  def __init__(self, record_ids, seed: int, shuffle: bool, num_epochs: Optional[int]):
    super().__init__()
    self._ids = np.asarray(record_ids, np.int64)
    self._seed, self._shuffle, self._num_epochs = seed, shuffle, num_epochs
    self._orders = {}  # epoch -> ids in that epoch's order; the latest two are kept

  def __len__(self) -> int:
    return sys.maxsize if self._num_epochs is None else len(self._ids) * self._num_epochs

  def __str__(self) -> str:
    return f"ShuffledEpochs({len(self._ids)} records, shuffle={self._shuffle})"

  def _order(self, epoch: int) -> np.ndarray:
    order = self._orders.get(epoch)
    if order is None:  # threads may both compute it: the same array, no lock needed
      order = self._ids
      if self._shuffle:
        order = order[np.random.default_rng([self._seed, epoch]).permutation(len(order))]
      self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
      self._orders[epoch] = order
    return order

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not 0 <= index < len(self):
      raise IndexError(f"data/pairs.py: element {index} outside {len(self)}")
    epoch, position = divmod(index, len(self._ids))
    return int(self._order(epoch)[position])


class SamplePair(grain.RandomMapTransform):
  """Record id -> a training pair: the record as source, a frame of its video at a random gap
  in [1, max_gap] as target, both decoded. Reads only training fields."""

  def __init__(self, frames: TrainingFields, max_gap: int):
    if max_gap < 1:
      raise ValueError(f"data/pairs.py: max_gap must be >= 1, got {max_gap}")
    self._frames = frames
    self._max_gap = max_gap

  def random_map(self, element, rng: np.random.Generator):
    record = self._frames[int(element)]
    frame = int(record[frame_features.FRAME_INDEX])
    count = int(record[frame_features.VIDEO_NUM_FRAMES])
    if count < 2:
      raise ValueError(f"data/pairs.py: record {element} is in a video of {count} frame(s); "
                       "pairs need videos of at least 2 frames")
    # Uniform over the frames within max_gap of this one, in the video, other than itself.
    first, last = max(frame - self._max_gap, 0), min(frame + self._max_gap, count - 1)
    target_frame = first + int(rng.integers(last - first))
    target_frame += target_frame >= frame
    index = int(element) - frame + target_frame
    partner = self._frames[index] if 0 <= index < len(self._frames) else None
    if (partner is None or partner[frame_features.VIDEO_ID] != record[frame_features.VIDEO_ID]
        or int(partner[frame_features.FRAME_INDEX]) != target_frame):
      raise ValueError(
          f"data/pairs.py: record {element} (video {record[frame_features.VIDEO_ID]}, frame "
          f"{frame}) is not laid out as data/synthetic_heads/features.py requires: record "
          f"{index} should be frame {target_frame} of that video")
    pair = {"video_id": np.int64(record[frame_features.VIDEO_ID]),
            "source_frame": np.int64(frame), "target_frame": np.int64(target_frame)}
    for prefix, example in (("source", record), ("target", partner)):
      pair[f"{prefix}_image"] = frame_features.decode_image(example[frame_features.IMAGE])
      pair[f"{prefix}_landmarks"] = np.asarray(example[frame_features.LANDMARKS], np.float32)
      pair[f"{prefix}_landmarks_valid"] = np.asarray(example[frame_features.LANDMARKS_VALID],
                                                     bool)
      pair[f"{prefix}_landmarks_3d"] = np.bool_(
          frame_extras.landmark_type(example[frame_extras.LANDMARK_TYPE]) == "3d")
    pair["target_matte"] = frame_extras.decode_mask(partner[frame_extras.MATTE])
    pair["target_matte_valid"] = np.bool_(pair["target_matte"] is not None)
    return pair


class AugmentPair(grain.RandomMapTransform):
  """Augments and resizes both frames of a pair. Images stay uint8, with the pair's colour
  change under COLOUR, until `BatchPairs` writes them into the batch."""

  def __init__(self, augmentation: Augmentation, image_size: int):
    self._aug = augmentation
    self._size = image_size

  def random_map(self, element, rng: np.random.Generator):
    aug = self._aug
    flip = rng.random() < aug.flip_probability
    gain = 1.0 + rng.uniform(-aug.brightness, aug.brightness)
    contrast = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
    # One colour change for both frames, a gain and then contrast about mid-grey:
    # (level / 255 * gain - 0.5) * contrast + 0.5 = level * scale + offset, clipped to [0, 1].
    element[COLOUR] = np.array([gain * contrast / 255.0, 0.5 * (1.0 - contrast)], np.float32)
    for prefix in ("source", "target"):
      image = element[f"{prefix}_image"]
      points = element[f"{prefix}_landmarks"]
      valid = element[f"{prefix}_landmarks_valid"]
      matte = element.get(f"{prefix}_matte")  # (H, W) uint8 or None
      height, width = image.shape[:2]
      if flip:  # a view: the crop below copies it anyway
        image = image[:, ::-1]
        matte = None if matte is None else matte[:, ::-1]
        points = np.stack([width - 1 - points[:, 0], points[:, 1]], axis=-1)[FLIP_PERMUTATION]
        valid = valid[FLIP_PERMUTATION]
      side = rng.uniform(*aug.zoom) * np.array([width, height])
      centre = (np.array([width, height]) - 1) / 2 + rng.uniform(-aug.shift, aug.shift, 2) * (
          np.array([width, height]))
      box = np.concatenate([centre - side / 2, centre + side / 2])
      full_frame = np.allclose(box, [-0.5, -0.5, width - 0.5, height - 0.5])
      if not (full_frame and width == height == self._size):
        image = crop.crop_image(image, box, self._size)
        points = crop.points_to_crop(points, box, self._size)
        matte = None if matte is None else crop.crop_image(matte[..., None], box, self._size)[
            ..., 0]
      inside = np.all((points >= -0.5) & (points <= self._size - 0.5), axis=1)
      valid = valid & inside
      element[f"{prefix}_image"] = image
      element[f"{prefix}_landmarks"] = np.where(valid[:, None], points, 0.0).astype(np.float32)
      element[f"{prefix}_landmarks_valid"] = valid
      if f"{prefix}_matte" in element:  # the target's: zeros when the dataset has none
        element[f"{prefix}_matte"] = (np.zeros((self._size, self._size), np.uint8)
                                      if matte is None else np.ascontiguousarray(matte))
    return element


class BatchPairs:
  """Grain batch function: pairs -> BATCH_KEYS arrays of (local devices, per-device batch,
  ...). Images go from uint8 to float32 in [0, 1] through each pair's colour change, written
  straight into the batch; into shared memory once Grain's worker processes ask for it
  (`enable_shared_memory_output`), so a worker hands a batch over without copying it."""

  def __init__(self, num_devices: int):
    self._num_devices = num_devices
    self._shared_memory = False

  def enable_shared_memory_output(self):
    self._shared_memory = True

  def __call__(self, elements):
    count = len(elements)
    lead = (self._num_devices, count // self._num_devices)
    batch = {}
    for key in BATCH_KEYS:
      if key.endswith("_matte"):  # uint8 levels -> [0, 1], no colour change
        batch[key] = (np.stack([e[key] for e in elements]).astype(np.float32) / 255.0).reshape(
            lead + elements[0][key].shape)
        continue
      if not key.endswith("_image"):
        batch[key] = np.stack([e[key] for e in elements]).reshape(lead + np.shape(
            elements[0][key]))
        continue
      shape = lead + elements[0][key].shape
      images = (grain.SharedMemoryArray(shape, np.float32) if self._shared_memory
                else np.empty(shape, np.float32))
      for out, element in zip(images.reshape((count,) + shape[2:]), elements):
        scale, offset = element[COLOUR]
        np.multiply(element[key], scale, out=out)
        out += offset
        np.clip(out, 0.0, 1.0, out=out)
      batch[key] = images
    return batch


def open_split(data, split: str):
  """A random-access source of frame records: `data` is a built TFDS dataset directory
  (e.g. .../synthetic_heads/tiny/1.0.0), a TFDS builder, or already a source (len + getitem)."""
  if isinstance(data, (str, os.PathLike)):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    path = os.fspath(data)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
      raise FileNotFoundError(f"data/pairs.py: {path} is not a built TFDS dataset directory "
                              "(no dataset_info.json); pass .../<name>/<config>/<version>")
    data = tfds.builder_from_directory(path)
  if hasattr(data, "as_data_source"):
    if split not in data.info.splits:
      raise ValueError(f"data/pairs.py: no split {split!r} in {data.info.full_name}; it has "
                       f"{sorted(data.info.splits)}")
    return data.as_data_source(split=split)
  if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
    raise TypeError("data/pairs.py: expected a dataset directory, a TFDS builder or a "
                    f"random-access source, got {type(data).__name__}")
  return data


def _shard_ids(start: int, count: int, shard_index: int, shard_count: int) -> np.ndarray:
  """Record ids start + shard_index, + shard_count, ... of one shard (equal shares)."""
  per_shard = count // shard_count
  if not per_shard:
    raise ValueError(f"data/pairs.py: {count} record(s) cannot be shared by {shard_count} "
                     "process(es)")
  return start + np.arange(shard_index, per_shard * shard_count, shard_count)


@dataclasses.dataclass(frozen=True)
class Mixture:
  """Pairs drawn from several datasets, each dataset a share `weight` of every epoch (weights
  are normalised): `Mixture(((video_dir, 0.7), (synthetic_dir, 0.3)))`. Each pair comes from
  one dataset; a batch mixes them."""
  parts: Tuple[Tuple[object, float], ...]

  def __post_init__(self):
    weights = [w for _, w in self.parts]
    if not self.parts or any(not w > 0 for w in weights):
      raise ValueError(f"data/pairs.py: a Mixture needs datasets with weights > 0, got {weights}")

  def record_ids(self, starts, shard_index: int, shard_count: int) -> np.ndarray:
    """One epoch's record ids: each dataset's shard, repeated in turn to fill its share of an
    epoch long enough that every record of every dataset appears at least once."""
    weights = np.array([w for _, w in self.parts], np.float64)
    weights /= weights.sum()
    ids = [_shard_ids(int(a), int(b - a), shard_index, shard_count)
           for a, b in zip(starts[:-1], starts[1:])]
    length = max(len(i) / w for i, w in zip(ids, weights))
    return np.concatenate([np.resize(i, max(len(i), int(round(w * length))))
                           for i, w in zip(ids, weights)])


def make_pair_dataset(data, *, split: str = "train", global_batch_size: int, seed: int,
                      max_gap: int = 8,
                      augment: Union[bool, Augmentation] = True,
                      image_size: int = crop.CROP_SIZE,
                      num_epochs: Optional[int] = None,
                      shuffle: bool = True,
                      worker_count: int = 0,
                      num_threads: int = DEFAULT_THREADS,
                      shard_index: Optional[int] = None,
                      shard_count: Optional[int] = None,
                      num_local_devices: Optional[int] = None) -> grain.IterDataset:
  """The Grain dataset of pair batches (see `make_pair_iterator`)."""
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  num_local_devices = num_local_devices or jax.local_device_count()
  if global_batch_size % (shard_count * num_local_devices):
    raise ValueError(f"data/pairs.py: global_batch_size {global_batch_size} does not split "
                     f"over {shard_count} process(es) x {num_local_devices} local device(s)")
  if not (isinstance(seed, (int, np.integer)) and seed >= 0):
    raise ValueError(f"data/pairs.py: seed must be an integer >= 0, got {seed!r}")
  if isinstance(data, Mixture):
    frames = MixedFields([TrainingFields(open_split(d, split)) for d, _ in data.parts])
    record_ids = data.record_ids(frames.starts, shard_index, shard_count)
  else:
    frames = TrainingFields(open_split(data, split))
    record_ids = _shard_ids(0, len(frames), shard_index, shard_count)
  augmentation = (Augmentation() if augment is True else NO_AUGMENTATION if augment is False
                  else augment)
  # Each shard (JAX process) reads records shard_index, shard_index + shard_count, ... and
  # draws from its own seed, so processes neither repeat each other's records nor draws.
  shard_seed = int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])
  records = ShuffledEpochs(record_ids, shard_seed, shuffle, num_epochs)
  pairs = (records.seed(shard_seed)
           .random_map(SamplePair(frames, max_gap))
           .random_map(AugmentPair(augmentation, image_size)))
  # Threads run the two maps above ahead of the batching; a few pairs each keep them busy.
  batches = pairs.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=4 * num_threads)).batch(
          global_batch_size // shard_count, drop_remainder=True,
          batch_fn=BatchPairs(num_local_devices))
  if not worker_count:
    return batches
  if not flags.FLAGS.is_parsed():
    # Grain's worker processes read absl flags, which nothing parses outside absl.app (plain
    # scripts, notebooks): take their defaults.
    flags.FLAGS.mark_as_parsed()
  batches.enable_shared_memory_output()
  # The small arrays (landmarks, ids) cost less pickled than as shared-memory segments of their
  # own (one create, open and unlink each per batch).
  batches = grain_experimental.WithOptionsIterDataset(
      batches, grain_experimental.DatasetOptions(min_shm_size=1 << 20))
  return batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))


def make_pair_iterator(data, **kwargs) -> grain.DatasetIterator:
  """An iterator of pair batches for training, this process's share of the global batch.

  Each batch is a dict of numpy arrays with leading axes (local devices, per-device batch):
  `source_image`, `target_image` (..., H, W, 3) float32 in [0, 1]; `source_landmarks`,
  `target_landmarks` (..., 68, 2) float32 pixels of the output image (0 where invalid);
  `source_landmarks_valid`, `target_landmarks_valid` (..., 68) bool;
  `source_landmarks_3d`, `target_landmarks_3d` (...) bool, the landmarks' type
  (`frame_extras.LANDMARK_TYPE`: True for "3d"); `target_matte` (..., H, W) float32 person
  matte in [0, 1] (zeros where the dataset has none) and `target_matte_valid` (...) bool;
  `video_id`, `source_frame`, `target_frame` int64. No ground-truth field ever appears.
  `data` is one dataset or a `Mixture` of several.

  Keyword arguments (see `make_pair_dataset`): split, global_batch_size, seed, max_gap,
  augment (bool or an `Augmentation`), image_size, num_epochs (None: forever), shuffle,
  worker_count (Grain worker processes), num_threads (threads per process decoding and
  augmenting), shard_index / shard_count (default: this JAX process among all),
  num_local_devices (default: jax.local_device_count()).
  The iterator's get_state() (a dict of integers, JSON-safe) / set_state() checkpoint and
  restore its position.
  """
  return iter(make_pair_dataset(data, **kwargs))
