"""The loss registry: named loss terms, weighted and configured from `config.losses`.

Every term is a function `term(context, **options) -> scalar` registered under a name.
`config.losses` (an ml_collections ConfigDict) maps names to `{weight, **options}`; `total_loss`
evaluates the terms with a non-zero weight and returns the weighted sum together with each
term's unweighted value for logging. So a term is re-weighted, switched off or configured from
the command line (`--config.losses.ssim.weight=0`, `--config.losses.depth.buffer=median_depth`)
or a config file (`configs/base.py` writes every term out), without code changes; a new term
is one decorated function plus its entry in the config.

What the terms read is gathered in one `LossContext` (batch first, camera frame = OpenCV axes,
pixel centres as in `rasterizer/types.py`). Image-space means are taken over the pixels a mask
marks, so padding and background outside the mesh never count.
"""
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from flax import struct
import jax
import jax.numpy as jnp

from sheap_jax.training import image_metrics
from sheap_jax.models import dinov2

_FILE = "sheap_jax/training/losses.py"
_EPS = 1e-8

# A perceptual feature extractor: images (B, H, W, 3) in [0, 1] -> feature maps [(B, N, D), ...].
FeatureFn = Callable[[jnp.ndarray], List[jnp.ndarray]]


@struct.dataclass
class LossContext:
  """Everything a loss term may read, for one batch of target views.

  Fields other than `render` and `image` are optional; a term whose inputs are missing raises
  an error naming them. Mesh buffers come from the non-differentiable z-buffer renderer and are
  treated as constants (`stop_gradient` is applied where they are read).
  """

  render: Any  # RasterOutput-like: color (B, H, W, 3), alpha, depth, median_depth (B, H, W),
  #              normals (B, H, W, 3) = sum(w n), distortion (B, H, W); camera frame
  image: jnp.ndarray  # (B, H, W, 3) target image in [0, 1]
  image_mask: Optional[jnp.ndarray] = None  # (B, H, W) 1 where the target pixel is valid
  intrinsics: Optional[jnp.ndarray] = None  # (B, 3, 3) pixels; for back-projecting depth
  mesh_depth: Optional[jnp.ndarray] = None  # (B, H, W) camera z of the target mesh, 0 off it
  mesh_normals: Optional[jnp.ndarray] = None  # (B, H, W, 3) unit camera-frame mesh normals
  mesh_mask: Optional[jnp.ndarray] = None  # (B, H, W) 1 where the target mesh is visible
  landmarks: Optional[jnp.ndarray] = None  # (B, L, 2) projected predicted landmarks, pixels
  landmarks_target: Optional[jnp.ndarray] = None  # (B, L, 2) detected 2D landmarks, pixels
  landmarks_valid: Optional[jnp.ndarray] = None  # (B, L) 1 where a detection exists
  matte: Optional[jnp.ndarray] = None  # (B, H, W) target's person matte in [0, 1] (real footage)
  matte_valid: Optional[jnp.ndarray] = None  # (B,) 1 where the target has a matte
  flame_source: Any = None  # flame.FlameParams predicted from the source frame
  flame_target: Any = None  # flame.FlameParams predicted from the target frame
  gaussian_offsets: Optional[jnp.ndarray] = None  # (..., 3) local offsets, units of face scale
  gaussian_scales: Optional[jnp.ndarray] = None  # (..., 2) local disc scales, units of face scale
  gaussian_opacities: Optional[jnp.ndarray] = None  # (...) in [0, 1]
  # Perceptual features (see `dinov2_feature_fn`). A static field: build the context inside the
  # traced step, so the function closes over traced DINOv2 parameters rather than constants.
  feature_fn: Optional[FeatureFn] = struct.field(pytree_node=False, default=None)


