"""Renders one synthetic frame (jitted): FLAME head + hair shell + torso, textured, SH-lit with
specular highlights, over a background, behind an optional occluder, supersampled.

Also returns the ground truth that needs the render: the exact 68 landmark projections, which
of them are visible (their output pixel is wholly covered by head surface near them, and by no
occluder), and the detector's biased landmark positions (the bias field is
fixed in the head's frame; `detector.py` adds noise and outliers).
"""
import functools

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from data.synthetic_heads import assets as assets_lib
from data.synthetic_heads import body
from data.synthetic_heads import identity as identity_lib
from data.synthetic_heads import trajectories
from sheap_jax.geometry import camera as camera_lib
from sheap_jax.head import flame
from sheap_jax.render import mesh_render
from sheap_jax.geometry import shading
from sheap_jax.geometry.rotation import axis_angle_to_matrix

VISIBLE_DEPTH = 0.004  # metres between a landmark and the surface seen at its pixel
SENSOR_NOISE = 0.006  # standard deviation of per-pixel noise on [0, 1] images
_VIEW_DIRECTION = jnp.array([0.0, 0.0, -1.0])  # towards the camera, OpenCV camera frame


@struct.dataclass
class Scene:
  """The static arrays of the combined mesh (head, then hair shell, then torso)."""

  model: flame.FlameModel
  faces: jnp.ndarray  # (F + Fh + Ft, 3) int32 into the combined vertices
  uv_faces: jnp.ndarray  # (F + Fh + Ft, 3) int32 into uvs (torso: a dummy 0)
  uvs: jnp.ndarray  # (T, 2)
  rest_points: jnp.ndarray  # (V + Vh + Vt, 3) torso rest points (others 0), for the clothes
  hair_source: jnp.ndarray  # (Vh,) int32 head vertex under each hair shell vertex
  hair_azimuth: jnp.ndarray  # (Vh,) template azimuth of those vertices
  hair_height: jnp.ndarray  # (Vh,) template y
  torso_rest: jnp.ndarray  # (Vt, 3) rest torso relative to the template root joint
  num_head_faces: int = struct.field(pytree_node=False)
  num_hair_faces: int = struct.field(pytree_node=False)


def build_scene(static: assets_lib.HeadAssets) -> Scene:
  num_v = static.num_head_vertices
  num_hair_v = len(static.hair.source)
  head_faces = np.asarray(static.model.faces)
  # The shell is open: give it an inner side too, so back-face culling never shows a hole
  # where its rim stands off the head.
  hair_faces = np.concatenate([static.hair.faces, static.hair.faces[:, ::-1]])
  hair_uv_faces = np.concatenate([static.hair.uv_faces, static.hair.uv_faces[:, ::-1]])
  faces = np.concatenate([head_faces, hair_faces + num_v,
                          static.torso.faces + num_v + num_hair_v]).astype(np.int32)
  uv_faces = np.concatenate([static.uv_faces, hair_uv_faces,
                             np.zeros_like(static.torso.faces)]).astype(np.int32)
  rest = np.zeros((num_v + num_hair_v + len(static.torso.vertices), 3), np.float32)
  rest[num_v + num_hair_v:] = static.torso.vertices
  return Scene(model=static.model, faces=jnp.asarray(faces), uv_faces=jnp.asarray(uv_faces),
               uvs=jnp.asarray(static.uvs), rest_points=jnp.asarray(rest),
               hair_source=jnp.asarray(static.hair.source),
               hair_azimuth=jnp.asarray(static.hair.azimuth),
               hair_height=jnp.asarray(static.hair.height),
               torso_rest=jnp.asarray(static.torso.vertices - static.torso.root_joint),
               num_head_faces=len(head_faces),
               num_hair_faces=len(hair_faces))


@struct.dataclass
class Frame:
  """One frame's script entries (see trajectories.VideoScript), unbatched."""

  expression: jnp.ndarray
  global_pose: jnp.ndarray
  neck_pose: jnp.ndarray
  jaw_pose: jnp.ndarray
  eye_pose: jnp.ndarray
  eyelids: jnp.ndarray
  translation: jnp.ndarray
  occluder_active: jnp.ndarray
  occluder_centre: jnp.ndarray


@struct.dataclass
class RenderedFrame:
  image: jnp.ndarray  # (H, W, 3) float32 in [0, 1]
  vertices: jnp.ndarray  # (V, 3) posed head, world frame
  landmarks: jnp.ndarray  # (68, 2) exact projections, pixels
  landmark_depth: jnp.ndarray  # (68,) camera z of the landmarks, metres
  landmarks_visible: jnp.ndarray  # (68,) bool
  biased_landmarks: jnp.ndarray  # (68, 2) projections of the detector's biased points
  occluded: jnp.ndarray  # () bool: the occluder covers part of the image


