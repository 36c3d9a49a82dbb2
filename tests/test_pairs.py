"""Pair pipeline: pairs of one video, determinism, exact resume, sharding, consistent
augmentation, no ground truth; over in-memory records and a built video_folder dataset."""
import json

import grain.python as grain
import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from data import pairs
from data import frame_extras
from data.frame_extras import OPTIONAL_TRAINING_KEYS
from data.synthetic_heads import features as frame_features
from data.video_folder import VideoFolder, VideoFolderConfig

SIZE = 32
FRAMES = (5, 3, 6, 2)  # frames per video


def _colour(video, frame):
  return np.array([40 + 50 * video, 30 + 40 * frame, 128], np.uint8)


def _records(with_blobs=False):
  """Frame records in the synthetic_heads layout. Each frame is one flat colour that encodes
  (video, frame), or (with_blobs) dark with a red blob on landmark 36 and a green one on 30."""
  rng = np.random.default_rng(0)
  records = []
  for video, count in enumerate(FRAMES):
    for frame in range(count):
      landmarks = rng.uniform(6, SIZE - 7, (68, 2)).astype(np.float32)
      image = np.empty((SIZE, SIZE, 3), np.uint8)
      image[...] = _colour(video, frame)
      if with_blobs:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        image[...] = 0
        for index, channel in ((36, 0), (30, 1)):
          x, y = landmarks[index]
          image[..., channel] = np.maximum(
              image[..., channel], 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0))
      records.append({
          frame_features.IMAGE: frame_features.encode_image(image),
          frame_features.LANDMARKS: landmarks,
          frame_features.LANDMARKS_VALID: rng.random(68) > 0.1,
          frame_features.VIDEO_ID: np.int64(100 + video),
          frame_features.FRAME_INDEX: np.int64(frame),
          frame_features.VIDEO_NUM_FRAMES: np.int64(count),
          frame_features.GT_SHAPE: rng.normal(size=300).astype(np.float32),
          frame_features.GT_LANDMARKS: landmarks,
      })
  return records


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _loader_kwargs(**overrides):
  kwargs = dict(split="train", global_batch_size=8, seed=3, max_gap=2, augment=False,
                image_size=SIZE)
  kwargs.update(overrides)
  return kwargs


