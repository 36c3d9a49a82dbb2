"""Face crops: SHeaP's boxes against the release's rule written out independently and against
hand-computed numbers, resampling against SciPy and exact linear images, point mapping against
the resampled pixels."""
import numpy as np
import pytest
from scipy import ndimage

from sheap_jax.face import crop


def _release_rule(points, width, height, margin, shift_up):
  """DESIGN.md 4.2 written out on its own: the integer corners (x0, y0, x1, y1) of the array
  slice SHeaP's release crops for landmarks `points` (N, 2) (pixel centres at integers, so the
  image's outer edges are normalised to 0 and 1)."""
  norm = (np.asarray(points, np.float64) + 0.5) / np.array([width, height])
  low, high = norm.min(0), norm.max(0)
  centre = (low + high) / 2
  h0 = (high - low).max() / 2
  if h0 <= 0.02:
    box = [0.0, 0.0, 1.0, 1.0]
  else:
    shift, h1 = shift_up * h0, h0 * (1 + margin)
    box = [centre[0] - h1 / (width / height), centre[1] - shift - h1,
           centre[0] + h1 / (width / height), centre[1] - shift + h1]
  x0, y0, x1, y1 = np.clip(box, 0.0, 1.0)
  return [int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height)]


def _slice(box):
  """A crop box on whole pixels -> the integer corners of its array slice."""
  edges = np.asarray(box) + 0.5
  np.testing.assert_array_equal(edges, np.round(edges))
  return edges.astype(int).tolist()


@pytest.mark.parametrize("width, height", [(64, 64), (96, 48), (48, 96)])
def test_video_box_is_the_release_rule(rng, width, height):
  """Random landmark clouds on square, landscape and portrait frames, small ones inside the
  frame and large ones anywhere (so the clamp acts), at the video defaults and at random margins
  and shifts."""
  clamped = 0
  for trial in range(60):
    inside = trial % 2 == 0
    frame = np.array([width, height])
    centre = (rng.uniform(0.25, 0.75, 2) if inside else rng.uniform(-0.1, 1.1, 2)) * frame
    spread = (rng.uniform(0.02, 0.15, 2) if inside else rng.uniform(0.05, 0.5, 2)) * frame
    points = centre + spread * rng.uniform(-1, 1, (68, 2))
    margin, shift_up = (crop.VIDEO_MARGIN, crop.VIDEO_SHIFT_UP) if trial % 4 < 2 else (
        rng.uniform(0.0, 1.5), rng.uniform(-0.5, 1.0))
    expected = _release_rule(points, width, height, margin, shift_up)
    if expected[2] <= expected[0] or expected[3] <= expected[1]:
      expected = [0, 0, width, height]  # face outside the frame: whole image, not an empty slice
    got = crop.video_box(crop.landmarks_box(points), width, height, margin, shift_up)
    assert _slice(got) == expected, (points, margin, shift_up)
    clamped += expected[0] == 0 or expected[1] == 0 or expected[2] == width or \
        expected[3] == height
  assert 0 < clamped < 60  # both clamped and free boxes were drawn
  assert (crop.VIDEO_MARGIN, crop.VIDEO_SHIFT_UP, crop.VIDEO_SMOOTHING) == (0.9, 0.5, 0.3)


def test_video_box_hand_computed_and_edge_cases():
  # 200 x 200 frame, landmark box 60 x 100 px whose edges normalise to (0.35, 0.25, 0.65, 0.75):
  # c = (0.5, 0.5), h0 = 0.25, shift 0.125, h1 = 0.475 -> x 0.025..0.975, y -0.1..0.85 clamped
  # to 0..0.85: pixels 5..194 x 0..169. Below the chin: 170 - 150 = 0.20 of the landmark box
  # height (DESIGN.md 4.2), where the old rule (margin 0.75, shift 0.35 h) left 0.025.
  face = [69.5, 49.5, 129.5, 149.5]
  assert _slice(crop.video_box(face, 200, 200)) == [5, 0, 195, 170]
  # Landscape 400 x 200: the same face in normalised units is half as wide, so h0 comes from
  # its height alone; x half-width h1 / (w / h) keeps the box square in pixels: 190 x 190.
  wide = [139.5, 49.5, 259.5, 149.5]  # normalised x 0.35..0.65 again, c.x = 0.5
  assert _slice(crop.video_box(wide, 400, 200)) == [105, 0, 295, 170]
  # Leading dimensions broadcast.
  np.testing.assert_array_equal(crop.video_box(np.array([face, face])[None], 200, 200),
                                np.array([[crop.video_box(face, 200, 200)] * 2]))
  # Too small (h0 = 0.0175 <= 0.02): the whole image; just above: the rule.
  assert _slice(crop.video_box([99.5, 99.5, 106.5, 99.5], 200, 200)) == [0, 0, 200, 200]
  assert _slice(crop.video_box([99.5, 99.5, 108.5, 99.5], 200, 200)) == \
      _release_rule([[99.5, 99.5], [108.5, 99.5]], 200, 200, 0.9, 0.5)
  # A face entirely outside the frame would leave an empty slice: the whole image instead.
  assert _slice(crop.video_box([300, 10, 360, 70], 200, 100)) == [0, 0, 200, 100]
  # No face: the release's centre square (the odd pixel goes to the far side).
  assert _slice(crop.centre_square_box(200, 200)) == [0, 0, 200, 200]
  assert _slice(crop.centre_square_box(161, 100)) == [30, 0, 130, 100]
  assert _slice(crop.centre_square_box(64, 97)) == [0, 16, 64, 80]
  # Invalid landmarks do not count in the landmark box.
  points = np.array([[100, 120], [160, 80], [130, 180], [120, 150]], np.float32)
  valid = np.array([True, True, False, True])
  np.testing.assert_array_equal(crop.landmarks_box(points, valid), [100, 80, 160, 150])


