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
   constants the geometry losses compare the splats with; by default the gradients of the
   render's geometry buffers train only the Gaussians (`config.render.geometry_gradients`);
   FLAME's 68 landmarks are projected with the target camera;
5. `losses.total_loss` weighs the terms of `config.losses`.

`config.renderer = "mesh"` swaps steps 2-4 for the paper's baseline: `mesh_baseline.AlbedoHead`
turns the same inputs into a UV albedo texture, and `mesh_baseline.render` draws the textured
target mesh (differentiable, antialiased silhouettes) under the same lighting and camera. Its
depth and normals are the mesh's own, so the terms comparing splats with the mesh and the
Gaussian regularisers do not apply (`SPLAT_ONLY_LOSSES`) and are skipped.

The loss is computed per pair and averaged over pairs, so a batch split across devices (mean
of per-device means of equal-size shards) gives exactly the single-device value and gradient.
"""
import dataclasses
import functools
from typing import Any, Dict, Optional, Tuple

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

import rasterizer
from sheap_jax.geometry import camera as camera_lib
from sheap_jax.head import flame as flame_lib
from sheap_jax.head import head_model
from sheap_jax.head import flame_io
from sheap_jax.training import gradient_routing
from sheap_jax.training import losses
from sheap_jax.training import renderers
from sheap_jax.render import mesh_baseline
from sheap_jax.render import mesh_render
from sheap_jax.render import rigging
from sheap_jax.geometry import rotation
from sheap_jax.geometry import shading
from sheap_jax.models import dinov2
from sheap_jax.models import gaussians
from sheap_jax.models import predictor as predictor_lib

_FILE = "sheap_jax/training/objective.py"
# Terms that read quantities only splats have: mesh depth/normals against themselves, the 2DGS
# distortion (0 for one opaque surface) and the Gaussian regularisers. The mesh renderer skips
# them (as if their weight were 0); `depth_normal` stays: on the mesh it compares the smooth
# vertex normals with the normals of the rendered depth.
SPLAT_ONLY_LOSSES = ("depth", "normal", "distortion", "gaussian_offset", "gaussian_scale",
                     "gaussian_opacity")
# The render's geometry buffers (read by `depth`, `normal`, `depth_normal`, `distortion`) and
# where their gradients go (`config.render.geometry_gradients`): "gaussians", the Gaussians
# Regressor only (the mesh and camera are the reference those terms measure against), or
# "all", also the predictor through the rig.
GEOMETRY_BUFFERS = ("depth", "median_depth", "normals", "distortion")
GEOMETRY_GRADIENTS = ("gaussians", "all")

# Default environment the predicted lighting offset is added to: constant radiance 1, under
# which Lambertian shading returns the albedo unchanged.
DEFAULT_LIGHTING = np.asarray(shading.ambient_directional_sh(1.0, 0.0, (0.0, 0.0, -1.0)) *
                              np.ones((1, 3), np.float32), np.float32)


@dataclasses.dataclass(frozen=True)
class Networks:
  """The modules of SHeaP (hashable: closed over by jitted steps). The appearance network is the
  Gaussians Regressor or, for `config.renderer = "mesh"`, the albedo head; the other is None."""

  predictor: predictor_lib.SheapPredictor
  regressor: Optional[gaussians.GaussiansRegressor]
  dinov2: Any  # vit.VisionTransformer
  albedo: Optional[mesh_baseline.AlbedoHead] = None


@struct.dataclass
class Frozen:
  """Arrays the objective reads but never trains: the head model, DINOv2, and the renderer's
  topology (the Gaussians' face layout, or the textured mesh's UVs and edge neighbours)."""

  flame: flame_lib.FlameModel
  layout: Optional[gaussians.FaceLayout]  # renderer "gaussians", else None
  dinov2: Any  # DINOv2 params
  mesh: Optional[mesh_baseline.MeshTopology] = None  # renderer "mesh", else None
  # (F', 3) the triangles that carry Gaussians (`config.regressor.regions`), renderer
  # "gaussians", else None; the z-buffer draws the same triangles for the geometry terms.
  splat_faces: Optional[jnp.ndarray] = None


@struct.dataclass
class Reanimation:
  """The target frame as reconstructed from the pair, batch first."""

  render: rasterizer.RasterOutput  # 2DGS (or mesh) render of the target view, render size
  image: jnp.ndarray  # (B, H, W, 3) target image at render size
  vertices: jnp.ndarray  # (B, V, 3) target mesh, world (FLAME) frame
  landmarks: jnp.ndarray  # (B, 68, 2) projected FLAME landmarks, render pixels
  landmarks_static: jnp.ndarray  # (B, 68, 2) the same, full embedding (static jaw; 3D-type)
  Ks: jnp.ndarray  # (B, 3, 3)
  viewmats: jnp.ndarray  # (B, 4, 4)
  # The target mesh's buffers (constants): from the z-buffer renderer for Gaussians; for the
  # mesh renderer, its own depth and normals (stop-gradient), mask = depth > 0.
  mesh_depth: jnp.ndarray  # (B, H, W) depth of the target mesh, 0 off it
  mesh_normals: jnp.ndarray  # (B, H, W, 3) camera-frame unit normals of the target mesh
  mesh_mask: jnp.ndarray  # (B, H, W)
  source: predictor_lib.PredictorOutput
  target: predictor_lib.PredictorOutput
  local_gaussians: Optional[rigging.LocalGaussians]  # renderer "gaussians", else None
  texture: Optional[jnp.ndarray] = None  # (B, T, T, 3) predicted UV albedo, renderer "mesh"


@functools.lru_cache(maxsize=1)
def _head_assets(flame_path: str) -> dict:
  """The head's FLAME assets: real FLAME from `flame_path`, else the built-in procedural head.
  Cached (callers must not modify them): the model and its UVs are read once per run."""
  if flame_path:
    return flame_io.load_flame_assets(flame_path)
  return head_model.build_head_assets()


def load_flame_model(config) -> flame_lib.FlameModel:
  """Real FLAME from `config.flame_path` when set, otherwise the built-in procedural head."""
  assets = _head_assets(config.get("flame_path") or "")
  return flame_lib.FlameModel.from_assets(assets, config.flame.n_shape, config.flame.n_expression)


def load_mesh_topology(config, flame_model: flame_lib.FlameModel) -> mesh_baseline.MeshTopology:
  """The textured mesh the mesh renderer draws: `flame_model`'s faces with the UVs of the head
  `config` names (FLAME's head_template.obj, or the built-in head's atlas)."""
  path = config.get("flame_path") or ""
  assets = _head_assets(path)
  where = path or "the built-in head (sheap_jax/head/head_model.py)"
  if "vt" not in assets:
    raise flame_io.FlameFileError(
        where, f"has no UV coordinates, which config.renderer='mesh' needs: put FLAME's "
        f"{flame_io.UV_TEMPLATE_FILE} next to the model file (or use a .npz holding 'vt' and "
        "'ft')")
  faces = np.asarray(flame_model.faces)
  if not np.array_equal(np.asarray(assets["f"]).astype(np.int64), faces):
    raise ValueError(f"{_FILE}: the UVs of {where} belong to other faces than the FLAME model "
                     f"in use ({np.asarray(assets['f']).shape[0]} vs {faces.shape[0]} faces): "
                     "pass the model that config.flame_path names")
  return mesh_baseline.mesh_topology(faces, assets["vt"], assets["ft"])


def build_networks(config) -> Networks:
  """Modules from `config.model`, `config.regressor` (the appearance network, whichever the
  renderer), `config.dinov2` and `config.flame`; for the mesh renderer, `config.albedo` (when
  present) overrides `AlbedoHead` fields, e.g. texture_size and grid_size."""
  renderer = renderers.get(config.renderer)
  m = config.model
  dtype = jnp.bfloat16 if config.get("bfloat16") else jnp.float32
  predictor = predictor_lib.SheapPredictor(
      size=m.size, image_size=m.image_size, n_shape=config.flame.n_shape,
      n_expression=config.flame.n_expression, identity_dim=m.identity_dim,
      shape_source=m.shape_source, output_tokens=m.output_tokens, remat=m.remat, dtype=dtype)
  encoder = dinov2.build(dinov2_config(config), dtype=dtype)
  appearance = dict(regressor=None, albedo=None)
  appearance[renderer.param_key] = renderer.build_network(config, dtype)
  return Networks(predictor=predictor, dinov2=encoder, **appearance)


def dinov2_config(config) -> Dict[str, Any]:
  """The DINOv2 encoder's keyword arguments: a named variant, overridden by `config.dinov2.arch`."""
  arch = dinov2.dinov2_config(config.dinov2.variant)
  arch.update(config.dinov2.get("arch", None) or {})
  return arch


