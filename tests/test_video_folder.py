"""video_folder builder: a folder with a good clip, a corrupt file and a faceless clip builds one
video and reports the other two; landmark files drive the crops by SHeaP's rule."""
import logging
import os

import av
import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from data.synthetic_heads import features as frame_features
from data.video_folder import VideoFolder, VideoFolderConfig
from sheap_jax.geometry import camera, shading
from sheap_jax.head import flame, head_model
from sheap_jax.render import mesh_render

FRAME_W, FRAME_H = 160, 128
HEAD_PX = 96
OFFSETS = [(20, 10), (24, 12), (28, 14), (30, 18), (32, 20), (34, 22)]  # head patch top-left
CROP = 64


@pytest.fixture(scope="module")
def head_patch():
  """A 96 px render of the built-in head with painted hair, lips and dark eyes, so the LBP
  detector sees a face, and its 68 projected landmarks."""
  assets = head_model.build_head_assets()
  model = flame.FlameModel.from_assets(assets, n_shape=1, n_expr=1)
  masks = assets["masks"]
  colors = np.tile(np.array([0.85, 0.65, 0.52], np.float32), (model.num_vertices, 1))
  colors[masks["scalp"]] = (0.2, 0.13, 0.08)
  colors[masks["lips"]] = (0.7, 0.3, 0.3)
  for eye in ("left_eyeball", "right_eyeball"):
    colors[masks[eye]] = (0.1, 0.07, 0.05)
  out = flame.flame_forward(model, flame.FlameParams.zeros(1, 1, 1))
  cam = camera.default_camera(HEAD_PX, HEAD_PX)
  image = mesh_render.render_mesh(
      out.vertices[0], model.faces, cam, vertex_colors=colors, cull_backfaces=True,
      sh_coeffs=shading.ambient_directional_sh(0.5, 0.6, (0.3, -0.5, -1.0)),
      background=np.array([0.3, 0.5, 0.4], np.float32))
  landmarks, _ = camera.project_points(cam, out.landmarks68[0])
  return (np.clip(np.asarray(image.color), 0, 1) * 255).astype(np.uint8), np.asarray(landmarks)


def _frames(patch):
  frames = []
  for x, y in OFFSETS:
    frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    frame[...] = (77, 128, 102)
    frame[y:y + HEAD_PX, x:x + HEAD_PX] = patch
    frames.append(frame)
  return frames


def _write_video(path, frames):
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = FRAME_W, FRAME_H, "yuv420p"
    stream.options = {"crf": "12"}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def _build(manual_dir, data_dir, **options):
  """Builds with the LBP cascade unless options say otherwise: these painted heads are no
  photographs (the face models' tests are in test_face_data.py)."""
  options = dict(dict(face_models=False), **options)
  builder = VideoFolder(config=VideoFolderConfig(name="test", image_size=CROP, **options),
                        data_dir=str(data_dir))
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _records(builder):
  source = builder.as_data_source(split="train")
  return [source[i] for i in range(len(source))]


def _expected_boxes(landmarks, margin=0.9, shift_up=0.5, smoothing=0.3):
  """SHeaP's release rule, written out by hand (DESIGN.md 4.2): in coordinates normalised by
  the frame's size, h0 = half the landmark box's larger side, box c.x +- h0 (1 + margin) / (W/H),
  c.y - shift_up h0 +- h0 (1 + margin), clamped to [0, 1], cut on whole pixels, then
  b_t = int(0.3 box_t + 0.7 b_(t-1)) on those integer corners; returned as crop boxes."""
  size = np.array([FRAME_W, FRAME_H])
  boxes = []
  for points in landmarks:
    norm = (points + 0.5) / size
    (u0, v0), (u1, v1) = norm.min(0), norm.max(0)
    h0 = max(u1 - u0, v1 - v0) / 2
    h1, cu, cv = h0 * (1 + margin), (u0 + u1) / 2, (v0 + v1) / 2 - shift_up * h0
    box = np.clip([cu - h1 * FRAME_H / FRAME_W, cv - h1, cu + h1 * FRAME_H / FRAME_W, cv + h1],
                  0, 1)
    boxes.append([int(box[0] * FRAME_W), int(box[1] * FRAME_H), int(box[2] * FRAME_W),
                  int(box[3] * FRAME_H)])
  smoothed = [boxes[0]]
  for box in boxes[1:]:
    smoothed.append([int(smoothing * b + (1 - smoothing) * p) for b, p in zip(box, smoothed[-1])])
  return np.array(smoothed, np.float64) - 0.5


