"""The SHeaP objective: reanimate the target frame from the source frame, and score the result.

For a (source, target) pair of frames of one video:
1. the shared predictor ViT reads both frames: shape, identity features and lighting come from
   the source, pose, expression, eyelids and camera from the target;
2. the frozen DINOv2 encodes the source; the Gaussians Regressor turns its patch tokens and the
   source's identity features into Gaussians bound to the FLAME triangles;
3. the target mesh is FLAME(source shape, target pose/expression/eyelids); the Gaussians are
   rigged onto it, shaded with the source's spherical-harmonics lighting (per splat, from the
   splat normal) and rendered by the 2DGS rasteriser with the target's camera;
4. the non-differentiable z-buffer renderer draws the same mesh's depth and normals, the
   constants the geometry losses compare the splats with; FLAME's 68 landmarks are projected
   with the target camera;
5. `losses.total_loss` weighs the terms of `config.losses`.

The loss is computed per pair and averaged over pairs, so a batch split across devices (mean
of per-device means of equal-size shards) gives exactly the single-device value and gradient.
"""
import dataclasses
from typing import Any, Dict, Tuple

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

import rasterizer
from sheap_jax import camera as camera_lib
from sheap_jax import flame as flame_lib
from sheap_jax import head_model
from sheap_jax import losses
from sheap_jax import mesh_render
from sheap_jax import rigging
from sheap_jax import rotation
from sheap_jax import shading
from sheap_jax.models import dinov2
from sheap_jax.models import gaussians
from sheap_jax.models import predictor as predictor_lib

_FILE = "sheap_jax/objective.py"
RENDERERS = ("gaussians",)

# Default environment the predicted lighting offset is added to: constant radiance 1, under
# which Lambertian shading returns the albedo unchanged.
DEFAULT_LIGHTING = np.asarray(shading.ambient_directional_sh(1.0, 0.0, (0.0, 0.0, -1.0)) *
                              np.ones((1, 3), np.float32), np.float32)


@dataclasses.dataclass(frozen=True)
class Networks:
  """The three modules of SHeaP (hashable: closed over by jitted steps)."""

  predictor: predictor_lib.SheapPredictor
  regressor: gaussians.GaussiansRegressor
  dinov2: Any  # vit.VisionTransformer


@struct.dataclass
class Frozen:
  """Arrays the objective reads but never trains: the head model, its face layout, DINOv2."""

  flame: flame_lib.FlameModel
  layout: gaussians.FaceLayout
  dinov2: Any  # DINOv2 params


@struct.dataclass
class Reanimation:
  """The target frame as reconstructed from the pair, batch first."""

  render: rasterizer.RasterOutput  # 2DGS render of the target view, render size
  image: jnp.ndarray  # (B, H, W, 3) target image at render size
  vertices: jnp.ndarray  # (B, V, 3) target mesh, world (FLAME) frame
  landmarks: jnp.ndarray  # (B, 68, 2) projected FLAME landmarks, render pixels
  Ks: jnp.ndarray  # (B, 3, 3)
  viewmats: jnp.ndarray  # (B, 4, 4)
  mesh_depth: jnp.ndarray  # (B, H, W) z-buffer depth of the target mesh, 0 off it
  mesh_normals: jnp.ndarray  # (B, H, W, 3) camera-frame unit normals of the target mesh
  mesh_mask: jnp.ndarray  # (B, H, W)
  source: predictor_lib.PredictorOutput
  target: predictor_lib.PredictorOutput
  local_gaussians: rigging.LocalGaussians


def load_flame_model(config) -> flame_lib.FlameModel:
  """Real FLAME from `config.flame_path` when set, otherwise the built-in procedural head."""
  n_shape, n_expr = config.flame.n_shape, config.flame.n_expression
  if config.get("flame_path"):
    return flame_lib.load_flame(config.flame_path, n_shape, n_expr)
  return flame_lib.FlameModel.from_assets(head_model.build_head_assets(), n_shape, n_expr)


def build_networks(config) -> Networks:
  """Modules from `config.model`, `config.regressor`, `config.dinov2` and `config.flame`."""
  m, r = config.model, config.regressor
  dtype = jnp.bfloat16 if config.get("bfloat16") else jnp.float32
  predictor = predictor_lib.SheapPredictor(
      size=m.size, image_size=m.image_size, n_shape=config.flame.n_shape,
      n_expression=config.flame.n_expression, identity_dim=m.identity_dim,
      shape_source=m.shape_source, output_tokens=m.output_tokens, remat=m.remat, dtype=dtype)
  regressor = gaussians.GaussiansRegressor(
      width=r.width, depth=r.depth, num_heads=r.num_heads,
      gaussians_per_face=r.gaussians_per_face, feature_dim=3, dtype=dtype)
  return Networks(predictor=predictor, regressor=regressor,
                  dinov2=dinov2.build(dinov2_config(config), dtype=dtype))


