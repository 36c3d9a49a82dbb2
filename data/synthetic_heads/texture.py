"""An identity's UV texture: albedo (RGB) and specular strength (A), painted per texel.

Each texel knows the template point it shows (`assets.texel_maps`), so the texture is a
function of the 3D head: skin tone with coarse variation, pores and freckles, blush, lips cut
along the lip landmarks, brows along the brow landmarks, stubble, irises and pupils, dark mouth
and eye linings, and hair over the hairline. Most of that detail (3 mm grain, 1-2 mm freckles,
texel-sharp lip and hair lines) is finer than the head's ~5 mm vertex spacing, so per-vertex
colour cannot reproduce it.
"""
import functools

import jax
import jax.numpy as jnp

from data.synthetic_heads import assets as assets_lib
from data.synthetic_heads import body
from data.synthetic_heads import identity as identity_lib

IRIS_ANGLE, PUPIL_ANGLE = 0.48, 0.19  # radians from the gaze axis, on the eyeball
BROW_LEFT = slice(22, 27)  # iBUG: subject's left brow (image right)
BROW_RIGHT = slice(17, 22)
OUTER_LIPS = slice(48, 60)


def _region(regions, name):
  return regions[..., assets_lib.REGIONS.index(name)]


def wave_noise(points: jnp.ndarray, waves: jnp.ndarray) -> jnp.ndarray:
  """Unit-variance smooth noise at (..., 3) points from plane waves (K, 4) (frequency, phase)."""
  phase = jnp.einsum("...c,kc->...k", points, waves[:, :3]) + waves[:, 3]
  return jnp.sqrt(2.0 / waves.shape[0]) * jnp.sum(jnp.sin(phase), axis=-1)


def _segment_distance(points, start, end):
  """Distance from (..., 3) points to the segment start-end (3,)."""
  direction = end - start
  t = jnp.clip(jnp.sum((points - start) * direction, -1) / jnp.sum(direction ** 2), 0.0, 1.0)
  return jnp.linalg.norm(points - (start + t[..., None] * direction), axis=-1)


def _polyline_distance(points, polyline):
  distances = [_segment_distance(points, polyline[i], polyline[i + 1])
               for i in range(polyline.shape[0] - 1)]
  return functools.reduce(jnp.minimum, distances)


def _inside_polygon_xy(points, polygon):
  """Even-odd point-in-polygon test in the xy plane (front view of the template)."""
  x, y = points[..., 0], points[..., 1]
  inside = jnp.zeros(points.shape[:-1], bool)
  for i in range(polygon.shape[0]):
    (x0, y0), (x1, y1) = polygon[i, :2], polygon[(i + 1) % polygon.shape[0], :2]
    crosses = (y0 > y) != (y1 > y)
    x_at = x0 + (y - y0) * (x1 - x0) / jnp.where(y1 == y0, 1e-12, y1 - y0)
    inside ^= crosses & (x < x_at)
  return inside


def _blur(image, sigma):
  """Separable Gaussian blur of a (T, T) image (sigma in texels, static)."""
  radius = max(1, int(3 * sigma + 0.5))
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
  taps = taps / jnp.sum(taps)
  image = jax.vmap(lambda row: jnp.convolve(row, taps, mode="same"))(image)
  return jax.vmap(lambda col: jnp.convolve(col, taps, mode="same"), in_axes=1, out_axes=1)(image)


def _freckle_darkness(texture_size, appearance):
  """Freckles and moles as Gaussian spots stamped in texel space (one blur per spot size).

  Spot sizes are set in metres on the face (about 1.4 texels per mm at 512^2 texels).
  """
  texels_per_metre = 1400.0 * texture_size / 512
  rows = jnp.clip((appearance.freckle_texels[:, 0] * texture_size).astype(jnp.int32), 0,
                  texture_size - 1)
  cols = jnp.clip((appearance.freckle_texels[:, 1] * texture_size).astype(jnp.int32), 0,
                  texture_size - 1)
  total = jnp.zeros((texture_size, texture_size))
  for size_class, radius in enumerate(identity_lib.FRECKLE_RADII):
    sigma = max(radius * texels_per_metre, 0.5)
    strength = jnp.where(appearance.freckle_class == size_class, appearance.freckle_strength, 0.0)
    stamps = jnp.zeros_like(total).at[rows, cols].add(strength)
    total = total + _blur(stamps, sigma) * (2.0 * jnp.pi * sigma ** 2)  # peak = strength
  return jnp.clip(total, 0.0, 0.85)


