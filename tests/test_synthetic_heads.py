"""synthetic_heads: build without TensorFlow, read back, and check the data against
independent references (FLAME forward pass, the mesh renderer's face ids, detector maths)."""
import dataclasses
import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from scipy.spatial.transform import Rotation
import tensorflow_datasets as tfds

from data import frame_extras
from data import png
from data.synthetic_heads import assets
from data.synthetic_heads import variants
from data.synthetic_heads import detector
from data.synthetic_heads import expressions
from data.synthetic_heads import features as F
from data.synthetic_heads import ground_truth
from sheap_jax.geometry import camera as camera_lib
from sheap_jax.head import flame
from sheap_jax.render import mesh_render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = dataclasses.replace(
    variants.BUILDER_CONFIGS[0], name="test64", image_size=64, texture_size=128, supersample=2,
    num_train=2, num_validation=1, num_test=1, frames_per_video=4, emotion_probability=1.0,
    occluder_probability=0.5, store_vertices=True,
    detector=detector.DetectorConfig(outlier_probability=0.05, failure_probability=0.1))

# The build runs where `import tensorflow` fails: PathFinder reports it as not installed.
_BUILD_SCRIPT = textwrap.dedent("""
    import dataclasses, importlib.machinery, importlib.util, sys
    class _HideTensorFlow(importlib.machinery.PathFinder):
      @classmethod
      def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
          return None
        return super().find_spec(name, path, target)
    sys.meta_path[:] = [_HideTensorFlow if f is importlib.machinery.PathFinder else f
                        for f in sys.meta_path]
    assert importlib.util.find_spec("tensorflow") is None
    import jax
    jax.config.update("jax_compilation_cache_dir", sys.argv[2])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    from tests.test_synthetic_heads import TEST_CONFIG
    from data.synthetic_heads import builder
    b = builder.SyntheticHeads(config=TEST_CONFIG, data_dir=sys.argv[1],
                               file_format="array_record")
    b.download_and_prepare()
    for split in ("train", "validation", "test"):
      source = b.as_data_source(split=split)
      source[len(source) - 1]
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("BUILT", b.data_dir)
""")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(data dir of the built test config, {split: data source})."""
  data_dir = str(tmp_path_factory.mktemp("synthetic_heads"))
  cache = jax_cache_dir()
  result = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, data_dir, cache], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr[-4000:]
  path = result.stdout.split("BUILT")[-1].strip()
  reader = tfds.builder_from_directory(path)
  return path, {s: reader.as_data_source(split=s) for s in ("train", "validation", "test")}


def jax_cache_dir():
  import jax  # pylint: disable=import-outside-toplevel
  return jax.config.jax_compilation_cache_dir or os.path.join(REPO, ".jax_cache")


def records(sources):
  return [(split, i, source[i]) for split, source in sources.items() for i in range(len(source))]


def test_layout_splits_and_training_view(built):
  from data import pairs  # pylint: disable=import-outside-toplevel
  _, sources = built
  c = TEST_CONFIG
  training_reads = {split: pairs.TrainingFields(source) for split, source in sources.items()}
  videos = {}
  for split, source in sources.items():
    assert len(source) == len(c.splits[split]) * c.frames_per_video
    for i in range(len(source)):
      r = source[i]
      start = i - r[F.FRAME_INDEX]
      assert r[F.VIDEO_NUM_FRAMES] == c.frames_per_video
      assert source[start][F.FRAME_INDEX] == 0
      assert source[start][F.VIDEO_ID] == r[F.VIDEO_ID]
      videos.setdefault(split, set()).add(int(r[F.VIDEO_ID]))
      image = F.decode_image(r[F.IMAGE])
      assert image.shape == (c.image_size, c.image_size, 3) and image.dtype == np.uint8
      assert image.std() > 10  # a picture, not a flat colour
      np.testing.assert_array_equal(image, _pillow_decode(r[F.IMAGE]))  # a standard PNG
      fields = training_reads[split][i]  # what the pair pipeline reads: the same values
      # The stored fields, and the defaults of real footage's optional ones (synthetic data
      # store none of them: "2d" landmarks, no matte).
      assert set(fields) == set(F.TRAINING_KEYS) | set(frame_extras.OPTIONAL_TRAINING_KEYS)
      for key in F.TRAINING_KEYS:
        np.testing.assert_array_equal(fields[key], r[key])
      for key in frame_extras.OPTIONAL_TRAINING_KEYS:
        np.testing.assert_array_equal(fields[key], frame_extras.DEFAULTS[key])
      training = F.drop_ground_truth(r)
      assert set(training) == set(F.TRAINING_KEYS) == {
          F.IMAGE, F.LANDMARKS, F.LANDMARKS_VALID, F.VIDEO_ID, F.FRAME_INDEX,
          F.VIDEO_NUM_FRAMES}
  assert videos["train"] == set(c.splits["train"])
  assert not videos["train"] & videos["test"] and not videos["train"] & videos["validation"]
  # Frames of one video differ (motion), identities differ (shape).
  train = sources["train"]
  assert not np.array_equal(F.decode_image(train[0][F.IMAGE]), F.decode_image(train[1][F.IMAGE]))
  assert np.abs(train[0][F.GT_SHAPE] - train[c.frames_per_video][F.GT_SHAPE]).max() > 0.5


def _params(r):
  one = lambda k: jnp.asarray(r[k])[None]
  return flame.FlameParams(
      shape=one(F.GT_SHAPE), expression=one(F.GT_EXPRESSION),
      global_pose=one(F.GT_GLOBAL_POSE), neck_pose=one(F.GT_NECK_POSE),
      jaw_pose=one(F.GT_JAW_POSE), eye_pose=one(F.GT_EYE_POSE), eyelids=one(F.GT_EYELIDS),
      translation=one(F.GT_TRANSLATION))


def _project(r, points):
  """NumPy pinhole projection with the record's camera: (N, 3) -> (N, 2) pixels, (N,) z."""
  viewmat = r[F.GT_CAMERA_VIEWMAT].astype(np.float64)
  cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
  uvw = cam @ r[F.GT_CAMERA_K].astype(np.float64).T
  return uvw[:, :2] / uvw[:, 2:], cam[:, 2]