def splat_faces(faces: np.ndarray, masks: Dict[str, np.ndarray], regions, where: str
                ) -> np.ndarray:
  """(F', 3) the triangles that carry Gaussians: all of `faces`, or with `regions` (names of
  the head's vertex masks, FLAME_masks.pkl's or the built-in head's) the faces with a vertex in
  one of those regions, so that the regions' border triangles are covered too and the surface
  has no holes. `where` names the head in errors."""
  faces = np.asarray(faces)
  if not regions:
    return faces
  missing = [name for name in regions if name not in masks]
  if missing:
    raise flame_io.FlameFileError(
        where, f"has no vertex mask {missing} for config.regressor.regions (masks: "
        f"{sorted(masks) or f'none; put {flame_io.MASKS_FILE} next to the model'})")
  chosen = np.zeros(int(np.max(faces)) + 1, bool)
  for name in regions:
    chosen[np.asarray(masks[name])] = True
  return faces[chosen[faces].any(axis=1)]


def build_frozen(config, flame_model: flame_lib.FlameModel) -> Frozen:
  """The frozen inputs: the renderer's topology (face layout of the triangles that carry
  Gaussians, or the textured mesh for the mesh renderer) and DINOv2 weights (converted weights
  from `config.dinov2.path`, else a seeded random encoder, with a warning)."""
  topology = renderers.get(config.renderer).build_topology(config, flame_model)
  _, params = dinov2.load_or_init(config.dinov2.get("path"), dinov2_config(config),
                                  seed=config.seed)
  return Frozen(flame=flame_model, dinov2=params, **topology)