def test_batches_hold_pairs_of_one_video():
  records = _records()
  batch = next(pairs.make_pair_iterator(records, **_loader_kwargs()))
  assert set(batch) == set(pairs.BATCH_KEYS)
  assert not any(k.startswith("gt_") or "gt_" in k for k in batch)
  devices = 4  # tests/conftest.py simulates 4 CPU devices
  assert batch["source_image"].shape == (devices, 2, SIZE, SIZE, 3)
  assert batch["source_image"].dtype == np.float32
  assert batch["target_landmarks"].shape == (devices, 2, 68, 2)
  assert batch["target_landmarks_valid"].dtype == bool
  flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
  for i in range(8):
    video = int(flat["video_id"][i]) - 100
    for prefix in ("source", "target"):
      frame = int(flat[f"{prefix}_frame"][i])
      # The decoded colour, not the metadata, says which frame this is.
      np.testing.assert_allclose(flat[f"{prefix}_image"][i, SIZE // 2, SIZE // 2],
                                 _colour(video, frame) / 255.0, atol=1e-6)
      record = records[sum(FRAMES[:video]) + frame]
      valid = record[frame_features.LANDMARKS_VALID]
      np.testing.assert_array_equal(flat[f"{prefix}_landmarks_valid"][i], valid)
      np.testing.assert_allclose(flat[f"{prefix}_landmarks"][i][valid],
                                 record[frame_features.LANDMARKS][valid])
    gap = abs(int(flat["target_frame"][i]) - int(flat["source_frame"][i]))
    assert 1 <= gap <= 2
    assert not np.array_equal(flat["source_image"][i], flat["target_image"][i])


def test_gaps_cover_both_directions_up_to_max_gap():
  iterator = pairs.make_pair_iterator(_records(), **_loader_kwargs(max_gap=3))
  gaps = np.concatenate([(b["target_frame"] - b["source_frame"]).ravel()
                         for b in _take(iterator, 12)])
  assert set(gaps.tolist()) == {-3, -2, -1, 1, 2, 3}


def test_same_seed_same_stream_and_exact_resume():
  records = _records()
  first = _take(pairs.make_pair_iterator(records, **_loader_kwargs(augment=True)), 4)
  again = pairs.make_pair_iterator(records, **_loader_kwargs(augment=True))
  for a, b in zip(first, _take(again, 4)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other = next(pairs.make_pair_iterator(records, **_loader_kwargs(augment=True, seed=4)))
  assert not np.array_equal(other["source_image"], first[0]["source_image"])

  iterator = pairs.make_pair_iterator(records, **_loader_kwargs(augment=True))
  _take(iterator, 2)
  state = json.loads(json.dumps(iterator.get_state()))  # as a checkpoint stores it
  expected = _take(iterator, 2)
  resumed = pairs.make_pair_iterator(records, **_loader_kwargs(augment=True))
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 2)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  np.testing.assert_array_equal(expected[0]["source_image"], first[2]["source_image"])


def test_stream_does_not_depend_on_threads():
  records = _records()
  streams = [_take(pairs.make_pair_iterator(records, **_loader_kwargs(
      augment=True, num_threads=threads)), 3) for threads in (0, 3)]
  for a, b in zip(*streams):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_a_worker_process_gives_the_same_stream_and_resumes():
  """With one worker process the batches (images through shared memory) equal the in-process
  ones, and a state taken there restores exactly."""
  records = _records()
  local = _take(pairs.make_pair_iterator(records, **_loader_kwargs(augment=True)), 3)
  iterator = pairs.make_pair_iterator(records, **_loader_kwargs(augment=True, worker_count=1))
  first = next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  rest = _take(iterator, 2)
  iterator.close()
  resumed = pairs.make_pair_iterator(records, **_loader_kwargs(augment=True, worker_count=1))
  resumed.set_state(state)
  again = _take(resumed, 2)
  resumed.close()
  for a, b in zip(local, [first] + rest):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(rest, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_batching_applies_the_colour_change(monkeypatch):
  """BatchPairs turns uint8 levels into (level / 255 * gain - 0.5) * contrast + 0.5, clipped
  to [0, 1], split over devices; the same into Grain's shared memory when asked."""
  rng = np.random.default_rng(7)
  elements, expected = [], []
  for _ in range(6):
    gain, contrast = rng.uniform(0.6, 1.4, 2)
    element = {key: rng.integers(0, 2, 68).astype(bool) if key.endswith("_valid")
               else rng.uniform(0, 9, (68, 2)).astype(np.float32) for key in pairs.BATCH_KEYS
               if "landmarks" in key and not key.endswith("_3d")}
    element.update(video_id=np.int64(rng.integers(9)), source_frame=np.int64(1),
                   target_frame=np.int64(2), source_landmarks_3d=np.bool_(rng.random() < 0.5),
                   target_landmarks_3d=np.bool_(rng.random() < 0.5),
                   target_matte=rng.integers(0, 256, (5, 4), dtype=np.uint8),
                   target_matte_valid=np.bool_(rng.random() < 0.5))
    for prefix in ("source", "target"):
      element[f"{prefix}_image"] = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    element[pairs.COLOUR] = np.array([gain * contrast / 255, 0.5 * (1 - contrast)], np.float32)
    elements.append(element)
    expected.append({k: np.clip((v / 255.0 * gain - 0.5) * contrast + 0.5, 0, 1)
                     if k.endswith("_image") else v / 255.0 if k.endswith("_matte") else v
                     for k, v in element.items()})
  batcher = pairs.BatchPairs(num_devices=2)
  for shared in (False, True):
    if shared:
      batcher.enable_shared_memory_output()
    batch = batcher(elements)
    assert set(batch) == set(pairs.BATCH_KEYS)
    for key in pairs.BATCH_KEYS:
      want = np.stack([e[key] for e in expected])
      assert batch[key].shape == (2, 3) + want.shape[1:]
      assert batch[key].dtype == (np.float32 if key.endswith(("_image", "_matte"))
                                  else want.dtype)
      np.testing.assert_allclose(batch[key].reshape(want.shape), want, atol=1e-6)
      assert isinstance(batch[key], grain.SharedMemoryArray) == (
          shared and key.endswith("_image"))
      if shared and key.endswith("_image"):
        batch[key].unlink_on_del()  # what the receiving process does


def test_shuffled_epochs_permute_the_records_afresh():
  ids = np.arange(3, 40, 3)
  order = pairs.ShuffledEpochs(ids, seed=9, shuffle=True, num_epochs=3)
  assert len(order) == 3 * len(ids)
  epochs = np.array([order[i] for i in range(len(order))]).reshape(3, len(ids))
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), ids)
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  again = pairs.ShuffledEpochs(ids, seed=9, shuffle=True, num_epochs=None)
  assert [again[i] for i in range(len(order) - 1, -1, -1)] == epochs.ravel()[::-1].tolist()
  assert [order[i] for i in range(1, 8, 3)] == list(order[1:8:3])  # Grain's slicing
  plain = pairs.ShuffledEpochs(ids, seed=9, shuffle=False, num_epochs=2)
  assert [plain[i] for i in range(len(plain))] == ids.tolist() * 2
  with pytest.raises(IndexError, match="outside"):
    order[len(order)]