def dinov2_config(config) -> Dict[str, Any]:
  """The DINOv2 encoder's keyword arguments: a named variant, overridden by `config.dinov2.arch`."""
  arch = dinov2.dinov2_config(config.dinov2.variant)
  arch.update(config.dinov2.get("arch", None) or {})
  return arch


def build_frozen(config, flame_model: flame_lib.FlameModel) -> Frozen:
  """The frozen inputs: face layout of the model's topology and DINOv2 weights (converted
  weights from `config.dinov2.path`, else a seeded random encoder, with a warning)."""
  layout = gaussians.face_layout(np.asarray(flame_model.faces), np.asarray(flame_model.v_template))
  _, params = dinov2.load_or_init(config.dinov2.get("path"), dinov2_config(config),
                                  seed=config.seed)
  return Frozen(flame=flame_model, layout=layout, dinov2=params)


def init_params(networks: Networks, frozen: Frozen, config, rng) -> Dict[str, Any]:
  """Trainable parameters {"predictor", "regressor"} (DINOv2 is not among them)."""
  size = config.model.image_size
  num_patches = _dinov2_num_patches(config)

  @jax.jit
  def init(rng, layout):
    predictor_rng, regressor_rng = jax.random.split(rng)
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, num_patches, networks.dinov2.width), jnp.float32)
    identity = jnp.zeros((1, config.model.identity_dim), jnp.float32)
    return {"predictor": networks.predictor.init(predictor_rng, images)["params"],
            "regressor": networks.regressor.init(regressor_rng, identity, tokens,
                                                 layout)["params"]}

  return init(rng, frozen.layout)


def _dinov2_num_patches(config) -> int:
  size, patch = config.dinov2.image_size, dinov2_config(config)["patch_size"]
  if size % patch:
    raise ValueError(f"{_FILE}: config.dinov2.image_size={size} is not a multiple of DINOv2's "
                     f"patch size {patch}")
  return (size // patch) ** 2


def resize_images(images: jnp.ndarray, size: int) -> jnp.ndarray:
  """(B, H, W, C) -> (B, size, size, C), antialiased (a no-op at that size already)."""
  if images.shape[1:3] == (size, size):
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "linear",
                          antialias=True)


def _flame_params(shape_from: predictor_lib.PredictorOutput,
                  motion_from: predictor_lib.PredictorOutput) -> flame_lib.FlameParams:
  """FLAME parameters with the identity of one prediction and the motion of another."""
  return flame_lib.FlameParams(
      shape=shape_from.shape, expression=motion_from.expression,
      global_pose=motion_from.global_pose, neck_pose=motion_from.neck_pose,
      jaw_pose=motion_from.jaw_pose, eye_pose=motion_from.eye_pose, eyelids=motion_from.eyelids,
      translation=jnp.zeros_like(motion_from.camera_translation))


def _shade_splats(splats: rasterizer.Splats, viewmats: jnp.ndarray, sh: jnp.ndarray
                  ) -> rasterizer.Splats:
  """Replaces each splat's albedo with its Lambertian colour under SH light (B, 9, 3), using
  the disc normal in the camera frame, turned to face the camera."""
  normals = rotation.quaternion_to_matrix(splats.quats)[..., :, 2]  # (B, N, 3) world
  rot, trans = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]
  normals = jnp.einsum("bnij,bnj->bni", rot, normals, precision=jax.lax.Precision.HIGHEST)
  centres = jnp.einsum("bnij,bnj->bni", rot, splats.means,
                       precision=jax.lax.Precision.HIGHEST) + trans
  facing = jnp.where(jnp.sum(normals * centres, -1, keepdims=True) > 0, -1.0, 1.0)
  colors = jax.vmap(shading.shade)(splats.features, normals * facing, sh)
  return splats.replace(features=colors)


def _render_mesh_buffers(vertices, faces, Ks, viewmats, size):
  """(depth, normals, mask) of the target mesh from the z-buffer renderer (constants)."""
  def one(v, K, viewmat):
    image = mesh_render.render_mesh(
        v, faces, camera_lib.Camera(K=K, viewmat=viewmat, width=size, height=size))
    return image.depth, image.normals, image.mask
  buffers = jax.vmap(one)(jax.lax.stop_gradient(vertices), Ks, viewmats)
  return jax.lax.stop_gradient(buffers)


