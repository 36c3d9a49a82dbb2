"""Real-footage path end to end: video_folder built from clips of scikit-image's astronaut with
the face models (landmarks, type, score, matte), then a few training steps on it with the
ground-truth-free held-out validation; configuration errors as one line."""
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest
from skimage import data as skimage_data
import tensorflow_datasets as tfds

from data import frame_extras
from data.synthetic_heads import features as frame_features
from data.video_folder import VideoFolder, VideoFolderConfig
from sheap_jax.face import crop
from sheap_jax import face
from sheap_jax.training import loop
from sheap_jax.training import trainer
from data import datasets
from sheap_jax.face import demo_clip
from tests.test_objective import SIZE, small_config, small_flame_model

FRAMES = 6
FRAME_SIZE = (256, 192)


@pytest.fixture(scope="module")
def models():
  try:
    return face.FaceModels.load()
  except face.FaceModelsUnavailable as error:
    pytest.skip(str(error))


@pytest.fixture(scope="module")
def built(models, tmp_path_factory):
  """Two astronaut clips as frame folders, plus a faceless one; the second clip held out."""
  del models  # loaded (or skipped) first
  root = tmp_path_factory.mktemp("video_folder")
  photo = skimage_data.astronaut()
  clips = {"clip_a": dict(zoom=(0.9, 1.1), shift=0.04),
           "clip_b": dict(zoom=(1.1, 0.9), degrees=-10.0, shift=0.04)}
  truth = {}
  for name, motion in clips.items():
    frames, affines = demo_clip.make_clip(photo, FRAMES, FRAME_SIZE, **motion)
    folder = root / "videos" / name
    folder.mkdir(parents=True)
    if name == "clip_a":
      frames[3] = np.full_like(frames[3], 128)  # a frame without a face
    for index, frame in enumerate(frames):
      Image.fromarray(frame).save(folder / f"{index:03d}.png")
    truth[name] = affines
  builder = VideoFolder(config=VideoFolderConfig(name="astro", image_size=SIZE,
                                                 validation_every=2),
                        data_dir=str(root / "tfds"))
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(root / "videos")))
  return root, builder, truth


def test_video_folder_stores_face_model_landmarks_type_score_and_matte(built):
  _, builder, _ = built
  assert builder.info.splits["train"].num_examples == FRAMES - 1
  assert builder.info.splits["validation"].num_examples == FRAMES
  assert builder.info.metadata["skipped_frames"]["clip_a"] == [[3, "no face detected"]]
  source = builder.as_data_source(split="train")
  records = [source[i] for i in range(len(source))]
  assert [r["source_frame"] for r in records] == [0, 1, 2, 4, 5]
  assert [r[frame_features.FRAME_INDEX] for r in records] == list(range(FRAMES - 1))
  for record in records:
    assert record[frame_extras.LANDMARK_TYPE] == b"3d"
    assert record[frame_extras.FACE_SCORE] > 0.5
    assert record[frame_features.LANDMARKS_VALID].sum() >= 60
    # SHeaP's rule on the landmarks: the landmark box spans 1 / 1.9 of the crop's height.
    points = record[frame_features.LANDMARKS][record[frame_features.LANDMARKS_VALID]]
    height = points[:, 1].max() - points[:, 1].min()
    width = points[:, 0].max() - points[:, 0].min()
    assert max(height, width) == pytest.approx(SIZE / 1.9, rel=0.15)
    matte = frame_extras.decode_mask(record[frame_extras.MATTE])
    assert matte.shape == (SIZE, SIZE) and len(record[frame_extras.MATTE]) < 2000
    # The person (face centre) is foreground; the grey fill outside the photo is backdrop
    # (crops of a turned, zoomed photo show it in a corner or not at all).
    centre = np.round(points.mean(0)).astype(int)
    assert matte[centre[1], centre[0]] > 200
    image = frame_features.decode_image(record[frame_features.IMAGE]).astype(int)
    grey = np.all(np.abs(image - 128) <= 1, axis=-1)
    if grey.sum() > 20:
      assert matte[grey].mean() < 60


def test_crop_follows_the_known_motion_of_the_clip(built):
  """The crop boxes are SHeaP's smoothed boxes of the photo's landmarks carried through the
  clip's known affines (the tracker's error, about a pixel, moves them by a few pixels)."""
  _, builder, truth = built
  source = builder.as_data_source(split="validation")
  boxes = np.array([source[i]["crop_box"] for i in range(len(source))])
  photo_points, _, _ = face.FaceModels.load().landmarks68(skimage_data.astronaut())
  expected = crop.smooth_boxes([
      crop.video_box(crop.landmarks_box(demo_clip.apply(affine, photo_points)), *FRAME_SIZE)
      for affine in truth["clip_b"]])
  side = expected[:, 2] - expected[:, 0]
  assert np.abs(boxes - expected).max() <= 0.06 * side.min()


