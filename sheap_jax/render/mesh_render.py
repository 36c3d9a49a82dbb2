"""Z-buffer triangle rasteriser for synthetic data and overlays (not differentiable).

How one image is drawn, with static shapes throughout (jit/vmap-safe):
1. Triangle setup: project the vertices (`sheap_jax.geometry.camera`), cull triangles with a vertex
   closer than `near` (there is no clipping), degenerate ones and, optionally, back faces; take
   the inclusive box of pixel centres each triangle can cover.
2. Fragments: every (triangle, pixel of its box) pair is a slot in one virtual list, a triangle's
   slots consecutive (offsets by cumulative sum). A while loop walks that list `chunk_size`
   slots at a time, only as far as the boxes need: a slot finds its triangle by binary search and
   its pixel from its offset in the box. No capacity to overflow, and work ~ total box area.
3. Coverage: edge functions at the pixel centre with a top-left style fill rule. Each edge is
   evaluated from its endpoints in a canonical (lexicographic) order, so two triangles sharing an
   edge get bitwise opposite values and a pixel centre on the edge belongs to exactly one of them.
4. Depth test, per chunk: scatter-min of camera z into the z-buffer; pixels whose depth dropped
   forget their face; then scatter-min of the face id among this chunk's fragments at the new
   depth (exact ties go to the lower face id).
5. Per pixel, the winning face gives perspective-correct barycentrics and depth; attributes,
   normals, textures and SH shading are interpolated from those.
Pixel centres and camera axes follow `rasterizer/types.py`; faces are counter-clockwise seen from
outside (FLAME's winding), which is what back-face culling assumes.
"""
import functools
from typing import Optional

from flax import struct
import jax
import jax.numpy as jnp

from sheap_jax.geometry import camera as camera_lib
from sheap_jax.geometry import shading

DEFAULT_NEAR = 0.01  # metres; triangles with a vertex closer than this are not drawn
DEFAULT_CHUNK_SIZE = 32768  # (triangle, pixel) pairs depth-tested per loop step


@struct.dataclass
class Fragments:
  """What the depth test leaves at each pixel of one image."""

  face_ids: jnp.ndarray  # (H, W) int32 visible face, -1 for background
  barycentrics: jnp.ndarray  # (H, W, 3) perspective-correct weights of the face's vertices
  depth: jnp.ndarray  # (H, W) camera-space z, 0 for background
  fragments: jnp.ndarray  # () int32 (triangle, pixel-in-box) pairs tested, a cost measure

  @property
  def mask(self) -> jnp.ndarray:
    """(H, W) float32: 1 where a face is visible."""
    return (self.face_ids >= 0).astype(jnp.float32)


@struct.dataclass
class MeshImage:
  """A rendered mesh: colour, geometry buffers and the fragments they come from."""

  color: jnp.ndarray  # (H, W, C) shaded albedo over the background
  normals: jnp.ndarray  # (H, W, 3) unit camera-space normals, interpolated; 0 for background
  fragments: Fragments

  @property
  def mask(self) -> jnp.ndarray:
    return self.fragments.mask

  @property
  def depth(self) -> jnp.ndarray:
    return self.fragments.depth


def _check_mesh(vertices: jnp.ndarray, faces: jnp.ndarray, camera: camera_lib.Camera) -> None:
  if vertices.ndim != 2 or vertices.shape[-1] != 3:
    raise ValueError("sheap_jax/render/mesh_render.py: vertices must be (V, 3), got "
                     f"{tuple(vertices.shape)} (vmap over a batch)")
  if (faces.ndim != 2 or faces.shape[-1] != 3 or faces.shape[0] == 0
      or not jnp.issubdtype(faces.dtype, jnp.integer)):
    raise ValueError("sheap_jax/render/mesh_render.py: "
                     "faces must be a non-empty integer (F, 3) array, "
                     f"got {faces.dtype} {tuple(faces.shape)}")
  if camera.K.shape != (3, 3) or camera.viewmat.shape != (4, 4):
    raise ValueError("sheap_jax/render/mesh_render.py: "
                     "rasterize draws one camera; vmap over a batch "
                     f"(got K {tuple(camera.K.shape)}, viewmat {tuple(camera.viewmat.shape)})")


def _canonical_edges(start: jnp.ndarray, end: jnp.ndarray):
  """Orders each edge's endpoints (..., 2) lexicographically; returns (origin, delta, sign).

  sign * (delta x (p - origin)) is the edge function of start -> end, computed the same way,
  bit for bit, by every triangle that shares the edge in either direction.
  """
  swap = (start[..., 0] > end[..., 0]) | (
      (start[..., 0] == end[..., 0]) & (start[..., 1] > end[..., 1]))
  origin = jnp.where(swap[..., None], end, start)
  delta = jnp.where(swap[..., None], start, end) - origin
  return origin, delta, jnp.where(swap, -1.0, 1.0)


