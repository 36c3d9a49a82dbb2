"""Differentiable rendering of the textured FLAME mesh: the paper's mesh-rendering baseline.

Rendering is split like nvdiffrast's rasterise / interpolate / antialias (Laine et al. 2020):
1. Visibility: the z-buffer renderer (`mesh_render.rasterize`) picks each pixel's face from
   stop-gradient vertices. Face ids are piecewise constant, so holding them fixed loses nothing.
2. Interpolation: for that face, perspective-correct barycentrics and depth are recomputed at the
   pixel centre from the projected vertices (the same formula as the z-buffer's), so they are
   differentiable w.r.t. the vertices; UVs, camera-frame normals and depth are interpolated,
   the albedo texture sampled bilinearly and shaded with SH lighting (`shading.shade`).
3. Antialiasing, for silhouette gradients: for each horizontally or vertically adjacent pixel
   pair whose faces differ, the segment from the front pixel's centre (background never is the
   front; otherwise the nearer pixel) to the other's is followed across the front surface, face
   to neighbouring face (at most `walk_steps` faces), until it leaves through a silhouette edge
   (a mesh boundary, or an edge whose neighbour faces the other way) at fraction t of the way;
   an edge closer to vertical serves horizontal pairs only, one closer to horizontal vertical
   pairs only (as in nvdiffrast), so no edge is counted twice.
   The pixels then exchange colour and alpha as a one-dimensional box filter would: the far
   pixel takes max(t - 1/2, 0) of the front colour, the front pixel gives up max(1/2 - t, 0)
   of it. t moves with the silhouette edge's vertices, which is how silhouettes pass gradients
   to geometry (nvdiffrast's antialias uses only the covering face; the walk matters when
   triangles are about a pixel wide). Pixels away from silhouettes are untouched: they equal
   the z-buffer render.

Colour and alpha are antialiased; depth and normals are the interpolated values on the mesh
(0 on background), as losses compare them under masks. Outputs are a
`rasterizer.types.RasterOutput`, so a config switch can train with this instead of Gaussians:
median depth = depth, distortion = 0. `AlbedoHead` predicts the UV albedo texture from the
same inputs as the Gaussians Regressor (identity features and DINOv2 tokens).
"""
import functools
from typing import Optional

from flax import linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from rasterizer.types import RasterOutput
from sheap_jax.geometry import camera as camera_lib
from sheap_jax.render import mesh_render
from sheap_jax.geometry import mesh_topology as topology_lib
from sheap_jax.geometry import shading

_FILE = "sheap_jax/render/mesh_baseline.py"
# Faces antialiasing may cross from a pixel centre to the silhouette. FLAME-sized triangles
# are about a pixel wide at 224 px, so the covering face often does not own the silhouette
# edge: on the built-in head, 1 / 4 / 8 steps recover 25 / 87 / ~100 % of the silhouette
# gradient (docs/losses.md).
DEFAULT_WALK_STEPS = 8


@struct.dataclass
class MeshTopology:
  """A mesh's connectivity, built once outside jit (`mesh_topology`)."""

  faces: jnp.ndarray  # (F, 3) int32 vertex indices, counter-clockwise seen from outside
  uv_faces: jnp.ndarray  # (F, 3) int32 indices into the UV coordinates
  uvs: jnp.ndarray  # (T, 2) UV coordinates (OBJ convention, v up)
  # (F, 3) int32 face across edge e (corners e -> e+1); -1 on boundary and non-manifold edges
  neighbours: jnp.ndarray


def mesh_topology(faces, uvs, uv_faces) -> MeshTopology:
  """Checks a textured mesh's index arrays and precomputes edge neighbours (host side)."""
  faces, uv_faces, uvs = np.asarray(faces), np.asarray(uv_faces), np.asarray(uvs)
  if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
    raise ValueError(f"{_FILE}: faces must be an integer (F, 3) array, got {faces.dtype} "
                     f"{faces.shape}")
  if uv_faces.shape != faces.shape or not np.issubdtype(uv_faces.dtype, np.integer):
    raise ValueError(f"{_FILE}: uv_faces must be an integer array shaped like faces "
                     f"{faces.shape}, got {uv_faces.dtype} {uv_faces.shape}")
  if uvs.ndim != 2 or uvs.shape[1] != 2 or uv_faces.min() < 0 or uv_faces.max() >= len(uvs):
    raise ValueError(f"{_FILE}: uvs must be (T, 2) with every uv_faces index below T, got "
                     f"{uvs.shape} and indices up to {uv_faces.max()}")
  return MeshTopology(faces=jnp.asarray(faces, jnp.int32),
                      uv_faces=jnp.asarray(uv_faces, jnp.int32),
                      uvs=jnp.asarray(uvs, jnp.float32),
                      neighbours=jnp.asarray(topology_lib.face_adjacency(
                          faces, link_non_manifold=False)))


