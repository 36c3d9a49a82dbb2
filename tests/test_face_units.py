"""sheap_jax.face without the models: anchors, decoding and NMS, the crop geometry, the One-Euro
filter, frame checks and the model fetching's checks and messages."""
import hashlib
import math
import zipfile

import numpy as np
import pytest
from scipy import ndimage

from sheap_jax.face import detector, geometry, matte, models, tracker, weights


def test_anchor_centres_follow_the_ssd_grids():
  short = detector.anchor_centres(detector.SHORT_RANGE)
  full = detector.anchor_centres(detector.FULL_RANGE)
  assert short.shape == (896, 2) and full.shape == (2304, 2)
  # Reference, written out: stride 8 -> 16x16 cells with 2 anchors; the three stride-16 layers
  # merged -> 8x8 cells with 6 anchors; full range: stride 4 -> 48x48 cells with 1 anchor.
  expected = []
  for cells, per_cell in ((16, 2), (8, 6)):
    for row in range(cells):
      for col in range(cells):
        expected += [((col + 0.5) / cells, (row + 0.5) / cells)] * per_cell
  np.testing.assert_allclose(short, expected)
  np.testing.assert_allclose(full[49], [1.5 / 48, 1.5 / 48])
  np.testing.assert_allclose(full[-1], [47.5 / 48, 47.5 / 48])


def test_decode_and_weighted_nms_average_the_overlapping_candidates(rng):
  size = 128
  anchors = rng.uniform(0.3, 0.7, (3, 2))
  boxes = np.array([[0.30, 0.30, 0.50, 0.50], [0.32, 0.31, 0.52, 0.49], [0.70, 0.70, 0.80, 0.85]])
  keypoints = rng.uniform(0, 1, (3, 6, 2))
  scores = np.array([0.9, 0.6, 0.7])
  # Encode as the model does: centre and keypoints relative to the anchor, in input pixels.
  raw = np.zeros((3, 16))
  raw[:, 0:2] = ((boxes[:, :2] + boxes[:, 2:]) / 2 - anchors) * size
  raw[:, 2:4] = (boxes[:, 2:] - boxes[:, :2]) * size
  raw[:, 4:] = ((keypoints - anchors[:, None]) * size).reshape(3, 12)
  logits = np.log(scores / (1 - scores))
  got_boxes, got_points, got_scores = detector.decode(raw, logits, anchors, size)
  np.testing.assert_allclose(got_boxes, boxes, atol=1e-12)
  np.testing.assert_allclose(got_points, keypoints, atol=1e-12)
  np.testing.assert_allclose(got_scores, scores)
  kept = detector.weighted_nms(got_boxes, got_points, got_scores)
  np.testing.assert_allclose([k[2] for k in kept], [0.9, 0.7])
  np.testing.assert_allclose(kept[0][0], (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5)
  np.testing.assert_allclose(kept[0][1], (0.9 * keypoints[0] + 0.6 * keypoints[1]) / 1.5)
  np.testing.assert_allclose(kept[1][0], boxes[2])


def _random_rect(rng, image_size, side):
  return geometry.RotatedRect(*rng.uniform(0.35, 0.65, 2) * image_size, side,
                              side * rng.uniform(1.0, 1.2), rng.uniform(-math.pi, math.pi))


@pytest.mark.parametrize("side_over_size, factor", [(1.3, 1), (3.4, 3)])
def test_warp_samples_the_rotated_rectangle_bilinearly(rng, side_over_size, factor):
  size = 24
  image = rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)
  rect = _random_rect(rng, np.array([120, 96]), size * side_over_size)
  got = geometry.warp(image, rect, size, replicate_border=True).astype(np.float64)
  # Reference: scipy's bilinear sampling at each input pixel centre's frame position, on the
  # image averaged over factor x factor blocks (edge pixels repeated), as the warp shrinks it.
  x0, y0 = np.floor(rect.bounds()[:2]).astype(int) - 1
  rows = np.clip(np.arange(y0, y0 + 100 * factor), 0, 95)
  cols = np.clip(np.arange(x0, x0 + 130 * factor), 0, 119)
  padded = image[rows][:, cols].astype(np.float64)
  blocks = padded.reshape(100, factor, 130, factor, 3).mean(axis=(1, 3))
  u, v = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
  frame = rect.tensor_to_frame(np.stack([u.ravel(), v.ravel()], 1), size)
  block = (frame - [x0, y0] + 0.5) / factor - 0.5
  expected = np.stack([ndimage.map_coordinates(blocks[..., c], [block[:, 1], block[:, 0]],
                                               order=1) for c in range(3)], -1)
  # uint8 rounding in the shrink and the warp: within 2 levels (a 0.02-pixel shift of this
  # random image moves levels by more).
  np.testing.assert_allclose(got.reshape(-1, 3), expected, atol=2.0)


def test_rect_maps_points_both_ways_and_turns_with_the_eyes(rng):
  rect = _random_rect(rng, np.array([200, 150]), 60)
  points = rng.uniform(0, 192, (10, 2))
  np.testing.assert_allclose(rect.frame_to_tensor(rect.tensor_to_frame(points, 192), 192),
                             points)
  start, end = rng.uniform(0, 100, 2), rng.uniform(0, 100, 2)
  turned = geometry.rect_from_keypoints([0, 0, 10, 20], start, end)
  axis = turned.rotation()[:, 0]  # the rectangle's x axis in the frame
  np.testing.assert_allclose(axis, (end - start) / np.linalg.norm(end - start))
  square = turned.scaled_square(1.5)
  assert square.width == square.height == 30


