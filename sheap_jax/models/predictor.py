"""The SHeaP predictor: a ViT maps a 224 x 224 head crop to FLAME parameters and more.

Outputs (`PredictorOutput`): FLAME shape and expression coefficients, axis-angle poses of the
five FLAME joints, two eyelid weights, a camera translation, a lighting latent and identity
features f for the Gaussians Regressor. Every head is a linear layer on a readout token: the
class token, or with `output_tokens` one learnable TokenFace-style token per output group
(the encoder's register tokens, read out after the last block).

Initialisation: every head except the identity features starts at zero (kernel and bias), so
an untrained predictor outputs the mean FLAME head, neutral, facing the camera, with no
camera offset and no lighting offset, for any image. The conventions those zeros refer to:
- `camera_translation` (metres, OpenCV camera axes) is added to the default framing's
  world-to-camera translation (head 1 m in front of the camera, DESIGN.md 3);
- `lighting` (9, 3) is added to the objective's default second-order SH environment (per
  colour channel, the coefficients `sheap_jax.geometry.shading` takes), so zero means default light.
The identity features start random (a FLAME-free latent; a zero vector would switch off the
Gaussians Regressor's conditioning at the start).

Where shape comes from is a config choice (DESIGN.md 4.2): `shape_source="vit"` puts the shape
and identity heads on the shared ViT; `"identity_branch"` gives them their own ViT
(`identity_size`), like the release's `shape_from_facenet`.

Sizes are named: "tiny" (tests), "S/16", "B/16", "L/16". Images are float32 in [0, 1], (B, H, W, 3)
with H, W multiples of 16; position embeddings are learnt on `image_size / 16` and resampled
for other sizes. `dtype=jnp.bfloat16` runs the matmuls in bfloat16; parameters stay float32.
`init_from_dinov2` starts the encoder from converted DINOv2 weights.
"""
import dataclasses

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sheap_jax.models import dinov2
from sheap_jax.models import vit

SH_COEFFICIENTS = 9  # second-order spherical harmonics
SHAPE_SOURCES = ("vit", "identity_branch")


@dataclasses.dataclass(frozen=True)
class ViTSize:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int = 16