def test_ground_truth_matches_flame(built):
  _, sources = built
  model = assets.head_assets().model
  for _, _, r in records(sources)[::3]:
    out = flame.flame_forward(model, _params(r))
    np.testing.assert_allclose(r[F.GT_VERTICES], out.vertices[0], atol=2e-6)
    neutral = flame.neutral_vertices(model, jnp.asarray(r[F.GT_SHAPE])[None])[0]
    np.testing.assert_allclose(r[F.GT_NEUTRAL_VERTICES], neutral, atol=2e-6)
    pixels, _ = _project(r, np.asarray(out.landmarks68[0], np.float64))
    np.testing.assert_allclose(r[F.GT_LANDMARKS], pixels, atol=2e-3)
    # Configs that store no meshes get the same neutral mesh back from the parameters.
    bare = {k: v for k, v in r.items() if k not in (F.GT_VERTICES, F.GT_NEUTRAL_VERTICES)}
    np.testing.assert_allclose(ground_truth.neutral_vertices(bare), r[F.GT_NEUTRAL_VERTICES],
                               atol=2e-6)
    np.testing.assert_array_equal(ground_truth.neutral_vertices(r), r[F.GT_NEUTRAL_VERTICES])


def _landmark_regions(static):
  """For each of the 68 landmarks, the head vertices of its face region (FLAME masks). The
  built-in head embeds the jaw contour's top (0, 1, 15, 16) on the ear lobes and its sides on
  vertices its coarse masks call `scalp` (the cheek behind `face`, below the ears) or leave
  unassigned (the jaw's lower edge, between `face` and `neck`): those count as jaw line."""
  m = static.region_vertices
  union = lambda *names: np.unique(np.concatenate([m[n] for n in names]))
  template = np.asarray(static.model.v_template)
  unassigned = np.setdiff1d(np.arange(len(template)), union(*m))
  jaw_edge = unassigned[template[unassigned, 1] < -0.06]
  scalp = m["scalp"]
  cheek_sides = scalp[(template[scalp, 1] < 0.02) & (template[scalp, 2] > -0.03)]
  jaw_line = np.concatenate([union("face", "neck", "left_ear", "right_ear"), jaw_edge,
                             cheek_sides])
  groups = [(range(0, 17), jaw_line), (range(17, 27), union("face", "forehead")),
            (range(27, 36), union("nose", "face")),
            (range(36, 48), union("eye_region", "left_eyeball", "right_eyeball")),
            (range(48, 68), union("lips"))]
  regions = [None] * 68
  for ids, vertices in groups:
    for k in ids:
      regions[k] = set(vertices.tolist())
  return regions


