"""A configurable Vision Transformer encoder (Flax Linen), shared by DINOv2 and the SHeaP predictor.

The block layout follows DINOv2 (pre-norm blocks, optional LayerScale, GELU MLP or SwiGLU
feed-forward, optional register tokens inserted after the class token without position
embeddings), which also covers the plain ViT (LayerScale off, no registers).

Parameter tree (names are stable; the DINOv2 weight converter writes exactly these):
  patch_embed/{kernel (p, p, C, D), bias (D,)}
  cls_token (1, 1, D)          the class token with its position embedding already added
  reg_tokens (1, R, D)         register tokens (no position embedding), only if R > 0
  pos_embed (1, Gh, Gw, D)     patch position embeddings on the base grid
  block_{i}/norm1, attn/{qkv, proj}, ls1/gamma, norm2, mlp/{fc1, fc2} or mlp/{w12, w3}, ls2/gamma
  norm                         final LayerNorm over all tokens

The class token's position embedding is never interpolated, so it is folded into `cls_token`.
"""
import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

FFN_KINDS = ("mlp", "swiglu")


@struct.dataclass
class ViTOutput:
  """Final-norm tokens of a ViT, split by role."""

  cls_token: Optional[jnp.ndarray]  # (B, D) or None without a class token
  register_tokens: jnp.ndarray  # (B, R, D); R may be 0
  patch_tokens: jnp.ndarray  # (B, Gh * Gw, D), row-major over the patch grid
  grid: Tuple[int, int] = struct.field(pytree_node=False)  # (Gh, Gw)

  def patch_grid(self) -> jnp.ndarray:
    """Patch tokens as a (B, Gh, Gw, D) feature map."""
    return self.patch_tokens.reshape(self.patch_tokens.shape[0], *self.grid, -1)


def ffn_hidden_dim(width: int, mlp_ratio: float, ffn: str) -> int:
  """Hidden size of the feed-forward layer as DINOv2 computes it from the ratio.

  SwiGLU keeps two thirds of the MLP size rounded up to a multiple of 8 (DINOv2's SwiGLUFFNFused),
  so that its three matrices cost about as much as the MLP's two.
  """
  hidden = int(width * mlp_ratio)
  if ffn == "swiglu":
    hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
  return hidden


