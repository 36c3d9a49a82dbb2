"""Loss registry: every term against a known case or an independent reference; the config."""
import inspect

from absl import flags
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import pytest
from scipy import ndimage

from configs import base
from rasterizer.types import RasterOutput
from sheap_jax.head import flame
from sheap_jax.training import image_metrics
from sheap_jax.training import losses
from sheap_jax.models import vit

B, H, W = 2, 24, 20


def _render(rng, **fields):
  """A RasterOutput of random buffers, with `fields` replacing some."""
  buffers = dict(
      color=rng.random((B, H, W, 3)), alpha=rng.random((B, H, W)),
      depth=1.0 + 0.1 * rng.random((B, H, W)), median_depth=1.0 + 0.1 * rng.random((B, H, W)),
      normals=rng.standard_normal((B, H, W, 3)), distortion=rng.random((B, H, W)))
  buffers.update(fields)
  buffers = {k: jnp.asarray(v, jnp.float32) for k, v in buffers.items()}
  zeros = jnp.zeros((B,), jnp.int32)
  return RasterOutput(**buffers, splats_culled=zeros, pairs_dropped=zeros, pairs_needed=zeros)


def _context(rng, render=None, **fields):
  render = render if render is not None else _render(rng)
  image = jnp.asarray(rng.random((B, H, W, 3)), jnp.float32)
  return losses.LossContext(render=render, image=image, **fields)


def _value(name, context, **options):
  total, values = losses.total_loss({name: dict(weight=1.0, **options)}, context)
  np.testing.assert_allclose(total, values[name], rtol=1e-6)
  return float(values[name])


def _ssim_reference(a, b, sigma=1.5, size=11):
  """NumPy/scipy SSIM map with zero padding: separable Gaussian correlation per channel."""
  offsets = np.arange(size) - size // 2
  taps = np.exp(-offsets ** 2 / (2 * sigma ** 2))
  taps /= taps.sum()

  def blur(x):
    x = ndimage.correlate1d(x, taps, axis=1, mode="constant")
    return ndimage.correlate1d(x, taps, axis=2, mode="constant")

  a, b = a.astype(np.float64), b.astype(np.float64)
  mu_a, mu_b = blur(a), blur(b)
  var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
  cov = blur(a * b) - mu_a * mu_b
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
          / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))