def _smoothstep(edge0, edge1, x):
  t = jnp.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _eye(points, regions, eye_centres, appearance):
  """Sclera, iris with radial streaks, dark limbus and pupil, by angle from the gaze axis."""
  albedo = jnp.zeros(points.shape[:-1] + (3,))
  weight = jnp.zeros(points.shape[:-1])
  for name, centre in (("left_eyeball", eye_centres[0]), ("right_eyeball", eye_centres[1])):
    offset = points - centre
    direction = offset / jnp.linalg.norm(offset, axis=-1, keepdims=True)
    angle = jnp.arccos(jnp.clip(direction[..., 2], -1.0, 1.0))
    around = jnp.arctan2(direction[..., 1], direction[..., 0])
    streaks = 0.8 + 0.2 * jnp.sin(37.0 * around) * jnp.sin(11.0 * around + 1.0)
    iris = appearance.iris * streaks[..., None] * (1.0 - 0.5 * _smoothstep(
        IRIS_ANGLE - 0.1, IRIS_ANGLE, angle))[..., None]
    sclera = jnp.array([0.86, 0.82, 0.78]) * (1.0 - 0.15 * _smoothstep(0.9, 1.6, angle))[..., None]
    colour = jnp.where((angle < IRIS_ANGLE)[..., None], iris, sclera)
    colour = jnp.where((angle < PUPIL_ANGLE)[..., None], 0.03, colour)
    member = _region(regions, name)
    albedo = albedo + member[..., None] * colour
    weight = weight + member
  return albedo, jnp.clip(weight, 0.0, 1.0)


def _signed_lip_distance(points, outer_lips):
  """Distance to the outer lip contour in the xy plane, negative inside the lips."""
  flat = points.at[..., 2].set(0.0)
  contour = jnp.concatenate([outer_lips, outer_lips[:1]], axis=0).at[:, 2].set(0.0)
  distance = _polyline_distance(flat, contour)
  return jnp.where(_inside_polygon_xy(points, outer_lips), -distance, distance)


