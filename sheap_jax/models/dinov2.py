"""DINOv2 (Oquab et al. 2023) as a frozen feature extractor on the shared ViT encoder.

Variants S/B/L/g with patch 14, learnt at 518 px (a 37 x 37 position grid), LayerScale, with or
without 4 registers. Weights come from official/timm/Hugging Face checkpoints through
`python -m sheap_jax.models.dinov2 convert IN OUT` (see convert_dinov2.py); OUT is one msgpack
file (flax.serialization) holding {"format", "config", "params"}, so nothing else travels with it.
Without weights the model starts from a seeded random initialisation and says so.
"""
import argparse
import json
import os
import warnings
from typing import Any, Dict, Optional, Tuple

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np

from sheap_jax.models import convert_dinov2
from sheap_jax.models import vit

FORMAT = "sheap_jax.dinov2/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VARIANTS = convert_dinov2.VARIANTS  # name -> (width, depth, heads, feed-forward kind)


def dinov2_config(variant: str = "vits14", registers: bool = False) -> Dict[str, Any]:
  """VisionTransformer keyword arguments of an official DINOv2 variant, as its hub entry has it."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown DINOv2 variant {variant!r}; expected one of {sorted(VARIANTS)}")
  width, depth, heads, ffn = VARIANTS[variant]
  source = "official_registers" if registers else "official"
  offset, antialias = convert_dinov2.INTERPOLATION[source]
  return dict(patch_size=convert_dinov2.DINOV2_PATCH_SIZE, width=width, depth=depth,
              num_heads=heads, mlp_dim=vit.ffn_hidden_dim(width, 4.0, ffn), ffn=ffn,
              num_registers=4 if registers else 0, class_token=True, layerscale_init=1e-5,
              layer_norm_eps=convert_dinov2.DINOV2_LAYER_NORM_EPS, qkv_bias=True,
              pos_embed_grid=(37, 37), pos_interp_offset=offset, pos_interp_antialias=antialias)


def build(config: Dict[str, Any], dtype: Any = jnp.float32) -> vit.VisionTransformer:
  """The encoder module for a config (float32 params; matmuls in `dtype`)."""
  config = dict(config, pos_embed_grid=tuple(config["pos_embed_grid"]))
  return vit.VisionTransformer(**config, dtype=dtype)


def save(path: str, config: Dict[str, Any], params: Dict[str, Any]) -> None:
  """Write config + params as one msgpack file."""
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  blob = serialization.msgpack_serialize({"format": FORMAT, "config": json.dumps(config),
                                          "params": params})
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(blob)


def load(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(config, params) from a file written by `save`, checked against the config's shapes."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no converted DINOv2 weights (make them with "
                            "`python -m sheap_jax.models.dinov2 convert IN OUT`)")
  with open(path, "rb") as f:
    try:
      blob = serialization.msgpack_restore(f.read())
    except Exception as e:
      raise ValueError(f"{path}: not a converted DINOv2 file ({e})") from e
  if not isinstance(blob, dict) or blob.get("format") != FORMAT:
    raise ValueError(f"{path}: not a converted DINOv2 file (expected format {FORMAT!r})")
  config, params = json.loads(blob["config"]), blob["params"]
  expected = jax.eval_shape(build(config).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, config["patch_size"], config["patch_size"], 3)))["params"]
  def shapes(tree):
    return {jax.tree_util.keystr(k): np.shape(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}

  want, have = shapes(expected), shapes(params)
  if want != have:
    missing = sorted(set(want) - set(have))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    raise ValueError(f"{path}: params do not match the stored config (missing {missing[:8]}, "
                     f"unexpected {sorted(set(have) - set(want))[:8]}, wrong shapes {wrong[:8]})")
  return config, params


def load_or_init(path: Optional[str], config: Optional[Dict[str, Any]] = None,
                 seed: int = 0) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Converted weights from `path`, or (path None) a seeded random initialisation of `config`
  (default ViT-S/14), with a warning that the features are not DINOv2's."""
  if path:
    return load(path)
  config = config or dinov2_config("vits14")
  warnings.warn(f"no DINOv2 weights given: using a random initialisation (seed {seed}, width "
                f"{config['width']}, depth {config['depth']}); its features are not DINOv2's",
                stacklevel=2)
  p = config["patch_size"]
  params = jax.jit(build(config).init)(jax.random.PRNGKey(seed), jnp.zeros((1, p, p, 3)))["params"]
  return config, params


def normalize(images: jnp.ndarray) -> jnp.ndarray:
  """Images in [0, 1] -> the ImageNet-standardised input DINOv2 was trained on."""
  return (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def frozen_features(model: vit.VisionTransformer, params: Dict[str, Any],
                    images: jnp.ndarray) -> vit.ViTOutput:
  """DINOv2 tokens of images (B, H, W, 3) in [0, 1] (H, W multiples of 14), with no gradient.

  Both the weights and the outputs are cut from differentiation, so DINOv2 stays frozen whatever
  the caller differentiates.
  """
  out = model.apply({"params": jax.lax.stop_gradient(params)}, normalize(images))
  return jax.lax.stop_gradient(out)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m sheap_jax.models.dinov2", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="convert an official/timm .pth or HF safetensors file")
  conv.add_argument("input", help=".pth/.pt/.bin state dict, .safetensors file or HF model folder")
  conv.add_argument("output", help="output .msgpack file")
  conv.add_argument("--num-heads", type=int, default=None,
                    help="attention heads (default: config.json, else the official model of that "
                    "width; required for other widths)")
  conv.add_argument("--layer-norm-eps", type=float, default=None,
                    help="LayerNorm epsilon (default: config.json, else 1e-6 for official widths; "
                    "required for other widths)")
  conv.add_argument("--pos-interp-offset", type=float, default=None,
                    help="override the position-embedding interpolate_offset "
                    "(default: the source's)")
  conv.add_argument("--pos-interp-antialias", choices=("true", "false"), default=None,
                    help="override antialiased position-embedding resampling")
  args = parser.parse_args(argv)
  try:
    config, params = convert_dinov2.convert(args.input, args.num_heads, args.layer_norm_eps)
  except (convert_dinov2.CheckpointError, FileNotFoundError, ImportError) as e:
    parser.exit(1, f"error: {e}\n")
  if args.pos_interp_offset is not None:
    config["pos_interp_offset"] = args.pos_interp_offset
  if args.pos_interp_antialias is not None:
    config["pos_interp_antialias"] = args.pos_interp_antialias == "true"
  save(args.output, config, params)
  count = sum(np.size(a) for a in jax.tree_util.tree_leaves(params))
  print(f"wrote {args.output}: {count / 1e6:.1f} M parameters, config {json.dumps(config)}")


if __name__ == "__main__":
  main()
