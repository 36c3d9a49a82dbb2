"""The generic ViT encoder against a NumPy transcription of the same maths, and its resampling
of position embeddings against PyTorch's F.interpolate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from sheap_jax.models import vit


# ---------------------------------------------------------------- position-embedding resampling

@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("offset", [0.0, 0.1])
@pytest.mark.parametrize("old, new", [((6, 6), (4, 9)), ((5, 5), (5, 3)), ((37, 37), (12, 16))])
def test_resample_pos_embed_matches_torch_interpolate(old, new, offset, antialias):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(hash((old, new, offset, antialias)) % 2**32)
  pos = rng.normal(size=(1, *old, 8)).astype(np.float32)
  if offset:  # DINOv2's interpolate_offset path: scale factors instead of a size
    kwargs = {"scale_factor": tuple((n + offset) / o for n, o in zip(new, old))}
  else:
    kwargs = {"size": new}
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(pos).permute(0, 3, 1, 2), mode="bicubic", align_corners=False,
      antialias=antialias, **kwargs).permute(0, 2, 3, 1).numpy()
  got = vit.resample_pos_embed(jnp.asarray(pos), new, offset, antialias)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_resample_pos_embed_keeps_base_grid():
  pos = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 3)), jnp.float32)
  np.testing.assert_array_equal(vit.resample_pos_embed(pos, (4, 4), 0.1, False), pos)


# ---------------------------------------------------------------- NumPy reference forward

def _layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p.get("bias", 0.0)


def _reference_forward(params, images, cfg):
  """Straight-line NumPy (float64) forward of the DINOv2-style ViT described in vit.py."""
  p = {k: v for k, v in jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params).items()}
  b, h, w, c = images.shape
  ps = cfg["patch_size"]
  gh, gw = h // ps, w // ps
  patches = images.reshape(b, gh, ps, gw, ps, c).transpose(0, 1, 3, 2, 4, 5)
  x = np.einsum("byxijc,ijcd->byxd", patches, p["patch_embed"]["kernel"]) + p["patch_embed"]["bias"]
  pos = np.asarray(vit.resample_pos_embed(jnp.asarray(p["pos_embed"], jnp.float32), (gh, gw),
                                          cfg.get("pos_interp_offset", 0.0),
                                          cfg.get("pos_interp_antialias", False)), np.float64)
  x = (x + pos).reshape(b, gh * gw, -1)
  prefix = []
  if cfg.get("class_token", True):
    prefix.append(np.broadcast_to(p["cls_token"], (b, 1, x.shape[-1])))
  if cfg.get("num_registers", 0):
    prefix.append(np.broadcast_to(p["reg_tokens"], (b, cfg["num_registers"], x.shape[-1])))
  x = np.concatenate(prefix + [x], axis=1)
  heads = cfg["num_heads"]
  eps = cfg.get("layer_norm_eps", 1e-6)
  for i in range(cfg["depth"]):
    blk = p[f"block_{i}"]
    y = _layer_norm(x, blk["norm1"], eps)
    qkv = _dense(y, blk["attn"]["qkv"]).reshape(b, x.shape[1], 3, heads, -1)
    q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(b, x.shape[1], -1)
    y = _dense(y, blk["attn"]["proj"])
    x = x + (y * blk["ls1"]["gamma"] if "ls1" in blk else y)
    y = _layer_norm(x, blk["norm2"], eps)
    if cfg.get("ffn", "mlp") == "mlp":
      y = _dense(y, blk["mlp"]["fc1"])
      y = _dense(0.5 * y * (1.0 + erf(y / np.sqrt(2.0))), blk["mlp"]["fc2"])
    else:
      gate, val = np.split(_dense(y, blk["mlp"]["w12"]), 2, axis=-1)
      y = _dense(gate / (1.0 + np.exp(-gate)) * val, blk["mlp"]["w3"])
    x = x + (y * blk["ls2"]["gamma"] if "ls2" in blk else y)
  return _layer_norm(x, p["norm"], eps)


def _randomise(params, seed):
  """Replace every parameter by noise so that zero biases and unit scales test nothing away."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda l: jnp.asarray(0.3 * rng.normal(size=l.shape), jnp.float32), params)


CONFIGS = [
    dict(patch_size=4, width=32, depth=2, num_heads=4, layerscale_init=1e-5, num_registers=2,
         pos_embed_grid=(4, 4), pos_interp_offset=0.1),
    dict(patch_size=4, width=24, depth=2, num_heads=2, ffn="swiglu", class_token=False,
         pos_embed_grid=(3, 5), pos_interp_antialias=True, qkv_bias=False),
]


