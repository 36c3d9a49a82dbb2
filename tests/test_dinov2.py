"""DINOv2 conversion against the real PyTorch models (randomly initialised, shrunk, no download):
Hugging Face Dinov2Model / Dinov2WithRegistersModel via safetensors, and timm's DINOv2 ViTs
(plain, 4 registers, SwiGLU giant-style with chunked blocks) via official-layout .pth files."""
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sheap_jax.models import convert_dinov2
from sheap_jax.models import dinov2

torch = pytest.importorskip("torch")

SIZES = [(224, 224), (126, 182)]  # square with interpolation, and non-square
TIMM_INTERPOLATION = convert_dinov2.INTERPOLATION["timm"]


def _randomise_torch(model, seed):
  """Noise in every tensor, so LayerScale, norms and biases all matter to the comparison."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.2 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _images(size, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (1, *size, 3)).astype(np.float32)


def _jax_tokens(config, params, images):
  model = dinov2.build(config)
  with jax.default_matmul_precision("highest"):
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(images))
  regs = out.register_tokens
  return np.concatenate([out.cls_token[:, None], regs, out.patch_tokens], axis=1)


def _assert_tokens_match(config, params, torch_forward):
  for size in SIZES:
    images = _images(size)
    with torch.no_grad():
      ref = torch_forward(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    got = _jax_tokens(config, params, images)
    assert got.shape == ref.shape, size
    err = np.abs(got - ref).max()
    print(f"{size}: max abs error {err:.2e} (token scale {np.abs(ref).max():.2f})")
    assert err < 1e-4, f"{size}: max abs error {err}"


# ---------------------------------------------------------------- Hugging Face

def _hf_model(tmp_path, with_registers, seed, **sizes):
  """A random HF model saved as model.safetensors + config.json; `sizes` override the config."""
  transformers = pytest.importorskip("transformers")
  common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56,
                patch_size=14, layerscale_value=1e-5)
  common.update(sizes)
  if with_registers:
    config = transformers.Dinov2WithRegistersConfig(**common, use_swiglu_ffn=True)
    model = transformers.Dinov2WithRegistersModel(config)
  else:
    model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
  model = _randomise_torch(model, seed)
  folder = tmp_path / f"hf{'_reg' if with_registers else ''}_{common['hidden_size']}"
  model.save_pretrained(folder)
  return model, folder


@pytest.mark.parametrize("with_registers", [False, True])
def test_hf_safetensors_conversion_matches_transformers(tmp_path, with_registers):
  model, folder = _hf_model(tmp_path, with_registers, seed=1)
  config, params = convert_dinov2.convert(str(folder))
  assert config["width"] == 64 and config["depth"] == 2 and config["num_heads"] == 4
  assert config["num_registers"] == (4 if with_registers else 0)
  assert config["ffn"] == ("swiglu" if with_registers else "mlp")
  assert config["pos_embed_grid"] == (4, 4)
  source = "hf_dinov2_registers" if with_registers else "hf_dinov2"
  assert (config["pos_interp_offset"], config["pos_interp_antialias"]) == \
      convert_dinov2.INTERPOLATION[source]
  _assert_tokens_match(config, params, lambda x: model(pixel_values=x).last_hidden_state)


def test_hf_safetensors_file_alone_and_image_gradients(tmp_path):
  """The bare .safetensors (no config.json: heads given explicitly) and d tokens / d pixels."""
  model, folder = _hf_model(tmp_path, with_registers=True, seed=2)
  config, params = convert_dinov2.convert(str(folder / "model.safetensors"), num_heads=4,
                                          layer_norm_eps=1e-6)
  weights = np.random.default_rng(3).normal(size=(1, 1 + 4 + 9 * 13, 64)).astype(np.float32)
  images = _images((126, 182), seed=4)

  x = torch.from_numpy(images).requires_grad_(True)
  (model(pixel_values=x.permute(0, 3, 1, 2)).last_hidden_state * torch.from_numpy(weights)).sum() \
      .backward()
  model_jax = dinov2.build(config)

  def objective(img):
    out = model_jax.apply({"params": params}, img)
    tokens = jnp.concatenate([out.cls_token[:, None], out.register_tokens, out.patch_tokens], 1)
    return jnp.sum(tokens * weights)

  with jax.default_matmul_precision("highest"):
    grad = jax.jit(jax.grad(objective))(jnp.asarray(images))
  ref = x.grad.numpy()
  assert np.abs(grad - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_non_official_width_without_config_needs_heads_and_eps(tmp_path, capsys):
  """Heads and LayerNorm epsilon are not in the weights: a 96-wide model trained with 3 heads and
  eps 1e-5 is refused without config.json unless both are given, and then matches transformers."""
  model, folder = _hf_model(tmp_path, with_registers=False, seed=8, hidden_size=96,
                            num_hidden_layers=1, num_attention_heads=3, layer_norm_eps=1e-5)
  config, params = convert_dinov2.convert(str(folder))  # config.json gives both
  assert (config["num_heads"], config["layer_norm_eps"]) == (3, 1e-5)
  _assert_tokens_match(config, params, lambda x: model(pixel_values=x).last_hidden_state)

  bare = str(folder / "model.safetensors")
  (folder / "config.json").unlink()
  with pytest.raises(convert_dinov2.CheckpointError,
                     match=r"model.safetensors: width 96 is not an official DINOv2 width.*"
                     r"pass --num-heads and --layer-norm-eps"):
    convert_dinov2.convert(bare)
  with pytest.raises(convert_dinov2.CheckpointError, match=r"pass --layer-norm-eps \("):
    convert_dinov2.convert(bare, num_heads=3)
  with pytest.raises(SystemExit):
    dinov2.main(["convert", bare, str(tmp_path / "refused.msgpack")])
  assert "pass --num-heads and --layer-norm-eps" in capsys.readouterr().err

  out = tmp_path / "dinov2_96.msgpack"
  dinov2.main(["convert", bare, str(out), "--num-heads", "3", "--layer-norm-eps", "1e-5"])
  config, params = dinov2.load(str(out))
  assert (config["num_heads"], config["layer_norm_eps"]) == (3, 1e-5)
  _assert_tokens_match(config, params, lambda x: model(pixel_values=x).last_hidden_state)


def test_official_width_without_config_converts_as_the_official_model(tmp_path):
  """A ViT-S-wide (384) file alone gets the official 6 heads and eps 1e-6 with no flags."""
  model, folder = _hf_model(tmp_path, with_registers=False, seed=9, hidden_size=384,
                            num_hidden_layers=1, num_attention_heads=6)
  (folder / "config.json").unlink()
  config, params = convert_dinov2.convert(str(folder / "model.safetensors"))
  assert (config["num_heads"], config["layer_norm_eps"]) == (6, 1e-6)
  _assert_tokens_match(config, params, lambda x: model(pixel_values=x).last_hidden_state)
  assert {w: h for w, _, h, _ in dinov2.VARIANTS.values()} == {384: 6, 768: 12, 1024: 16,
                                                                1536: 24}


# ---------------------------------------------------------------- timm / official layout

TIMM_SIZES = dict(num_heads=2, layer_norm_eps=1e-6)  # the 128-wide test models are not official

def _timm_model(name, seed, **kwargs):
  timm = pytest.importorskip("timm")
  model = timm.create_model(name, pretrained=False, num_classes=0, img_size=56, embed_dim=128,
                            depth=2, num_heads=2, dynamic_img_size=True, **kwargs)
  return _randomise_torch(model, seed)


def _timm_to_official_state(model, chunked=False):
  """Undo timm's DINOv2 checkpoint filter: the layout of facebookresearch/dinov2 .pth files."""
  state = {k: v.clone() for k, v in model.state_dict().items()}
  width = state["cls_token"].shape[-1]
  state["mask_token"] = torch.zeros(1, width)
  if "reg_token" in state:  # timm folded the class position into cls_token; put a zero slot back
    state["register_tokens"] = state.pop("reg_token")
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, width), state["pos_embed"]], dim=1)
  official = {}
  for key, value in state.items():
    m = re.match(r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(.*)$", key)
    if m and model.blocks[0].mlp.__class__.__name__ == "GluMlp":
      key = f"blocks.{m.group(1)}.mlp.{'w12' if m.group(2) == 'fc1' else 'w3'}.{m.group(3)}"
    if chunked:  # one block per chunk: blocks.C.N. with N the global index
      key = re.sub(r"^blocks\.(\d+)\.", lambda b: f"blocks.{b.group(1)}.{b.group(1)}.", key)
    official[key] = value
  return official


TIMM_CASES = {
    "plain": ("vit_small_patch14_dinov2", {}, False),
    "reg4": ("vit_small_patch14_reg4_dinov2", {}, False),
    "swiglu_chunked": ("vit_giant_patch14_dinov2", {}, True),
}


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_official_pth_conversion_matches_timm(tmp_path, case):
  name, kwargs, chunked = TIMM_CASES[case]
  model = _timm_model(name, seed=5, **kwargs)
  official = _timm_to_official_state(model, chunked)
  path = tmp_path / "dinov2_official.pth"
  torch.save(official, path)
  config, params = convert_dinov2.convert(str(path), **TIMM_SIZES)
  registers = case == "reg4"
  assert (config["width"], config["depth"], config["num_heads"]) == (128, 2, 2)
  assert config["num_registers"] == (4 if registers else 0)
  assert config["ffn"] == ("swiglu" if case == "swiglu_chunked" else "mlp")
  if case == "swiglu_chunked":
    assert config["mlp_dim"] == model.blocks[0].mlp.fc2.in_features
  # Official hub defaults: offset 0.1 without registers, exact-size antialiased with them.
  source = "official_registers" if registers else "official"
  assert (config["pos_interp_offset"], config["pos_interp_antialias"]) == \
      convert_dinov2.INTERPOLATION[source]

  # timm resamples at exact size with antialiasing; compare under its interpolation.
  config["pos_interp_offset"], config["pos_interp_antialias"] = TIMM_INTERPOLATION
  _assert_tokens_match(config, params, model.forward_features)

  # timm's own state dict (timm layout) converts to the same parameters.
  torch.save(model.state_dict(), tmp_path / "timm.pth")
  timm_config, timm_params = convert_dinov2.convert(str(tmp_path / "timm.pth"), **TIMM_SIZES)
  assert (timm_config["pos_interp_offset"], timm_config["pos_interp_antialias"]) == \
      TIMM_INTERPOLATION
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7),
                         params, timm_params)


