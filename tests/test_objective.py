"""The SHeaP objective on a tiny FLAME-format model: composition, projection, shading, per-pair
averaging and config-driven loss weights, each against an independent computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import spatial

from configs import base
from sheap_jax import flame
from sheap_jax import objective
from sheap_jax import shading
from tests.fixtures.flame_synthetic import synthetic_flame_assets

SIZE = 32  # predictor input and render size


def small_flame_model(n_shape: int = 8, n_expression: int = 6) -> flame.FlameModel:
  """The synthetic FLAME-format fixture cut down to the convex hull of its vertices: every
  vertex on a closed surface of ~220 triangles (so a mesh scored against itself has zero
  NoW error), per-vertex arrays restricted to the hull, landmark faces remapped into it."""
  assets = synthetic_flame_assets()
  hull = spatial.ConvexHull(assets["v_template"])
  keep = np.sort(hull.vertices)
  new_index = np.full(len(assets["v_template"]), -1)
  new_index[keep] = np.arange(len(keep))
  for key in ("v_template", "shapedirs", "posedirs", "weights"):
    assets[key] = np.asarray(assets[key])[keep]
  assets["eyelids"] = np.asarray(assets["eyelids"])[:, keep]
  regressor = np.asarray(assets["J_regressor"].toarray())[:, keep]
  empty = regressor.sum(1) == 0  # joints regressed from interior vertices only: use them all
  regressor[empty] = 1.0
  assets["J_regressor"] = regressor / regressor.sum(1, keepdims=True)
  faces = new_index[hull.simplices]
  assets["f"] = faces.astype(np.uint32)
  embedding = dict(assets["landmark_embedding"])
  for key in ("static_lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx"):
    embedding[key] = np.asarray(embedding[key]) % len(faces)
  assets["landmark_embedding"] = embedding
  return flame.FlameModel.from_assets(assets, n_shape, n_expression)


def small_config():
  """The cpu variant shrunk further: 32 px, the dense reference rasteriser, tiny DINOv2."""
  c = base.get_config("cpu")
  c.flame.n_shape, c.flame.n_expression = 8, 6
  c.model.image_size = SIZE
  c.render.size = SIZE
  c.render.impl = "reference"
  c.dinov2.image_size = 28
  c.dinov2.arch.pos_embed_grid = (2, 2)
  c.dinov2.feature_blocks = (0,)
  c.regressor.width = 16
  return c


def random_batch(rng, batch: int, size: int = SIZE):
  return dict(
      source_image=jnp.asarray(rng.random((batch, size, size, 3)), jnp.float32),
      target_image=jnp.asarray(rng.random((batch, size, size, 3)), jnp.float32),
      target_landmarks=jnp.asarray(rng.random((batch, 68, 2)) * size, jnp.float32),
      target_landmarks_valid=jnp.asarray(rng.random((batch, 68)) > 0.2, jnp.float32))


def perturbed_params(params, rng, scale=0.01):
  """Parameters with every zero-initialised head moved, so pose, shape and light are non-trivial."""
  return jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape).astype(np.float32),
                      params)


@pytest.fixture(scope="module")
def setup():
  config = small_config()
  model = small_flame_model()
  networks = objective.build_networks(config)
  with pytest.warns(UserWarning, match="random initialisation"):
    frozen = objective.build_frozen(config, model)
  params = objective.init_params(networks, frozen, config, jax.random.PRNGKey(0))
  return config, networks, frozen, perturbed_params(params, np.random.default_rng(1))


def test_reanimation_composes_source_identity_with_target_motion(setup):
  config, networks, frozen, params = setup
  batch = random_batch(np.random.default_rng(2), 1)  # the shapes train.py's previews compile
  out = jax.jit(lambda p, f, s, t: objective.reanimate(networks, p, f, config, s, t))(
      params, frozen, batch["source_image"], batch["target_image"])
  source = networks.predictor.apply({"params": params["predictor"]}, batch["source_image"])
  target = networks.predictor.apply({"params": params["predictor"]}, batch["target_image"])
  assert np.abs(np.asarray(source.shape - target.shape)).max() > 1e-4  # frames differ

  mixed = flame.FlameParams(
      shape=source.shape, expression=target.expression, global_pose=target.global_pose,
      neck_pose=target.neck_pose, jaw_pose=target.jaw_pose, eye_pose=target.eye_pose,
      eyelids=target.eyelids, translation=jnp.zeros((1, 3)))
  expected = flame.flame_forward(frozen.flame, mixed)
  np.testing.assert_allclose(out.vertices, expected.vertices, atol=1e-5)

  # Camera: head at 1 m along FLAME +z moved by the target's translation, OpenCV axes, pinhole.
  flip = np.diag([1.0, -1.0, -1.0])
  points = np.einsum("ij,blj->bli", flip, np.asarray(expected.landmarks68, np.float64)
                     + np.asarray(target.camera_translation)[:, None])
  points[..., 2] += 1.0
  focal = 0.5 * SIZE / np.tan(np.deg2rad(14.2539) / 2)
  pixels = focal * points[..., :2] / points[..., 2:] + (SIZE - 1) / 2
  np.testing.assert_allclose(out.landmarks, pixels, atol=2e-3)

  assert out.render.color.shape == (1, SIZE, SIZE, 3)
  assert float(out.mesh_mask.mean()) > 0.05  # the head is in view
  covered = np.asarray(out.mesh_mask) > 0
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out.mesh_normals)[covered], axis=-1), 1.0,
                             atol=1e-4)
  assert np.all(np.asarray(out.mesh_depth)[covered] > 0.8)


def test_splat_shading_matches_lambertian_formula():
  rng = np.random.default_rng(3)
  b, n = 2, 7
  quats = rng.standard_normal((b, n, 4))
  quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
  means = rng.standard_normal((b, n, 3)) * 0.05
  albedo = rng.random((b, n, 3))
  viewmats = np.stack([np.asarray(objective.camera_lib.flame_viewmat(rng.standard_normal(3) * 0.01))
                       for _ in range(b)])
  sh = rng.standard_normal((b, 9, 3)) * 0.2 + np.asarray(objective.DEFAULT_LIGHTING)
  splats = objective.rasterizer.Splats(
      means=jnp.asarray(means, jnp.float32), quats=jnp.asarray(quats, jnp.float32),
      scales=jnp.ones((b, n, 2)), opacities=jnp.ones((b, n)),
      features=jnp.asarray(albedo, jnp.float32))
  shaded = objective._shade_splats(splats, jnp.asarray(viewmats, jnp.float32),
                                   jnp.asarray(sh, jnp.float32))

  w, x, y, z = np.moveaxis(quats, -1, 0)  # third column of the rotation matrix of (w, x, y, z)
  normal = np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], -1)
  normal_cam = np.einsum("bij,bnj->bni", viewmats[:, :3, :3], normal)
  centre_cam = np.einsum("bij,bnj->bni", viewmats[:, :3, :3], means) + viewmats[:, None, :3, 3]
  normal_cam *= np.where(np.sum(normal_cam * centre_cam, -1, keepdims=True) > 0, -1, 1)
  expected = np.stack([np.asarray(shading.shade(albedo[i], normal_cam[i], sh[i]))
                       for i in range(b)])
  np.testing.assert_allclose(shaded.features, expected, rtol=1e-4, atol=1e-5)
  # The default light leaves albedo unchanged.
  plain = objective._shade_splats(splats, jnp.asarray(viewmats, jnp.float32),
                                  jnp.broadcast_to(objective.DEFAULT_LIGHTING, (b, 9, 3)))
  np.testing.assert_allclose(plain.features, albedo, rtol=1e-5)


def test_loss_is_a_mean_over_pairs_and_weights_change_only_their_term(setup):
  config, networks, frozen, params = setup
  batch = random_batch(np.random.default_rng(4), 2)

  overridden = small_config()
  overridden.losses.ssim.weight = 0.7

  @jax.jit
  def per_pair(p, b):  # both configs in one program: the reanimation is shared
    return (objective.pair_losses(networks, p, frozen, config, b),
            objective.pair_losses(networks, p, frozen, overridden, b))

  (totals, terms), (totals2, terms2) = per_pair(params, batch)
  assert set(terms) == {k for k, v in config.losses.items() if v.weight}
  for name, value in terms.items():
    assert np.all(np.isfinite(value)), name
  # The total is the weighted sum of the logged terms.
  weighted = sum(config.losses[k].weight * np.asarray(v) for k, v in terms.items())
  np.testing.assert_allclose(totals, weighted, rtol=1e-5)
  # Changing one weight changes only that term's share of the total.
  for name in terms:
    np.testing.assert_allclose(terms2[name], terms[name], rtol=1e-5)
  np.testing.assert_allclose(totals2 - totals, (0.7 - config.losses.ssim.weight) * terms["ssim"],
                             rtol=1e-4, atol=1e-6)

  # Nothing mixes pairs: replacing pair 1 leaves pair 0's losses as they were.
  other = random_batch(np.random.default_rng(5), 2)
  mixed = jax.tree.map(lambda a, b: a.at[1].set(b[1]), batch, other)
  (totals3, terms3), _ = per_pair(params, mixed)
  np.testing.assert_allclose(totals3[0], totals[0], rtol=2e-5)
  assert abs(float(totals3[1] - totals[1])) > 1e-4
  for name in terms:
    np.testing.assert_allclose(terms3[name][0], terms[name][0], rtol=2e-5, atol=1e-7)


def test_unknown_renderer_is_rejected(setup):
  config, networks, frozen, params = setup
  bad = small_config()
  bad.renderer = "nerf"
  batch = random_batch(np.random.default_rng(5), 1)
  with pytest.raises(ValueError, match="sheap_jax/objective.py: config.renderer='nerf'"):
    objective.reanimate(networks, params, frozen, bad, batch["source_image"],
                        batch["target_image"])
