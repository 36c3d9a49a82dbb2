"""sheap_jax.face with the real models, on scikit-image's astronaut and clips made from it.

The models load once per module; without them (no cache, no package registry) these tests
skip with the reason (`python -m sheap_jax.face fetch` gets them)."""
import numpy as np
import pytest
import skimage.data
from PIL import Image

from data.pairs import FLIP_PERMUTATION
from sheap_jax import face
from sheap_jax.face import demo_clip

# Hand-checked on the 512 x 512 astronaut (a 10-pixel grid drawn over a 4x zoom): the face from
# hairline to chin and cheek to cheek, the pupils (her right eye is on the image's left), the
# nose tip.
FACE_BOX = np.array([180.0, 82.0, 268.0, 170.0])
PUPILS = np.array([[203.7, 101.2], [246.0, 103.0]])
NOSE_TIP = np.array([222.5, 127.5])


@pytest.fixture(scope="module")
def models():
  try:
    return face.FaceModels.load()
  except face.FaceModelsUnavailable as error:
    pytest.skip(f"face models unavailable: {error}")


@pytest.fixture(scope="module")
def astronaut():
  return skimage.data.astronaut()


@pytest.fixture(scope="module")
def astronaut_points(models, astronaut):
  points, score, valid = models.landmarks68(astronaut)
  assert score > 0.9 and valid.all()
  return points


@pytest.mark.parametrize("model, min_iou", [("short", 0.8), ("full", 0.65)])
def test_detection_matches_the_hand_checked_face(models, astronaut, model, min_iou):
  faces = models.detect(astronaut, model)
  assert len(faces) == 1
  [found] = faces
  assert found.score > 0.8
  # The full-range model's box also takes in the forehead up to the hair.
  assert face.geometry.box_iou(found.box, FACE_BOX) > min_iou
  assert np.linalg.norm(found.keypoints[:2] - PUPILS, axis=1).max() < 6.0


def test_landmarks_land_on_the_hand_checked_features(models, astronaut, astronaut_points):
  eyes = np.stack([astronaut_points[36:42].mean(0), astronaut_points[42:48].mean(0)])
  assert np.linalg.norm(eyes - PUPILS, axis=1).max() < 4.0
  assert np.linalg.norm(astronaut_points[30] - NOSE_TIP) < 5.0
  inside = (astronaut_points >= FACE_BOX[:2] - 5) & (astronaut_points <= FACE_BOX[2:] + 5)
  assert inside.all()
  found = models.landmarks(astronaut)
  assert found.landmark_type == face.LANDMARK_TYPE == "3d"
  assert found.mesh.points.shape == (468, 3)


def test_landmarks_of_the_mirrored_picture_are_the_mirrored_landmarks(models, astronaut,
                                                                      astronaut_points):
  points, _, valid = models.landmarks68(np.ascontiguousarray(astronaut[:, ::-1]))
  assert valid.all()
  width = astronaut.shape[1]
  mirrored = np.stack([width - 1 - points[:, 0], points[:, 1]], -1)[FLIP_PERMUTATION]
  errors = np.linalg.norm(mirrored - astronaut_points, axis=1)
  inter_ocular = np.linalg.norm(astronaut_points[36] - astronaut_points[45])
  assert errors.mean() < 0.03 * inter_ocular and errors.max() < 0.06 * inter_ocular


def test_tracking_follows_a_moving_turning_zooming_clip(models, astronaut, astronaut_points):
  # At its fastest the face moves a third of its width per frame.
  frames, affines = demo_clip.make_clip(astronaut, 24)
  expected = np.stack([demo_clip.apply(a, astronaut_points) for a in affines])
  raw = models.track(frames, smoothing=None)
  assert raw.skipped == [] and raw.detected.sum() == 1  # detected once, then tracked
  assert raw.valid.all()
  errors = np.linalg.norm(raw.points - expected, axis=-1)
  assert errors.mean(axis=1).max() < 1.5 and np.median(errors) < 1.0
  smoothed = models.track(frames)
  assert np.linalg.norm(smoothed.points - expected, axis=-1).mean(axis=1).max() < 2.5


def test_smoothing_removes_jitter_on_a_still_face(models, astronaut, rng):
  still, _ = demo_clip.make_clip(astronaut, 1)
  noisy = [np.clip(still[0] + rng.normal(0, 6, still[0].shape), 0, 255).astype(np.uint8)
           for _ in range(24)]
  jitter = [np.linalg.norm(np.diff(models.track(noisy, **options).points, axis=0), axis=-1)
            .mean() for options in ({"smoothing": None}, {})]
  assert jitter[1] < 0.6 * jitter[0]


def test_no_face_in_noise_or_a_flat_picture(models, rng):
  for image in (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
                np.full((200, 300, 3), 128, np.uint8)):
    assert models.detect(image) == []
    points, score, valid = models.landmarks68(image)
    assert score == 0.0 and not valid.any() and not points.any()


def test_tiny_faces(models, astronaut):
  def framed(side):
    frame = np.full((256, 256, 3), 128, np.uint8)
    frame[100:100 + side, 80:80 + side] = np.asarray(
        Image.fromarray(astronaut).resize((side, side), Image.Resampling.BILINEAR))
    return frame
  _, score, valid = models.landmarks68(framed(48))  # a 9-pixel face: out of reach
  assert score == 0.0 and not valid.any()
  points, _, valid = models.landmarks68(framed(96))  # an 18-pixel face is still found
  assert valid.all()
  assert np.linalg.norm(points[30] - (NOSE_TIP * 96 / 512 + [80, 100])) < 1.5


def test_tracking_skips_corrupt_and_faceless_frames(models, astronaut):
  frames, _ = demo_clip.make_clip(astronaut, 6)
  frames[1] = None
  frames[2] = frames[2].astype(np.float32)
  frames[3] = frames[3][..., 0]
  frames[4] = np.full_like(frames[0], 128)
  with pytest.warns(UserWarning) as warned:
    result = models.track(frames)
  assert [str(w.message).split(":")[1] for w in warned] == [" frame 1", " frame 2", " frame 3"]
  assert [index for index, _ in result.skipped] == [1, 2, 3, 4]
  reasons = dict(result.skipped)
  assert "uint8" in reasons[2] and "(H, W, 3)" in reasons[3] and "no face" in reasons[4]
  assert result.found.tolist() == [True, False, False, False, False, True]
  assert not result.points[1:5].any() and (result.scores[1:5] == 0).all()


def test_matte_keeps_the_person_and_drops_the_backdrop(models, astronaut):
  alpha = models.matte(astronaut)
  assert alpha.shape == astronaut.shape[:2] and alpha.dtype == np.float32
  assert 0.0 <= alpha.min() and alpha.max() <= 1.0
  x0, y0, x1, y1 = FACE_BOX.astype(int)
  assert alpha[y0:y1, x0:x1].mean() > 0.95
  assert alpha[45:70, 190:250].mean() > 0.9  # hair is foreground
  assert alpha[:60, :60].mean() < 0.1 and alpha[:60, -100:].mean() < 0.1



def test_draw_command_writes_the_three_panels(models, tmp_path):
  from sheap_jax.face import __main__ as cli
  out = tmp_path / "face.png"
  assert cli.main(["draw", "--out", str(out)]) == 0
  assert Image.open(out).size == (3 * 256, 256)


def test_fetch_command_with_the_models_cached(models, capsys):
  from sheap_jax.face import __main__ as cli
  assert cli.main(["fetch"]) == 0
  assert "SHA-256 checked" in capsys.readouterr().out