def test_visible_landmarks_lie_on_their_face_region(built):
  """Re-render the stored head with the stored camera: each landmark marked visible must
  fall on a pixel whose face belongs to that landmark's region."""
  _, sources = built
  static = assets.head_assets()
  faces = np.asarray(static.model.faces)
  regions = _landmark_regions(static)
  visible_total = checked = 0
  for _, _, r in records(sources):
    camera = camera_lib.Camera(K=jnp.asarray(r[F.GT_CAMERA_K]),
                               viewmat=jnp.asarray(r[F.GT_CAMERA_VIEWMAT]),
                               width=TEST_CONFIG.image_size, height=TEST_CONFIG.image_size)
    face_ids = np.asarray(mesh_render.rasterize(jnp.asarray(r[F.GT_VERTICES]),
                                                jnp.asarray(faces), camera).face_ids)
    pixels = np.round(r[F.GT_LANDMARKS]).astype(int)
    visible_total += int(r[F.GT_LANDMARKS_VISIBLE].sum())
    for k in np.flatnonzero(r[F.GT_LANDMARKS_VISIBLE]):
      face = face_ids[pixels[k, 1], pixels[k, 0]]
      assert face >= 0, f"visible landmark {k} on background"
      assert set(faces[face].tolist()) & regions[k], f"landmark {k} hit face {face}"
      checked += 1
  assert checked == visible_total
  assert visible_total > 0.5 * 68 * len(records(sources))  # most landmarks are visible


def test_detector_bias_noise_and_outliers(built):
  """landmarks = projection(gt point + R_head bias) + noise (+ rare outliers), checked with an
  independent NumPy/SciPy projection and rotation."""
  _, sources = built
  c = TEST_CONFIG.detector
  field = detector.bias_field(c)
  jaw = np.arange(17)
  rms = lambda a: np.sqrt(np.mean(np.sum(a[:, :2] ** 2, axis=1)))
  np.testing.assert_allclose(rms(field[17:]), c.bias_mm * 1e-3, rtol=1e-5)
  np.testing.assert_allclose(rms(field[jaw]), c.contour_factor * c.bias_mm * 1e-3, rtol=1e-5)
  assert np.all(field[:, 2] == 0)
  model = assets.head_assets().model
  normalised, failures, frames = [], 0, 0
  for _, _, r in records(sources):
    frames += 1
    valid = r[F.LANDMARKS_VALID]
    if not valid.any():
      failures += 1
      continue
    out = flame.flame_forward(model, _params(r))
    points = np.asarray(out.landmarks68[0], np.float64)
    rotation = (Rotation.from_rotvec(r[F.GT_GLOBAL_POSE])
                * Rotation.from_rotvec(r[F.GT_NECK_POSE])).as_matrix()
    expected, depth = _project(r, points + field @ rotation.T)
    sigma = detector.noise_sigma_px(c, float(r[F.GT_CAMERA_K][0, 0]), depth,
                                    r[F.GT_LANDMARKS_VISIBLE])
    z = (r[F.LANDMARKS] - expected) / sigma[:, None]
    normalised.append(z[valid])
  z = np.concatenate(normalised)
  outlier = np.any(np.abs(z) > 8.0, axis=1)
  inlier = z[~outlier]
  assert abs(inlier.mean()) < 0.15
  assert 0.85 < inlier.std() < 1.15
  expected_outliers = c.outlier_probability * len(z)
  assert abs(outlier.sum() - expected_outliers) < 4 * np.sqrt(expected_outliers) + 2
  assert failures <= frames // 2


def test_emotion_labels_follow_prototypes(built):
  _, sources = built
  labelled = [r for _, _, r in records(sources) if r[F.GT_EMOTION] >= 0]
  assert labelled
  leading = len(expressions._MODE)  # pylint: disable=protected-access
  for r in labelled:
    name = F.EMOTIONS[r[F.GT_EMOTION]]
    target = expressions.prototype(name)[0][:leading]
    got = r[F.GT_EXPRESSION][:leading]
    if name == "neutral":
      assert np.linalg.norm(got) < 1.0
    else:
      cosine = got @ target / (np.linalg.norm(got) * np.linalg.norm(target))
      assert cosine > 0.8, (name, got, target)


def test_generator_is_deterministic_per_frame(built):
  """A frame rendered alone equals the stored record of the built dataset."""
  from data.synthetic_heads import generator  # pylint: disable=import-outside-toplevel
  _, sources = built
  frames = generator.FrameGenerator(TEST_CONFIG)
  stored = sources["validation"][2]
  again = frames.frame(int(stored[F.VIDEO_ID]), int(stored[F.FRAME_INDEX]))
  np.testing.assert_array_equal(F.decode_image(again[F.IMAGE]), F.decode_image(stored[F.IMAGE]))
  for key in (F.LANDMARKS, F.LANDMARKS_VALID, F.GT_LANDMARKS_VISIBLE, F.GT_EXPRESSION):
    np.testing.assert_array_equal(again[key], stored[key])