def _edge_functions(corners: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
  """(..., 3) edge functions cross(c_{e+1} - c_e, p - c_e) of triangles (..., 3, 2) at (..., 2)."""
  start, end = corners, jnp.roll(corners, -1, axis=-2)
  d = end - start
  rel = points[..., None, :] - start
  return d[..., 0] * rel[..., 1] - d[..., 1] * rel[..., 0]


def _signed_area(corners: jnp.ndarray) -> jnp.ndarray:
  """Twice the signed screen area of triangles (..., 3, 2) (negative: counter-clockwise seen by
  the camera, since pixel rows grow downwards)."""
  a, b, c = corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
  return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (
      c[..., 0] - a[..., 0])


def _perspective_barycentrics(corners, corner_z, points):
  """Perspective-correct barycentrics (..., 3) and camera z (...) of triangles at points."""
  edges = _edge_functions(corners, points)
  # The weight of vertex k is the edge opposite it, e = k + 1 (corners k+1 -> k+2).
  screen = jnp.roll(edges, -1, axis=-1)
  screen = screen / _nonzero(jnp.sum(screen, axis=-1, keepdims=True))
  perspective = screen / corner_z
  inv_depth = jnp.sum(perspective, axis=-1, keepdims=True)
  return perspective / _nonzero(inv_depth), 1.0 / _nonzero(inv_depth[..., 0])


def _nonzero(x):
  return jnp.where(x == 0, 1.0, x)


def _silhouette_crossing(corners_of, orientation, neighbours, face, start, end, steps, along_x):
  """Where the segment start -> end (..., 2) leaves the surface through a silhouette edge.

  Starts in `face` (which covers `start`) and walks across at most `steps` faces: in each, the
  segment exits through the edge whose edge function reaches 0 first; a mesh boundary or a
  neighbour facing the other way is a silhouette, any other neighbour is entered. Returns the
  fraction t of the way (differentiable w.r.t. the silhouette edge's corners) and whether a
  silhouette was found before `end`. As in nvdiffrast, a silhouette edge counts only for pairs
  across its steep axis (horizontal pairs for edges closer to vertical, `along_x`; vertical
  pairs otherwise), so that no edge is blended twice.
  """
  def step(_, state):
    face, alive, found, t_found = state
    sign = orientation[face][..., None]
    corners = corners_of(face)
    at_start = sign * _edge_functions(corners, start)
    at_end = sign * _edge_functions(corners, end)
    decreasing = at_end < at_start
    fraction = jnp.where(decreasing, at_start / jnp.where(decreasing, at_start - at_end, 1.0),
                         jnp.inf)
    t = jnp.min(fraction, axis=-1)
    edge = jnp.argmin(fraction, axis=-1)
    across = jnp.take_along_axis(neighbours[face], edge[..., None], axis=-1)[..., 0]
    silhouette = (across < 0) | (orientation[jnp.maximum(across, 0)] != orientation[face])
    direction = jnp.take_along_axis(jnp.roll(corners, -1, axis=-2) - corners,
                                    edge[..., None, None], axis=-2)[..., 0, :]
    steep = jnp.abs(direction[..., 1]) >= jnp.abs(direction[..., 0])
    exits = alive & (t <= 1.0)
    hit = exits & silhouette & (steep if along_x else ~steep)
    alive = exits & ~silhouette
    return (jnp.where(alive, across, face), alive, found | hit, jnp.where(hit, t, t_found))

  state = (face, jnp.ones(face.shape, bool), jnp.zeros(face.shape, bool),
           jnp.full(face.shape, 0.5))
  _, _, found, t_found = jax.lax.fori_loop(0, steps, step, state)
  return t_found, found


def _antialias(buffer, face_ids, depth, corners_of, orientation, neighbours, steps):
  """Silhouette antialiasing of a (H, W, C) buffer (see the module docstring).

  corners_of(faces) gives projected corners (..., 3, 2); orientation (F,) the sign of each
  face's screen area; depth (H, W) the pixels' z, only compared.
  """
  height, width = face_ids.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  centres = jnp.stack([cols, rows], axis=-1)
  depth = jax.lax.stop_gradient(depth)
  out = buffer
  for axis in (0, 1):  # pairs along rows (vertical neighbours), then along columns
    n = face_ids.shape[axis]
    first = lambda x, n=n, axis=axis: jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)
    second = lambda x, n=n, axis=axis: jax.lax.slice_in_dim(x, 1, n, axis=axis)
    id_a, id_b = first(face_ids), second(face_ids)
    a_in_front = (id_b < 0) | ((id_a >= 0) & (first(depth) <= second(depth)))
    front_id = jnp.where(a_in_front, id_a, id_b)
    front_xy = jnp.where(a_in_front[..., None], first(centres), second(centres))
    back_xy = jnp.where(a_in_front[..., None], second(centres), first(centres))
    t, found = _silhouette_crossing(corners_of, orientation, neighbours,
                                    jnp.maximum(front_id, 0), front_xy, back_xy, steps,
                                    along_x=axis == 1)
    active = (id_a != id_b) & (front_id >= 0) & found & (t >= 0.0)
    t = jnp.where(active, t, 0.5)
    value_a, value_b = first(buffer), second(buffer)
    difference = jnp.where(a_in_front[..., None], value_a - value_b, value_b - value_a)
    to_back = jax.nn.relu(t - 0.5)[..., None] * difference
    from_front = -jax.nn.relu(0.5 - t)[..., None] * difference
    delta_a = jnp.where(a_in_front[..., None], from_front, to_back)
    delta_b = jnp.where(a_in_front[..., None], to_back, from_front)
    pad_after = [(0, 0)] * 3
    pad_after[axis] = (0, 1)
    pad_before = [(0, 0)] * 3
    pad_before[axis] = (1, 0)
    out = out + jnp.pad(delta_a, pad_after) + jnp.pad(delta_b, pad_before)
  return out