def init_params(networks: Networks, frozen: Frozen, config, rng) -> Dict[str, Any]:
  """Trainable parameters (DINOv2 is not among them): {"predictor", "regressor"} for Gaussians,
  {"predictor", "albedo"} for the mesh renderer."""
  size = config.model.image_size
  num_patches = _dinov2_num_patches(config)
  renderer = renderers.get(config.renderer)

  @jax.jit
  def init(rng, layout):
    predictor_rng, appearance_rng = jax.random.split(rng)
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, num_patches, networks.dinov2.width), jnp.float32)
    identity = jnp.zeros((1, config.model.identity_dim), jnp.float32)
    return {"predictor": networks.predictor.init(predictor_rng, images)["params"],
            renderer.param_key: renderer.init(getattr(networks, renderer.param_key),
                                              appearance_rng, identity, tokens, layout)}

  return init(rng, frozen.layout)


def init_from_weights(params, config) -> Dict[str, Any]:
  """Fresh `params` with the predictor's encoders (`config.model_init.branches`) initialised
  from the converted DINOv2 weights at `config.model_init.dinov2_path`
  (`predictor.init_from_dinov2`); unchanged (from scratch) when the path is empty. Training
  calls it only when there is no checkpoint to resume."""
  model_init = config.get("model_init") or {}
  if not model_init.get("dinov2_path"):
    return params
  _, weights = dinov2.load(model_init["dinov2_path"])
  predictor = {"params": params["predictor"]}
  for branch in model_init.get("branches") or ("vit",):
    predictor = predictor_lib.init_from_dinov2(predictor, weights, branch)
  return {**params, "predictor": predictor["params"]}


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


def render_mesh_buffers(vertices, faces, Ks, viewmats, size):
  """(depth, normals, mask) of the target mesh from the z-buffer renderer (constants)."""
  def one(v, K, viewmat):
    image = mesh_render.render_mesh(
        v, faces, camera_lib.Camera(K=K, viewmat=viewmat, width=size, height=size))
    return image.depth, image.normals, image.mask
  buffers = jax.vmap(one)(jax.lax.stop_gradient(vertices), Ks, viewmats)
  return jax.lax.stop_gradient(buffers)


def _check_geometry_gradients(config) -> str:
  choice = config.render.get("geometry_gradients", "gaussians")
  if choice not in GEOMETRY_GRADIENTS:
    raise ValueError(f"{_FILE}: config.render.geometry_gradients={choice!r}; expected one of "
                     f"{GEOMETRY_GRADIENTS}")
  return choice


