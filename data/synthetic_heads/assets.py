"""The static part of every synthetic frame: the built-in head and what is built around it once.

Nothing here depends on an identity; it is derived from the built-in head
(`sheap_jax.head.head_model`) and cached per process:
- the FLAME model of the head (`FlameModel`);
- the hair shell's topology: a copy of the faces on and around the scalp, which each identity
  lifts off the skin by its own hairline and thickness (`body.hair_vertices`);
- a torso (collar, shoulders, chest) that moves rigidly with FLAME's root joint;
- texel maps: for every texel of the UV atlas, the template point it shows and the regions it
  lies in, so that an identity's texture is painted as a function of the 3D head
  (`texture.py`), with detail finer than the vertex spacing.
"""
import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from sheap_jax.geometry import camera as camera_lib
from sheap_jax.head import flame
from sheap_jax.head import head_model
from sheap_jax.render import mesh_render

# Materials of the combined mesh's faces.
HEAD, HAIR, TORSO = 0, 1, 2
# Named soft regions of the texel maps (channels of `TexelMaps.regions`).
REGIONS = ("face", "lips", "nose", "forehead", "scalp", "neck", "ears", "left_eyeball",
           "right_eyeball", "eye_lining", "mouth_cavity")
# Box (metres, template frame) around the mouth pocket behind the lips.
_MOUTH_BOX = (np.array([-0.035, -0.056, 0.02]), np.array([0.035, -0.02, 0.09]))
# Torso profile rows: height y, half width, half depth, centre z (metres, template frame).
_TORSO_ROWS = np.array([
    (-0.150, 0.064, 0.060, -0.012), (-0.170, 0.068, 0.063, -0.013),
    (-0.190, 0.085, 0.070, -0.015), (-0.205, 0.120, 0.080, -0.017),
    (-0.220, 0.160, 0.090, -0.019), (-0.240, 0.185, 0.100, -0.020),
    (-0.270, 0.195, 0.105, -0.020), (-0.310, 0.200, 0.110, -0.020),
    (-0.360, 0.200, 0.110, -0.020), (-0.430, 0.195, 0.110, -0.020),
    (-0.520, 0.190, 0.110, -0.020)])
_TORSO_COLUMNS = 48
_TORSO_SQUARENESS = 2.6  # superellipse exponent of the cross-sections (2: ellipse)


@dataclasses.dataclass(frozen=True)
class HairTopology:
  """Shell faces copied from the head around the scalp; vertex k copies head vertex source[k]."""

  source: np.ndarray  # (Vh,) int32 head vertex each shell vertex sits above
  faces: np.ndarray  # (Fh, 3) int32 into the shell's own vertices
  uv_faces: np.ndarray  # (Fh, 3) int32 into the head's vt (the shell shows the scalp's texture)
  azimuth: np.ndarray  # (Vh,) float32 template azimuth from +z (face) towards +x
  height: np.ndarray  # (Vh,) float32 template y


@dataclasses.dataclass(frozen=True)
class TorsoMesh:
  """A rest torso in the template frame, to be moved with FLAME's root joint."""

  vertices: np.ndarray  # (Vt, 3) float32, template frame
  faces: np.ndarray  # (Ft, 3) int32, counter-clockwise seen from outside
  root_joint: np.ndarray  # (3,) template root joint the torso hangs from


