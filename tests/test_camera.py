"""Camera: pinhole projection, the FLAME -> OpenCV boundary and SHeaP's default framing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sheap_jax.geometry import camera as camera_lib


def _random_camera(rng, batch=None):
  lead = () if batch is None else (batch,)
  focal = rng.uniform(100.0, 400.0, lead + (2,))
  centre = rng.uniform(20.0, 40.0, lead + (2,))
  K = np.zeros(lead + (3, 3), np.float32)
  K[..., 0, 0], K[..., 1, 1] = focal[..., 0], focal[..., 1]
  K[..., 0, 2], K[..., 1, 2] = centre[..., 0], centre[..., 1]
  K[..., 2, 2] = 1.0
  viewmat = np.zeros(lead + (4, 4), np.float32)
  viewmat[..., :3, :3] = Rotation.random(int(np.prod(lead)), random_state=rng).as_matrix() \
      .reshape(lead + (3, 3))
  viewmat[..., :3, 3] = rng.normal(size=lead + (3,)) * 0.1 + [0.0, 0.0, 2.0]
  viewmat[..., 3, 3] = 1.0
  return camera_lib.Camera(K=jnp.asarray(K), viewmat=jnp.asarray(viewmat), width=64, height=48)


def _pinhole_numpy(K, viewmat, points):
  cam = np.einsum("ij,nj->ni", viewmat[:3, :3], points) + viewmat[:3, 3]
  u = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]
  v = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
  return np.stack([u, v], axis=-1), cam[:, 2]


def test_projection_matches_numpy_pinhole():
  rng = np.random.default_rng(0)
  camera = _random_camera(rng)
  points = rng.normal(size=(50, 3)).astype(np.float32) * 0.3
  pixels, depth = jax.jit(camera_lib.project_points)(camera, jnp.asarray(points))
  want_pixels, want_depth = _pinhole_numpy(np.asarray(camera.K, np.float64),
                                           np.asarray(camera.viewmat, np.float64), points)
  np.testing.assert_allclose(pixels, want_pixels, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(depth, want_depth, rtol=1e-5)


def test_batched_camera_exposes_rasterizer_arrays_and_vmaps():
  rng = np.random.default_rng(1)
  camera = _random_camera(rng, batch=3)
  assert camera.Ks.shape == (3, 3, 3) and camera.viewmats.shape == (3, 4, 4)
  single = camera_lib.default_camera(32, 32)
  assert single.Ks.shape == (1, 3, 3) and single.viewmats.shape == (1, 4, 4)
  points = rng.normal(size=(3, 7, 3)).astype(np.float32) * 0.3
  pixels, _ = jax.vmap(camera_lib.project_points)(camera, jnp.asarray(points))
  for b in range(3):
    want, _ = _pinhole_numpy(np.asarray(camera.K[b]), np.asarray(camera.viewmat[b]), points[b])
    np.testing.assert_allclose(pixels[b], want, rtol=1e-5, atol=1e-3)


def test_flame_frame_appears_upright_and_mirrored_like_a_face_seen_from_the_front():
  camera = camera_lib.default_camera(224, 224)
  centre = (224 - 1) / 2.0
  points = jnp.array([[0.0, 0.0, 0.0],  # head centre
                      [0.05, 0.0, 0.0],  # towards the subject's left
                      [0.0, 0.05, 0.0],  # up
                      [0.0, 0.0, 0.05]])  # out of the face, towards the camera
  pixels, depth = camera_lib.project_points(camera, points)
  np.testing.assert_allclose(pixels[0], [centre, centre], atol=1e-4)
  np.testing.assert_allclose(depth[0], 1.0, atol=1e-6)
  assert pixels[1, 0] > centre + 30 and abs(pixels[1, 1] - centre) < 1e-3  # image right
  assert pixels[2, 1] < centre - 30 and abs(pixels[2, 0] - centre) < 1e-3  # image up
  np.testing.assert_allclose(depth[3], 0.95, atol=1e-6)  # nearer the camera


def test_default_framing_gives_expected_head_size_and_fov():
  width = height = 224
  camera = camera_lib.default_camera(width, height)
  half_fov = np.deg2rad(14.2539) / 2
  focal = height / 2 / np.tan(half_fov)
  assert abs(focal - 895.75) < 0.01  # tan(fov / 2) ~ 1/8: the image spans ~0.25 m at 1 m
  pixels, _ = camera_lib.project_points(camera, jnp.array([[-0.1, 0.0, 0.0], [0.1, 0.0, 0.0]]))
  head_width_px = float(pixels[1, 0] - pixels[0, 0])
  np.testing.assert_allclose(head_width_px, 0.2 * focal, rtol=1e-5)
  assert 178.0 < head_width_px < 181.0
  # A ray at half the vertical field of view above the axis meets the top edge of the image.
  edge_point = jnp.array([[0.0, np.tan(half_fov) * 1.0, 0.0]])
  pixels, _ = camera_lib.project_points(camera, edge_point)
  np.testing.assert_allclose(pixels[0, 1], -0.5, atol=1e-3)


def test_head_translation_moves_the_head_in_flame_axes():
  rng = np.random.default_rng(2)
  translation = rng.normal(size=3).astype(np.float32) * 0.05
  points = rng.normal(size=(5, 3)).astype(np.float32) * 0.1
  base = camera_lib.default_camera(64, 64)
  moved = camera_lib.Camera(K=base.K, viewmat=camera_lib.flame_viewmat(translation),
                            width=64, height=64)
  got, _ = camera_lib.project_points(moved, jnp.asarray(points))
  want, _ = camera_lib.project_points(base, jnp.asarray(points + translation))
  np.testing.assert_allclose(got, want, atol=1e-3)


def test_bad_shapes_raise_clear_errors():
  good = camera_lib.default_camera(32, 32)
  with pytest.raises(ValueError, match="camera.py: K must be"):
    camera_lib.Camera(K=jnp.eye(4), viewmat=good.viewmat, width=32, height=32).Ks
  with pytest.raises(ValueError, match="camera.py: points must be"):
    camera_lib.project_points(good, jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match="fov_y_degrees"):
    camera_lib.intrinsics_from_fov(0.0, 32, 32)