# ---------------------------------------------------------------- files, CLI, frozen use, errors

def test_cli_convert_save_load_roundtrip(tmp_path, capsys):
  _, folder = _hf_model(tmp_path, with_registers=False, seed=6)
  out = tmp_path / "converted" / "dinov2.msgpack"
  dinov2.main(["convert", str(folder), str(out), "--pos-interp-offset", "0.1"])
  assert "wrote" in capsys.readouterr().out
  config, params = dinov2.load(str(out))
  ref_config, ref_params = convert_dinov2.convert(str(folder))
  assert config == dict(ref_config, pos_embed_grid=[4, 4], pos_interp_offset=0.1)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, ref_params)


def test_frozen_features_normalise_and_block_gradients():
  config = dict(dinov2.dinov2_config("vits14", registers=True), width=32, depth=1, num_heads=2,
                mlp_dim=64, pos_embed_grid=(2, 2))
  with pytest.warns(UserWarning, match="random initialisation"):
    config, params = dinov2.load_or_init(None, config, seed=0)
  model = dinov2.build(config)
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 28, 42, 3)), jnp.float32)

  def loss(p, img):
    out = dinov2.frozen_features(model, p, img)
    return jnp.sum(out.patch_tokens ** 2) + jnp.sum(out.cls_token), out

  def unfrozen(p, img):
    return model.apply({"params": p}, (img - jnp.asarray(dinov2.IMAGENET_MEAN)) /
                       jnp.asarray(dinov2.IMAGENET_STD))

  (value, out), (g_params, g_images) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1),
                                                                  has_aux=True))(params, images)
  assert np.isfinite(value)
  assert all(not np.any(g) for g in jax.tree_util.tree_leaves(g_params))
  assert not np.any(g_images)
  ref = jax.jit(unfrozen)(params, images)
  np.testing.assert_allclose(out.patch_tokens, ref.patch_tokens, atol=1e-5)
  assert out.register_tokens.shape == (1, 4, 32) and out.grid == (2, 3)