@struct.dataclass
class _Triangles:
  """Per-face setup shared by the fragment pass and the final per-pixel pass."""

  origin: jnp.ndarray  # (F, 3, 2) canonical origin of edge k (the edge opposite vertex k)
  delta: jnp.ndarray  # (F, 3, 2) canonical direction of edge k
  sign: jnp.ndarray  # (F, 3) canonical sign times orientation: edge function > 0 inside
  owns_zero: jnp.ndarray  # (F, 3) bool: the fill rule gives this edge its on-edge pixels
  inv_z: jnp.ndarray  # (F, 3) 1 / camera z of the vertices
  box: jnp.ndarray  # (F, 4) int32 inclusive pixel box x0, y0, x1, y1
  count: jnp.ndarray  # (F,) int32 pixels in the box, 0 for culled faces


def _setup_triangles(pixels, z, faces, width, height, near, cull_backfaces) -> _Triangles:
  corners = pixels[faces]  # (F, 3, 2)
  corner_z = z[faces]  # (F, 3)
  # Edge k joins the two vertices other than k: (1 -> 2), (2 -> 0), (0 -> 1).
  start = corners[:, jnp.array([1, 2, 0])]
  end = corners[:, jnp.array([2, 0, 1])]
  origin, delta, canonical_sign = _canonical_edges(start, end)
  edge_direction = end - start
  doubled_area = (edge_direction[:, 2, 0] * (corners[:, 2, 1] - corners[:, 0, 1])
                  - edge_direction[:, 2, 1] * (corners[:, 2, 0] - corners[:, 0, 0]))
  # Pixel rows grow downwards, so a face counter-clockwise from the camera has negative area.
  orientation = jnp.sign(doubled_area)
  keep = (doubled_area != 0) & jnp.all(corner_z > near, axis=1)
  keep &= jnp.all(jnp.isfinite(corners), axis=(1, 2))
  keep &= jnp.logical_not(cull_backfaces) | (doubled_area < 0)
  # Top-left style rule on the inward-oriented edge direction: one side of every edge owns it.
  oriented = orientation[:, None, None] * edge_direction
  owns_zero = (oriented[..., 1] > 0) | ((oriented[..., 1] == 0) & (oriented[..., 0] < 0))

  limits = jnp.array([width, height], jnp.float32)
  finite_corners = jnp.nan_to_num(corners)  # culled anyway; keeps the integer casts defined
  lo = jnp.ceil(jnp.clip(finite_corners.min(axis=1), -1.0, limits)).astype(jnp.int32)
  hi = jnp.floor(jnp.clip(finite_corners.max(axis=1), -1.0, limits)).astype(jnp.int32)
  lo = jnp.maximum(lo, 0)
  hi = jnp.minimum(hi, jnp.array([width - 1, height - 1]))
  size = jnp.maximum(hi - lo + 1, 0)
  count = jnp.where(keep, size[:, 0] * size[:, 1], 0)
  return _Triangles(
      origin=origin, delta=delta, sign=canonical_sign * orientation[:, None],
      owns_zero=owns_zero, inv_z=1.0 / jnp.where(keep[:, None], corner_z, 1.0),
      box=jnp.concatenate([lo, hi], axis=1), count=count.astype(jnp.int32))


def _coverage(tris: _Triangles, face: jnp.ndarray, px: jnp.ndarray, py: jnp.ndarray):
  """Fill-rule coverage, perspective-correct barycentrics (..., 3) and z at pixel centres."""
  origin, delta = tris.origin[face], tris.delta[face]  # (..., 3, 2)
  sign = tris.sign[face]
  x = px.astype(jnp.float32)[..., None]
  y = py.astype(jnp.float32)[..., None]
  edge = sign * (delta[..., 0] * (y - origin[..., 1]) - delta[..., 1] * (x - origin[..., 0]))
  inside = jnp.all((edge > 0) | ((edge == 0) & tris.owns_zero[face]), axis=-1)
  screen_weights = edge / jnp.sum(edge, axis=-1, keepdims=True)
  perspective = screen_weights * tris.inv_z[face]
  inv_depth = jnp.sum(perspective, axis=-1, keepdims=True)
  return inside, perspective / inv_depth, 1.0 / inv_depth[..., 0]


