"""The Gaussians Regressor: identity features + DINOv2 tokens -> Gaussians bound to mesh faces.

A decoder over the mesh's face layout (SHeaP's UV-space generator, written over faces rather
than UV pixels so every face gets exactly its own tokens). Each face starts as a token made of
a learned per-face embedding, a Fourier encoding of where the face sits (template centroid and,
when given, UV centroid) and the identity features f. Each block then
  1. lets every face exchange information with its edge neighbours (message passing over the
     adjacency from `mesh_topology.face_adjacency`),
  2. cross-attends from the faces to the DINOv2 tokens of the source image,
  3. applies an MLP,
with the exchange's and the MLP's inputs FiLM-modulated by f (LayerNorm, then
x (1 + gamma(f)) + beta(f), the modulation zero-initialised). A final layer gives K Gaussians
per face, each with a local offset (3), rotation (4), two disc scales (2), opacity (1) and
features (C), in the triangle-local units of `sheap_jax.render.rigging` (offsets and scales in
multiples of the face scale k). Initial outputs are sensible splats: slots spread on a small
circle around the centroid, flat in the face plane, scale `init_scale / sqrt(K)` times k,
opacity `init_opacity`, albedo grey (0.5); the final layer starts small (not zero) so that
gradients reach every parameter from the first step.
"""
import math

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sheap_jax.geometry import mesh_topology
from sheap_jax.render.rigging import LocalGaussians

# Per-Gaussian values before activation: offset 3, quaternion 4, scales 2, opacity 1.
_GEOMETRY_DIMS = 3 + 4 + 2 + 1
_SLOT_RADIUS = 0.3  # initial distance of the K > 1 slots from the centroid, units of k


@struct.dataclass
class FaceLayout:
  """Per-face constants of a topology: who neighbours whom and where each face sits."""

  neighbours: jnp.ndarray  # (F, 3) int32 face across each edge, -1 for none
  positions: jnp.ndarray  # (F, P) normalised template centroid (3) [+ UV centroid (2)]


def face_layout(faces, template_vertices, uv_coords=None, uv_faces=None) -> FaceLayout:
  """Builds the layout of any FLAME-format topology: faces `f` (F, 3), `v_template` (V, 3) and
  optionally the UV template's `vt` (T, 2) and `ft` (F, 3)."""
  template_vertices = np.asarray(template_vertices, np.float64)
  if template_vertices.ndim != 2 or template_vertices.shape[1] != 3:
    raise ValueError(f"face_layout: template_vertices must be (V, 3), got "
                     f"{template_vertices.shape}")
  faces = mesh_topology.check_faces(faces, len(template_vertices))
  centroids = mesh_topology.face_centroids(template_vertices, faces)
  centre = (centroids.max(0) + centroids.min(0)) / 2
  half_extent = max((centroids.max(0) - centroids.min(0)).max() / 2, 1e-12)
  positions = [(centroids - centre) / half_extent]  # in [-1, 1]
  if (uv_coords is None) != (uv_faces is None):
    raise ValueError("face_layout: give both uv_coords (vt) and uv_faces (ft), or neither")
  if uv_coords is not None:
    uv_coords = np.asarray(uv_coords, np.float64)
    if uv_coords.ndim != 2 or uv_coords.shape[1] != 2:
      raise ValueError(f"face_layout: uv_coords must be (T, 2), got {uv_coords.shape}")
    uv_faces = mesh_topology.check_faces(uv_faces, len(uv_coords), name="uv_faces")
    if uv_faces.shape != faces.shape:
      raise ValueError(f"face_layout: uv_faces {uv_faces.shape} must match faces {faces.shape}")
    positions.append(2 * mesh_topology.face_centroids(uv_coords, uv_faces) - 1)
  return FaceLayout(neighbours=jnp.asarray(mesh_topology.face_adjacency(faces)),
                    positions=jnp.asarray(np.concatenate(positions, 1), jnp.float32))


def fourier_features(x: jnp.ndarray, num_bands: int) -> jnp.ndarray:
  """[x, sin(2^l pi x), cos(2^l pi x)] for l < num_bands, for x roughly in [-1, 1]."""
  angles = x[..., None] * (math.pi * 2.0 ** jnp.arange(num_bands))
  return jnp.concatenate([x, jnp.sin(angles).reshape(*x.shape[:-1], -1),
                          jnp.cos(angles).reshape(*x.shape[:-1], -1)], axis=-1)


class FiLMNorm(nn.Module):
  """LayerNorm whose scale and shift come from the identity features (identity at init)."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, identity):
    width = x.shape[-1]
    gamma_beta = nn.Dense(2 * width, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                          name="film")(identity)
    gamma, beta = jnp.split(gamma_beta[:, None, :], 2, axis=-1)
    x = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype)(x)
    return x * (1 + gamma) + beta


class NeighbourExchange(nn.Module):
  """One round of message passing: each face mixes itself with the mean of its neighbours."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, neighbours):
    valid = (neighbours >= 0).astype(x.dtype)  # (F, 3)
    gathered = jnp.take(x, jnp.maximum(neighbours, 0), axis=1)  # (B, F, 3, D)
    mean = jnp.einsum("bfnd,fn->bfd", gathered, valid) / jnp.maximum(valid.sum(-1), 1)[:, None]
    h = nn.Dense(x.shape[-1], dtype=self.dtype, name="mix")(jnp.concatenate([x, mean], -1))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="out")(nn.gelu(h))