def test_now_box_matches_hand_computed_numbers():
  # NoW detected_face 40 wide, 60 high at (10, 20): +80% -> 72 x 108 about (30, 50), then
  # padded to a 108 square about the same centre.
  np.testing.assert_allclose(crop.now_box([10, 20, 50, 80]), [-24, -4, 84, 104])
  np.testing.assert_allclose(crop.now_box([[0, 0, 10, 10]], enlarge=0.5), [[-2.5, -2.5, 12.5,
                                                                             12.5]])


def test_smooth_boxes_is_the_release_moving_average(rng):
  """b_t = int(0.3 c_t + 0.7 b_(t-1)) on integer corners, as the release's video demo does."""
  corners = np.sort(rng.integers(0, 300, (20, 2, 2)), axis=1).transpose(0, 2, 1).reshape(20, 4)
  corners = corners[:, [0, 2, 1, 3]] + [0, 0, 1, 1]
  expected = [corners[0].tolist()]
  for box in corners[1:].tolist():
    expected.append([int(0.3 * b + 0.7 * p) for b, p in zip(box, expected[-1])])
  smoothed = crop.smooth_boxes(corners - 0.5)
  assert [_slice(b) for b in smoothed] == expected
  np.testing.assert_array_equal(crop.smooth_boxes(corners - 0.5, 1.0), corners - 0.5)
  # Truncation, not rounding: a still face's box settles up to a pixel short (0.3 * 3 + 0.7 * 3
  # is 2.9999999999999996 in floating point), as in the release.
  still = np.array([[3, 3, 103, 103]] * 3) - 0.5
  assert _slice(crop.smooth_boxes(still)[-1]) == [2, 2, 103, 103]


def test_landmark_box_from_detection():
  box = crop.landmark_box_from_detection([10, 20, 110, 120])  # side 100, centre (60, 70)
  shift, (width, height) = crop.DETECTION_TO_LANDMARKS_SHIFT, crop.DETECTION_TO_LANDMARKS_SIZE
  np.testing.assert_allclose(box, [60 - 50 * width, 70 + 100 * shift - 50 * height,
                                   60 + 50 * width, 70 + 100 * shift + 50 * height])


def test_point_mapping_round_trip_and_corners():
  rng = np.random.default_rng(1)
  box = np.array([12.3, -4.0, 80.3, 70.0])
  points = rng.uniform(-20, 100, (10, 2))
  mapped = crop.points_to_crop(points, box, 64)
  np.testing.assert_allclose(crop.points_from_crop(mapped, box, 64), points, atol=1e-4)
  # The box's corners are the crop's outer pixel edges; its centre is the crop's centre.
  corners = crop.points_to_crop([[12.3, -4.0], [80.3, 70.0], [46.3, 33.0]], box, 64)
  np.testing.assert_allclose(corners, [[-0.5, -0.5], [63.5, 63.5], [31.5, 31.5]], atol=1e-5)


