"""Read DINOv2 checkpoints (official PyTorch, timm, Hugging Face) as `vit.VisionTransformer` params.

Three layouts are understood, recognised from the keys:
- official (facebookresearch/dinov2 `dinov2_vit*14*_pretrain.pth`): `cls_token`, `pos_embed` with a
  class slot, `mask_token`, `register_tokens`, `patch_embed.proj.*`, `blocks.N.{norm1, attn.qkv,
  attn.proj, ls1.gamma, norm2, mlp.fc1|fc2 or mlp.w12|w3, ls2.gamma}`, `norm.*`; giant checkpoints
  trained with block chunks nest blocks as `blocks.C.N.` (N is still the global index).
- timm (`vit_*_patch14[_reg4]_dinov2`): the official names without `mask_token`; with registers
  `reg_token` and a `pos_embed` without the class slot (already folded into `cls_token`);
  SwiGLU packed as `mlp.fc1` (2 x hidden outputs) and `mlp.fc2`.
- Hugging Face `Dinov2Model` / `Dinov2WithRegistersModel` (`embeddings.*`, `encoder.layer.N.*`,
  `layernorm.*`, separate query/key/value), optionally with a `config.json`.
Every layout is first renamed to the official one, then mapped to Flax by one function.

The variant (width, depth, registers, feed-forward kind and size, qkv bias, LayerScale) is
inferred from the weights. Heads and the LayerNorm epsilon are not in the weights: they come from
the caller, else from the HF config.json, else from the official model of that width (6/12/16/24
heads, eps 1e-6); any other width without them is refused rather than guessed. The
position-embedding interpolation defaults to what the source's own code does: official without
registers: interpolate_offset 0.1, no antialiasing; official with registers, timm and HF
Dinov2WithRegisters: exact size, antialiased; HF Dinov2 (transformers 5.24): exact size, not
antialiased. `mask_token` (used only for masked pretraining) is dropped.
"""
import json
import math
import os
import re
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np

DINOV2_PATCH_SIZE = 14
DINOV2_LAYER_NORM_EPS = 1e-6

# name -> (width, depth, heads, feed-forward kind), the official sizes.
VARIANTS = {
    "vits14": (384, 12, 6, "mlp"),
    "vitb14": (768, 12, 12, "mlp"),
    "vitl14": (1024, 24, 16, "mlp"),
    "vitg14": (1536, 40, 24, "swiglu"),
}
OFFICIAL_HEADS = {width: heads for width, _, heads, _ in VARIANTS.values()}

# (pos_interp_offset, pos_interp_antialias) per source.
INTERPOLATION = {
    "official": (0.1, False),
    "official_registers": (0.0, True),
    "timm": (0.0, True),
    "hf_dinov2": (0.0, False),
    "hf_dinov2_registers": (0.0, True),
}