def test_shards_split_the_records():
  records = _records()
  seen = []
  for shard in range(2):
    iterator = pairs.make_pair_iterator(
        records, **_loader_kwargs(global_batch_size=2, num_epochs=1, shard_index=shard,
                                  shard_count=2, num_local_devices=1))
    seen.append({(int(b["video_id"][0, 0]), int(b["source_frame"][0, 0])) for b in iterator})
  assert not seen[0] & seen[1]
  assert len(seen[0]) == len(seen[1]) == len(records) // 2


def test_augmentation_moves_landmarks_with_the_image():
  """Blobs drawn on landmarks 36 (red) and 30 (green) stay under them through flips (36 then
  becomes 45), zoom, shift and resizing to 48 px."""
  records = _records(with_blobs=True)
  for record in records:
    record[frame_features.LANDMARKS_VALID] = np.ones(68, bool)
  aug = pairs.Augmentation(flip_probability=0.5, zoom=(0.8, 1.0), shift=0.05, brightness=0.0,
                           contrast=0.0)
  iterator = pairs.make_pair_iterator(records, **_loader_kwargs(augment=aug, image_size=48))
  flips = 0
  for batch in _take(iterator, 3):
    images = batch["source_image"].reshape(-1, 48, 48, 3)
    points = batch["source_landmarks"].reshape(-1, 68, 2)
    valid = batch["source_landmarks_valid"].reshape(-1, 68)
    for image, lmk, ok in zip(images, points, valid):
      for channel, candidates in ((1, (30,)), (0, (36, 45))):
        peak = np.unravel_index(np.argmax(image[..., channel]), image.shape[:2])[::-1]
        distances = {i: np.linalg.norm(lmk[i] - peak) for i in candidates if ok[i]}
        if not distances or image[..., channel].max() < 0.5:
          continue  # the blob left the frame with its landmark
        closest = min(distances, key=distances.get)
        assert distances[closest] < 1.5
        flips += channel == 0 and closest == 45
  assert flips > 0  # some pairs were mirrored


def test_bad_inputs_are_reported(tmp_path):
  with pytest.raises(ValueError, match="does not split over 1 process"):
    pairs.make_pair_iterator(_records(), **_loader_kwargs(global_batch_size=6))
  with pytest.raises(FileNotFoundError, match="not a built TFDS dataset directory"):
    pairs.make_pair_iterator(str(tmp_path), **_loader_kwargs())
  shuffled = _records()[::-1]
  with pytest.raises(ValueError, match="not laid out"):
    next(pairs.make_pair_iterator(shuffled, **_loader_kwargs()))
  incomplete = _records()
  del incomplete[4][frame_features.LANDMARKS]
  with pytest.raises(ValueError, match=r"record 4 has no \['landmarks'\]"):
    pairs.TrainingFields(incomplete)[4]