@dataclasses.dataclass(frozen=True)
class TexelMaps:
  """What each texel of the head's UV atlas shows (empty texels copy their nearest neighbour)."""

  positions: np.ndarray  # (T, T, 3) float32 template point, metres
  regions: np.ndarray  # (T, T, len(REGIONS)) float32 soft region weights in [0, 1]
  covered: np.ndarray  # (T, T) bool: the texel lies inside a UV triangle

  @property
  def face_texels(self) -> np.ndarray:
    """(N, 2) float32 (row + 1/2, column + 1/2) / T of the covered face texels."""
    face = self.covered & (self.regions[..., REGIONS.index("face")] > 0.99)
    return ((np.argwhere(face) + 0.5) / self.covered.shape[0]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class HeadAssets:
  """Everything static about the synthetic scene."""

  model: flame.FlameModel
  uvs: np.ndarray  # (T, 2) float32 head vt
  uv_faces: np.ndarray  # (F, 3) int32 head ft
  hair: HairTopology
  torso: TorsoMesh
  landmark_points: np.ndarray  # (68, 3) float32 template landmarks (full 68 embedding)
  eye_centres: np.ndarray  # (2, 3) float32 template left, right eye joints
  region_vertices: dict  # mask name -> (N,) int vertex ids (FLAME_masks.pkl's layout)

  @property
  def num_head_vertices(self) -> int:
    return self.model.num_vertices

  @property
  def num_head_faces(self) -> int:
    return int(self.model.faces.shape[0])


def _indicator(num_vertices, ids):
  out = np.zeros(num_vertices, np.float32)
  out[np.asarray(ids)] = 1.0
  return out


def _vertex_regions(v, masks) -> np.ndarray:
  """(V, len(REGIONS)) 0/1 region membership of every head vertex (template v, FLAME masks)."""
  num_v = v.shape[0]
  member = lambda name: _indicator(num_v, masks[name])
  named_masks = set().union(*[set(np.asarray(m).tolist()) for m in masks.values()])
  unmasked = _indicator(num_v, sorted(set(range(num_v)) - named_masks))
  lo, hi = _MOUTH_BOX
  in_mouth_box = np.all((v > lo) & (v < hi), axis=1).astype(np.float32)
  eyeballs = np.maximum(member("left_eyeball"), member("right_eyeball"))
  columns = {
      "face": member("face"), "lips": member("lips"), "nose": member("nose"),
      "forehead": member("forehead"), "scalp": member("scalp"), "neck": member("neck"),
      "ears": np.maximum(member("left_ear"), member("right_ear")),
      "left_eyeball": member("left_eyeball"), "right_eyeball": member("right_eyeball"),
      "eye_lining": member("eye_region") * (1.0 - member("face")) * (1.0 - eyeballs),
      "mouth_cavity": unmasked * in_mouth_box,
  }
  return np.stack([columns[name] for name in REGIONS], axis=-1)


def _hair_topology(assets) -> HairTopology:
  """Faces whose corners all lie where some hairstyle may grow: scalp, upper forehead, nape."""
  v = assets["v_template"]
  masks = assets["masks"]
  num_v = v.shape[0]
  scalp = _indicator(num_v, masks["scalp"]) > 0
  forehead = (_indicator(num_v, masks["forehead"]) > 0) & (v[:, 1] > 0.06)
  nape = (_indicator(num_v, masks["neck"]) > 0) & (v[:, 2] < 0.0) & (v[:, 1] > -0.16)
  allowed = scalp | forehead | nape
  faces = np.asarray(assets["f"], np.int64)
  keep = np.all(allowed[faces], axis=1)
  source, local = np.unique(faces[keep], return_inverse=True)
  sv = v[source]
  return HairTopology(
      source=source.astype(np.int32),
      faces=local.reshape(-1, 3).astype(np.int32),
      uv_faces=np.asarray(assets["ft"], np.int32)[keep],
      azimuth=np.arctan2(sv[:, 0], sv[:, 2]).astype(np.float32),
      height=sv[:, 1].astype(np.float32))


def _torso(root_joint) -> TorsoMesh:
  """Stacked superellipse rings (outside winding counter-clockwise) plus a top cap fan."""
  angles = 2.0 * np.pi * np.arange(_TORSO_COLUMNS) / _TORSO_COLUMNS  # from +z towards +x
  cos, sin = np.cos(angles), np.sin(angles)
  exponent = 2.0 / _TORSO_SQUARENESS
  along_z = np.sign(cos) * np.abs(cos) ** exponent
  along_x = np.sign(sin) * np.abs(sin) ** exponent
  rings = [np.stack([half_w * along_x, np.full_like(along_x, y), z0 + half_d * along_z], -1)
           for y, half_w, half_d, z0 in _TORSO_ROWS]
  vertices = np.concatenate(rings + [np.array([[0.0, _TORSO_ROWS[0, 0] + 0.004,
                                                _TORSO_ROWS[0, 3]]])], axis=0)
  cap = len(vertices) - 1
  faces = []
  n = _TORSO_COLUMNS
  for r in range(len(_TORSO_ROWS) - 1):
    for c in range(n):
      a, b = r * n + c, r * n + (c + 1) % n  # upper ring
      d, e = a + n, b + n  # lower ring
      faces += [(a, d, e), (a, e, b)]
  faces += [(cap, c, (c + 1) % n) for c in range(n)]
  faces = np.asarray(faces, np.int32)
  # Make the winding counter-clockwise seen from outside (normals pointing away from the axis).
  corners = vertices[faces]
  normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
  outward = corners.mean(axis=1) - np.array([0.0, 0.0, _TORSO_ROWS[0, 3]])
  outward[-n:] = (0.0, 1.0, 0.0)  # the cap faces up
  flip = np.sum(normal * outward, axis=1) < 0
  faces[flip] = faces[flip][:, ::-1]
  return TorsoMesh(vertices=vertices.astype(np.float32), faces=faces,
                   root_joint=np.asarray(root_joint, np.float32))


@functools.lru_cache(maxsize=1)
def head_assets() -> HeadAssets:
  """The static scene (built once per process: the head takes a few seconds)."""
  raw = head_model.build_head_assets()
  model = flame.FlameModel.from_assets(raw)
  v = raw["v_template"]
  joints = np.asarray(raw["J_regressor"] @ v)
  lmk = raw["landmark_embedding"]
  lmk_faces = np.asarray(lmk["full_lmk_faces_idx"]).reshape(-1)
  lmk_bary = np.asarray(lmk["full_lmk_bary_coords"]).reshape(-1, 3)
  faces = np.asarray(raw["f"], np.int64)
  landmark_points = np.einsum("lkc,lk->lc", v[faces[lmk_faces]], lmk_bary)
  return HeadAssets(
      model=model,
      uvs=np.asarray(raw["vt"], np.float32),
      uv_faces=np.asarray(raw["ft"], np.int32),
      hair=_hair_topology(raw),
      torso=_torso(joints[0]),
      landmark_points=landmark_points.astype(np.float32),
      eye_centres=joints[3:5].astype(np.float32),
      region_vertices={k: np.asarray(m, np.int64) for k, m in raw["masks"].items()})


@functools.lru_cache(maxsize=2)
def texel_maps(texture_size: int) -> TexelMaps:
  """Rasterises the UV atlas at texture_size^2: the template point and regions of each texel.

  The atlas is drawn as a mesh whose vertex (u, v) sits at pixel (u T - 1/2, (1 - v) T - 1/2)
  at depth 1 in front of an identity camera, so texel (i, j) of `mesh_render.sample_texture`
  is pixel (i, j) here; barycentrics then interpolate per-vertex attributes of the same face.
  """
  assets = head_assets()
  raw_v = np.asarray(assets.model.v_template)
  size = texture_size
  uv = assets.uvs
  atlas = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5, np.ones(len(uv))], -1)
  identity = camera_lib.Camera(K=jnp.eye(3), viewmat=jnp.eye(4), width=size, height=size)
  fragments = mesh_render.rasterize(jnp.asarray(atlas, jnp.float32),
                                    jnp.asarray(assets.uv_faces), identity)
  faces = assets.model.faces
  vertex_regions = _vertex_regions(raw_v, assets.region_vertices)
  attributes = jnp.concatenate([jnp.asarray(raw_v), jnp.asarray(vertex_regions)], axis=-1)
  values = np.asarray(mesh_render.interpolate(fragments, faces, attributes))
  covered = np.asarray(fragments.face_ids) >= 0
  # Empty texels copy the nearest covered one, so bilinear lookups at island borders and
  # seams never blend in a meaningless value.
  _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
  values = values[rows, cols]
  return TexelMaps(positions=values[..., :3].astype(np.float32),
                   regions=np.clip(values[..., 3:], 0.0, 1.0).astype(np.float32),
                   covered=covered)