Checkpoint = Dict[str, np.ndarray]


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read as DINOv2."""


# ---------------------------------------------------------------- reading files

def _read_torch(path: str) -> Checkpoint:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"{path}: reading PyTorch checkpoints (.pth/.pt/.bin) needs torch, which is "
                      "not installed; install torch or convert a .safetensors file instead") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many kinds for a corrupt or foreign file
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
  for wrapper in ("model", "state_dict"):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
    raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
  return {k: v.detach().float().numpy() for k, v in state.items()}


def _read_safetensors(path: str) -> Checkpoint:
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return {k: v.astype(np.float32) for k, v in load_file(path).items()}
  except Exception as e:
    raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def read_checkpoint(path: str) -> Tuple[Checkpoint, Optional[Dict[str, Any]]]:
  """Tensors (float32 numpy) of a checkpoint file or HF folder, and the HF config.json if any."""
  if os.path.isdir(path):
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
      raise CheckpointError(f"{path}: folder has no model.safetensors")
    path = weights
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such checkpoint")
  if path.endswith(".safetensors"):
    tensors = _read_safetensors(path)
  elif path.endswith((".pth", ".pt", ".bin")):
    tensors = _read_torch(path)
  else:
    raise CheckpointError(f"{path}: unknown checkpoint type; expected .pth/.pt/.bin, .safetensors "
                          "or a Hugging Face folder")
  config_path = os.path.join(os.path.dirname(path), "config.json")
  hf_config = None
  if path.endswith(".safetensors") and os.path.exists(config_path):
    with open(config_path) as f:
      hf_config = json.load(f)
  return tensors, hf_config


# ---------------------------------------------------------------- renaming to the official layout

_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"\.attention\.(?:output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.layer_scale(\d)\.lambda1$", r".ls\1.gamma"),
    (r"\.mlp\.(?:weights_out|down_proj)\.", ".mlp.w3."),
    (r"\.mlp\.weights_in\.", ".mlp.w12."),
    (r"^layernorm\.", "norm."),
]
_HF_SPLIT = re.compile(r"^(blocks\.\d+)\.(?:attention\.(?:attention\.)?"
                       r"(query|key|value|q_proj|k_proj|v_proj)|mlp\.(gate_proj|up_proj))"
                       r"\.(weight|bias)$")
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}
_GATE_UP_ORDER = {"gate_proj": 0, "up_proj": 1}


def _hf_to_official(tensors: Checkpoint, source: str) -> Checkpoint:
  """Hugging Face names (hub layout or transformers-5 in-memory layout) -> official names.

  Separate query/key/value (and SwiGLU gate/up) projections are stacked along the output axis in
  the order the official fused layers use: [q; k; v] and [gate; value].
  """
  out, pieces = {}, {}
  for key, value in tensors.items():
    key = re.sub(r"^(?:dinov2|dinov2_with_registers)\.", "", key)
    for pattern, repl in _HF_RENAMES:
      key = re.sub(pattern, repl, key)
    m = _HF_SPLIT.match(key)
    if not m:
      out[key] = value
      continue
    block, qkv, gate_up, kind = m.groups()
    fused, order = ((f"{block}.attn.qkv.{kind}", _QKV_ORDER[qkv]) if qkv else
                    (f"{block}.mlp.w12.{kind}", _GATE_UP_ORDER[gate_up]))
    pieces.setdefault(fused, {})[order] = value
  for fused, parts in pieces.items():
    expected = 3 if ".qkv." in fused else 2
    if sorted(parts) != list(range(expected)):
      raise CheckpointError(f"{source}: {fused} has only {len(parts)} of its {expected} "
                            "projections")
    out[fused] = np.concatenate([parts[i] for i in range(expected)], axis=0)
  return out


def _is_packed_swiglu(tensors: Checkpoint, mlp: str) -> bool:
  """timm packs SwiGLU as fc1 with twice the outputs fc2 takes in; a GELU MLP has them equal."""
  fc1, fc2 = tensors.get(f"{mlp}.fc1.weight"), tensors.get(f"{mlp}.fc2.weight")
  return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]


def _timm_to_official(tensors: Checkpoint) -> Checkpoint:
  """timm names -> official: `reg_token` -> `register_tokens`; packed SwiGLU fc1/fc2 -> w12/w3.

  A class-free `pos_embed` (timm's no_embed_class) is kept as it is; `to_flax` handles both.
  """
  out = {}
  for key, value in tensors.items():
    if key == "reg_token":
      key = "register_tokens"
    m = re.match(r"^(blocks\.\d+\.mlp)\.(fc1|fc2)\.(weight|bias)$", key)
    if m and _is_packed_swiglu(tensors, m.group(1)):
      key = f"{m.group(1)}.{'w12' if m.group(2) == 'fc1' else 'w3'}.{m.group(3)}"
    out[key] = value
  return out


def _unchunk_blocks(tensors: Checkpoint) -> Checkpoint:
  """`blocks.C.N.rest` (official block chunks; N is the global index) -> `blocks.N.rest`."""
  return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in tensors.items()}


def detect_layout(tensors: Checkpoint) -> str:
  """'hf', 'official' or 'timm', from the key names."""
  if any(k.startswith(("embeddings.", "encoder.layer.", "dinov2.", "dinov2_with_registers."))
         for k in tensors):
    return "hf"
  if "patch_embed.proj.weight" in tensors:
    return "official" if "mask_token" in tensors else "timm"
  return "unknown"


# ---------------------------------------------------------------- official layout -> Flax

def _require(tensors: Checkpoint, keys, source: str):
  missing = [k for k in keys if k not in tensors]
  if missing:
    raise CheckpointError(f"{source}: missing keys {missing}")


def _linear(tensors, prefix, bias=True):
  out = {"kernel": tensors[f"{prefix}.weight"].T}
  if bias:
    out["bias"] = tensors[f"{prefix}.bias"]
  return out


def _norm(tensors, prefix):
  return {"scale": tensors[f"{prefix}.weight"], "bias": tensors[f"{prefix}.bias"]}


def _heads_and_eps(width: int, num_heads: Optional[int], layer_norm_eps: Optional[float],
                   source: str) -> Tuple[int, float]:
  """Attention heads and LayerNorm epsilon: as given, else the official model's of that width.

  Neither is visible in the weights, and a wrong value converts without error but computes other
  features, so a width that is not an official one needs both given explicitly.
  """
  if width in OFFICIAL_HEADS:
    return (num_heads or OFFICIAL_HEADS[width],
            DINOV2_LAYER_NORM_EPS if layer_norm_eps is None else layer_norm_eps)
  given = {"--num-heads": num_heads, "--layer-norm-eps": layer_norm_eps}
  missing = [flag for flag, value in given.items() if value is None]
  if missing:
    raise CheckpointError(
        f"{source}: width {width} is not an official DINOv2 width ({sorted(OFFICIAL_HEADS)}) and "
        "no config.json gives its attention heads and LayerNorm epsilon; pass "
        f"{' and '.join(missing)} (convert(num_heads=..., layer_norm_eps=...))")
  return num_heads, layer_norm_eps


def infer_config(tensors: Checkpoint, num_heads: Optional[int], layer_norm_eps: Optional[float],
                 source: str) -> Dict[str, Any]:
  """VisionTransformer keyword arguments of an official-layout checkpoint."""
  _require(tensors, ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                     "norm.weight", "norm.bias"], source)
  width = tensors["cls_token"].shape[-1]
  blocks = sorted({int(m.group(1)) for m in (re.match(r"^blocks\.(\d+)\.", k) for k in tensors)
                   if m})
  if not blocks or blocks != list(range(len(blocks))):
    raise CheckpointError(f"{source}: transformer blocks must be numbered 0..N-1, found {blocks}")
  swiglu = "blocks.0.mlp.w12.weight" in tensors
  fc = "blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight"
  _require(tensors, [fc], source)
  num_pos = tensors["pos_embed"].shape[1]
  side = math.isqrt(num_pos - 1)
  if side * side != num_pos - 1:
    side = math.isqrt(num_pos)
    if side * side != num_pos:
      raise CheckpointError(f"{source}: pos_embed has {num_pos} positions, not a square grid")
  heads, eps = _heads_and_eps(int(width), num_heads, layer_norm_eps, source)
  if width % heads:
    raise CheckpointError(f"{source}: width {width} is not divisible by {heads} heads")
  return dict(
      patch_size=int(tensors["patch_embed.proj.weight"].shape[-1]),
      width=int(width),
      depth=len(blocks),
      num_heads=int(heads),
      mlp_dim=int(tensors[fc].shape[0] // (2 if swiglu else 1)),
      ffn="swiglu" if swiglu else "mlp",
      num_registers=int(tensors["register_tokens"].shape[1]) if "register_tokens" in tensors else 0,
      class_token=True,
      layerscale_init=1e-5 if "blocks.0.ls1.gamma" in tensors else None,
      layer_norm_eps=float(eps),
      qkv_bias="blocks.0.attn.qkv.bias" in tensors,
      pos_embed_grid=(side, side),
  )


class _ReadTracker(dict):
  """A dict that remembers which keys were read, to report checkpoint entries left unused."""

  def __init__(self, *args):
    super().__init__(*args)
    self.read = set()

  def __getitem__(self, key):
    self.read.add(key)
    return super().__getitem__(key)


def to_flax(tensors: Checkpoint, config: Dict[str, Any], source: str) -> Dict[str, Any]:
  """Official-layout tensors -> the VisionTransformer param tree (numpy float32).

  Warns about entries it does not use (other than `mask_token`), e.g. a classifier head.
  """
  tensors = _ReadTracker(tensors)
  width = config["width"]
  side = config["pos_embed_grid"][0]
  pos = tensors["pos_embed"].reshape(1, -1, width)
  cls = tensors["cls_token"].reshape(1, 1, width)
  if pos.shape[1] == side * side + 1:  # fold the class position into the class token
    cls, pos = cls + pos[:, :1], pos[:, 1:]
  params = {
      "patch_embed": {"kernel": tensors["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
                      "bias": tensors["patch_embed.proj.bias"]},
      "cls_token": cls,
      "pos_embed": pos.reshape(1, side, side, width),
      "norm": _norm(tensors, "norm"),
  }
  if config["num_registers"]:
    params["reg_tokens"] = tensors["register_tokens"].reshape(1, -1, width)
  ffn = ("w12", "w3") if config["ffn"] == "swiglu" else ("fc1", "fc2")
  for i in range(config["depth"]):
    b = f"blocks.{i}"
    keys = [f"{b}.norm1.weight", f"{b}.norm1.bias", f"{b}.norm2.weight", f"{b}.norm2.bias",
            f"{b}.attn.qkv.weight", f"{b}.attn.proj.weight", f"{b}.attn.proj.bias"]
    keys += [f"{b}.mlp.{n}.{t}" for n in ffn for t in ("weight", "bias")]
    keys += [f"{b}.attn.qkv.bias"] if config["qkv_bias"] else []
    keys += [f"{b}.ls1.gamma", f"{b}.ls2.gamma"] if config["layerscale_init"] is not None else []
    _require(tensors, keys, source)
    block = {
        "norm1": _norm(tensors, f"{b}.norm1"),
        "attn": {"qkv": _linear(tensors, f"{b}.attn.qkv", config["qkv_bias"]),
                 "proj": _linear(tensors, f"{b}.attn.proj")},
        "norm2": _norm(tensors, f"{b}.norm2"),
        "mlp": {n: _linear(tensors, f"{b}.mlp.{n}") for n in ffn},
    }
    if config["layerscale_init"] is not None:
      block["ls1"] = {"gamma": tensors[f"{b}.ls1.gamma"]}
      block["ls2"] = {"gamma": tensors[f"{b}.ls2.gamma"]}
    params[f"block_{i}"] = block
  unused = sorted(set(tensors) - tensors.read - {"mask_token"})
  if unused:
    warnings.warn(f"{source}: ignoring {len(unused)} checkpoint entries not part of the encoder: "
                  f"{unused[:8]}", stacklevel=3)
  return params


def convert(path: str, num_heads: Optional[int] = None, layer_norm_eps: Optional[float] = None
            ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(VisionTransformer config, params) from a DINOv2 checkpoint in any supported layout.

  `num_heads` and `layer_norm_eps` override config.json; without either source, only the
  official widths convert (see `_heads_and_eps`).
  """
  tensors, hf_config = read_checkpoint(path)
  layout = detect_layout(tensors)
  if layout == "unknown":
    raise CheckpointError(f"{path}: not a DINOv2 checkpoint (no 'patch_embed.proj.weight' nor "
                          f"'embeddings.*' keys; first keys: {sorted(tensors)[:5]})")
  if layout == "hf":
    tensors = _hf_to_official(tensors, path)
    hf_config = hf_config or {}
    if hf_config.get("hidden_act", "gelu") != "gelu":
      raise CheckpointError(f"{path}: hidden_act {hf_config['hidden_act']!r} is not supported "
                            "(DINOv2 uses exact GELU)")
    num_heads = num_heads or hf_config.get("num_attention_heads")
    if layer_norm_eps is None:
      layer_norm_eps = hf_config.get("layer_norm_eps")
  tensors = _unchunk_blocks(tensors)
  if layout == "timm":
    tensors = _timm_to_official(tensors)
  config = infer_config(tensors, num_heads, layer_norm_eps, path)
  if layout == "hf":
    source = "hf_dinov2_registers" if config["num_registers"] else "hf_dinov2"
  elif layout == "official":
    source = "official_registers" if config["num_registers"] else "official"
  else:
    source = "timm"
  config["pos_interp_offset"], config["pos_interp_antialias"] = INTERPOLATION[source]
  params = to_flax(tensors, config, path)
  return config, params