def raster_options(config) -> dict:
  """`rasterizer.rasterize`'s keyword options from `config.render`: impl, capacity, tile_size."""
  render = config.render
  return dict(impl=render.impl, capacity=render.get("capacity"),
              tile_size=render.get("tile_size", rasterizer.types.TILE_SIZE))


def render_splats(config, local, vertices, faces, viewmats, Ks, lighting, background
                  ) -> rasterizer.RasterOutput:
  """The 2DGS render of `local` rigged to `vertices` and shaded under `lighting`, as the train
  step renders it (also timed alone by bench/train.py). With `geometry_gradients="gaussians"`
  the geometry buffers' gradients reach only the Gaussians (`gradient_routing`)."""
  size = config.render.size

  def render(splats, cameras):
    return rasterizer.rasterize(splats, cameras, Ks, size, size, background,
                                **raster_options(config))

  shaded = _shade_splats(rigging.rig_gaussians(local, vertices, faces), viewmats, lighting)
  if _check_geometry_gradients(config) == "all":
    return render(shaded, viewmats)
  on_fixed_mesh = rigging.rig_gaussians(local, jax.lax.stop_gradient(vertices), faces).replace(
      features=jax.lax.stop_gradient(shaded.features))
  return gradient_routing.route_gradients(
      render, GEOMETRY_BUFFERS, (shaded, viewmats),
      (on_fixed_mesh, jax.lax.stop_gradient(viewmats)))


def reanimate(networks: Networks, params, frozen: Frozen, config, source_image: jnp.ndarray,
              target_image: jnp.ndarray) -> Reanimation:
  """Renders the target frame from the pair (images (B, S, S, 3) at `config.model.image_size`)."""
  renderer = renderers.get(config.renderer)
  batch = source_image.shape[0]
  both = networks.predictor.apply({"params": params["predictor"]},
                                  jnp.concatenate([source_image, target_image], axis=0))
  source = jax.tree.map(lambda x: x[:batch], both)
  target = jax.tree.map(lambda x: x[batch:], both)

  dinov2_input = resize_images(source_image, config.dinov2.image_size)
  tokens = dinov2.frozen_features(networks.dinov2, frozen.dinov2, dinov2_input).patch_tokens
  draw = functools.partial(renderer.draw, networks, params, frozen, config, source, tokens)
  return render_target(frozen, config, source, target, target_image, draw)


def render_target(frozen: Frozen, config, source: predictor_lib.PredictorOutput,
                  target: predictor_lib.PredictorOutput, target_image: jnp.ndarray, draw
                  ) -> Reanimation:
  """Steps 3-4 of the module docstring: FLAME(source shape, target motion) under the target's
  camera and the source's lighting, drawn by `draw(vertices, Ks, viewmats, lighting,
  background) -> (render, (depth, normals, mask) of the mesh, local Gaussians, texture)`, with
  its projected landmarks. Training passes the networks' predictions; fitting
  (`sheap_jax/fitting`) passes free variables in the same structures."""
  batch = target.shape.shape[0]
  flame_out = flame_lib.flame_forward(frozen.flame, _flame_params(source, target))
  size = config.render.size
  K = camera_lib.intrinsics_from_fov(camera_lib.SHEAP_FOV_Y_DEGREES, size, size)
  Ks = jnp.broadcast_to(K, (batch, 3, 3))
  viewmats = jax.vmap(camera_lib.flame_viewmat)(target.camera_translation)
  lighting = DEFAULT_LIGHTING + source.lighting
  background = jnp.asarray(config.render.background, jnp.float32)

  render, (depth, normals, mask), local, texture = draw(flame_out.vertices, Ks, viewmats,
                                                        lighting, background)

  landmarks, landmarks_static = (jax.vmap(lambda K_, v, p: camera_lib.project(
      K_, camera_lib.world_to_camera(v, p)))(Ks, viewmats, points)
      for points in (flame_out.landmarks68, flame_out.landmarks68_static))
  return Reanimation(
      render=render, image=resize_images(target_image, size), vertices=flame_out.vertices,
      landmarks=landmarks, landmarks_static=landmarks_static, Ks=Ks, viewmats=viewmats,
      mesh_depth=depth, mesh_normals=normals, mesh_mask=mask, source=source, target=target,
      local_gaussians=local, texture=texture)


