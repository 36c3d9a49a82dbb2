"""Geometry outside the FLAME surface: a hair shell over the scalp and a torso below the neck.

Both follow the posed head, so they move with it, but FLAME cannot express either: the hair
stands off the skin by up to a few centimetres (changing the silhouette), and the torso is a
separate body hanging from FLAME's root joint.
"""
import jax.numpy as jnp

from data.synthetic_heads import identity as identity_lib
from sheap_jax.render import mesh_render

HAIR_BURY_DEPTH = 0.003  # bald shell vertices hide this far under the skin
HAIR_RISE = 0.02  # the shell rises to full thickness over this height above the hairline (m)


def _smoothstep(x):
  x = jnp.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def hair_weight(azimuth: jnp.ndarray, height: jnp.ndarray, style: identity_lib.Hairstyle,
                extra_fade: float = 0.0) -> jnp.ndarray:
  """Hair coverage in [0, 1] at template points given by azimuth (from +z towards +x) and y,
  rising over style.fade + extra_fade metres above the hairline.

  The hairline height blends from `front` (azimuth 0) through `side` (+-pi/2) to `back` (pi).
  """
  cos = jnp.cos(azimuth)
  hairline = (style.side + (style.front - style.side) * jnp.maximum(cos, 0.0) ** 2
              + (style.back - style.side) * jnp.maximum(-cos, 0.0) ** 2)
  has_hair = (style.thickness > 0).astype(jnp.float32)
  return has_hair * _smoothstep((height - hairline) / (style.fade + extra_fade))


def hair_vertices(head_vertices: jnp.ndarray, head_faces: jnp.ndarray, source: jnp.ndarray,
                  azimuth: jnp.ndarray, height: jnp.ndarray,
                  style: identity_lib.Hairstyle) -> jnp.ndarray:
  """(Vh, 3) shell vertices: each lifted off its head vertex source[k] along the posed normal.

  azimuth and height (Vh,) locate the source vertices on the template (`assets.HairTopology`).
  Where the style grows no hair the shell sinks under the skin, so it is hidden there.
  """
  normals = mesh_render.vertex_normals(head_vertices, head_faces)[source]
  coverage = hair_weight(azimuth, height, style, HAIR_RISE)  # a gentle rise: no jagged rim
  crown = _smoothstep((height + 0.02) / 0.12)  # fuller on top
  offset = (style.thickness * style.volume * (0.45 + 0.55 * crown) * coverage
            - HAIR_BURY_DEPTH * (1.0 - coverage))
  return head_vertices[source] + offset[:, None] * normals


def torso_vertices(rest: jnp.ndarray, clothes: identity_lib.Clothes, root_rotation: jnp.ndarray,
                   root_joint: jnp.ndarray) -> jnp.ndarray:
  """(Vt, 3) posed torso from its rest vertices relative to the template root joint (shoulders
  scaled per identity), rotated about the root.

  root_rotation (3, 3) is FLAME's global rotation, root_joint (3,) the posed root joint (with
  the translation), as `flame_forward` returns it: a vertex skinned to the root alone moves so.
  """
  widen = jnp.where(rest[:, 1] < -0.05, clothes.width_scale, 1.0)  # keep the collar on the neck
  rest = rest * jnp.stack([widen, jnp.ones_like(widen), jnp.ones_like(widen)], axis=-1)
  return rest @ root_rotation.T + root_joint


def clothes_albedo(rest_points: jnp.ndarray, clothes: identity_lib.Clothes) -> jnp.ndarray:
  """(..., 3) albedo of the torso at rest-frame points (..., 3): plain, stripes or checks."""
  around = jnp.arctan2(rest_points[..., 0], rest_points[..., 2]) * 0.15  # ~ metres of girth
  stripes_h = jnp.sin(2 * jnp.pi * rest_points[..., 1] / clothes.period) > 0
  stripes_v = jnp.sin(2 * jnp.pi * around / clothes.period) > 0
  pattern = jnp.select(
      [clothes.pattern == 1, clothes.pattern == 2, clothes.pattern == 3],
      [stripes_h, stripes_v, stripes_h ^ stripes_v], jnp.zeros_like(stripes_h))
  return jnp.where(pattern[..., None], clothes.accent, clothes.base)