def _cubic_keys(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel with parameter `a` (PyTorch: -0.75 plain, -0.5 antialiased)."""
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def bicubic_resize_matrix(in_size: int, out_size: int, scale: float, antialias: bool) -> np.ndarray:
  """(out_size, in_size) weights of PyTorch's 1-D bicubic resampling (align_corners=False).

  `scale` is input/output spacing as PyTorch uses it: in_size / out_size when a size is given, or
  1 / scale_factor when a scale factor is given (DINOv2's interpolate_offset path).
  Plain: 4 taps at scale * (i + 0.5) - 0.5 with a = -0.75 and indices clamped at the borders.
  Antialiased (PIL-style): taps stretched by max(scale, 1), a = -0.5, truncated at the borders and
  renormalised to sum to 1; PyTorch leaves an axis whose size does not change untouched.
  """
  if antialias and in_size == out_size:
    return np.eye(in_size)
  weights = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    if antialias:
      stretch = max(scale, 1.0)
      support = 2.0 * stretch
      centre = scale * (i + 0.5)
      lo = max(int(centre - support + 0.5), 0)
      hi = min(int(centre + support + 0.5), in_size)
      taps = np.arange(lo, hi)
      w = _cubic_keys((taps - centre + 0.5) / stretch, a=-0.5)
      if w.sum() != 0.0:
        w = w / w.sum()
      weights[i, taps] += w
    else:
      src = scale * (i + 0.5) - 0.5
      base = np.floor(src)
      t = src - base
      w = _cubic_keys(np.array([t + 1.0, t, 1.0 - t, 2.0 - t]), a=-0.75)
      taps = np.clip(base + np.arange(-1, 3), 0, in_size - 1).astype(int)
      np.add.at(weights[i], taps, w)
  return weights


def resample_pos_embed(pos_embed: jnp.ndarray, grid: Tuple[int, int], offset: float = 0.0,
                       antialias: bool = False) -> jnp.ndarray:
  """Bicubic resampling of a (1, Gh, Gw, D) position-embedding grid to `grid`, as DINOv2 does.

  offset > 0 reproduces DINOv2's `interpolate_offset` trick: PyTorch gets
  scale_factor = (new + offset) / old, which keeps the output size but shifts the sample points
  slightly. offset == 0 resamples to the exact size (HF Dinov2, DINOv2 with registers, timm).
  Resampling runs in float32 whatever the compute dtype, like the official code.
  """
  base = pos_embed.shape[1:3]
  if tuple(grid) == tuple(base):
    return pos_embed
  mats = []
  for old, new in zip(base, grid):
    scale = old / (new + offset) if offset else old / new
    mats.append(jnp.asarray(bicubic_resize_matrix(old, new, scale, antialias), jnp.float32))
  return jnp.einsum("yh,xw,bhwd->byxd", mats[0], mats[1], pos_embed.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


class LayerScale(nn.Module):
  """Per-channel residual-branch scale (CaiT / DINOv2), initialised to a small constant."""

  init_value: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],),
                       self.param_dtype)
    return x * gamma.astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (DINOv2/timm layout)."""

  num_heads: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, tokens, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dense(3 * width, use_bias=self.qkv_bias, name="qkv")(x)
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = jax.nn.dot_product_attention(q, k, v)
    return dense(width, name="proj")(out.reshape(batch, tokens, width))


class FeedForward(nn.Module):
  """GELU MLP (fc1, fc2) or SwiGLU (w12 packs [gate, value], w3) as in DINOv2-g."""

  hidden_dim: int
  kind: str = "mlp"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    if self.kind == "mlp":
      h = nn.gelu(dense(self.hidden_dim, name="fc1")(x), approximate=False)
      return dense(width, name="fc2")(h)
    if self.kind == "swiglu":
      gate, value = jnp.split(dense(2 * self.hidden_dim, name="w12")(x), 2, axis=-1)
      return dense(width, name="w3")(nn.silu(gate) * value)
    raise ValueError(f"unknown feed-forward kind {self.kind!r}; expected one of {FFN_KINDS}")


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(ffn(norm2(x)))."""

  num_heads: int
  mlp_dim: int
  ffn: str = "mlp"
  layerscale_init: Optional[float] = None
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, use_fast_variance=False,
                             dtype=self.dtype, param_dtype=self.param_dtype)

    def scaled(y, name):
      if self.layerscale_init is None:
        return y
      return LayerScale(self.layerscale_init, self.param_dtype, name=name)(y)

    y = Attention(self.num_heads, self.qkv_bias, self.dtype, self.param_dtype, name="attn")(
        norm(name="norm1")(x))
    x = x + scaled(y, "ls1")
    y = FeedForward(self.mlp_dim, self.ffn, self.dtype, self.param_dtype, name="mlp")(
        norm(name="norm2")(x))
    return x + scaled(y, "ls2")


class VisionTransformer(nn.Module):
  """ViT encoder: images (B, H, W, C), already normalised, -> `ViTOutput` after the final norm.

  H and W must be multiples of `patch_size`; position embeddings learnt on `pos_embed_grid` are
  resampled bicubically to other grids (see `resample_pos_embed`). Parameters stay in
  `param_dtype`; matmuls run in `dtype` (e.g. bfloat16); outputs are float32.
  """

  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  mlp_dim: Optional[int] = None  # explicit feed-forward hidden size; overrides mlp_ratio
  ffn: str = "mlp"  # "mlp" (GELU) or "swiglu"
  num_registers: int = 0
  class_token: bool = True
  layerscale_init: Optional[float] = None  # None: no LayerScale
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  pos_embed_grid: Sequence[int] = (14, 14)
  pos_interp_offset: float = 0.0
  pos_interp_antialias: bool = False
  remat: bool = False  # rematerialise blocks in the backward pass (saves activation memory)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> ViTOutput:
    if images.ndim != 4:
      raise ValueError(f"expected images of shape (B, H, W, C), got {images.shape}")
    batch, height, width_px, _ = images.shape
    p = self.patch_size
    if height % p or width_px % p:
      raise ValueError(f"image size {height}x{width_px} is not a multiple of the patch size {p}")
    if self.ffn not in FFN_KINDS:
      raise ValueError(f"unknown feed-forward kind {self.ffn!r}; expected one of {FFN_KINDS}")
    grid = (height // p, width_px // p)

    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="patch_embed")(images)
    init = nn.initializers.truncated_normal(0.02)
    pos = self.param("pos_embed", init, (1, *self.pos_embed_grid, self.width), self.param_dtype)
    pos = resample_pos_embed(pos, grid, self.pos_interp_offset, self.pos_interp_antialias)
    x = (x.astype(jnp.float32) + pos).reshape(batch, grid[0] * grid[1], self.width)

    prefix = []
    if self.class_token:
      cls = self.param("cls_token", init, (1, 1, self.width), self.param_dtype)
      prefix.append(jnp.broadcast_to(cls.astype(jnp.float32), (batch, 1, self.width)))
    if self.num_registers:
      reg = self.param("reg_tokens", init, (1, self.num_registers, self.width), self.param_dtype)
      prefix.append(jnp.broadcast_to(reg.astype(jnp.float32), (batch, self.num_registers,
                                                                 self.width)))
    x = jnp.concatenate(prefix + [x], axis=1)  # residual stream stays float32

    mlp_dim = self.mlp_dim or ffn_hidden_dim(self.width, self.mlp_ratio, self.ffn)
    block_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block_cls(self.num_heads, mlp_dim, self.ffn, self.layerscale_init, self.layer_norm_eps,
                    self.qkv_bias, self.dtype, self.param_dtype, name=f"block_{i}")(x)
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="norm")(x).astype(jnp.float32)

    n_prefix = int(self.class_token) + self.num_registers
    return ViTOutput(
        cls_token=x[:, 0] if self.class_token else None,
        register_tokens=x[:, int(self.class_token):n_prefix],
        patch_tokens=x[:, n_prefix:],
        grid=grid)