def _draw_gaussians(networks, params, frozen, config, source, tokens, vertices, Ks, viewmats,
                    lighting, background):
  """SHeaP: the Gaussians Regressor's splats, drawn by `draw_gaussians`."""
  local = networks.regressor.apply({"params": params["regressor"]}, source.identity, tokens,
                                   frozen.layout)
  return draw_gaussians(config, frozen, local, vertices, Ks, viewmats, lighting, background)


def draw_gaussians(config, frozen: Frozen, local: rigging.LocalGaussians, vertices, Ks, viewmats,
                   lighting, background):
  """`local` rigged to the mesh and drawn by the 2DGS rasteriser; the mesh's own buffers come
  from the z-buffer renderer. The draw of `render_target`, whoever made the Gaussians."""
  render = render_splats(config, local, vertices, frozen.splat_faces, viewmats, Ks, lighting,
                         background)
  buffers = render_mesh_buffers(vertices, frozen.splat_faces, Ks, viewmats, config.render.size)
  return render, buffers, local, None


def _draw_mesh(networks, params, frozen, config, source, tokens, vertices, Ks, viewmats,
               lighting, background):
  """The baseline: the FLAME mesh with the albedo head's UV texture; its own depth and normals
  (stop-gradient) are the mesh buffers."""
  size = config.render.size
  texture = networks.albedo.apply({"params": params["albedo"]}, source.identity, tokens)
  render = mesh_baseline.render(
      vertices, frozen.mesh, camera_lib.Camera(K=Ks, viewmat=viewmats, width=size, height=size),
      texture, lighting, background)
  depth, normals = jax.lax.stop_gradient((render.depth, render.normals))
  return render, (depth, normals, (depth > 0).astype(jnp.float32)), None, texture


def _gaussians_topology(config, flame_model):
  """The triangles that carry Gaussians (`config.regressor.regions`) and their face layout."""
  path = config.get("flame_path") or ""
  faces = splat_faces(flame_model.faces, _head_assets(path).get("masks") or {},
                      tuple(config.regressor.get("regions") or ()),
                      path or "the built-in head (sheap_jax/head/head_model.py)")
  return dict(layout=gaussians.face_layout(faces, np.asarray(flame_model.v_template)),
              splat_faces=jnp.asarray(faces, jnp.int32))


def _gaussians_network(config, dtype):
  r = config.regressor
  return gaussians.GaussiansRegressor(
      width=r.width, depth=r.depth, num_heads=r.num_heads,
      gaussians_per_face=r.gaussians_per_face, feature_dim=3, dtype=dtype)


def _albedo_network(config, dtype):
  del dtype  # the albedo head computes in float32
  options = dict(width=config.regressor.width, num_heads=config.regressor.num_heads)
  options.update(dict(config.get("albedo") or {}))
  return mesh_baseline.AlbedoHead(**options)


renderers.register("gaussians", renderers.Renderer(
    param_key="regressor", build_network=_gaussians_network,
    build_topology=_gaussians_topology,
    init=lambda module, rng, identity, tokens, layout: module.init(
        rng, identity, tokens, layout)["params"],
    draw=_draw_gaussians))
renderers.register("mesh", renderers.Renderer(
    param_key="albedo", build_network=_albedo_network,
    build_topology=lambda config, flame_model: dict(
        layout=None, mesh=load_mesh_topology(config, flame_model)),
    init=lambda module, rng, identity, tokens, layout: module.init(
        rng, identity, tokens)["params"],
    draw=_draw_mesh, skipped_losses=SPLAT_ONLY_LOSSES))


def _to_render_pixels(points: jnp.ndarray, image_size: int, render_size: int) -> jnp.ndarray:
  """Pixel coordinates at one image size -> another (pixel centres at integers)."""
  return (points + 0.5) * (render_size / image_size) - 0.5


def matching_landmarks(out: Reanimation, batch: Dict[str, jnp.ndarray]) -> jnp.ndarray:
  """(B, 68, 2) projected FLAME landmarks of the embedding each target's detections follow:
  the full embedding (static jaw) where `target_landmarks_3d`, else DECA's dynamic contour."""
  is_3d = batch.get("target_landmarks_3d")
  if is_3d is None:
    return out.landmarks
  return jnp.where(jnp.asarray(is_3d, bool)[:, None, None], out.landmarks_static, out.landmarks)