def test_official_variant_sizes():
  expected = {"vits14": (384, 12, 6, 1536), "vitb14": (768, 12, 12, 3072),
              "vitl14": (1024, 24, 16, 4096), "vitg14": (1536, 40, 24, 4096)}
  for variant, (width, depth, heads, hidden) in expected.items():
    c = dinov2.dinov2_config(variant)
    assert (c["width"], c["depth"], c["num_heads"], c["mlp_dim"]) == (width, depth, heads, hidden)
    assert c["patch_size"] == 14 and c["pos_embed_grid"] == (37, 37)
  assert dinov2.dinov2_config("vitg14", registers=True)["num_registers"] == 4
  # timm's parameter counts less the class-token position, which is folded into cls_token.
  for variant, timm_count in [("vits14", 22_056_192), ("vitg14", 1_136_479_232)]:
    config = dinov2.dinov2_config(variant)
    shapes = jax.eval_shape(dinov2.build(config).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 14, 14, 3)))["params"]
    count = sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes))
    assert count == timm_count - config["width"], variant
  with pytest.raises(ValueError, match="unknown DINOv2 variant"):
    dinov2.dinov2_config("vitx14")


def test_bad_checkpoints_give_clear_errors(tmp_path, monkeypatch, capsys):
  junk = tmp_path / "junk.pth"
  junk.write_text("not a checkpoint")
  with pytest.raises(convert_dinov2.CheckpointError, match="junk.pth"):
    convert_dinov2.convert(str(junk))
  text = tmp_path / "weights.txt"
  text.write_text("x")
  with pytest.raises(convert_dinov2.CheckpointError, match="weights.txt: unknown checkpoint type"):
    convert_dinov2.convert(str(text))
  with pytest.raises(convert_dinov2.CheckpointError, match="no model.safetensors"):
    convert_dinov2.convert(str(tmp_path))

  model = _timm_model("vit_small_patch14_dinov2", seed=7)
  state = _timm_to_official_state(model)
  foreign = tmp_path / "foreign.pth"
  torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
  with pytest.raises(convert_dinov2.CheckpointError, match="foreign.pth: not a DINOv2 checkpoint"):
    convert_dinov2.convert(str(foreign))
  del state["blocks.1.attn.proj.weight"], state["norm.bias"]
  broken = tmp_path / "broken.pth"
  torch.save(state, broken)
  missing = r"broken.pth: missing keys \['norm.bias'\]"
  with pytest.raises(convert_dinov2.CheckpointError, match=missing):
    convert_dinov2.convert(str(broken))
  state["norm.bias"] = torch.zeros(128)
  torch.save(state, broken)
  missing = r"missing keys \['blocks.1.attn.proj.weight'\]"
  with pytest.raises(convert_dinov2.CheckpointError, match=missing):
    convert_dinov2.convert(str(broken), **TIMM_SIZES)
  state["blocks.1.attn.proj.weight"] = torch.zeros(128, 128)

  state["head.weight"] = torch.zeros(10, 128)
  torch.save(state, broken)
  with pytest.warns(UserWarning, match=r"ignoring 1 checkpoint entries .*'head.weight'"):
    convert_dinov2.convert(str(broken), **TIMM_SIZES)

  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  with pytest.raises(ImportError, match="broken.pth: reading PyTorch checkpoints .* needs torch"):
    convert_dinov2.convert(str(broken))

  bogus = tmp_path / "bogus.msgpack"
  bogus.write_bytes(b"\x00\x01")
  with pytest.raises(ValueError, match="bogus.msgpack: not a converted DINOv2 file"):
    dinov2.load(str(bogus))
  config = dinov2.dinov2_config("vits14")
  dinov2.save(str(bogus), dict(config, depth=1), {"cls_token": np.zeros((1, 1, 384))})
  with pytest.raises(ValueError, match="bogus.msgpack: params do not match the stored config"):
    dinov2.load(str(bogus))
  with pytest.raises(FileNotFoundError, match="missing.msgpack"):
    dinov2.load(str(tmp_path / "missing.msgpack"))
  with pytest.raises(SystemExit):  # torch is still hidden: the CLI says so in one line
    dinov2.main(["convert", str(foreign), str(tmp_path / "out.msgpack")])
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "foreign.pth: reading PyTorch checkpoints" in err