@pytest.mark.parametrize("cfg, size", [(CONFIGS[0], (12, 20)), (CONFIGS[1], (16, 16))])
def test_vit_matches_numpy_reference(cfg, size):
  model = vit.VisionTransformer(**cfg)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, *size, 3)), jnp.float32)
  params = _randomise(jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"], seed=2)
  with jax.default_matmul_precision("highest"):
    out = jax.jit(model.apply)({"params": params}, images)
  ref = _reference_forward(params, np.asarray(images, np.float64), cfg)
  n_prefix = int(cfg.get("class_token", True)) + cfg.get("num_registers", 0)
  grid = (size[0] // cfg["patch_size"], size[1] // cfg["patch_size"])
  assert out.grid == grid
  assert out.patch_tokens.shape == (2, grid[0] * grid[1], cfg["width"])
  assert out.register_tokens.shape == (2, cfg.get("num_registers", 0), cfg["width"])
  np.testing.assert_allclose(out.patch_tokens, ref[:, n_prefix:], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.register_tokens, ref[:, n_prefix - cfg.get("num_registers", 0):
                                                     n_prefix], atol=1e-4, rtol=0)
  if cfg.get("class_token", True):
    np.testing.assert_allclose(out.cls_token, ref[:, 0], atol=1e-4, rtol=0)
  else:
    assert out.cls_token is None
  np.testing.assert_array_equal(out.patch_grid(), out.patch_tokens.reshape(2, *grid, -1))


def test_param_tree_layout():
  model = vit.VisionTransformer(patch_size=4, width=16, depth=1, num_heads=2, num_registers=3,
                                layerscale_init=1e-5, pos_embed_grid=(2, 3), ffn="swiglu")
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 12, 3)))["params"]
  shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
  assert shapes["pos_embed"] == (1, 2, 3, 16)
  assert shapes["cls_token"] == (1, 1, 16)
  assert shapes["reg_tokens"] == (1, 3, 16)
  assert shapes["patch_embed"]["kernel"] == (4, 4, 3, 16)
  hidden = vit.ffn_hidden_dim(16, 4.0, "swiglu")
  assert hidden == 48  # int(64 * 2 / 3) = 42, rounded up to a multiple of 8
  assert shapes["block_0"]["mlp"]["w12"]["kernel"] == (16, 2 * hidden)
  assert shapes["block_0"]["attn"]["qkv"]["kernel"] == (16, 48)
  gamma = vit.LayerScale(1e-5).init(jax.random.PRNGKey(0), jnp.zeros((2, 16)))["params"]["gamma"]
  np.testing.assert_array_equal(gamma, np.full(16, 1e-5, np.float32))


def test_bfloat16_compute_keeps_float32_params_and_is_close():
  cfg = dict(patch_size=4, width=32, depth=1, num_heads=4, layerscale_init=1.0,
             pos_embed_grid=(4, 4))
  images = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 16, 16, 3)), jnp.float32)
  params = _randomise(jax.eval_shape(vit.VisionTransformer(**cfg).init, jax.random.PRNGKey(0),
                                     images)["params"], seed=5)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(params))
  full = jax.jit(vit.VisionTransformer(**cfg).apply)({"params": params}, images)
  half = jax.jit(vit.VisionTransformer(**cfg, dtype=jnp.bfloat16).apply)({"params": params}, images)
  assert half.patch_tokens.dtype == jnp.float32
  err = np.abs(np.asarray(half.patch_tokens) - np.asarray(full.patch_tokens)).max()
  assert 0 < err < 0.1, err  # bfloat16 keeps about 3 significant digits


def test_remat_gives_same_values_and_gradients():
  cfg = dict(patch_size=4, width=16, depth=1, num_heads=2, pos_embed_grid=(2, 2))
  images = jnp.asarray(np.random.default_rng(4).uniform(size=(1, 8, 8, 3)), jnp.float32)
  params = _randomise(jax.eval_shape(vit.VisionTransformer(**cfg).init, jax.random.PRNGKey(0),
                                     images)["params"], seed=6)

  def loss(p, remat):
    out = vit.VisionTransformer(**cfg, remat=remat).apply({"params": p}, images)
    return jnp.sum(out.patch_tokens ** 2) + jnp.sum(out.cls_token)

  grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  (v0, g0), (v1, g1) = (grad_fn(params, r) for r in (False, True))
  np.testing.assert_allclose(v0, v1, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g0, g1)


def test_bad_inputs_raise_clear_errors():
  model = vit.VisionTransformer(patch_size=4, width=16, depth=1, num_heads=2, pos_embed_grid=(2, 2))
  with pytest.raises(ValueError, match="multiple of the patch size"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 8, 3)))
  with pytest.raises(ValueError, match="feed-forward kind"):
    vit.VisionTransformer(patch_size=4, width=16, depth=1, num_heads=2, ffn="relu").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