def test_ssim_matches_scipy_and_skimage():
  rng = np.random.default_rng(0)
  a = rng.random((B, H, W, 3)).astype(np.float32)
  b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  ours = np.asarray(image_metrics.ssim_map(jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(ours, _ssim_reference(a, b), atol=2e-5)
  # skimage (if installed) drops a 5-pixel border; its interior map is the same quantity.
  structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
  for i in range(B):
    _, full = structural_similarity(a[i].astype(np.float64), b[i].astype(np.float64),
                                    channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, full=True)
    np.testing.assert_allclose(ours[i, 5:-5, 5:-5], full[5:-5, 5:-5], atol=2e-5)
  np.testing.assert_allclose(image_metrics.ssim(jnp.asarray(a), jnp.asarray(a)), 1.0, atol=1e-6)


def test_ssim_loss_value_mask_and_gradient():
  rng = np.random.default_rng(1)
  context = _context(rng)
  mask = (rng.random((B, H, W)) > 0.3).astype(np.float32)
  context = context.replace(image_mask=jnp.asarray(mask))
  reference = _ssim_reference(np.asarray(context.render.color), np.asarray(context.image))
  expected = 1.0 - np.sum(reference * mask[..., None]) / (mask.sum() * 3)
  np.testing.assert_allclose(_value("ssim", context), expected, rtol=1e-5)
  identical = context.replace(image=context.render.color)
  assert abs(_value("ssim", identical)) < 1e-6

  # Backward: directional derivative against a central difference.
  def loss(color):
    return losses.ssim_loss(context.replace(render=context.render.replace(color=color)))

  color = context.render.color
  direction = jnp.asarray(rng.standard_normal(color.shape), jnp.float32)
  analytic = jnp.vdot(jax.grad(loss)(color), direction)
  eps = 1e-2
  numeric = (loss(color + eps * direction) - loss(color - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def test_l1_and_psnr_known_arrays():
  rng = np.random.default_rng(2)
  context = _context(rng)
  color = np.asarray(context.render.color)
  image = color + np.where(rng.random(color.shape) > 0.5, 0.25, -0.25)
  mask = np.zeros((B, H, W), np.float32)
  mask[:, :10] = 1.0
  context = context.replace(image=jnp.asarray(image, jnp.float32), image_mask=jnp.asarray(mask))
  np.testing.assert_allclose(_value("l1", context), 0.25, rtol=1e-5)
  np.testing.assert_allclose(image_metrics.psnr(context.render.color, context.image),
                             10 * np.log10(1 / 0.0625), rtol=1e-5)


def test_landmarks_known_offset_and_validity():
  rng = np.random.default_rng(3)
  target = rng.random((B, 68, 2)) * W
  predicted = target + np.array([3.0, 4.0])  # 5 px off: 5 / max(H, W) = 5 / 24
  valid = np.ones((B, 68), np.float32)
  predicted[0, 7] += 50.0  # an outlier the validity mask removes
  valid[0, 7] = 0.0
  context = _context(rng, landmarks=jnp.asarray(predicted, jnp.float32),
                     landmarks_target=jnp.asarray(target, jnp.float32),
                     landmarks_valid=jnp.asarray(valid))
  eps = 1e-3
  expected = np.sqrt((5.0 / 24.0) ** 2 + eps ** 2) - eps
  np.testing.assert_allclose(_value("landmarks", context, epsilon=eps), expected, rtol=1e-5)
  exact = context.replace(landmarks=context.landmarks_target)
  assert abs(_value("landmarks", exact)) < 1e-7


def test_depth_and_normal_consistency_against_the_mesh():
  rng = np.random.default_rng(4)
  mesh_depth = 1.0 + 0.05 * rng.random((B, H, W))
  mesh_mask = (rng.random((B, H, W)) > 0.4).astype(np.float32)
  alpha = np.where(rng.random((B, H, W)) > 0.2, 0.9, 0.1)
  plane_normal = np.array([0.3, -0.2, -1.0]) / np.linalg.norm([0.3, -0.2, -1.0])
  normals = np.broadcast_to(plane_normal, (B, H, W, 3))
  render = _render(rng, depth=mesh_depth + 0.002, median_depth=mesh_depth - 0.003, alpha=alpha,
                   normals=normals)
  context = _context(rng, render=render, mesh_depth=jnp.asarray(mesh_depth, jnp.float32),
                     mesh_normals=jnp.asarray(normals, jnp.float32),
                     mesh_mask=jnp.asarray(mesh_mask))
  np.testing.assert_allclose(_value("depth", context), 0.002, rtol=1e-3)
  np.testing.assert_allclose(_value("depth", context, buffer="median_depth"), 0.003, rtol=1e-3)
  assert abs(_value("normal", context)) < 1e-6  # the same plane: 0
  # Perpendicular normals give 1; half of the pixels flipped to opposite normals give 2 there.
  perpendicular = np.cross(plane_normal, [1.0, 0.0, 0.0])
  perpendicular /= np.linalg.norm(perpendicular)
  flipped = np.where((np.arange(W) % 2 == 0)[None, None, :, None], -normals, perpendicular)
  context = context.replace(render=render.replace(normals=jnp.asarray(flipped, jnp.float32)))
  weight = mesh_mask * (alpha > 0.5)
  expected = np.sum(weight * np.where(np.arange(W) % 2 == 0, 2.0, 1.0)) / weight.sum()
  np.testing.assert_allclose(_value("normal", context), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="buffer='mean'"):
    _value("depth", context, buffer="mean")


def _plane_depth(K, normal, offset):
  """Depth z(i, j) of the plane n.P = offset seen through intrinsics K (no skew)."""
  rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  y = (rows - K[1, 2]) / K[1, 1]
  x = (cols - K[0, 2] - K[0, 1] * y) / K[0, 0]
  return offset / (normal[0] * x + normal[1] * y + normal[2])


def test_normals_from_depth_of_a_tilted_plane_and_depth_normal_loss():
  rng = np.random.default_rng(5)
  intrinsics, depths, normals = [], [], []
  for _ in range(B):
    K = np.array([[rng.uniform(20, 40), rng.uniform(-2, 2), rng.uniform(8, 12)],
                  [0.0, rng.uniform(20, 40), rng.uniform(10, 14)], [0.0, 0.0, 1.0]])
    normal = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), -1.0])
    normal /= np.linalg.norm(normal)  # faces the camera (negative z)
    intrinsics.append(K)
    depths.append(_plane_depth(K, normal, -rng.uniform(0.8, 1.2)))
    normals.append(normal)
  depth = jnp.asarray(np.stack(depths), jnp.float32)
  estimated, valid = losses.normals_from_depth(depth, jnp.asarray(np.stack(intrinsics),
                                                                  jnp.float32))
  expected = np.broadcast_to(np.stack(normals)[:, None, None], (B, H, W, 3))
  np.testing.assert_allclose(np.asarray(estimated)[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1],
                             atol=2e-4)
  assert np.all(np.asarray(valid)[:, 1:-1, 1:-1] == 1) and np.all(np.asarray(valid)[:, 0] == 0)

  render = _render(rng, median_depth=depth, alpha=np.ones((B, H, W)), normals=expected)
  context = _context(rng, render=render, intrinsics=jnp.asarray(np.stack(intrinsics),
                                                                jnp.float32))
  assert abs(_value("depth_normal", context)) < 1e-4
  # Opposite render normals cost 2; transparent pixels (and their neighbours) are left out.
  alpha = np.ones((B, H, W))
  alpha[:, :, :5] = 0.0
  render = render.replace(normals=-render.normals, alpha=jnp.asarray(alpha, jnp.float32))
  np.testing.assert_allclose(_value("depth_normal", context.replace(render=render)), 2.0,
                             rtol=1e-4)
  grad = jax.grad(lambda d: losses.depth_normal_loss(
      context.replace(render=render.replace(median_depth=d))))(depth)
  assert np.all(np.isfinite(grad))


def test_distortion_and_gaussian_regularisers_known_values():
  rng = np.random.default_rng(6)
  context = _context(rng)
  np.testing.assert_allclose(_value("distortion", context),
                             np.mean(np.asarray(context.render.distortion)), rtol=1e-6)
  offsets = np.zeros((5, 2, 3), np.float32)
  offsets[0, 0] = [0.0, 3.0, 4.0]  # norm 5: 4 over the threshold
  offsets[1, 1] = [0.6, 0.0, 0.8]  # norm 1: at the threshold
  scales = np.full((5, 2, 2), 0.1, np.float32)
  scales[2, 0] = [0.9, 1.0]  # excess (0.3, 0.4): 0.5
  opacities = np.full((5, 2), 0.5, np.float32)
  opacities[3] = 1.0
  context = context.replace(gaussian_offsets=jnp.asarray(offsets),
                            gaussian_scales=jnp.asarray(scales),
                            gaussian_opacities=jnp.asarray(opacities))
  np.testing.assert_allclose(_value("gaussian_offset", context), 4.0 / 10, rtol=1e-5)
  np.testing.assert_allclose(_value("gaussian_scale", context), 0.5 / 10, rtol=1e-5)
  np.testing.assert_allclose(_value("gaussian_opacity", context), np.log(2) * 8 / 10, rtol=1e-4)
  grads = jax.grad(lambda o: losses.gaussian_offset_loss(context.replace(gaussian_offsets=o)))(
      jnp.zeros_like(context.gaussian_offsets))
  assert np.all(np.asarray(grads) == 0)  # inside the threshold: no pull, and no NaN at 0


def test_flame_priors_known_params():
  rng = np.random.default_rng(7)
  source, target = flame.FlameParams.zeros(B, 10, 6), flame.FlameParams.zeros(B, 10, 6)
  source = source.replace(shape=jnp.full((B, 10), 0.5), expression=jnp.ones((B, 6)),
                          jaw_pose=jnp.asarray([[0.1, 0.0, 0.0]] * B),
                          eyelids=jnp.asarray([[0.3, 0.4]] * B))
  target = target.replace(shape=jnp.full((B, 10), 1.5))
  context = _context(rng, flame_source=source, flame_target=target)
  np.testing.assert_allclose(_value("shape_prior", context), (10 * 0.25 + 10 * 2.25) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(_value("expression_prior", context), 6 / 2, rtol=1e-6)
  np.testing.assert_allclose(_value("jaw_prior", context), 0.01 / 2, rtol=1e-5)
  np.testing.assert_allclose(_value("eyelid_prior", context), 0.25 / 2, rtol=1e-5)
  only_source = context.replace(flame_target=None)
  np.testing.assert_allclose(_value("shape_prior", only_source), 2.5, rtol=1e-6)
  with pytest.raises(ValueError, match="'shape_prior' needs LossContext.flame_source or"):
    _value("shape_prior", context.replace(flame_source=None, flame_target=None))


def _tiny_encoder():
  model = vit.VisionTransformer(patch_size=7, width=16, depth=2, num_heads=2, num_registers=1,
                                pos_embed_grid=(4, 4))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 3)))["params"]
  return model, params