@jax.jit
def paint_texture(positions: jnp.ndarray, regions: jnp.ndarray, landmark_points: jnp.ndarray,
                  eye_centres: jnp.ndarray, ident: identity_lib.Identity) -> jnp.ndarray:
  """(T, T, 4) texture: RGB albedo and specular strength of one identity.

  positions (T, T, 3) and regions (T, T, R) are `assets.texel_maps`; landmark_points (68, 3)
  and eye_centres (2, 3) are template points.
  """
  look = ident.appearance
  region = functools.partial(_region, regions)
  x, y, z = positions[..., 0], positions[..., 1], positions[..., 2]
  coarse = wave_noise(positions, look.coarse_waves)
  fine = wave_noise(positions, look.fine_waves)
  strands = wave_noise(positions, look.strand_waves)

  # Skin: tone with coarse variation and fine grain, freckles, blush on cheeks, nose and ears.
  albedo = look.skin * (1.0 + 0.06 * coarse[..., None]) * (1.0 + 0.05 * fine[..., None])
  albedo = albedo * (1.0 - 0.05 * region("neck"))[..., None]
  spots = _freckle_darkness(positions.shape[0], look)[..., None]
  albedo = albedo * (1.0 - spots * jnp.array([0.4, 0.55, 0.65]))
  cheeks = sum(jnp.exp(-0.5 * jnp.sum((positions - jnp.array(c)) ** 2, -1) / s ** 2)
               for c, s in (((0.045, -0.008, 0.08), 0.018), ((-0.045, -0.008, 0.08), 0.018),
                            ((0.0, 0.0, 0.11), 0.01)))
  blush = look.blush_strength * jnp.clip(cheeks + 0.7 * region("ears"), 0.0, 1.0)
  albedo = albedo + blush[..., None] * (look.blush - albedo)

  # Stubble: dark dots on the lower face and under the chin.
  jaw_area = jnp.clip(region("face") + region("neck"), 0.0, 1.0) * _smoothstep(
      -0.025, -0.04, y) * (1.0 - region("lips")) * (z > -0.01)
  stubble = look.beard_density * jaw_area * (fine > 0.6)
  albedo = albedo + (0.7 * stubble)[..., None] * (look.hair * 0.7 - albedo)

  # Brows: bands along the brow landmarks, with strands.
  brow_distance = jnp.minimum(_polyline_distance(positions, landmark_points[BROW_LEFT]),
                              _polyline_distance(positions, landmark_points[BROW_RIGHT]))
  brows = (1.0 - _smoothstep(0.5 * look.brow_thickness, look.brow_thickness, brow_distance)) * (
      0.75 + 0.25 * jnp.clip(strands, -1.0, 1.0)) * (z > 0.04)
  albedo = albedo + brows[..., None] * (jnp.minimum(look.hair, 0.35) * 0.8 - albedo)

  # Lips: inside the outer lip contour, with vertical grain.
  lip_distance = _signed_lip_distance(positions, landmark_points[OUTER_LIPS])
  lips = (1.0 - _smoothstep(-0.0006, 0.0006, lip_distance)) * jnp.clip(
      region("lips") + region("mouth_cavity"), 0.0, 1.0)
  lip_colour = look.lips * (1.0 + 0.05 * jnp.sin(2600.0 * x)[..., None])
  albedo = albedo + lips[..., None] * (lip_colour - albedo)

  # Scalp hair above the hairline (never on the ears, lips, eyes or the lower face).
  azimuth = jnp.arctan2(x, z)
  hair_allowed = 1.0 - jnp.clip(region("ears") + region("lips") + region("left_eyeball")
                                + region("right_eyeball") + region("eye_lining")
                                + region("mouth_cavity"), 0.0, 1.0)
  hair_allowed = hair_allowed * (1.0 - region("face") * (y < 0.045))
  hair = body.hair_weight(azimuth, y, ident.hairstyle) * hair_allowed
  hair_colour = look.hair * (0.72 + 0.28 * jnp.clip(strands, -1.0, 1.0))[..., None]
  albedo = albedo + hair[..., None] * (hair_colour - albedo)

  # Linings of the mouth and eye sockets, then the eyeballs.
  albedo = albedo + region("eye_lining")[..., None] * (
      look.skin * jnp.array([0.55, 0.33, 0.33]) - albedo)
  albedo = albedo + region("mouth_cavity")[..., None] * (1.0 - lips[..., None]) * (
      jnp.array([0.28, 0.07, 0.07]) - albedo)
  eye_colour, eyes = _eye(positions, regions, eye_centres, look)
  albedo = albedo + eyes[..., None] * (eye_colour - albedo)

  # Specular strength: oily T-zone, moist lips and eyes, dull hair and linings.
  t_zone = jnp.clip(region("forehead") + region("nose"), 0.0, 1.0)
  gloss = look.gloss * (1.0 + 0.8 * t_zone)
  gloss = gloss + lips * (0.35 - gloss)
  gloss = gloss + hair * (0.12 + 0.06 * strands - gloss)
  gloss = gloss * (1.0 - jnp.clip(region("eye_lining") + region("mouth_cavity"), 0.0, 0.9))
  gloss = gloss + eyes * (0.9 - gloss)
  return jnp.concatenate([jnp.clip(albedo, 0.0, 1.0), jnp.clip(gloss, 0.0, 1.0)[..., None]], -1)