LossFn = Callable[..., jnp.ndarray]
_REGISTRY: Dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
  """Decorator adding `term(context, **options) -> scalar` to the registry under `name`."""
  def add(fn: LossFn) -> LossFn:
    if name in _REGISTRY:
      raise ValueError(f"{_FILE}: a loss named {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn
  return add


def registered_losses() -> Tuple[str, ...]:
  """Names of all registered terms, sorted."""
  return tuple(sorted(_REGISTRY))


def _require(context: LossContext, term: str, *fields: str) -> None:
  missing = [f for f in fields if getattr(context, f) is None]
  if missing:
    raise ValueError(f"{_FILE}: loss {term!r} needs LossContext fields {missing}, which are None "
                     "(set them, or give the term weight 0)")


def _valid_pixels(context: LossContext) -> jnp.ndarray:
  """(B, H, W) image validity mask (all ones when none is given), never differentiated."""
  if context.image_mask is None:
    return jnp.ones(context.image.shape[:3], jnp.float32)
  return jax.lax.stop_gradient(context.image_mask.astype(jnp.float32))


def masked_mean(values: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean of values (B, H, W) or (B, H, W, C) over the pixels where mask (B, H, W) is 1."""
  if values.ndim == mask.ndim + 1:
    total = jnp.sum(values * mask[..., None])
    count = jnp.sum(mask) * values.shape[-1]
  else:
    total, count = jnp.sum(values * mask), jnp.sum(mask)
  return total / jnp.maximum(count, 1.0)


# ---------------------------------------------------------------------------------------------
# Photometric terms.


@register("l1")
def l1_loss(context: LossContext) -> jnp.ndarray:
  """Mean absolute colour error over valid pixels."""
  return masked_mean(jnp.abs(context.render.color - context.image), _valid_pixels(context))


@register("ssim")
def ssim_loss(context: LossContext, window_size: int = 11, sigma: float = 1.5) -> jnp.ndarray:
  """1 - SSIM (Gaussian window, as 3DGS/2DGS train with), averaged over valid pixels."""
  similarity = image_metrics.ssim_map(context.render.color, context.image,
                                      window_size=window_size, sigma=sigma)
  return 1.0 - masked_mean(similarity, _valid_pixels(context))


def perceptual_distance(features_a: Sequence[jnp.ndarray],
                        features_b: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """LPIPS-style distance, unweighted: per layer, the mean over tokens of the squared distance
  between channel-normalised features (= 2 - 2 cos), averaged over layers."""
  def unit(f):
    return f / jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True) + _EPS)

  per_layer = [jnp.mean(jnp.sum((unit(a) - unit(b)) ** 2, axis=-1))
               for a, b in zip(features_a, features_b)]
  return sum(per_layer) / len(per_layer)


@register("perceptual")
def perceptual_loss(context: LossContext) -> jnp.ndarray:
  """Distance between frozen DINOv2 features of the render and of the target.

  Invalid target pixels are copied into the render first, so they add no difference. The render
  and the target go through the extractor as one batch.
  """
  _require(context, "perceptual", "feature_fn")
  mask = _valid_pixels(context)[..., None]
  render = mask * context.render.color + (1.0 - mask) * context.image
  batch = render.shape[0]
  features = context.feature_fn(jnp.concatenate([render, context.image], axis=0))
  return perceptual_distance([f[:batch] for f in features],
                             [jax.lax.stop_gradient(f[batch:]) for f in features])


def dinov2_feature_fn(model, params, blocks: Sequence[int] = (), input_size: Optional[int] = None
                      ) -> FeatureFn:
  """Perceptual features from a frozen DINOv2: the patch tokens after each of `blocks` (block
  indices) and, when `blocks` is empty, the final normalised patch tokens.

  The weights are cut from differentiation, the images are not: gradients reach the render.
  (`dinov2.frozen_features` also stops the image gradient, so it cannot serve here.) Images are
  resized bilinearly to `input_size` squared when given; otherwise H and W must be multiples of
  the patch size.
  """
  frozen = jax.lax.stop_gradient(params)
  names = {f"block_{i}" for i in blocks}
  num_prefix = int(model.class_token) + model.num_registers

  def features(images: jnp.ndarray) -> List[jnp.ndarray]:
    if input_size is not None:
      images = jax.image.resize(images, (images.shape[0], input_size, input_size, 3), "bilinear")
    height, width = images.shape[1:3]
    if height % model.patch_size or width % model.patch_size:
      raise ValueError(f"{_FILE}: perceptual features need image sides that are multiples of "
                       f"{model.patch_size}, got {height}x{width} (set input_size)")
    if not names:
      return [model.apply({"params": frozen}, dinov2.normalize(images)).patch_tokens]
    _, state = model.apply({"params": frozen}, dinov2.normalize(images),
                           capture_intermediates=lambda module, _: module.name in names)
    return [state["intermediates"][f"block_{i}"]["__call__"][0][:, num_prefix:] for i in blocks]

  return features


# ---------------------------------------------------------------------------------------------
# Landmarks.


@register("landmarks")
def landmark_loss(context: LossContext, epsilon: float = 1e-3) -> jnp.ndarray:
  """Charbonnier penalty sqrt(r^2 + eps^2) - eps of each landmark's reprojection distance r,
  in units of the image size (max(H, W)), averaged over valid landmarks."""
  _require(context, "landmarks", "landmarks", "landmarks_target")
  size = float(max(context.image.shape[1:3]))
  residual = (context.landmarks - jax.lax.stop_gradient(context.landmarks_target)) / size
  distance2 = jnp.sum(residual ** 2, axis=-1)
  penalty = jnp.sqrt(distance2 + epsilon ** 2) - epsilon
  if context.landmarks_valid is None:
    return jnp.mean(penalty)
  valid = jax.lax.stop_gradient(context.landmarks_valid.astype(jnp.float32))
  return jnp.sum(penalty * valid) / jnp.maximum(jnp.sum(valid), 1.0)


# ---------------------------------------------------------------------------------------------
# Silhouette against the person matte.

_SILHOUETTE_MODES = ("outside", "l1", "bce")


@register("silhouette")
def silhouette_loss(context: LossContext, mode: str = "outside") -> jnp.ndarray:
  """The render's alpha against the target's person matte: the mean over pixels, averaged over
  the batch with pairs that have no matte adding 0. The matte covers the whole person (hair,
  neck, torso) and the render only the head, so the default `mode="outside"` penalises only
  coverage of the backdrop, mean alpha (1 - matte); "l1" is mean |alpha - matte|, "bce" the
  binary cross entropy of alpha against the matte (both also pull the head over hair and
  torso)."""
  if mode not in _SILHOUETTE_MODES:
    raise ValueError(f"{_FILE}: loss 'silhouette' option mode={mode!r}; expected one of "
                     f"{_SILHOUETTE_MODES}")
  _require(context, "silhouette", "matte", "matte_valid")
  alpha = context.render.alpha
  matte = jax.lax.stop_gradient(context.matte.astype(jnp.float32))
  if mode == "outside":
    error = alpha * (1.0 - matte)
  elif mode == "l1":
    error = jnp.abs(alpha - matte)
  else:
    clipped = jnp.clip(alpha, 1e-6, 1.0 - 1e-6)
    error = -matte * jnp.log(clipped) - (1.0 - matte) * jnp.log(1.0 - clipped)
  has = jax.lax.stop_gradient(context.matte_valid.astype(jnp.float32))
  return jnp.sum(jnp.mean(error, axis=(1, 2)) * has) / error.shape[0]


# ---------------------------------------------------------------------------------------------
# Geometry: splats against the mesh, and 2DGS's own regularisers.

_DEPTH_BUFFERS = ("depth", "median_depth")


def _mesh_overlap(context: LossContext, term: str, min_alpha: float) -> jnp.ndarray:
  """(B, H, W) pixels where the mesh is visible and the render is opaque enough (constant)."""
  _require(context, term, "mesh_mask")
  covered = context.render.alpha > min_alpha
  return jax.lax.stop_gradient(context.mesh_mask.astype(jnp.float32) * covered)


@register("depth")
def depth_loss(context: LossContext, buffer: str = "depth", min_alpha: float = 0.5
               ) -> jnp.ndarray:
  """Mean |rendered depth - mesh depth| in metres where the mesh is visible and the render's
  alpha exceeds `min_alpha` (elsewhere the rendered depth is undefined). `buffer` picks the
  expected ("depth") or the median ("median_depth") depth."""
  if buffer not in _DEPTH_BUFFERS:
    raise ValueError(f"{_FILE}: loss 'depth' option buffer={buffer!r}; expected one of "
                     f"{_DEPTH_BUFFERS}")
  _require(context, "depth", "mesh_depth")
  error = jnp.abs(getattr(context.render, buffer) - jax.lax.stop_gradient(context.mesh_depth))
  return masked_mean(error, _mesh_overlap(context, "depth", min_alpha))


@register("normal")
def normal_loss(context: LossContext, min_alpha: float = 0.5) -> jnp.ndarray:
  """Mean 1 - n_render . n_mesh where the mesh is visible and the render is opaque enough.

  n_render is the composited sum(w n) (not renormalised, as 2DGS), so low opacity also costs.
  """
  _require(context, "normal", "mesh_normals")
  agreement = jnp.sum(context.render.normals * jax.lax.stop_gradient(context.mesh_normals),
                      axis=-1)
  return masked_mean(1.0 - agreement, _mesh_overlap(context, "normal", min_alpha))


def normals_from_depth(depth: jnp.ndarray, intrinsics: jnp.ndarray
                       ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Camera-frame unit normals (B, H, W, 3) of a depth map (B, H, W), and where they exist.

  Pixels are back-projected, P = z K^-1 (i, j, 1), and the normal is the normalised cross
  product of the central differences along rows and columns, oriented towards the camera
  (negative z for a surface facing it), as 2DGS's depth-normal consistency builds it. The outer
  one-pixel frame has no central difference: normal 0, validity (B, H, W) 0 there.
  """
  batch, height, width = depth.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  fx, skew, cx = intrinsics[:, 0, 0], intrinsics[:, 0, 1], intrinsics[:, 0, 2]
  fy, cy = intrinsics[:, 1, 1], intrinsics[:, 1, 2]
  y = (rows - cy[:, None, None]) / fy[:, None, None]
  x = (cols - cx[:, None, None] - skew[:, None, None] * y) / fx[:, None, None]
  points = depth[..., None] * jnp.stack([x, y, jnp.ones_like(x)], axis=-1)
  down = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
  right = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
  normal = jnp.cross(down, right)  # +y x +x = -z: towards the camera
  normal = normal / jnp.sqrt(jnp.sum(normal * normal, axis=-1, keepdims=True) + _EPS ** 2)
  normal = jnp.pad(normal, ((0, 0), (1, 1), (1, 1), (0, 0)))
  valid = jnp.pad(jnp.ones((batch, height - 2, width - 2), jnp.float32), ((0, 0), (1, 1), (1, 1)))
  return normal, valid


@register("depth_normal")
def depth_normal_loss(context: LossContext, buffer: str = "median_depth", min_alpha: float = 0.5
                      ) -> jnp.ndarray:
  """2DGS depth-normal consistency: mean 1 - n_render . n_from_depth, with n_from_depth from
  finite differences of the back-projected `buffer` depth. Counted where the pixel and its four
  neighbours have alpha > `min_alpha`, so silhouettes (depth jumps) are left out."""
  if buffer not in _DEPTH_BUFFERS:
    raise ValueError(f"{_FILE}: loss 'depth_normal' option buffer={buffer!r}; expected one of "
                     f"{_DEPTH_BUFFERS}")
  _require(context, "depth_normal", "intrinsics")
  normal, valid = normals_from_depth(getattr(context.render, buffer), context.intrinsics)
  opaque = jnp.pad((context.render.alpha > min_alpha).astype(jnp.float32),
                   ((0, 0), (1, 1), (1, 1)))
  neighbourhood = (opaque[:, 1:-1, 1:-1] * opaque[:, :-2, 1:-1] * opaque[:, 2:, 1:-1]
                   * opaque[:, 1:-1, :-2] * opaque[:, 1:-1, 2:])
  agreement = jnp.sum(context.render.normals * normal, axis=-1)
  return masked_mean(1.0 - agreement, jax.lax.stop_gradient(valid * neighbourhood))


@register("distortion")
def distortion_loss(context: LossContext) -> jnp.ndarray:
  """2DGS depth distortion: the mean of the rendered distortion buffer over all pixels."""
  return jnp.mean(context.render.distortion)


# ---------------------------------------------------------------------------------------------
# Regularisers: FLAME priors and Gaussian parameters.


def _flame_l2(context: LossContext, term: str, field: str) -> jnp.ndarray:
  """Sum of squares of one FLAME field per sample, averaged over the batch and over the
  source and target predictions present."""
  frames = [p for p in (context.flame_source, context.flame_target) if p is not None]
  if not frames:
    raise ValueError(f"{_FILE}: loss {term!r} needs LossContext.flame_source or flame_target "
                     "(both are None; set one, or give the term weight 0)")
  values = [jnp.mean(jnp.sum(getattr(p, field) ** 2, axis=-1)) for p in frames]
  return sum(values) / len(values)


@register("shape_prior")
def shape_prior(context: LossContext) -> jnp.ndarray:
  """L2 of the FLAME shape coefficients (unit-variance PCA: a Gaussian prior)."""
  return _flame_l2(context, "shape_prior", "shape")


@register("expression_prior")
def expression_prior(context: LossContext) -> jnp.ndarray:
  """L2 of the FLAME expression coefficients."""
  return _flame_l2(context, "expression_prior", "expression")


@register("jaw_prior")
def jaw_prior(context: LossContext) -> jnp.ndarray:
  """L2 of the jaw rotation (axis-angle, radians)."""
  return _flame_l2(context, "jaw_prior", "jaw_pose")


@register("eyelid_prior")
def eyelid_prior(context: LossContext) -> jnp.ndarray:
  """L2 of the two eyelid blendshape weights."""
  return _flame_l2(context, "eyelid_prior", "eyelids")


@register("gaussian_offset")
def gaussian_offset_loss(context: LossContext, threshold: float = 1.0) -> jnp.ndarray:
  """GaussianAvatars' position regulariser: mean of max(|offset| - threshold, 0) over Gaussians,
  offsets in units of their face's scale, so splats stay near their triangles."""
  _require(context, "gaussian_offset", "gaussian_offsets")
  norm = jnp.sqrt(jnp.sum(context.gaussian_offsets ** 2, axis=-1) + _EPS ** 2)
  return jnp.mean(jax.nn.relu(norm - threshold))


@register("gaussian_scale")
def gaussian_scale_loss(context: LossContext, threshold: float = 0.6) -> jnp.ndarray:
  """GaussianAvatars' scaling regulariser: mean over Gaussians of |max(s - threshold, 0)|, scales
  in units of their face's scale, against needle-like or oversized discs."""
  _require(context, "gaussian_scale", "gaussian_scales")
  excess = jax.nn.relu(context.gaussian_scales - threshold)
  return jnp.mean(jnp.sqrt(jnp.sum(excess ** 2, axis=-1) + _EPS ** 2) - _EPS)


@register("gaussian_opacity")
def gaussian_opacity_loss(context: LossContext) -> jnp.ndarray:
  """Mean binary entropy of the opacities (nats): pushes each splat to opaque or transparent."""
  _require(context, "gaussian_opacity", "gaussian_opacities")
  o = jnp.clip(context.gaussian_opacities, 1e-6, 1.0 - 1e-6)
  return jnp.mean(-o * jnp.log(o) - (1.0 - o) * jnp.log(1.0 - o))


# ---------------------------------------------------------------------------------------------
# Configuration and the total.


def _term_options(name: str, entry) -> Tuple[float, Dict[str, Any]]:
  """(weight, options) of one config entry, checked against the term's signature."""
  if name not in _REGISTRY:
    raise ValueError(f"{_FILE}: unknown loss {name!r} in config.losses; registered losses: "
                     f"{list(registered_losses())}")
  entry = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
  if "weight" not in entry:
    raise ValueError(f"{_FILE}: config.losses.{name} has no 'weight'")
  weight = entry.pop("weight")
  if isinstance(weight, bool) or not isinstance(weight, (int, float)):
    raise ValueError(f"{_FILE}: config.losses.{name}.weight must be a number, got {weight!r}")
  accepted = list(inspect.signature(_REGISTRY[name]).parameters)[1:]
  unknown = sorted(set(entry) - set(accepted))
  if unknown:
    raise ValueError(f"{_FILE}: config.losses.{name} has unknown options {unknown}; the term "
                     f"accepts {accepted}")
  return float(weight), entry


def total_loss(losses_config, context: LossContext
               ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """(sum of weight * term, {name: unweighted term value}) over the non-zero-weight terms.

  Zero-weight terms are neither evaluated nor logged. `losses_config` is `config.losses` (a
  ConfigDict or a plain dict of dicts).
  """
  total = jnp.zeros((), jnp.float32)
  values = {}
  for name, entry in losses_config.items():
    weight, options = _term_options(name, entry)
    if weight == 0.0:
      continue
    value = _REGISTRY[name](context, **options)
    values[name] = value
    total = total + weight * value
  return total, values
