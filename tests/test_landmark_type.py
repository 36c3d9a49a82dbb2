"""Landmark type and matte in the objective: 3D-type detections are compared with FLAME's full
(static-jaw) embedding, 2D-type with DECA's dynamic contour, pair by pair; the silhouette term
against the person matte. Each against NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sheap_jax.training import losses
from sheap_jax.training import objective
from tests.test_objective import SIZE, _objective_setup, random_batch, small_config
from tests.test_objective import small_flame_model


@pytest.fixture(scope="module")
def setup():
  return _objective_setup(small_config(), small_flame_model(), params_seed=4)


def _project(points, viewmats, Ks):
  """NumPy pinhole projection of world points (B, L, 3) through OpenCV world-to-camera views."""
  camera = np.einsum("bij,blj->bli", viewmats[:, :3, :3], points) + viewmats[:, None, :3, 3]
  pixels = np.einsum("bij,blj->bli", Ks, camera)
  return pixels[..., :2] / pixels[..., 2:]


def test_landmark_term_uses_the_embedding_of_each_targets_landmark_type(setup, rng):
  config, networks, frozen, params = setup
  batch = random_batch(rng, 4)
  batch["target_landmarks_3d"] = jnp.asarray([True, False, True, False])
  out = objective.reanimate(networks, params, frozen, config, batch["source_image"],
                            batch["target_image"])
  context = objective.loss_context(networks, frozen, config, batch, out)

  # The full embedding, by hand: barycentric points of the posed vertices, projected.
  vertices = np.asarray(out.vertices, np.float64)
  faces = np.asarray(frozen.flame.faces)[np.asarray(frozen.flame.full_lmk_faces)]
  bary = np.asarray(frozen.flame.full_lmk_bary, np.float64)
  static = np.einsum("blkc,lk->blc", vertices[:, faces], bary)
  static_pixels = _project(static, np.asarray(out.viewmats, np.float64),
                           np.asarray(out.Ks, np.float64))
  dynamic_pixels = np.asarray(out.landmarks, np.float64)
  is_3d = np.asarray(batch["target_landmarks_3d"])
  expected = np.where(is_3d[:, None, None], static_pixels, dynamic_pixels)
  np.testing.assert_allclose(np.asarray(context.landmarks), expected, atol=2e-3)
  # The two embeddings differ (else this test could not fail).
  assert np.linalg.norm(static_pixels - dynamic_pixels, axis=-1).max() > 0.5

  # The landmark term on those points: Charbonnier of the distance in image-size units.
  target = np.asarray(batch["target_landmarks"], np.float64)
  valid = np.asarray(batch["target_landmarks_valid"], np.float64)
  distance2 = np.sum(((expected - target) / SIZE) ** 2, axis=-1)
  penalty = np.sqrt(distance2 + 1e-6) - 1e-3
  np.testing.assert_allclose(float(losses.landmark_loss(context)),
                             np.sum(penalty * valid) / valid.sum(), rtol=1e-4)
  # Without a type the dynamic contour stays (synthetic_heads' "2d").
  del batch["target_landmarks_3d"]
  context_2d = objective.loss_context(networks, frozen, config, batch, out)
  np.testing.assert_allclose(np.asarray(context_2d.landmarks), dynamic_pixels, atol=1e-6)


class _Render:
  def __init__(self, alpha):
    self.alpha = alpha


@pytest.mark.parametrize("mode", ["outside", "l1", "bce"])
def test_silhouette_term_and_gradient_match_numpy(rng, mode):
  batch, height, width = 3, 5, 6
  alpha = rng.uniform(0.02, 0.98, (batch, height, width))
  matte = rng.uniform(0, 1, (batch, height, width))
  has = np.array([1.0, 0.0, 1.0])

  def term(a):
    context = losses.LossContext(render=_Render(a), image=jnp.zeros((batch, height, width, 3)),
                                 matte=jnp.asarray(matte, jnp.float32),
                                 matte_valid=jnp.asarray(has))
    return losses.silhouette_loss(context, mode=mode)

  if mode == "outside":
    error, slope = alpha * (1 - matte), 1 - matte
  elif mode == "l1":
    error, slope = np.abs(alpha - matte), np.sign(alpha - matte)
  else:
    error = -matte * np.log(alpha) - (1 - matte) * np.log(1 - alpha)
    slope = -matte / alpha + (1 - matte) / (1 - alpha)
  value, grad = jax.value_and_grad(term)(jnp.asarray(alpha, jnp.float32))
  np.testing.assert_allclose(float(value), np.sum(error.mean((1, 2)) * has) / batch, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), slope * has[:, None, None] / (batch * height
                                                                             * width),
                             rtol=1e-4, atol=1e-7)


def test_matte_reaches_the_loss_context_at_render_size(setup, rng):
  config, networks, frozen, params = setup
  batch = random_batch(rng, 2)
  batch["target_matte"] = jnp.asarray(rng.uniform(0, 1, (2, SIZE, SIZE)), jnp.float32)
  batch["target_matte_valid"] = jnp.asarray([True, False])
  out = objective.reanimate(networks, params, frozen, config, batch["source_image"],
                            batch["target_image"])
  context = objective.loss_context(networks, frozen, config, batch, out)
  np.testing.assert_allclose(np.asarray(context.matte), np.asarray(batch["target_matte"]),
                             atol=1e-6)
  assert np.asarray(context.matte_valid).tolist() == [True, False]
  with pytest.raises(ValueError, match="mode='edge'"):
    losses.silhouette_loss(context, mode="edge")