def test_upscaling_crop_is_bilinear_interpolation():
  rng = np.random.default_rng(2)
  image = rng.random((40, 50, 3)).astype(np.float32)
  box = np.array([5.3, 7.1, 25.3, 27.1])
  out = crop.crop_image(image, box, 64)
  centres = crop.points_from_crop(np.stack(np.meshgrid(np.arange(64), np.arange(64)), -1)
                                  .reshape(-1, 2), box, 64)
  expected = np.stack([ndimage.map_coordinates(image[..., c], centres[:, ::-1].T, order=1)
                       for c in range(3)], -1).reshape(64, 64, 3)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_shrinking_crop_keeps_linear_images_exact():
  """An antialiasing filter that is symmetric and normalised leaves a linear image linear."""
  rng = np.random.default_rng(3)
  a, b, c = rng.normal(size=3)
  yy, xx = np.mgrid[:200, :300]
  image = (a + b * xx / 100 + c * yy / 100).astype(np.float32)[..., None]
  box = np.array([40.2, 30.7, 240.2, 170.7])  # 200 x 140 -> 32 x 32: shrinks 6x and 4x
  out = crop.crop_image(image, box, 32)[..., 0]
  x, y = crop.points_from_crop(np.stack(np.meshgrid(np.arange(32), np.arange(32)), -1)
                               .reshape(-1, 2), box, 32).T
  np.testing.assert_allclose(out.ravel(), a + b * x / 100 + c * y / 100, atol=1e-3)
  # A box as big as the image shrinks a 0/1 checkerboard to its mean, not to aliasing.
  board = ((xx // 1 + yy // 1) % 2).astype(np.float32)[:192, :192, None]
  shrunk = crop.crop_image(board, [-0.5, -0.5, 191.5, 191.5], 24)
  np.testing.assert_allclose(shrunk[2:-2, 2:-2], 0.5, atol=0.02)


def test_outside_the_image_is_fill_and_uint8_matches_float():
  rng = np.random.default_rng(4)
  image = rng.integers(0, 256, (30, 40, 3), np.uint8)
  box = np.array([-20.5, -10.5, 19.5, 29.5])  # left half and top third outside
  out = crop.crop_image(image, box, 40, fill=7)
  assert out.dtype == np.uint8 and out.shape == (40, 40, 3)
  assert np.all(out[:, :20] == 7) and np.all(out[:10] == 7)
  np.testing.assert_array_equal(out[10:, 20:], image[:, :20])  # 1:1 scale: exact copy
  as_float = crop.crop_image(image.astype(np.float32), box, 40, fill=7)
  assert np.abs(as_float - out.astype(np.float32)).max() <= 0.5 + 1e-3


def test_points_follow_image_content():
  """A bright pixel maps to where points_to_crop sends its coordinates."""
  image = np.zeros((60, 80, 1), np.float32)
  image[23, 57] = 1.0
  box = np.array([50.0, 15.0, 66.0, 31.0])  # 16 px -> 64: upscaled 4x
  out = crop.crop_image(image, box, 64)[..., 0]
  ys, xs = np.mgrid[:64, :64]
  centroid = np.array([(xs * out).sum(), (ys * out).sum()]) / out.sum()
  np.testing.assert_allclose(centroid, crop.points_to_crop([[57, 23]], box, 64)[0], atol=0.05)


def test_detector_finds_no_face_in_noise_and_iou():
  rng = np.random.default_rng(5)
  assert crop.detect_faces(rng.integers(0, 256, (64, 64, 3), np.uint8)).shape == (0, 4)
  assert crop.detect_faces(np.zeros((20, 20, 3), np.float32)).shape == (0, 4)
  # Boxes 10x10 overlapping on 5x10: IoU = 50 / 150.
  np.testing.assert_allclose(crop.box_iou([0, 0, 10, 10], [5, 0, 15, 10]), 1 / 3)


@pytest.mark.parametrize("call, message", [
    (lambda: crop.landmarks_box(np.zeros((68, 3))), "landmarks must be"),
    (lambda: crop.landmarks_box(np.full((68, 2), np.nan)), "at least two valid"),
    (lambda: crop.now_box([10, 10, 5, 20]), "empty box"),
    (lambda: crop.smooth_boxes(np.ones((3, 4)) * [0, 0, 1, 1], 0.0), "smoothing"),
    (lambda: crop.smooth_boxes(np.ones((3, 4)) * [0, 0, 1.2, 1]), "whole pixels"),
    (lambda: crop.video_box(np.zeros((68, 2)), 64, 64), "must end in 4 values"),
    (lambda: crop.video_box([10, 10, 5, 20], 64, 64), "empty box"),
    (lambda: crop.crop_image(np.zeros((8, 8)), [0, 0, 4, 4]), "image must be"),
])
def test_bad_input_is_named(call, message):
  with pytest.raises(ValueError, match=f"sheap_jax/face/crop.py: .*{message}"):
    call()
