"""Second-order spherical-harmonics lighting of Lambertian albedo (Ramamoorthi & Hanrahan 2001).

The environment's radiance is L(w) = sum_i L_i Y_i(w) over the 9 real SH functions of bands
0..2, in the order (l, m) = (0, 0), (1, -1), (1, 0), (1, 1), (2, -2), (2, -1), (2, 0), (2, 1),
(2, 2), with Y_1,-1 ~ y, Y_1,0 ~ z, Y_1,1 ~ x. The irradiance a surface with unit normal n
receives, E(n) = integral of L(w) max(n.w, 0) dw, is then exactly sum_i A_l(i) L_i Y_i(n) with the
clamped-cosine constants A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4. A Lambertian surface reflects
albedo * E / pi, so an environment of constant radiance 1 leaves the albedo unchanged.

Directions (normals, light directions) may be in any frame, as long as the coefficients and
normals share it; the renderers use the OpenCV camera frame (x right, y down, z forward).
"""
import jax
import jax.numpy as jnp
import numpy as np

NUM_SH_COEFFS = 9

# Normalisation constants of the real SH basis, bands 0..2.
_Y0 = 0.5 * np.sqrt(1.0 / np.pi)
_Y1 = np.sqrt(3.0 / (4.0 * np.pi))
_Y2 = 0.5 * np.sqrt(15.0 / np.pi)
_Y20 = 0.25 * np.sqrt(5.0 / np.pi)
_Y22 = 0.25 * np.sqrt(15.0 / np.pi)

# Clamped-cosine convolution constant A_l for each of the 9 coefficients.
CLAMPED_COSINE_BANDS = np.array(
    [np.pi] + [2.0 * np.pi / 3.0] * 3 + [np.pi / 4.0] * 5, np.float32)


def sh_basis(directions: jnp.ndarray) -> jnp.ndarray:
  """(..., 3) unit directions -> (..., 9) real SH values Y_i(w), bands 0..2."""
  x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
  return jnp.stack([
      jnp.full_like(x, _Y0),
      _Y1 * y, _Y1 * z, _Y1 * x,
      _Y2 * x * y, _Y2 * y * z, _Y20 * (3.0 * z * z - 1.0), _Y2 * x * z, _Y22 * (x * x - y * y),
  ], axis=-1)


def _check_coeffs(sh_coeffs: jnp.ndarray) -> None:
  if sh_coeffs.ndim != 2 or sh_coeffs.shape[0] != NUM_SH_COEFFS:
    raise ValueError("sheap_jax/geometry/shading.py: "
                     "sh_coeffs must be (9, C) radiance coefficients, got "
                     f"{tuple(sh_coeffs.shape)} (vmap over a batch of lights)")


def sh_irradiance(normals: jnp.ndarray, sh_coeffs: jnp.ndarray) -> jnp.ndarray:
  """Irradiance E(n) (..., C) at unit normals (..., 3) under radiance coefficients (9, C)."""
  _check_coeffs(sh_coeffs)
  return jnp.matmul(sh_basis(normals), CLAMPED_COSINE_BANDS[:, None] * sh_coeffs,
                    precision=jax.lax.Precision.HIGHEST)


def shade(albedo: jnp.ndarray, normals: jnp.ndarray, sh_coeffs: jnp.ndarray) -> jnp.ndarray:
  """Lambertian radiance albedo * E(n) / pi: albedo (..., C), normals (..., 3), coeffs (9, C)."""
  return albedo * sh_irradiance(normals, sh_coeffs) / np.pi


def ambient_directional_sh(ambient, intensity, direction) -> jnp.ndarray:
  """(9, C) coefficients of uniform `ambient` radiance plus one distant light.

  `shade` under them gives albedo * (ambient + intensity * max(n.d, 0)), with the clamped
  cosine replaced by its band-limited (order 2) approximation, for the unit direction d towards
  the light. `ambient` and `intensity` are scalars or (C,) colours; `direction` is (3,).
  """
  direction = jnp.asarray(direction, jnp.float32)
  direction = direction / jnp.linalg.norm(direction)
  ambient = jnp.atleast_1d(jnp.asarray(ambient, jnp.float32))
  intensity = jnp.atleast_1d(jnp.asarray(intensity, jnp.float32))
  # Constant radiance a projects onto Y_0 as a * 4 pi * Y_0; a delta of power pi * I towards d
  # has coefficients pi * I * Y_i(d), so its irradiance is ~ pi * I * max(n.d, 0).
  ambient_part = jnp.zeros((NUM_SH_COEFFS, 1)).at[0, 0].set(4.0 * np.pi * _Y0) * ambient
  light_part = np.pi * sh_basis(direction)[:, None] * intensity
  return ambient_part + light_part