@functools.partial(jax.jit, static_argnames=("near", "chunk_size"))
def rasterize(vertices: jnp.ndarray, faces: jnp.ndarray, camera: camera_lib.Camera, *,
              cull_backfaces: bool = False, near: float = DEFAULT_NEAR,
              chunk_size: int = DEFAULT_CHUNK_SIZE) -> Fragments:
  """Visible face, perspective-correct barycentrics and depth at every pixel of one image.

  vertices (V, 3) world, faces (F, 3) int, camera one (unbatched) `Camera`; vmap for batches.
  `cull_backfaces` may be a traced bool. Fragments are tested `chunk_size` (static) at a time,
  for as many chunks as the triangles' boxes need.
  """
  _check_mesh(vertices, faces, camera)
  width, height = camera.width, camera.height
  num_faces, num_pixels = faces.shape[0], width * height
  pixels, z = camera_lib.project_points(camera, vertices.astype(jnp.float32))
  tris = _setup_triangles(pixels, z, faces, width, height, near, cull_backfaces)
  slot_end = jnp.cumsum(tris.count)
  total = slot_end[-1]

  def depth_test_chunk(state):
    start, zbuffer, winner = state
    slot = start + jnp.arange(chunk_size, dtype=jnp.int32)
    face = jnp.minimum(jnp.searchsorted(slot_end, slot, side="right"), num_faces - 1)
    local = slot - (slot_end[face] - tris.count[face])
    box = tris.box[face]
    box_width = jnp.maximum(box[:, 2] - box[:, 0] + 1, 1)
    px = box[:, 0] + local % box_width
    py = box[:, 1] + local // box_width
    inside, _, depth = _coverage(tris, face, px, py)
    inside &= slot < total
    pixel = jnp.where(inside, py * width + px, num_pixels)  # out of range: dropped by scatters
    # Both scatters must see the same depth bits; the barrier stops XLA from recomputing (and
    # maybe re-rounding, e.g. with fused multiply-adds) the depth inside each consumer.
    depth, inside, pixel = jax.lax.optimization_barrier((depth, inside, pixel))
    nearer = zbuffer.at[pixel].min(depth, mode="drop")
    winner = jnp.where(nearer < zbuffer, num_faces, winner)  # pixels whose old winner lost
    at_front = inside & (depth == nearer.at[pixel].get(mode="fill", fill_value=jnp.nan))
    winner = winner.at[jnp.where(at_front, pixel, num_pixels)].min(face, mode="drop")
    return start + chunk_size, nearer, winner

  _, _, winner = jax.lax.while_loop(
      lambda state: state[0] < total, depth_test_chunk,
      (jnp.int32(0), jnp.full((num_pixels,), jnp.inf, jnp.float32),
       jnp.full((num_pixels,), num_faces, jnp.int32)))
  face_ids = jnp.where(winner < num_faces, winner, -1).reshape(height, width)

  rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  _, barycentrics, pixel_depth = _coverage(tris, jnp.maximum(face_ids, 0), cols, rows)
  visible = face_ids >= 0
  return Fragments(
      face_ids=face_ids,
      barycentrics=jnp.where(visible[..., None], barycentrics, 0.0),
      depth=jnp.where(visible, pixel_depth, 0.0),
      fragments=total)


def interpolate(fragments: Fragments, faces: jnp.ndarray, attributes: jnp.ndarray) -> jnp.ndarray:
  """Per-vertex attributes (N, C) indexed by faces (F, 3) -> (H, W, C), 0 on background.

  Pass the position faces with per-vertex data, or FLAME's `ft` with its `vt` for UVs.
  """
  corner_values = attributes[faces[jnp.maximum(fragments.face_ids, 0)]]  # (H, W, 3, C)
  values = jnp.sum(fragments.barycentrics[..., None] * corner_values, axis=-2)
  return jnp.where(fragments.face_ids[..., None] >= 0, values, 0.0)


def vertex_normals(vertices: jnp.ndarray, faces: jnp.ndarray) -> jnp.ndarray:
  """(V, 3) unit normals: area-weighted sums of the counter-clockwise face normals."""
  corners = vertices[faces]
  face_normals = jnp.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
  sums = jnp.zeros_like(vertices).at[faces.reshape(-1)].add(jnp.repeat(face_normals, 3, axis=0))
  norm = jnp.linalg.norm(sums, axis=-1, keepdims=True)
  return sums / jnp.where(norm > 0, norm, 1.0)