def frame_at(script: trajectories.VideoScript, t: int) -> Frame:
  return Frame(
      expression=script.expression[t], global_pose=script.global_pose[t],
      neck_pose=script.neck_pose[t], jaw_pose=script.jaw_pose[t], eye_pose=script.eye_pose[t],
      eyelids=script.eyelids[t], translation=script.translation[t],
      occluder_active=script.occluder.active[t], occluder_centre=script.occluder.centre[t])


def flame_params(shape: jnp.ndarray, frame: Frame) -> flame.FlameParams:
  """Batch-of-one FLAME parameters of a frame."""
  one = lambda a: jnp.asarray(a, jnp.float32)[None]
  return flame.FlameParams(
      shape=one(shape), expression=one(frame.expression), global_pose=one(frame.global_pose),
      neck_pose=one(frame.neck_pose), jaw_pose=one(frame.jaw_pose),
      eye_pose=one(frame.eye_pose), eyelids=one(frame.eyelids),
      translation=one(frame.translation))


def supersampled_camera(camera: camera_lib.Camera, factor: int) -> camera_lib.Camera:
  """The camera whose factor x factor pixel blocks average to the pixels of `camera`.

  With centres at integer coordinates, pixel x covers [x - 1/2, x + 1/2], which holds the
  fine pixels factor * x + (factor - 1) / 2 +- (factor - 1) / 2.
  """
  scale = jnp.array([[factor, 0.0, (factor - 1) / 2.0], [0.0, factor, (factor - 1) / 2.0],
                     [0.0, 0.0, 1.0]], jnp.float32)
  return camera_lib.Camera(K=scale @ camera.K, viewmat=camera.viewmat,
                           width=camera.width * factor, height=camera.height * factor)


def background_image(width: int, height: int, bg: trajectories.Background) -> jnp.ndarray:
  """(H, W, 3) backdrop: a gradient, soft coloured blobs and faint stripes."""
  u = (jnp.arange(width) + 0.5) / width
  v = (jnp.arange(height) + 0.5) / height
  points = jnp.stack(jnp.meshgrid(u, v, indexing="xy"), axis=-1)  # (H, W, 2)
  t = jnp.clip(jnp.sum((points - 0.5) * bg.direction, -1) + 0.5, 0.0, 1.0)[..., None]
  image = (1 - t) * bg.colours[0] + t * bg.colours[1]
  for k in range(trajectories.NUM_BLOBS):
    d2 = jnp.sum((points - bg.blob_centres[k]) ** 2, -1)
    weight = 0.6 * jnp.exp(-0.5 * d2 / bg.blob_radii[k] ** 2)[..., None]
    image = image + weight * (bg.blob_colours[k] - image)
  stripes = 1.0 + bg.stripe_amplitude * jnp.sin(
      2 * jnp.pi * jnp.sum(points * bg.stripe_frequency, -1))
  return image * stripes[..., None]


def occluder_layer(width: int, height: int, occ: trajectories.Occluder, active, centre):
  """(H, W) coverage and (H, W, 3) colour of the occluder (an ellipse or a rounded box)."""
  x = (jnp.arange(width) + 0.5) / width
  y = (jnp.arange(height) + 0.5) / height
  points = jnp.stack(jnp.meshgrid(x, y, indexing="xy"), axis=-1) - centre
  c, s = jnp.cos(occ.angle), jnp.sin(occ.angle)
  local = jnp.stack([c * points[..., 0] + s * points[..., 1],
                     -s * points[..., 0] + c * points[..., 1]], -1) / occ.half_size
  ellipse = jnp.linalg.norm(local, axis=-1) - 1.0
  box = jnp.max(jnp.abs(local), axis=-1) - 1.0
  distance = (occ.roundness * ellipse + (1 - occ.roundness) * box) * jnp.min(occ.half_size)
  coverage = active * jnp.clip(0.5 - distance * width, 0.0, 1.0)
  colour = occ.colour * (0.7 + 0.35 * (1.0 - jnp.clip(local[..., 1], -1, 1)) / 2)[..., None]
  return coverage, colour


def _downsample(image, factor):
  h, w = image.shape[0] // factor, image.shape[1] // factor
  return image.reshape(h, factor, w, factor, *image.shape[2:]).mean(axis=(1, 3))