@struct.dataclass
class MeshRender:
  """One differentiable mesh image."""

  color: jnp.ndarray  # (H, W, C) shaded albedo over the background, antialiased silhouettes
  alpha: jnp.ndarray  # (H, W) coverage: 1 inside, 0 outside, fractional at silhouettes
  depth: jnp.ndarray  # (H, W) camera z, 0 on background
  normals: jnp.ndarray  # (H, W, 3) unit camera-frame normals (outward, as mesh_render), 0 off
  face_ids: jnp.ndarray  # (H, W) int32 visible face, -1 on background (no gradient)


def render_image(vertices: jnp.ndarray, topology: MeshTopology, camera: camera_lib.Camera,
                 texture: jnp.ndarray, sh_coeffs: Optional[jnp.ndarray] = None,
                 background=0.0, face_ids: Optional[jnp.ndarray] = None,
                 antialias: bool = True, walk_steps: int = DEFAULT_WALK_STEPS) -> MeshRender:
  """Renders one textured mesh: vertices (V, 3) world, texture (Ht, Wt, C), sh_coeffs (9, C)
  (unlit when None), background scalar, (C,) or (H, W, C).

  `face_ids` (H, W) from `mesh_render.rasterize` may be passed when already computed (the
  batched `render` does); they must come from the same vertices and camera. `walk_steps` bounds
  how many faces antialiasing crosses between a pixel centre and a silhouette.
  """
  if face_ids is None:
    face_ids = mesh_render.rasterize(jax.lax.stop_gradient(vertices), topology.faces,
                                     camera).face_ids
  face_ids = jax.lax.stop_gradient(face_ids)
  height, width = face_ids.shape
  pixels, z = camera_lib.project_points(camera, vertices.astype(jnp.float32))
  corners_of = lambda face: pixels[topology.faces[face]]
  visible = face_ids >= 0
  face = jnp.maximum(face_ids, 0)
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  weights, depth = _perspective_barycentrics(corners_of(face), z[topology.faces[face]],
                                             jnp.stack([cols, rows], axis=-1))

  def interpolate(values, index_faces):
    return jnp.sum(weights[..., None] * values[index_faces[face]], axis=-2)

  albedo = mesh_render.sample_texture(texture, interpolate(topology.uvs, topology.uv_faces))
  rotation_only = camera.viewmat.at[:3, 3].set(0.0)
  vertex_normals = camera_lib.world_to_camera(
      rotation_only, mesh_render.vertex_normals(vertices, topology.faces))
  normals = interpolate(vertex_normals, topology.faces)
  length = jnp.sqrt(jnp.sum(normals * normals, axis=-1, keepdims=True))
  normals = jnp.where(visible[..., None], normals / _nonzero(length), 0.0)
  color = albedo if sh_coeffs is None else shading.shade(albedo, normals, sh_coeffs)
  mask = visible[..., None].astype(jnp.float32)
  background = jnp.broadcast_to(jnp.asarray(background, jnp.float32), color.shape)
  rgba = jnp.concatenate([mask * color + (1.0 - mask) * background, mask], axis=-1)
  depth = jnp.where(visible, depth, 0.0)
  if antialias:
    orientation = jnp.sign(_signed_area(pixels[topology.faces]))
    rgba = _antialias(rgba, face_ids, depth, corners_of, orientation, topology.neighbours,
                      walk_steps)
  return MeshRender(color=rgba[..., :-1], alpha=rgba[..., -1], depth=depth, normals=normals,
                    face_ids=face_ids)