class CrossAttention(nn.Module):
  """Multi-head attention from face tokens to image tokens.

  The keys have no bias: a key bias adds the same logit to every key of a query, which softmax
  ignores, so it would be a parameter that never receives a gradient.
  """

  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, tokens):
    width = queries.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"CrossAttention: width {width} is not divisible by {self.num_heads} "
                       "heads")
    heads = (self.num_heads, width // self.num_heads)
    project = lambda x, name, bias=True: nn.DenseGeneral(
        heads, use_bias=bias, dtype=self.dtype, name=name)(x)
    attended = jax.nn.dot_product_attention(
        project(queries, "query"), project(tokens, "key", bias=False), project(tokens, "value"))
    return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(attended)


class RegressorBlock(nn.Module):
  """Neighbour exchange, cross-attention to image tokens, MLP, each residual; the exchange's
  and the MLP's inputs are FiLM-ed by f, the attention's queries plainly normalised."""

  num_heads: int
  mlp_ratio: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, image_tokens, identity, neighbours):
    width = x.shape[-1]
    x = x + NeighbourExchange(self.dtype, name="exchange")(
        FiLMNorm(self.dtype, name="norm_exchange")(x, identity), neighbours)
    queries = nn.LayerNorm(dtype=self.dtype, name="norm_query")(x)
    x = x + CrossAttention(self.num_heads, self.dtype, name="cross_attention")(
        queries, image_tokens)
    h = FiLMNorm(self.dtype, name="norm_mlp")(x, identity)
    h = nn.Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(h)
    return x + nn.Dense(width, dtype=self.dtype, name="mlp_out")(nn.gelu(h))


def _slot_offsets(slots: int) -> np.ndarray:
  """(K, 3) initial in-plane offsets: the centroid for one slot, else a circle around it."""
  if slots == 1:
    return np.zeros((1, 3), np.float32)
  angles = 2 * np.pi * np.arange(slots) / slots
  return _SLOT_RADIUS * np.stack([np.cos(angles), np.sin(angles), np.zeros(slots)],
                                 1).astype(np.float32)


class GaussiansRegressor(nn.Module):
  """(identity (B, Df), image tokens (B, P, Dt), FaceLayout) -> LocalGaussians (B, F, K, ...)."""

  width: int = 256
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4
  gaussians_per_face: int = 2
  feature_dim: int = 3
  fourier_bands: int = 6
  init_scale: float = 0.5
  init_opacity: float = 0.5
  output_init_std: float = 1e-3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, identity, image_tokens, layout: FaceLayout) -> LocalGaussians:
    slots = self.gaussians_per_face
    if not 1 <= slots <= 6:
      raise ValueError(f"GaussiansRegressor: gaussians_per_face must be 1..6, got {slots}")
    if not 0 < self.init_opacity < 1:
      raise ValueError(f"GaussiansRegressor: init_opacity must be in (0, 1), got "
                       f"{self.init_opacity}")
    num_faces = layout.neighbours.shape[0]
    batch = identity.shape[0]
    face_embedding = self.param("face_embedding", nn.initializers.normal(0.02),
                                (num_faces, self.width))
    position = nn.Dense(self.width, dtype=self.dtype, name="position_embedding")(
        fourier_features(layout.positions, self.fourier_bands))
    x = (face_embedding.astype(self.dtype) + position)[None]
    x = x + nn.Dense(self.width, dtype=self.dtype, name="identity_embedding")(identity)[:, None]
    tokens = nn.Dense(self.width, dtype=self.dtype, name="image_projection")(image_tokens)
    for i in range(self.depth):
      x = RegressorBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"block_{i}")(
          x, tokens, identity, layout.neighbours)
    x = nn.LayerNorm(dtype=self.dtype, name="norm_out")(x)
    per_gaussian = _GEOMETRY_DIMS + self.feature_dim
    raw = nn.Dense(slots * per_gaussian, dtype=self.dtype, name="head",
                   kernel_init=nn.initializers.normal(self.output_init_std))(x)
    raw = raw.astype(jnp.float32).reshape(batch, num_faces, slots, per_gaussian)
    return activate(*jnp.split(raw, np.cumsum([3, 4, 2, 1]), axis=-1),
                    init_scale=self.init_scale, init_opacity=self.init_opacity)


def activate(offsets, quats, log_scales, opacity_logits, features, init_scale: float = 0.5,
             init_opacity: float = 0.5) -> LocalGaussians:
  """Unconstrained per-Gaussian values (..., F, K, 3 | 4 | 2 | 1 | C) -> LocalGaussians; all
  zeros give the initial splats of the module docstring (slots on a circle, flat, scale
  `init_scale / sqrt(K)`, opacity `init_opacity`, albedo 0.5). The regressor's outputs and
  fitting's free per-splat variables (`sheap_jax/fitting`) share this parameterisation."""
  slots = offsets.shape[-2]
  init_logit = math.log(init_opacity / (1 - init_opacity))
  return LocalGaussians(
      offsets=offsets + _slot_offsets(slots),
      quats=quats + jnp.array([1.0, 0.0, 0.0, 0.0]),
      scales=jnp.exp(log_scales + math.log(init_scale / math.sqrt(slots))),
      opacities=nn.sigmoid(opacity_logits[..., 0] + init_logit),
      features=nn.sigmoid(features),
  )