@functools.partial(jax.jit, static_argnames=("supersample",))
def render_frame(scene: Scene, ident: identity_lib.Identity, texture: jnp.ndarray,
                 script: trajectories.VideoScript, frame: Frame, camera: camera_lib.Camera,
                 bias_field: jnp.ndarray, key: jax.Array, supersample: int = 2) -> RenderedFrame:
  """Draws one frame. script gives the per-video settings (lighting, backdrop, occluder shape),
  frame the per-frame ones; bias_field (68, 3) is the detector's offset in the head frame."""
  output = flame.flame_forward(scene.model, flame_params(ident.shape, frame))
  head = output.vertices[0]
  hair = body.hair_vertices(head, scene.model.faces, scene.hair_source, scene.hair_azimuth,
                            scene.hair_height, ident.hairstyle)
  root_rotation = axis_angle_to_matrix(frame.global_pose)
  torso = body.torso_vertices(scene.torso_rest, ident.clothes, root_rotation,
                              output.joints[0, 0])
  vertices = jnp.concatenate([head, hair, torso], axis=0)

  fine = supersampled_camera(camera, supersample)
  fragments = mesh_render.rasterize(vertices, scene.faces, fine, cull_backfaces=True)
  face = fragments.face_ids
  material = jnp.where(face < scene.num_head_faces, assets_lib.HEAD,
                       jnp.where(face < scene.num_head_faces + scene.num_hair_faces,
                                 assets_lib.HAIR, assets_lib.TORSO))
  texel = mesh_render.sample_texture(texture,
                                     mesh_render.interpolate(fragments, scene.uv_faces, scene.uvs))
  is_torso = (material == assets_lib.TORSO)[..., None]
  clothes = body.clothes_albedo(mesh_render.interpolate(fragments, scene.faces, scene.rest_points),
                                ident.clothes)
  albedo = jnp.where(is_torso, clothes, texel[..., :3])
  gloss = jnp.where(is_torso[..., 0], 0.03, texel[..., 3])

  rotation_only = fine.viewmat.at[:3, 3].set(0.0)
  normals = mesh_render.interpolate(
      fragments, scene.faces,
      camera_lib.world_to_camera(rotation_only, mesh_render.vertex_normals(vertices, scene.faces)))
  normals = normals / jnp.maximum(jnp.linalg.norm(normals, axis=-1, keepdims=True), 1e-8)
  diffuse = shading.shade(albedo, normals, script.lighting)
  half = script.light_direction + _VIEW_DIRECTION
  half = half / jnp.linalg.norm(half)
  highlight = jnp.maximum(jnp.sum(normals * half, -1), 0.0) ** ident.appearance.shininess
  specular = (gloss * highlight)[..., None] * script.light_colour
  mask = fragments.mask[..., None]
  backdrop = background_image(fine.width, fine.height, script.background)
  colour = mask * (diffuse + specular) + (1.0 - mask) * backdrop
  cover, occ_colour = occluder_layer(fine.width, fine.height, script.occluder,
                                     frame.occluder_active, frame.occluder_centre)
  colour = colour + cover[..., None] * (occ_colour - colour)
  image = _downsample(colour, supersample)
  image = jnp.clip(image + SENSOR_NOISE * jax.random.normal(key, image.shape), 0.0, 1.0)

  # Landmarks: exact projections, visibility against the fine buffers, detector bias.
  points = output.landmarks68[0]
  landmarks, depth = camera_lib.project_points(camera, points)
  pixel = jnp.round(landmarks).astype(jnp.int32)
  inside = jnp.all((pixel >= 0) & (pixel < jnp.array([camera.width, camera.height])), axis=-1)
  # The landmark's output pixel must be wholly covered by head surface near the landmark (its
  # supersample^2 fine pixels), within VISIBLE_DEPTH plus two pixels' width of slope.
  offsets = jnp.arange(supersample)
  cols = jnp.clip(pixel[:, 0, None, None] * supersample + offsets[None, None, :], 0,
                  fine.width - 1)
  rows = jnp.clip(pixel[:, 1, None, None] * supersample + offsets[None, :, None], 0,
                  fine.height - 1)
  tolerance = VISIBLE_DEPTH + 2.0 * depth / camera.K[0, 0]
  on_surface = ((material[rows, cols] == assets_lib.HEAD) & (face[rows, cols] >= 0)
                & (jnp.abs(fragments.depth[rows, cols] - depth[:, None, None])
                   < tolerance[:, None, None]) & (cover[rows, cols] < 0.5))
  visible = inside & jnp.all(on_surface, axis=(1, 2))
  head_rotation = root_rotation @ axis_angle_to_matrix(frame.neck_pose)
  biased, _ = camera_lib.project_points(camera, points + bias_field @ head_rotation.T)
  return RenderedFrame(image=image, vertices=head, landmarks=landmarks, landmark_depth=depth,
                       landmarks_visible=visible, biased_landmarks=biased,
                       occluded=jnp.any(cover > 0.5))