def test_reads_a_built_video_folder_dataset(tmp_path):
  rng = np.random.default_rng(5)
  for video, count in enumerate((4, 3)):
    folder = tmp_path / "videos" / f"clip{video}"
    folder.mkdir(parents=True)
    for frame in range(count):
      Image.fromarray(rng.integers(0, 255, (48, 40, 3), np.uint8)).save(
          folder / f"{frame:02d}.png")
    np.save(tmp_path / "videos" / f"clip{video}.npy",
            rng.uniform(12, 30, (count, 68, 2)).astype(np.float32))
  builder = VideoFolder(config=VideoFolderConfig(name="pairs_test", image_size=SIZE),
                        data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "videos")))
  # Records read for training hold only the training fields, the same as TFDS decodes.
  source = pairs.open_split(str(builder.data_path), "train")
  fields = pairs.TrainingFields(source)
  for index in range(len(source)):
    record, training = source[index], fields[index]
    assert set(training) == set(frame_features.TRAINING_KEYS + OPTIONAL_TRAINING_KEYS)
    for key in frame_features.TRAINING_KEYS + OPTIONAL_TRAINING_KEYS:
      np.testing.assert_array_equal(training[key], record[key])
      assert type(training[key]) is type(record[key])
      assert np.asarray(training[key]).dtype == np.asarray(record[key]).dtype
  # Raw bytes that do not decode to what TFDS says (here: the next record's) are not trusted.
  class Shifted:
    dataset_info = source.dataset_info
    data_source = [source.data_source[(i + 1) % len(source)] for i in range(len(source))]

    def __len__(self):
      return len(source)

    def __getitem__(self, index):
      return source[index]

  shifted = pairs.TrainingFields(Shifted())
  for index in range(len(source)):
    np.testing.assert_array_equal(shifted[index][frame_features.LANDMARKS],
                                  source[index][frame_features.LANDMARKS])
  iterator = pairs.make_pair_iterator(str(builder.data_path), **_loader_kwargs(
      global_batch_size=4, augment=True))
  batch = next(iterator)
  assert set(batch) == set(pairs.BATCH_KEYS)
  assert batch["source_image"].shape == (4, 1, SIZE, SIZE, 3)
  assert np.all((batch["source_image"] >= 0) & (batch["source_image"] <= 1))
  assert np.all(batch["source_frame"] != batch["target_frame"])
  assert set(np.unique(batch["video_id"]).tolist()) <= {0, 1}


def _real_records(matte):
  """`_records` as real footage stores them: 3D-type landmarks and a person matte."""
  return [dict(record, **{frame_extras.LANDMARK_TYPE: b"3d", frame_extras.FACE_SCORE:
                          np.float32(0.9), frame_extras.MATTE: frame_extras.encode_mask(matte)})
          for record in _records()]


def test_mixture_draws_each_dataset_by_weight_with_its_matte_and_landmark_type():
  matte = np.zeros((SIZE, SIZE), np.uint8)
  matte[:, :SIZE // 4] = 255  # the person on the left quarter
  iterator = pairs.make_pair_iterator(
      pairs.Mixture(((_records(), 0.25), (_real_records(matte), 0.75))),
      **_loader_kwargs(num_epochs=1))
  batches = list(iterator)
  # An epoch: every record of the smaller share once (16), the other's repeated to 3/4 (48).
  assert sum(len(b["video_id"].ravel()) for b in batches) == 64
  real = np.concatenate([b["video_id"].ravel() >= pairs.MixedFields.VIDEO_ID_STRIDE
                         for b in batches])
  assert real.sum() == 48
  for batch in batches:
    is_real = batch["video_id"] >= pairs.MixedFields.VIDEO_ID_STRIDE
    np.testing.assert_array_equal(batch["target_landmarks_3d"], is_real)
    np.testing.assert_array_equal(batch["source_landmarks_3d"], is_real)
    np.testing.assert_array_equal(batch["target_matte_valid"], is_real)
    expected = np.where(is_real[..., None, None], matte / 255.0, 0.0)
    np.testing.assert_allclose(batch["target_matte"], expected, atol=1e-6)
    assert not any(key.startswith("gt_") for key in batch)


def test_matte_is_flipped_and_cropped_with_the_image(rng):
  """Frames whose image equals their matte (grey levels) stay equal through flips, zooms and
  shifts: the matte follows the image's geometry exactly."""
  matte = np.zeros((SIZE, SIZE), np.uint8)
  matte[:, :SIZE // 4] = 255
  matte[SIZE // 2:, SIZE // 3:SIZE // 2] = 128
  records = _real_records(matte)
  for record in records:
    record[frame_features.IMAGE] = frame_features.encode_image(np.repeat(matte[..., None], 3, -1))
  moves = pairs.Augmentation(flip_probability=0.5, zoom=(0.5, 1.2), shift=0.2, brightness=0.0,
                             contrast=0.0)
  batch = next(pairs.make_pair_iterator(records, **_loader_kwargs(
      augment=moves, seed=int(rng.integers(1 << 30)))))
  # (one level of rounding apart: Pillow resamples RGB and single channels differently)
  np.testing.assert_allclose(batch["target_matte"], batch["target_image"][..., 0],
                             atol=1.01 / 255)
  assert len({float(m.sum()) for m in batch["target_matte"].reshape(8, -1)}) > 1  # they moved