def sample_texture(texture: jnp.ndarray, uv: jnp.ndarray) -> jnp.ndarray:
  """Bilinear lookup of a (Ht, Wt, C) texture at (..., 2) UVs -> (..., C), clamped at the border.

  UVs follow the OBJ convention (FLAME's `vt`): u to the right, v up, (0, 0) the bottom-left
  corner of the image; texel (i, j) is centred at u = (i + 0.5) / Wt, v = 1 - (j + 0.5) / Ht.
  """
  tex_height, tex_width = texture.shape[0], texture.shape[1]
  x = jnp.clip(uv[..., 0] * tex_width - 0.5, 0.0, tex_width - 1.0)
  y = jnp.clip((1.0 - uv[..., 1]) * tex_height - 0.5, 0.0, tex_height - 1.0)
  x0 = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, max(tex_width - 2, 0))
  y0 = jnp.clip(jnp.floor(y).astype(jnp.int32), 0, max(tex_height - 2, 0))
  x1, y1 = jnp.minimum(x0 + 1, tex_width - 1), jnp.minimum(y0 + 1, tex_height - 1)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  top = texture[y0, x0] * (1.0 - fx) + texture[y0, x1] * fx
  bottom = texture[y1, x0] * (1.0 - fx) + texture[y1, x1] * fx
  return top * (1.0 - fy) + bottom * fy


@functools.partial(jax.jit, static_argnames=("near", "chunk_size"))
def render_mesh(vertices: jnp.ndarray, faces: jnp.ndarray, camera: camera_lib.Camera, *,
                vertex_colors: Optional[jnp.ndarray] = None,
                texture: Optional[jnp.ndarray] = None,
                uvs: Optional[jnp.ndarray] = None,
                uv_faces: Optional[jnp.ndarray] = None,
                sh_coeffs: Optional[jnp.ndarray] = None,
                background=0.0,
                cull_backfaces: bool = False,
                near: float = DEFAULT_NEAR,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> MeshImage:
  """Renders one mesh: albedo from a UV texture (texture + uvs (T, 2) + uv_faces (F, 3)), from
  vertex colours (V, C), or white; SH shading with camera-frame normals when `sh_coeffs`
  (9, C) is given, unlit otherwise; composited over `background` (scalar, (C,) or (H, W, C)).
  """
  if texture is not None and (uvs is None or uv_faces is None):
    raise ValueError("sheap_jax/render/mesh_render.py: "
                     "a texture needs uvs (T, 2) and uv_faces (F, 3)")
  fragments = rasterize(vertices, faces, camera, cull_backfaces=cull_backfaces, near=near,
                        chunk_size=chunk_size)
  if texture is not None:
    albedo = sample_texture(texture, interpolate(fragments, uv_faces, uvs))
  elif vertex_colors is not None:
    albedo = interpolate(fragments, faces, vertex_colors)
  else:
    albedo = jnp.ones((camera.height, camera.width, 1), jnp.float32)
  rotation_only = camera.viewmat.at[:3, 3].set(0.0)
  normals_camera = camera_lib.world_to_camera(rotation_only, vertex_normals(vertices, faces))
  normals = interpolate(fragments, faces, normals_camera)
  length = jnp.linalg.norm(normals, axis=-1, keepdims=True)
  normals = normals / jnp.where(length > 0, length, 1.0)
  color = albedo if sh_coeffs is None else shading.shade(albedo, normals, sh_coeffs)
  mask = fragments.mask[..., None]
  color = mask * color + (1.0 - mask) * jnp.asarray(background, jnp.float32)
  return MeshImage(color=color, normals=normals, fragments=fragments)


@jax.jit
def overlay_mesh(image: jnp.ndarray, vertices: jnp.ndarray, faces: jnp.ndarray,
                 camera: camera_lib.Camera, *, color=(0.75, 0.78, 0.85), opacity: float = 0.7,
                 light_direction=(0.3, -0.4, -1.0)) -> jnp.ndarray:
  """Draws a shaded mesh over an (H, W, 3) image in [0, 1], blended with `opacity`.

  The light direction is in the OpenCV camera frame: the default comes from above and behind
  the viewer's right shoulder.
  """
  if image.shape != (camera.height, camera.width, 3):
    raise ValueError("sheap_jax/render/mesh_render.py: "
                     f"image {tuple(image.shape)} does not match the "
                     f"camera's (H, W, 3) = ({camera.height}, {camera.width}, 3)")
  light = shading.ambient_directional_sh(0.35, 0.75, light_direction)
  mesh = render_mesh(vertices, faces, camera, sh_coeffs=light, cull_backfaces=True,
                     vertex_colors=jnp.broadcast_to(jnp.asarray(color, jnp.float32),
                                                    vertices.shape))
  weight = opacity * mesh.mask[..., None]
  return (1.0 - weight) * image + weight * jnp.clip(mesh.color, 0.0, 1.0)