VIT_SIZES = {
    "tiny": ViTSize(width=32, depth=2, num_heads=2, mlp_dim=64),
    "S/16": ViTSize(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B/16": ViTSize(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L/16": ViTSize(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}


@struct.dataclass
class PredictorOutput:
  """What the predictor reads off one image; FLAME fields are named as in `flame.FlameParams`."""

  shape: jnp.ndarray  # (B, S) FLAME shape coefficients
  expression: jnp.ndarray  # (B, E) FLAME expression coefficients
  global_pose: jnp.ndarray  # (B, 3) axis-angle
  neck_pose: jnp.ndarray  # (B, 3)
  jaw_pose: jnp.ndarray  # (B, 3)
  eye_pose: jnp.ndarray  # (B, 6) left eye then right eye
  eyelids: jnp.ndarray  # (B, 2) left, right
  camera_translation: jnp.ndarray  # (B, 3) metres, offset from the default framing
  lighting: jnp.ndarray  # (B, 9, 3) SH offset from the default environment light
  identity: jnp.ndarray  # (B, identity_dim) features for the Gaussians Regressor


def vit_size(name: str) -> ViTSize:
  if name not in VIT_SIZES:
    raise ValueError(f"unknown predictor size {name!r}; expected one of {sorted(VIT_SIZES)}")
  return VIT_SIZES[name]


def build_encoder(size: str, image_size: int, num_output_tokens: int = 0,
                  layerscale_init: float | None = None, remat: bool = False,
                  dtype=jnp.float32, name: str | None = None) -> vit.VisionTransformer:
  """The shared ViT encoder configured as a predictor trunk (output tokens are its registers)."""
  s = vit_size(size)
  if image_size % s.patch_size:
    raise ValueError(f"image_size {image_size} is not a multiple of the patch size {s.patch_size}")
  grid = image_size // s.patch_size
  return vit.VisionTransformer(
      patch_size=s.patch_size, width=s.width, depth=s.depth, num_heads=s.num_heads,
      mlp_dim=s.mlp_dim, num_registers=num_output_tokens, class_token=True,
      layerscale_init=layerscale_init, pos_embed_grid=(grid, grid), remat=remat, dtype=dtype,
      name=name)


class SheapPredictor(nn.Module):
  """Images (B, H, W, 3) in [0, 1] -> `PredictorOutput`."""

  size: str = "B/16"
  image_size: int = 224
  n_shape: int = 300
  n_expression: int = 100
  identity_dim: int = 256
  shape_source: str = "vit"  # "vit" or "identity_branch"
  identity_size: str = "S/16"  # encoder size of the identity branch
  output_tokens: bool = False  # TokenFace-style: one learnable readout token per output group
  layerscale_init: float | None = None  # None: plain ViT blocks
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  def _identity_fields(self) -> dict[str, int]:
    return {"shape": self.n_shape, "identity": self.identity_dim}

  def _trunk_groups(self) -> dict[str, dict[str, int]]:
    """Output groups the shared ViT reads out, {group: {field: size}}, in readout-token order."""
    groups = {
        "expression": {"expression": self.n_expression, "jaw_pose": 3, "eye_pose": 6,
                       "eyelids": 2},
        "pose": {"global_pose": 3, "neck_pose": 3, "camera_translation": 3},
        "lighting": {"lighting": 3 * SH_COEFFICIENTS},
    }
    return {"identity": self._identity_fields(), **groups} if self.shape_source == "vit" else groups

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> PredictorOutput:
    if self.shape_source not in SHAPE_SOURCES:
      raise ValueError(f"unknown shape_source {self.shape_source!r}; expected one of "
                       f"{SHAPE_SOURCES}")
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"SheapPredictor: expected images (B, H, W, 3), got {images.shape}")
    x = dinov2.normalize(images)  # the input statistics pretrained encoders expect
    groups = self._trunk_groups()
    encoder = build_encoder(self.size, self.image_size,
                            len(groups) if self.output_tokens else 0, self.layerscale_init,
                            self.remat, self.dtype, name="vit")
    tokens = encoder(x)
    readouts = {group: tokens.register_tokens[:, i] if self.output_tokens else tokens.cls_token
                for i, group in enumerate(groups)}
    if self.shape_source == "identity_branch":
      branch = build_encoder(self.identity_size, self.image_size, 0, self.layerscale_init,
                             self.remat, self.dtype, name="identity_vit")
      groups["identity"] = self._identity_fields()
      readouts["identity"] = branch(x).cls_token

    fields = {}
    for group, sizes in groups.items():
      for field, size in sizes.items():
        kernel_init = (nn.linear.default_kernel_init if field == "identity" else
                       nn.initializers.zeros)
        fields[field] = nn.Dense(size, kernel_init=kernel_init, name=f"head_{field}")(
            readouts[group])
    fields["lighting"] = fields["lighting"].reshape(-1, SH_COEFFICIENTS, 3)
    return PredictorOutput(**fields)


def flexi_resize_matrix(old: int, new: int) -> np.ndarray:
  """(new^2, old^2) matrix of bilinear resizing of an old x old patch to new x new."""
  basis = np.eye(old * old, dtype=np.float64).reshape(old * old, old, old)
  resized = jax.vmap(lambda b: jax.image.resize(b, (new, new), "bilinear"))(
      jnp.asarray(basis, jnp.float32))
  return np.asarray(resized, np.float64).reshape(old * old, new * new).T


def resample_patch_kernel(kernel, new: int) -> np.ndarray:
  """FlexiViT's PI-resize of a (p, p, C, D) patch-embedding kernel to (new, new, C, D).

  Chooses the kernel w' with <resize(x), w'> = <x, w> for every patch x (exactly when
  upsampling; least squares otherwise): w' = pinv(B^T) w with B the bilinear resize matrix.
  """
  kernel = np.asarray(kernel, np.float64)
  old = kernel.shape[0]
  if kernel.ndim != 4 or kernel.shape[1] != old:
    raise ValueError(f"resample_patch_kernel: expected a (p, p, C, D) kernel, got {kernel.shape}")
  if old == new:
    return kernel.astype(np.float32)
  pinv = np.linalg.pinv(flexi_resize_matrix(old, new).T)  # (new^2, old^2)
  flat = pinv @ kernel.reshape(old * old, -1)
  return flat.reshape(new, new, *kernel.shape[2:]).astype(np.float32)


def _fold_layerscale(dense: dict, gamma) -> dict:
  """Dense params whose output already includes a LayerScale: (x W + b) g = x (W g) + b g."""
  return {"kernel": dense["kernel"] * gamma, "bias": dense["bias"] * gamma}


def init_from_dinov2(params, dinov2_params, branch: str = "vit"):
  """Returns `params` with the `branch` encoder initialised from converted DINOv2 weights.

  `dinov2_params` is the `vit.VisionTransformer` tree `sheap_jax.models.dinov2.load` returns
  (with or without a top-level "params"). Width, depth and feed-forward kind must match (e.g.
  B/16 from DINOv2 ViT-B/14). Copied: every block, the final norm and the class token;
  resampled: the patch kernel (patch 14 -> 16, FlexiViT PI-resize) and the position
  embeddings (bicubic, as `vit.resample_pos_embed`, to this encoder's grid). DINOv2's
  LayerScale is folded into the preceding projections when this encoder has none. The
  readout tokens (registers) and the heads keep their initialisation.
  """
  source = dinov2_params.get("params", dinov2_params)
  outer = dict(params)
  inner = dict(outer["params"])
  if branch not in inner:
    raise ValueError(f"init_from_dinov2: the predictor has no encoder {branch!r} (has "
                     f"{sorted(k for k in inner if not k.startswith('head_'))})")
  target = inner[branch]
  depth = sum(k.startswith("block_") for k in target)
  source_depth = sum(k.startswith("block_") for k in source)
  width, source_width = target["cls_token"].shape[-1], source["cls_token"].shape[-1]
  if (depth, width) != (source_depth, source_width):
    raise ValueError(f"init_from_dinov2: DINOv2 has depth {source_depth} and width "
                     f"{source_width}, the {branch!r} encoder depth {depth} and width {width}")
  new = dict(target)
  patch = target["patch_embed"]["kernel"].shape[0]
  new["patch_embed"] = {"kernel": resample_patch_kernel(source["patch_embed"]["kernel"], patch),
                        "bias": source["patch_embed"]["bias"]}
  new["pos_embed"] = vit.resample_pos_embed(jnp.asarray(source["pos_embed"]),
                                            target["pos_embed"].shape[1:3])
  new["cls_token"] = source["cls_token"]
  new["norm"] = source["norm"]
  for i in range(depth):
    name = f"block_{i}"
    block = {k: v for k, v in source[name].items() if k not in ("ls1", "ls2")}
    if set(source[name]["mlp"]) != set(target[name]["mlp"]):
      raise ValueError(f"init_from_dinov2: feed-forward layers differ (DINOv2 "
                       f"{sorted(source[name]['mlp'])}, {branch!r} {sorted(target[name]['mlp'])})")
    if "ls1" in target[name]:  # DINOv2 always has LayerScale; identity gammas otherwise
      ones = {"gamma": np.ones(width, np.float32)}
      block["ls1"], block["ls2"] = source[name].get("ls1", ones), source[name].get("ls2", ones)
    elif "ls1" in source[name]:
      gamma1, gamma2 = source[name]["ls1"]["gamma"], source[name]["ls2"]["gamma"]
      block["attn"] = {**block["attn"], "proj": _fold_layerscale(block["attn"]["proj"], gamma1)}
      last = "fc2" if "fc2" in block["mlp"] else "w3"
      block["mlp"] = {**block["mlp"], last: _fold_layerscale(block["mlp"][last], gamma2)}
    new[name] = block
  for path, leaf in jax.tree_util.tree_leaves_with_path(target):
    copied = new
    for key in path:
      copied = copied[key.key]
    if np.shape(copied) != leaf.shape:
      raise ValueError(f"init_from_dinov2: {branch}{jax.tree_util.keystr(path)} has shape "
                       f"{leaf.shape}, DINOv2 gives {np.shape(copied)}")
  inner[branch] = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), new)
  outer["params"] = inner
  return outer