def reanimate(networks: Networks, params, frozen: Frozen, config, source_image: jnp.ndarray,
              target_image: jnp.ndarray) -> Reanimation:
  """Renders the target frame from the pair (images (B, S, S, 3) at `config.model.image_size`)."""
  if config.renderer not in RENDERERS:
    raise ValueError(f"{_FILE}: config.renderer={config.renderer!r}; implemented renderers: "
                     f"{RENDERERS}")
  batch = source_image.shape[0]
  both = networks.predictor.apply({"params": params["predictor"]},
                                  jnp.concatenate([source_image, target_image], axis=0))
  source = jax.tree.map(lambda x: x[:batch], both)
  target = jax.tree.map(lambda x: x[batch:], both)

  dinov2_input = resize_images(source_image, config.dinov2.image_size)
  tokens = dinov2.frozen_features(networks.dinov2, frozen.dinov2, dinov2_input).patch_tokens
  local = networks.regressor.apply({"params": params["regressor"]}, source.identity, tokens,
                                   frozen.layout)

  flame_out = flame_lib.flame_forward(frozen.flame, _flame_params(source, target))
  size = config.render.size
  K = camera_lib.intrinsics_from_fov(camera_lib.SHEAP_FOV_Y_DEGREES, size, size)
  Ks = jnp.broadcast_to(K, (batch, 3, 3))
  viewmats = jax.vmap(camera_lib.flame_viewmat)(target.camera_translation)

  splats = rigging.rig_gaussians(local, flame_out.vertices, frozen.flame.faces)
  splats = _shade_splats(splats, viewmats, DEFAULT_LIGHTING + source.lighting)
  render = rasterizer.rasterize(
      splats, viewmats, Ks, size, size, jnp.asarray(config.render.background, jnp.float32),
      impl=config.render.impl, capacity=config.render.get("capacity"))

  landmarks = jax.vmap(lambda K_, v, p: camera_lib.project(
      K_, camera_lib.world_to_camera(v, p)))(Ks, viewmats, flame_out.landmarks68)
  depth, normals, mask = _render_mesh_buffers(flame_out.vertices, frozen.flame.faces, Ks,
                                              viewmats, size)
  return Reanimation(
      render=render, image=resize_images(target_image, size), vertices=flame_out.vertices,
      landmarks=landmarks, Ks=Ks, viewmats=viewmats, mesh_depth=depth, mesh_normals=normals,
      mesh_mask=mask, source=source, target=target, local_gaussians=local)


def _to_render_pixels(points: jnp.ndarray, image_size: int, render_size: int) -> jnp.ndarray:
  """Pixel coordinates at one image size -> another (pixel centres at integers)."""
  return (points + 0.5) * (render_size / image_size) - 0.5


def loss_context(networks: Networks, frozen: Frozen, config, batch: Dict[str, jnp.ndarray],
                 out: Reanimation) -> losses.LossContext:
  """Everything `losses.total_loss` reads, for one reanimated batch."""
  landmarks_target = batch.get("target_landmarks")
  if landmarks_target is not None:
    landmarks_target = _to_render_pixels(landmarks_target, batch["target_image"].shape[1],
                                         config.render.size)
  return losses.LossContext(
      render=out.render, image=out.image, intrinsics=out.Ks,
      mesh_depth=out.mesh_depth, mesh_normals=out.mesh_normals, mesh_mask=out.mesh_mask,
      landmarks=out.landmarks, landmarks_target=landmarks_target,
      landmarks_valid=batch.get("target_landmarks_valid"),
      flame_source=_flame_params(out.source, out.source),
      flame_target=_flame_params(out.target, out.target),
      gaussian_offsets=out.local_gaussians.offsets, gaussian_scales=out.local_gaussians.scales,
      gaussian_opacities=out.local_gaussians.opacities,
      feature_fn=losses.dinov2_feature_fn(networks.dinov2, frozen.dinov2,
                                          tuple(config.dinov2.feature_blocks),
                                          input_size=config.dinov2.image_size))


def pair_losses(networks: Networks, params, frozen: Frozen, config,
                batch: Dict[str, jnp.ndarray]) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """Per-pair (total (B,), {term: (B,)}) for a batch of pairs."""
  out = reanimate(networks, params, frozen, config, batch["source_image"], batch["target_image"])
  context = loss_context(networks, frozen, config, batch, out)
  feature_fn = context.feature_fn

  def one_pair(single):
    single = jax.tree.map(lambda x: x[None], single).replace(feature_fn=feature_fn)
    return losses.total_loss(config.losses, single)

  totals, terms = jax.vmap(one_pair)(context.replace(feature_fn=None))
  return totals, terms


def mean_loss(networks: Networks, params, frozen: Frozen, config, batch: Dict[str, jnp.ndarray]
              ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """The objective: the mean over pairs of the weighted loss, and each term's mean (logged)."""
  totals, terms = pair_losses(networks, params, frozen, config, batch)
  return jnp.mean(totals), jax.tree.map(jnp.mean, terms)