def test_builds_good_clip_and_reports_bad_files(head_patch, tmp_path, caplog):
  patch, _ = head_patch
  videos = tmp_path / "videos"
  videos.mkdir()
  _write_video(str(videos / "good.mp4"), _frames(patch))
  (videos / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
  rng = np.random.default_rng(1)
  blank = [np.full((FRAME_H, FRAME_W, 3), rng.integers(0, 255), np.uint8) for _ in OFFSETS]
  _write_video(str(videos / "empty_room.mp4"), blank)

  with caplog.at_level(logging.WARNING):
    builder = _build(videos, tmp_path / "tfds")
  assert builder.info.splits["train"].num_examples == len(OFFSETS)
  skipped = builder.info.metadata["skipped"]
  assert set(skipped) == {"broken.mp4", "empty_room.mp4"}
  assert "cannot decode" in skipped["broken.mp4"]
  assert "no face" in skipped["empty_room.mp4"]
  assert "broken.mp4" in caplog.text and "empty_room.mp4" in caplog.text

  records = _records(builder)
  assert [r[frame_features.FRAME_INDEX] for r in records] == list(range(len(OFFSETS)))
  assert {int(r[frame_features.VIDEO_NUM_FRAMES]) for r in records} == {len(OFFSETS)}
  assert len({int(r[frame_features.VIDEO_ID]) for r in records}) == 1
  assert {r["video_name"] for r in records} == {b"good.mp4"}
  for record in records:
    image = frame_features.decode_image(record[frame_features.IMAGE])
    assert image.shape == (CROP, CROP, 3) and image.dtype == np.uint8
    assert not record[frame_features.LANDMARKS_VALID].any()  # no landmark file, none invented
  # Detector path: each crop holds every true landmark, and its size is within 1.6x of the
  # box SHeaP's rule gives from the true landmarks (the detector's box-to-landmark constants
  # are fitted to synthetic_heads frames, not to this painted head).
  _, landmarks = head_patch
  truth = _expected_boxes([landmarks + np.array(offset) for offset in OFFSETS])
  for record, box, offset in zip(records, truth, OFFSETS):
    crop_box = record["crop_box"]
    points = landmarks + np.array(offset)
    assert np.all(points >= crop_box[:2]) and np.all(points <= crop_box[2:])
    assert 1 / 1.6 < (crop_box[2] - crop_box[0]) / (box[2] - box[0]) < 1.6


def test_landmark_files_set_crop_and_landmarks(head_patch, tmp_path):
  patch, landmarks = head_patch
  clip = tmp_path / "videos" / "person_a"
  clip.mkdir(parents=True)
  truth = []
  for index, (frame, offset) in enumerate(zip(_frames(patch), OFFSETS)):
    Image.fromarray(frame).save(clip / f"{index:03d}.png")
    points = landmarks + np.array(offset, np.float32)
    if index == 2:
      points[30] = np.nan  # a point the detector missed
    np.save(clip / f"{index:03d}.npy", points)
    truth.append(points)
  builder = _build(tmp_path / "videos", tmp_path / "tfds")
  records = _records(builder)
  assert len(records) == len(OFFSETS) and not builder.info.metadata["skipped"]
  boxes = _expected_boxes([p[np.isfinite(p).all(1)] for p in truth])
  for record, box, points in zip(records, boxes, truth):
    np.testing.assert_allclose(record["crop_box"], box, atol=1e-3)
    expected = (points - box[:2]) * CROP / (box[2:] - box[:2]) - 0.5  # clamped: not square
    valid = np.isfinite(points).all(1) & np.all(
        (expected >= -0.5) & (expected <= CROP - 0.5), axis=1)  # found, and inside the crop
    assert valid.sum() >= 60
    np.testing.assert_array_equal(record[frame_features.LANDMARKS_VALID], valid)
    np.testing.assert_allclose(record[frame_features.LANDMARKS][valid], expected[valid],
                               atol=1e-3)
    # Landmarks land on the face: the crop is the head, not the green background, under them
    # (inner points: the jaw contour 0-16 lies on the head's silhouette, where resampled pixels
    # mix in the background).
    image = frame_features.decode_image(record[frame_features.IMAGE]).astype(int)
    x, y = np.round(expected[valid & (np.arange(len(points)) >= 17)]).astype(int).T
    assert np.mean(np.abs(image[y, x] - (77, 128, 102)).sum(-1) > 40) > 0.95


def test_folder_without_usable_video_is_reported(tmp_path):
  with pytest.raises(Exception, match="nowhere does not exist"):
    _build(tmp_path / "nowhere", tmp_path / "tfds")
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "readme.txt").write_text("no videos here")
  with pytest.raises(FileNotFoundError, match="no videos or frame folders in .*notes"):
    _build(tmp_path / "notes", tmp_path / "tfds")
  (tmp_path / "notes" / "clip.avi").write_bytes(b"not a video")
  with pytest.raises(ValueError, match="no usable video; skipped: clip.avi"):
    _build(tmp_path / "notes", tmp_path / "tfds")


def test_bad_landmark_file_skips_only_that_video(head_patch, tmp_path):
  patch, _ = head_patch
  videos = tmp_path / "videos"
  videos.mkdir()
  _write_video(str(videos / "a.mp4"), _frames(patch))
  _write_video(str(videos / "b.mp4"), _frames(patch))
  np.save(videos / "b.npy", np.zeros((len(OFFSETS), 5, 2)))
  builder = _build(videos, tmp_path / "tfds")
  assert builder.info.splits["train"].num_examples == len(OFFSETS)
  assert "landmarks must be shaped" in builder.info.metadata["skipped"]["b.mp4"]
  assert os.path.basename(str(videos / "b.npy")) in builder.info.metadata["skipped"]["b.mp4"]