@functools.partial(jax.jit, static_argnames=("antialias", "walk_steps"))
def render(vertices: jnp.ndarray, topology: MeshTopology, camera: camera_lib.Camera,
           textures: jnp.ndarray, sh_coeffs: Optional[jnp.ndarray] = None, background=0.0,
           antialias: bool = True, walk_steps: int = DEFAULT_WALK_STEPS) -> RasterOutput:
  """A batch: vertices (B, V, 3), one camera or B cameras, textures (B, Ht, Wt, C), sh_coeffs
  (B, 9, C), one background for all frames -> RasterOutput with the fields a Gaussian render
  has (see the module docstring).

  Visibility runs frame by frame (`lax.map`, cheaper than vmap for the z-buffer's loop); the
  differentiable part is vmapped.
  """
  if vertices.ndim != 3 or textures.ndim != 4 or vertices.shape[0] != textures.shape[0]:
    raise ValueError(f"{_FILE}: render takes vertices (B, V, 3) and textures (B, Ht, Wt, C), got "
                     f"{tuple(vertices.shape)} and {tuple(textures.shape)}")
  batch = vertices.shape[0]
  if camera.batch_size not in (1, batch):
    raise ValueError(f"{_FILE}: {camera.batch_size} cameras for {batch} meshes")
  cameras = camera_lib.Camera(K=jnp.broadcast_to(camera.K, (batch, 3, 3)),
                              viewmat=jnp.broadcast_to(camera.viewmat, (batch, 4, 4)),
                              width=camera.width, height=camera.height)
  face_ids = jax.lax.map(
      lambda args: mesh_render.rasterize(args[0], topology.faces, args[1]).face_ids,
      (jax.lax.stop_gradient(vertices), cameras))
  per_frame = lambda v, cam, tex, sh, ids: render_image(v, topology, cam, tex, sh, background,
                                                        ids, antialias, walk_steps)
  images = jax.vmap(per_frame, in_axes=(0, 0, 0, None if sh_coeffs is None else 0, 0))(
      vertices, cameras, textures, sh_coeffs, face_ids)
  zeros = jnp.zeros((batch,), jnp.int32)
  return RasterOutput(color=images.color, alpha=images.alpha, depth=images.depth,
                      median_depth=images.depth, normals=images.normals,
                      distortion=jnp.zeros_like(images.depth), splats_culled=zeros,
                      pairs_dropped=zeros, pairs_needed=zeros)


class AlbedoHead(nn.Module):
  """Identity features (B, Df) + DINOv2 tokens (B, P, Dt) -> UV albedo texture (B, T, T, 3).

  A `grid_size`^2 grid of learned queries, conditioned on the identity features, cross-attends
  to the tokens, passes an MLP, and each query decodes a square patch of texels (depth to
  space). Starts at a uniform grey 0.5 (sigmoid of a zero bias, small output weights).
  """

  texture_size: int = 64
  grid_size: int = 8
  width: int = 128
  num_heads: int = 4
  channels: int = 3
  output_init_std: float = 1e-3

  @nn.compact
  def __call__(self, identity: jnp.ndarray, image_tokens: jnp.ndarray) -> jnp.ndarray:
    if self.texture_size % self.grid_size:
      raise ValueError(f"{_FILE}: AlbedoHead texture_size {self.texture_size} is not a multiple "
                       f"of grid_size {self.grid_size}")
    batch, cells = identity.shape[0], self.grid_size ** 2
    patch = self.texture_size // self.grid_size
    queries = self.param("queries", nn.initializers.normal(0.02), (cells, self.width))
    x = queries[None] + nn.Dense(self.width, name="identity")(identity)[:, None]
    tokens = nn.Dense(self.width, name="tokens")(image_tokens)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="cross_attention")(
        nn.LayerNorm(name="norm1")(x), tokens)
    h = nn.gelu(nn.Dense(4 * self.width, name="mlp_in")(nn.LayerNorm(name="norm2")(x)))
    x = x + nn.Dense(self.width, name="mlp_out")(h)
    texels = nn.Dense(patch * patch * self.channels,
                      kernel_init=nn.initializers.normal(self.output_init_std), name="texels")(
                          nn.LayerNorm(name="norm3")(x))
    texels = texels.reshape(batch, self.grid_size, self.grid_size, patch, patch, self.channels)
    texture = texels.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, self.texture_size, self.texture_size, self.channels)
    return jax.nn.sigmoid(texture)
