"""SHeaP predictor: initial outputs, shapes, the shape-branch switch, gradients, DINOv2 init."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from sheap_jax.models import dinov2
from sheap_jax.models import vit
from sheap_jax.models.predictor import (PredictorOutput, SheapPredictor, build_encoder,
                                        init_from_dinov2)
from sheap_jax.training import objective

IMAGE = 32  # a 2 x 2 patch grid keeps the tiny models cheap
SIZES = dict(n_shape=10, n_expression=6, identity_dim=8)
FLAME_FIELDS = [f for f in PredictorOutput.__dataclass_fields__ if f != "identity"]


def _expected_shapes(batch):
  return dict(shape=(batch, 10), expression=(batch, 6), global_pose=(batch, 3),
              neck_pose=(batch, 3), jaw_pose=(batch, 3), eye_pose=(batch, 6),
              eyelids=(batch, 2), camera_translation=(batch, 3), lighting=(batch, 9, 3),
              identity=(batch, 8))


def _images(seed, batch=2, size=IMAGE):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3))


@pytest.fixture(scope="module")
def full_predictor():
  """Tiny predictor with every option on: output tokens and a separate identity branch."""
  model = SheapPredictor(size="tiny", image_size=IMAGE, shape_source="identity_branch",
                         identity_size="tiny", output_tokens=True, **SIZES)
  params = jax.jit(model.init)(jax.random.key(0), _images(0))
  return model, params, jax.jit(model.apply)


def _with_random_heads(params, seed):
  """The params as after some training: head kernels no longer zero."""
  inner = dict(params["params"])
  for i, name in enumerate(sorted(k for k in inner if k.startswith("head_"))):
    kernel = inner[name]["kernel"]
    inner[name] = {**inner[name], "kernel": 0.3 * jax.random.normal(
        jax.random.key(seed + i), kernel.shape)}
  return {"params": inner}


def test_initial_output_is_the_mean_head_for_any_input(full_predictor):
  model, params, apply = full_predictor
  for seed in (1, 2):
    out = apply(params, _images(seed))
    for field, shape in _expected_shapes(2).items():
      value = getattr(out, field)
      assert value.shape == shape and value.dtype == jnp.float32, field
    for field in FLAME_FIELDS:
      np.testing.assert_array_equal(getattr(out, field), 0, err_msg=field)
    assert np.all(np.std(np.asarray(out.identity), axis=0) > 0)  # f depends on the image


def test_shape_head_on_the_shared_vit_in_bfloat16():
  model = SheapPredictor(size="tiny", image_size=IMAGE, dtype=jnp.bfloat16, **SIZES)
  images = _images(3, batch=3)
  out, params = jax.jit(model.init_with_output)(jax.random.key(0), images)
  assert "identity_vit" not in params["params"] and "reg_tokens" not in params["params"]["vit"]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  for field, shape in _expected_shapes(3).items():
    assert getattr(out, field).shape == shape and getattr(out, field).dtype == jnp.float32
  for field in FLAME_FIELDS:
    np.testing.assert_array_equal(getattr(out, field), 0, err_msg=field)


def test_shape_comes_only_from_the_identity_branch_when_configured(full_predictor):
  _, params, apply = full_predictor
  assert params["params"]["vit"]["reg_tokens"].shape == (1, 3, 32)  # expression, pose, light
  trained = _with_random_heads(params, 10)
  images = _images(4)
  base = apply(trained, images)
  other_vit = dict(trained["params"], vit=jax.tree.map(lambda x: x + 0.1,
                                                       trained["params"]["vit"]))
  moved = apply({"params": other_vit}, images)
  np.testing.assert_array_equal(moved.shape, base.shape)
  np.testing.assert_array_equal(moved.identity, base.identity)
  assert np.max(np.abs(moved.expression - base.expression)) > 1e-3


def test_gradients_reach_every_parameter(full_predictor):
  model, params, _ = full_predictor
  images = _images(5)
  shapes = jax.eval_shape(model.apply, params, images)
  weights = jax.tree.map(lambda s: jax.random.normal(jax.random.key(6), s.shape), shapes)

  def loss(params):
    out = model.apply(params, images)
    return sum(jnp.sum(w * x) for w, x in zip(jax.tree.leaves(weights), jax.tree.leaves(out)))

  grad_fn = jax.jit(jax.grad(loss))
  # At initialisation the zero heads still learn: their gradients are non-zero everywhere.
  for name, grad in grad_fn(params)["params"].items():
    if name.startswith("head_"):
      assert np.all(grad["kernel"] != 0) and np.all(grad["bias"] != 0), name
  # Once the heads are non-zero, every entry of every parameter gets a gradient, except the
  # key part of the qkv bias: it shifts all logits of a query equally, which softmax ignores.
  grads = grad_fn(_with_random_heads(params, 20))
  width = params["params"]["vit"]["cls_token"].shape[-1]
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    grad = np.asarray(grad)
    if name.endswith("['qkv']['bias']"):
      grad = np.concatenate([grad[:width], grad[2 * width:]])
    assert np.all(np.isfinite(grad)), name
    assert np.all(grad != 0), f"{name}: {np.sum(grad == 0)} zero entries"


def _patchwise_resize(images, old, new):
  """Resizes every old x old patch of the images to new x new on its own (FlexiViT's model)."""
  b, h, w, c = images.shape
  patches = images.reshape(b, h // old, old, w // old, old, c).transpose(0, 1, 3, 2, 4, 5)
  resized = jax.image.resize(patches, patches.shape[:3] + (new, new, c), "bilinear")
  return resized.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // old * new, w // old * new, c)


def test_init_from_dinov2_reproduces_dinov2_features(full_predictor):
  """A patch-14 DINOv2-style encoder (LayerScale, registers, larger position grid) copied into
  the patch-16 identity branch gives the same tokens on patchwise-upsampled images."""
  _, params, _ = full_predictor
  dino = vit.VisionTransformer(patch_size=14, width=32, depth=2, num_heads=2, mlp_dim=64,
                               num_registers=4, layerscale_init=1e-5, pos_embed_grid=(5, 5))
  images28 = _images(7, size=28)
  # Random weights of the right shapes; LayerScale far from 1e-5 so that folding it matters.
  leaves, treedef = jax.tree_util.tree_flatten_with_path(
      jax.eval_shape(dino.init, jax.random.key(8), images28)["params"])
  keys = jax.random.split(jax.random.key(9), len(leaves))
  dino_params = treedef.unflatten([
      jax.random.uniform(key, s.shape, minval=0.5, maxval=2.0)
      if "gamma" in jax.tree_util.keystr(path) else 0.1 * jax.random.normal(key, s.shape)
      for key, (path, s) in zip(keys, leaves)])
  no_registers = vit.VisionTransformer(patch_size=14, width=32, depth=2, num_heads=2,
                                       mlp_dim=64, layerscale_init=1e-5, pos_embed_grid=(5, 5))
  reference = jax.jit(no_registers.apply)(
      {"params": {k: v for k, v in dino_params.items() if k != "reg_tokens"}}, images28)

  loaded = init_from_dinov2(params, dino_params, branch="identity_vit")
  for name in ("vit",) + tuple(k for k in params["params"] if k.startswith("head_")):
    assert loaded["params"][name] is params["params"][name]  # untouched
  assert loaded["params"]["identity_vit"]["patch_embed"]["kernel"].shape == (16, 16, 3, 32)
  encoder = build_encoder("tiny", IMAGE)
  ours = jax.jit(encoder.apply)({"params": loaded["params"]["identity_vit"]},
                                _patchwise_resize(images28, 14, 16))
  np.testing.assert_allclose(ours.cls_token, reference.cls_token, atol=1e-4)
  np.testing.assert_allclose(ours.patch_tokens, reference.patch_tokens, atol=1e-4)


def test_init_from_dinov2_rejects_mismatched_encoders(full_predictor):
  _, params, _ = full_predictor
  wide = jax.eval_shape(vit.VisionTransformer(patch_size=14, width=64, depth=2, num_heads=2,
                                              pos_embed_grid=(5, 5)).init,
                        jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
  with pytest.raises(ValueError, match="width 64.*width 32"):
    init_from_dinov2(params, wide)
  with pytest.raises(ValueError, match="no encoder 'dino'"):
    init_from_dinov2(params, wide, branch="dino")


def test_bad_configuration_is_reported():
  with pytest.raises(ValueError, match="unknown predictor size 'H/14'"):
    jax.eval_shape(SheapPredictor(size="H/14").init, jax.random.key(0), _images(0))
  with pytest.raises(ValueError, match="unknown shape_source 'facenet'"):
    jax.eval_shape(SheapPredictor(size="tiny", shape_source="facenet").init,
                   jax.random.key(0), _images(0))


def test_config_model_init_starts_the_predictor_from_dinov2_weights(tmp_path):
  """config.model_init.dinov2_path reaches init_from_dinov2 (training calls
  objective.init_from_weights on a fresh state); an empty path leaves the params as they are."""
  config = base.get_config("cpu")
  networks = objective.build_networks(config)
  size = config.model.image_size
  params = {"predictor": networks.predictor.init(jax.random.key(1), jnp.zeros(
      (1, size, size, 3)))["params"], "regressor": {"untouched": jnp.ones(2)}}
  assert objective.init_from_weights(params, config) is params
  arch = objective.dinov2_config(config)
  dino_params = dinov2.build(arch).init(
      jax.random.key(2), jnp.zeros((1, arch["patch_size"], arch["patch_size"], 3)))["params"]
  path = str(tmp_path / "dinov2.msgpack")
  dinov2.save(path, arch, dino_params)
  config.model_init.dinov2_path = path
  loaded = objective.init_from_weights(params, config)
  expected = init_from_dinov2({"params": params["predictor"]}, dino_params, "vit")["params"]
  jax.tree.map(np.testing.assert_array_equal, loaded["predictor"], expected)
  fresh, copied = (jax.tree.leaves(p["predictor"]["vit"]["block_0"]) for p in (params, loaded))
  assert any(not np.array_equal(a, b) for a, b in zip(fresh, copied))  # not the fresh init
  assert loaded["regressor"] is params["regressor"]
  config.model_init.branches = ("nope",)
  with pytest.raises(ValueError, match="no encoder 'nope'"):
    objective.init_from_weights(params, config)