def _pillow_decode(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))


def _chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _use_inflate(monkeypatch, backend):
  lib = zlib if backend == "zlib" else pytest.importorskip("isal.isal_zlib")
  monkeypatch.setattr(png, "inflate_lib", lib)


@pytest.mark.parametrize("backend", ["zlib", "isal"])
def test_png_round_trip_is_standard_and_skips_pillow(monkeypatch, backend):
  """Frames written by data/png.py are PNGs that Pillow reads back exactly, and decode them
  without Pillow (the fast path) to the same pixels, with either inflate."""
  _use_inflate(monkeypatch, backend)
  rng = np.random.default_rng(11)
  images = [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in ((1, 1, 3), (1, 7, 3), (9, 1, 3), (37, 23, 3), (64, 64, 3))]
  smooth = np.clip(np.add.outer(np.arange(48), np.arange(40))[..., None] * [1, 2, 3]
                   + rng.normal(0, 2, (48, 40, 3)), 0, 255).astype(np.uint8)
  images.append(smooth)  # a gradient with noise, like a rendered frame
  encoded = [png.encode(image) for image in images]
  for image, data in zip(images, encoded):
    np.testing.assert_array_equal(_pillow_decode(data), image)
  monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Pillow was used"))
  for image, data in zip(images, encoded):
    decoded = png.decode(data)
    assert decoded.dtype == np.uint8 and decoded.shape == image.shape
    np.testing.assert_array_equal(decoded, image)
  assert len(encoded[-1]) < 0.8 * smooth.nbytes  # it compresses


def test_png_other_files_decode_like_pillow():
  """PNGs from elsewhere (Pillow's adaptive filters, grey, RGBA, 16-bit) and a file carrying
  the marker but other filters, or rows mixing None and Up, decode as Pillow decodes them."""
  rng = np.random.default_rng(12)
  rgb = rng.integers(0, 256, (21, 17, 3), dtype=np.uint8)
  files = []
  for array in (rgb, np.ascontiguousarray(rgb[..., 0]),
                rng.integers(0, 256, (21, 17, 4), dtype=np.uint8),
                rng.integers(0, 65536, (21, 17), dtype=np.uint16)):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    files.append(buffer.getvalue())
  pillow_rgb = files[0]
  header_end = 8 + 25  # signature, IHDR
  marked = pillow_rgb[:header_end] + _chunk(b"tEXt", png.MARKER) + pillow_rgb[header_end:]
  files.append(marked)
  # Rows filtered by hand: None on rows 0, 5 and 6, Up elsewhere.
  flat = rgb.reshape(21, -1).astype(np.int16)
  kinds = [0 if row in (0, 5, 6) else 2 for row in range(21)]
  rows = b"".join(bytes([kind]) + ((flat[r] - flat[r - 1]) % 256 if kind else flat[r]).astype(
      np.uint8).tobytes() for r, kind in enumerate(kinds))
  mixed = (png.SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 17, 21, 8, 2, 0, 0, 0))
           + _chunk(b"tEXt", png.MARKER) + _chunk(b"IDAT", zlib.compress(rows))
           + _chunk(b"IEND", b""))
  files.append(mixed)
  for data in files:
    np.testing.assert_array_equal(png.decode(data), _pillow_decode(data))
  np.testing.assert_array_equal(png.decode(mixed), rgb)
  np.testing.assert_array_equal(png.decode(marked), rgb)


@pytest.mark.parametrize("backend", ["zlib", "isal"])
def test_png_bad_input_is_named(monkeypatch, backend):
  _use_inflate(monkeypatch, backend)
  with pytest.raises(ValueError, match="data/png.py: encode takes"):
    png.encode(np.zeros((4, 4), np.uint8))
  data = png.encode(np.full((8, 8, 3), 7, np.uint8))
  idat = data.index(b"IDAT") + 4
  flipped = data[:idat + 5] + bytes([data[idat + 5] ^ 0xFF]) + data[idat + 6:]
  for broken in (data[:-30], b"not a png", data[:8], flipped):
    with pytest.raises(ValueError, match="data/png.py: cannot decode"):
      png.decode(broken)