def test_perceptual_distance_reference_and_loss():
  rng = np.random.default_rng(8)
  a, b = rng.standard_normal((2, 3, 5, 8)), rng.standard_normal((2, 3, 5, 8))
  unit = lambda f: f / np.linalg.norm(f, axis=-1, keepdims=True)
  expected = np.mean([np.mean(2 - 2 * np.sum(unit(x) * unit(y), axis=-1)) for x, y in zip(a, b)])
  np.testing.assert_allclose(
      losses.perceptual_distance([jnp.asarray(x) for x in a], [jnp.asarray(y) for y in b]),
      expected, rtol=1e-5)

  model, params = _tiny_encoder()
  render, image = _render(rng), jnp.asarray(rng.random((B, H, W, 3)), jnp.float32)
  feature_fn = losses.dinov2_feature_fn(model, params, blocks=(0, 1), input_size=28)
  assert [f.shape for f in jax.eval_shape(feature_fn, image)] == [(B, 16, 16)] * 2

  @jax.jit
  @jax.value_and_grad
  def loss(color, target, mask):
    context = losses.LossContext(render=render.replace(color=color), image=target,
                                 image_mask=mask, feature_fn=feature_fn)
    return losses.total_loss({"perceptual": {"weight": 1.0}}, context)[0]

  valid = jnp.ones((B, H, W))
  assert abs(float(loss(image, image, valid)[0])) < 1e-6
  value, grad = loss(render.color, image, valid)
  assert float(value) > 1e-3
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0
  # Differences only where the target is invalid do not count.
  valid = valid.at[:, :8].set(0.0)
  changed = image.at[:, :8].set(render.color[:, :8])
  assert abs(float(loss(changed, image, valid)[0])) < 1e-6
  # The last block's captured output, after the final LayerNorm, is the final patch tokens.
  images = jnp.asarray(rng.random((1, 28, 28, 3)), jnp.float32)
  last_block, final = jax.jit(lambda x: (
      losses.dinov2_feature_fn(model, params, blocks=(1,))(x)[0],
      losses.dinov2_feature_fn(model, params)(x)[0]))(images)
  normed = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False).apply({"params": params["norm"]},
                                                                     last_block)
  np.testing.assert_allclose(normed, final, atol=1e-5)
  with pytest.raises(ValueError, match="multiples of 7"):
    losses.dinov2_feature_fn(model, params)(jnp.zeros((1, 27, 28, 3)))