def test_trains_on_video_folder_with_heldout_validation(built, tmp_path):
  root, _, _ = built
  config = small_config()
  config.data.update(name="video_folder", variant="astro", data_dir=str(root / "tfds"),
                     num_workers=0, max_gap=2)
  config.batch_size = 2
  config.total_steps = 2
  config.log_every = 1
  config.checkpoint_every = 2
  config.eval_every = 2
  config.data.eval_pairs = 4
  config.preview_every = 2
  config.losses.silhouette.weight = 0.1
  # What this test is about (the data reaching the losses: landmarks, matte, images), less
  # compile time: the other terms are trained in test_train.py.
  for term in ("ssim", "perceptual", "depth", "normal", "depth_normal", "distortion"):
    config.losses[term].weight = 0.0
  config.render.geometry_gradients = "all"  # one backward pass: half the compile time
  workdir = str(tmp_path / "run")
  loop.train(config, workdir, mesh=trainer.make_mesh(jax.devices()[:1]),
              flame_model=small_flame_model())
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [line["step"] for line in lines if "loss" in line] == [1, 2]
  assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
  assert {"loss/silhouette", "loss/landmarks", "loss/l1"} <= set(lines[0])
  heldout = [line for line in lines if "heldout/landmark_error" in line]
  assert heldout[-1]["step"] == 2 and heldout[-1]["heldout/pairs"] == 4
  assert 0 < heldout[-1]["heldout/landmark_error"] < 2
  assert 0 < heldout[-1]["heldout/photometric_l1"] < 1
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
  assert os.listdir(os.path.join(workdir, "previews")) == ["00000002.png"]


def test_configuration_errors_are_one_line(built, tmp_path):
  root, _, _ = built
  config = small_config()
  config.data.update(name="video_folder", variant="mine", data_dir=str(root / "tfds"))
  with pytest.raises(datasets.ConfigError, match="python -m data.video_folder") as error:
    datasets.open_dataset(config)
  assert "\n" not in str(error.value)
  config.data.update(name="webcam")
  with pytest.raises(datasets.ConfigError, match="'webcam'"):
    datasets.open_dataset(config)
  config.data.update(name="video_folder", variant="astro", mix_with="synthetic_heads")
  with pytest.raises(datasets.ConfigError, match="name/variant"):
    datasets.open_dataset(config)
  config.data.update(mix_with="", synthetic_eval="video_folder/astro")
  with pytest.raises(datasets.ConfigError, match="only synthetic_heads"):
    datasets.synthetic_dataset(config, datasets.open_dataset(config))
  # An older build (other features) is refused, naming the command that rebuilds it.
  old = root / "tfds" / "video_folder" / "old" / "1.0.0"
  old.mkdir(parents=True)
  (old / "dataset_info.json").write_text("{}")
  config.data.update(variant="old", synthetic_eval="")
  with pytest.raises(datasets.ConfigError, match="version 1.0.0.*rebuild"):
    datasets.open_dataset(config)


def test_without_face_models_the_lbp_cascade_stands_in_with_a_warning(monkeypatch, tmp_path):
  def unavailable(*args, **kwargs):
    raise face.FaceModelsUnavailable("no cache and no registry")
  monkeypatch.setattr(face.FaceModels, "load", unavailable)
  frames, _ = demo_clip.make_clip(skimage_data.astronaut(), 3, FRAME_SIZE, shift=0.04)
  folder = tmp_path / "videos" / "clip"
  folder.mkdir(parents=True)
  for index, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f"{index:03d}.png")
  builder = VideoFolder(config=VideoFolderConfig(name="lbp", image_size=SIZE),
                        data_dir=str(tmp_path / "tfds"))
  with pytest.warns(UserWarning, match="LBP face detector.*python -m sheap_jax.face fetch"):
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "videos")))
  source = builder.as_data_source(split="train")
  assert len(source) == 3
  for record in (source[i] for i in range(len(source))):
    assert not record[frame_features.LANDMARKS_VALID].any() and record[frame_extras.MATTE] == b""
    assert record[frame_extras.FACE_SCORE] == 0.0


def test_synthetic_eval_is_refused_with_real_flame(built):
  root, _, _ = built
  config = small_config()
  config.flame_path = "/somewhere/FLAME2020"
  config.data.update(name="video_folder", variant="astro", data_dir=str(root / "tfds"),
                     synthetic_eval="synthetic_heads/demo")
  with pytest.raises(datasets.ConfigError, match="built-in head"):
    datasets.synthetic_dataset(config, datasets.open_dataset(config))
