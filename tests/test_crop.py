"""Face crops: SHeaP's boxes against hand-computed numbers, resampling against SciPy and exact
linear images, point mapping against the resampled pixels."""
import numpy as np
import pytest
from scipy import ndimage

from sheap_jax import crop


def test_video_box_matches_hand_computed_numbers():
  # Landmark box x 100..160 (w 60), y 80..180 (h 100). Margin 0.75 -> side 1.75 * 100 = 175;
  # centre (130, 130) moved up by 0.35 * 100 = 35 -> (130, 95).
  landmarks = np.array([[100, 120], [160, 80], [130, 180], [120, 150]], np.float32)
  np.testing.assert_allclose(crop.video_box(landmarks), [42.5, 7.5, 217.5, 182.5])
  # Margin 0.6, shift 0.2: side 160, centre (130, 110).
  np.testing.assert_allclose(crop.video_box(landmarks, margin=0.6, shift_up=0.2),
                             [50, 30, 210, 190])
  # Invalid points do not count: without (130, 180) the box is y 80..150 (h 70 > w 60), so
  # the side is 1.75 * 70 = 122.5 about (130, 115).
  valid = np.array([True, True, False, True])
  np.testing.assert_allclose(crop.video_box(landmarks, valid, margin=0.75, shift_up=0.0),
                             [68.75, 53.75, 191.25, 176.25])


def test_now_box_matches_hand_computed_numbers():
  # NoW detected_face 40 wide, 60 high at (10, 20): +80% -> 72 x 108 about (30, 50), then
  # padded to a 108 square about the same centre.
  np.testing.assert_allclose(crop.now_box([10, 20, 50, 80]), [-24, -4, 84, 104])
  np.testing.assert_allclose(crop.now_box([[0, 0, 10, 10]], enlarge=0.5), [[-2.5, -2.5, 12.5,
                                                                             12.5]])


def test_smooth_boxes_is_an_exponential_moving_average():
  rng = np.random.default_rng(0)
  boxes = np.sort(rng.uniform(0, 100, (6, 2, 2)), axis=1).transpose(0, 2, 1).reshape(6, 4)
  boxes = boxes[:, [0, 2, 1, 3]]
  expected = [boxes[0]]
  for box in boxes[1:]:
    expected.append(0.3 * box + 0.7 * expected[-1])
  np.testing.assert_allclose(crop.smooth_boxes(boxes), expected)
  np.testing.assert_allclose(crop.smooth_boxes(boxes, 1.0), boxes)


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
    (lambda: crop.crop_image(np.zeros((8, 8)), [0, 0, 4, 4]), "image must be"),
])
def test_bad_input_is_named(call, message):
  with pytest.raises(ValueError, match=f"sheap_jax/crop.py: .*{message}"):
    call()