def _full_context(rng):
  """A context every registered term can read."""
  mesh_normals = rng.standard_normal((B, H, W, 3))
  mesh_normals /= np.linalg.norm(mesh_normals, axis=-1, keepdims=True)
  projection = jnp.asarray(rng.standard_normal((4 * 4 * 3, 8)), jnp.float32)

  def patch_features(images):
    """A cheap stand-in extractor: random projections of 4 x 4 patches."""
    patches = images.reshape(images.shape[0], H // 4, 4, W // 4, 4, 3).transpose(0, 1, 3, 2, 4, 5)
    return [patches.reshape(images.shape[0], -1, 48) @ projection]

  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return _context(
      rng, image_mask=f32(rng.random((B, H, W)) > 0.2),
      intrinsics=f32(np.broadcast_to([[30.0, 0, 10], [0, 30, 12], [0, 0, 1]], (B, 3, 3))),
      mesh_depth=f32(1.0 + 0.1 * rng.random((B, H, W))), mesh_normals=f32(mesh_normals),
      mesh_mask=f32(rng.random((B, H, W)) > 0.3), landmarks=f32(rng.random((B, 5, 2)) * W),
      landmarks_target=f32(rng.random((B, 5, 2)) * W), landmarks_valid=f32(np.ones((B, 5))),
      flame_source=flame.FlameParams.zeros(B, 4, 3).replace(shape=f32(rng.random((B, 4)))),
      flame_target=flame.FlameParams.zeros(B, 4, 3).replace(
          expression=f32(rng.random((B, 3))), jaw_pose=f32(rng.random((B, 3))),
          eyelids=f32(rng.random((B, 2)))),
      gaussian_offsets=f32(2 * rng.standard_normal((6, 2, 3))),
      gaussian_scales=f32(rng.random((6, 2, 2))), gaussian_opacities=f32(rng.random((6, 2))),
      matte=f32(rng.random((B, H, W))), matte_valid=f32(np.ones(B)),
      feature_fn=patch_features)


def test_config_file_writes_out_every_term_with_its_options():
  """configs/base.py lists each registered term with exactly the options its function takes,
  at the function's defaults (a new term needs its line in the config)."""
  config = base.loss_weights()
  assert set(config) == set(losses.registered_losses())
  for name, entry in config.items():
    parameters = list(inspect.signature(losses._REGISTRY[name]).parameters.values())[1:]
    assert {k: v for k, v in entry.items() if k != "weight"} == {
        p.name: p.default for p in parameters}, name


def test_default_config_covers_every_term_and_overrides_change_one_term():
  rng = np.random.default_rng(9)
  context = _full_context(rng)
  config = base.get_config().losses
  assert set(config.keys()) == set(losses.registered_losses())
  assert config.depth.buffer == "depth" and config.ssim.window_size == 11
  config.gaussian_opacity.weight = 0.5  # switched on, so every term is evaluated
  config.silhouette.weight = 0.5
  total, values = losses.total_loss(config, context)
  assert set(values) == set(losses.registered_losses())
  assert all(np.isfinite(float(v)) and float(v) > 0 for v in values.values())
  expected = sum(config[name].weight * float(v) for name, v in values.items())
  np.testing.assert_allclose(total, expected, rtol=1e-5)

  for name in ("ssim", "landmarks", "gaussian_scale"):
    changed = ml_collections.ConfigDict(config.to_dict())
    changed[name].weight = config[name].weight + 2.0  # like --config.losses.<name>.weight=...
    new_total, new_values = losses.total_loss(changed, context)
    for other in values:
      np.testing.assert_allclose(new_values[other], values[other], rtol=1e-6)
    np.testing.assert_allclose(new_total - total, 2.0 * values[name], rtol=1e-3, atol=1e-6)

  # Zero weight: not evaluated (its missing inputs raise nothing) and not logged.
  config.ssim.weight = 0.0
  config.perceptual.weight = 0.0
  _, values = losses.total_loss(config, context.replace(feature_fn=None))
  assert "ssim" not in values and "perceptual" not in values
  # An option override reaches the term.
  config.depth.buffer = "median_depth"
  _, median = losses.total_loss(config, context)
  np.testing.assert_allclose(median["depth"], losses.depth_loss(context, buffer="median_depth"))


def test_command_line_overrides_reach_the_terms():
  argv = ["train", "--config.losses.ssim.weight=0", "--config.losses.depth.buffer=median_depth",
          "--config.losses.landmarks.epsilon=0.01"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict(
      "config", ml_collections.ConfigDict({"losses": base.loss_weights()}),
      flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  config = flag_values.config.losses
  assert config.ssim.weight == 0 and config.depth.buffer == "median_depth"
  rng = np.random.default_rng(12)
  context = _context(rng, landmarks=jnp.zeros((B, 3, 2)), landmarks_target=jnp.ones((B, 3, 2)))
  _, values = losses.total_loss({"ssim": config.ssim, "landmarks": config.landmarks}, context)
  assert "ssim" not in values
  distance = np.sqrt(2.0) / max(H, W)
  np.testing.assert_allclose(values["landmarks"], np.sqrt(distance ** 2 + 1e-4) - 0.01, rtol=1e-5)


def test_total_loss_errors_name_the_problem():
  rng = np.random.default_rng(10)
  context = _context(rng)
  with pytest.raises(ValueError, match=r"unknown loss 'ssmi'.*registered losses: \[.*'ssim'"):
    losses.total_loss({"ssmi": {"weight": 1.0}}, context)
  with pytest.raises(ValueError, match=r"unknown options \['windows'\].*accepts"):
    losses.total_loss({"ssim": {"weight": 1.0, "windows": 3}}, context)
  with pytest.raises(ValueError, match="has no 'weight'"):
    losses.total_loss({"l1": {}}, context)
  with pytest.raises(ValueError, match="'depth' needs LossContext fields"):
    losses.total_loss({"depth": {"weight": 1.0}}, context)
  with pytest.raises(ValueError, match="already registered"):
    losses.register("l1")(lambda context: 0.0)


def test_total_loss_jits_and_differentiates():
  rng = np.random.default_rng(11)
  context = _full_context(rng)
  config = base.get_config().losses

  @jax.jit
  def step(color, offsets):
    ctx = context.replace(render=context.render.replace(color=color), gaussian_offsets=offsets)
    return losses.total_loss(config, ctx)[0]

  grads = jax.grad(step, argnums=(0, 1))(context.render.color, context.gaussian_offsets)
  assert all(np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0 for g in grads)
  np.testing.assert_allclose(step(context.render.color, context.gaussian_offsets),
                             losses.total_loss(config, context)[0], rtol=1e-5)