def test_matte_input_covers_the_frame_and_maps_back(rng):
  # The input: a ramp image in x and y reaches the model as the same ramp over 256 x 256 only
  # if the input covers the frame edge to edge. The way back: a stand-in model's random output
  # must come back as its bilinear interpolation at each frame pixel's place in the 256 x 256
  # output (scipy as the reference), edge to edge.
  height, width = rng.integers(300, 700, 2)
  slope = rng.uniform(-1, 1, 2) * 120  # levels across the frame; they stay in 8..248
  x, y = (np.arange(width) + 0.5) / width - 0.5, (np.arange(height) + 0.5) / height - 0.5
  ramp = 128 + x[None] * slope[0] + y[:, None] * slope[1]
  image = np.repeat(np.round(ramp)[..., None], 3, axis=2).astype(np.uint8)
  output = rng.integers(0, 256, (256, 256)) / 255
  seen = []

  def stand_in(tensor):
    seen.append(tensor)
    return [output[None, ..., None]]
  alpha = matte.run(stand_in, image)
  [tensor] = seen
  u = (np.arange(256) + 0.5) / 256 - 0.5
  expected_input = (128 + u[None] * slope[0] + u[:, None] * slope[1]) / 255
  np.testing.assert_allclose(tensor[0, 2:-2, 2:-2, 0], expected_input[2:-2, 2:-2], atol=1.5 / 255)
  assert alpha.shape == (height, width) and alpha.dtype == np.float32
  rows, cols = np.meshgrid((y + 0.5) * 256 - 0.5, (x + 0.5) * 256 - 0.5, indexing="ij")
  expected = ndimage.map_coordinates(output, [rows, cols], order=1)
  inner = (slice(2, -2), slice(2, -2))
  # 8-bit resizing (fixed-point weights, rounding): within a level; a quarter-pixel shift
  # would move these random values by about 20 levels.
  np.testing.assert_allclose(alpha[inner], expected[inner], atol=1.01 / 255)


def test_one_euro_without_beta_is_an_exponential_average(rng):
  values = rng.normal(size=(20, 68, 2))
  state = tracker._OneEuroState(tracker.OneEuro(min_cutoff=2.0, beta=0.0))
  dt = 1 / 30
  alpha = 1 / (1 + 30 / (2 * math.pi * 2.0))
  expected = values[0]
  np.testing.assert_allclose(state(values[0], dt, 1.0), expected)
  for value in values[1:]:
    expected = expected + alpha * (value - expected)
    np.testing.assert_allclose(state(value, dt, 1.0), expected)


def test_one_euro_follows_fast_motion_more_closely_with_beta():
  track = np.arange(30)[:, None, None] * np.full((1, 68, 2), 5.0)  # 5 px per frame
  lags = []
  for beta in (0.0, 20.0):
    state = tracker._OneEuroState(tracker.OneEuro(beta=beta))
    out = [state(v, 1 / 30, 30.0) for v in track]
    lags.append(np.abs(out[-1] - track[-1]).max())
  assert lags[1] < 0.2 * lags[0]


@pytest.mark.parametrize("frame, problem", [
    (None, "no image"), ([[1, 2, 3]], "numpy array"), (np.zeros((8, 8), np.uint8), "(H, W, 3)"),
    (np.zeros((8, 8, 3), np.float32), "uint8"), (np.zeros((1, 8, 3), np.uint8), "too small")])
def test_bad_frames_are_named_with_their_problem(frame, problem):
  with pytest.raises(models.BadFrame, match=r"frame 7: .*" + problem.replace("(", r"\(")
                     .replace(")", r"\)")):
    models.check_frame(frame, "frame 7")


def _fake_wheel(path, contents):
  with zipfile.ZipFile(path, "w") as archive:
    for name, (member, _) in weights.MODELS.items():
      archive.writestr(member, contents.get(name, b"not a model"))
  return str(path)


def test_extraction_checks_the_wheel_and_every_file(tmp_path, monkeypatch):
  wheel = _fake_wheel(tmp_path / "fake.whl", {})
  with pytest.raises(weights.FaceModelsUnavailable, match="SHA-256 differs from the pinned"):
    weights.extract_models(wheel, str(tmp_path / "cache"))
  monkeypatch.setattr(weights, "WHEEL_SHA256", hashlib.sha256(open(wheel, "rb").read())
                      .hexdigest())
  with pytest.raises(weights.FaceModelsUnavailable, match="face_detection_short_range.tflite "
                     "has SHA-256 .*not the pinned"):
    weights.extract_models(wheel, str(tmp_path / "cache"))
  assert not list((tmp_path / "cache").iterdir())  # nothing unchecked left behind


def test_missing_models_and_no_registry_name_the_fetch_command(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / "face_landmark.tflite").write_bytes(b"corrupt")
  assert weights.missing_models(str(cache)) == list(weights.MODELS)

  def no_registry(into):
    raise weights.FaceModelsUnavailable("pip download mediapipe==0.10.14 failed: no network")
  monkeypatch.setattr(weights, "download_wheel", no_registry)
  monkeypatch.setenv(weights.CACHE_ENV, str(cache))
  with pytest.raises(weights.FaceModelsUnavailable) as error:
    models.FaceModels.load()
  message = str(error.value)
  assert weights.FETCH_COMMAND in message and str(cache) in message and "no network" in message