def loss_context(networks: Networks, frozen: Frozen, config, batch: Dict[str, jnp.ndarray],
                 out: Reanimation) -> losses.LossContext:
  """Everything `losses.total_loss` reads, for one reanimated batch."""
  return render_loss_context(config, batch, out).replace(
      feature_fn=losses.dinov2_feature_fn(networks.dinov2, frozen.dinov2,
                                          tuple(config.dinov2.feature_blocks),
                                          input_size=config.dinov2.image_size))


def render_loss_context(config, batch: Dict[str, jnp.ndarray], out: Reanimation
                        ) -> losses.LossContext:
  """`loss_context` without the perceptual features (which need DINOv2): what fitting, which
  has no networks, scores with (`perceptual` then needs weight 0)."""
  local = out.local_gaussians
  landmarks_target = batch.get("target_landmarks")
  if landmarks_target is not None:
    landmarks_target = _to_render_pixels(landmarks_target, batch["target_image"].shape[1],
                                         config.render.size)
  matte = batch.get("target_matte")
  if matte is not None:
    matte = resize_images(matte[..., None], config.render.size)[..., 0]
  return losses.LossContext(
      render=out.render, image=out.image, intrinsics=out.Ks,
      mesh_depth=out.mesh_depth, mesh_normals=out.mesh_normals, mesh_mask=out.mesh_mask,
      landmarks=matching_landmarks(out, batch), landmarks_target=landmarks_target,
      landmarks_valid=batch.get("target_landmarks_valid"),
      matte=matte, matte_valid=batch.get("target_matte_valid"),
      flame_source=_flame_params(out.source, out.source),
      flame_target=_flame_params(out.target, out.target),
      gaussian_offsets=None if local is None else local.offsets,
      gaussian_scales=None if local is None else local.scales,
      gaussian_opacities=None if local is None else local.opacities)


def applicable_losses(config) -> Dict[str, Any]:
  """`config.losses` without the terms the renderer cannot evaluate (`SPLAT_ONLY_LOSSES` for
  the mesh renderer)."""
  skipped = renderers.get(config.renderer).skipped_losses
  return {name: entry for name, entry in config.losses.items() if name not in skipped}


def pair_losses(networks: Networks, params, frozen: Frozen, config,
                batch: Dict[str, jnp.ndarray]
                ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray], Dict[str, jnp.ndarray]]:
  """Per-pair (total (B,), {term: (B,)}, {counter: (B,)}) for a batch of pairs; the counters
  are the rasteriser's `pairs_dropped` (over capacity), `pairs_needed` (to size the capacity)
  and `splats_culled`."""
  out = reanimate(networks, params, frozen, config, batch["source_image"], batch["target_image"])
  totals, terms = per_pair_losses(config, loss_context(networks, frozen, config, batch, out))
  counters = dict(pairs_dropped=out.render.pairs_dropped, pairs_needed=out.render.pairs_needed,
                  splats_culled=out.render.splats_culled)
  return totals, terms, counters


def per_pair_losses(config, context: losses.LossContext
                    ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """(total (B,), {term: (B,)}): `losses.total_loss` of the applicable terms, pair by pair."""
  feature_fn = context.feature_fn
  terms_config = applicable_losses(config)

  def one_pair(single):
    single = jax.tree.map(lambda x: x[None], single).replace(feature_fn=feature_fn)
    return losses.total_loss(terms_config, single)

  return jax.vmap(one_pair)(context.replace(feature_fn=None))


def mean_loss(networks: Networks, params, frozen: Frozen, config, batch: Dict[str, jnp.ndarray]
              ) -> Tuple[jnp.ndarray, Tuple[Dict[str, jnp.ndarray], Dict[str, jnp.ndarray]]]:
  """The objective: the mean over pairs of the weighted loss, and (each term's mean, each render
  counter's mean per pair), both logged."""
  totals, terms, counters = pair_losses(networks, params, frozen, config, batch)
  return jnp.mean(totals), (jax.tree.map(jnp.mean, terms),
                            jax.tree.map(lambda c: jnp.mean(c.astype(jnp.float32)), counters))
