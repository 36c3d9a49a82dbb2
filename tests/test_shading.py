"""SH irradiance against quadrature of the clamped-cosine integral over the sphere."""
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import eval_legendre, factorial, lpmv

from sheap_jax.geometry import shading

_BANDS = [(0, 0), (1, -1), (1, 0), (1, 1), (2, -2), (2, -1), (2, 0), (2, 1), (2, 2)]


def _real_sh_scipy(directions):
  """(N, 3) -> (N, 9) real SH from SciPy's associated Legendre functions (Condon-Shortley)."""
  cos_polar = np.clip(directions[:, 2], -1.0, 1.0)
  azimuth = np.arctan2(directions[:, 1], directions[:, 0])
  columns = []
  for l, m in _BANDS:
    k = abs(m)
    norm = np.sqrt((2 * l + 1) / (4 * np.pi) * factorial(l - k) / factorial(l + k))
    legendre = norm * lpmv(k, l, cos_polar)
    if m > 0:
      columns.append(np.sqrt(2.0) * (-1) ** k * legendre * np.cos(k * azimuth))
    elif m < 0:
      columns.append(np.sqrt(2.0) * (-1) ** k * legendre * np.sin(k * azimuth))
    else:
      columns.append(legendre)
  return np.stack(columns, axis=-1)


def _irradiance_by_quadrature(normal, coeffs, num_polar=24, num_azimuth=48):
  """Integral of L(w) max(n.w, 0) dw over the hemisphere around n (Gauss-Legendre x uniform)."""
  helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
  tangent = np.cross(normal, helper)
  tangent /= np.linalg.norm(tangent)
  bitangent = np.cross(normal, tangent)
  cos_nodes, cos_weights = np.polynomial.legendre.leggauss(num_polar)
  cos_theta = 0.5 * (cos_nodes + 1.0)  # map [-1, 1] -> [0, 1]
  cos_weights = 0.5 * cos_weights
  phi = np.arange(num_azimuth) * 2.0 * np.pi / num_azimuth
  ct, ph = np.meshgrid(cos_theta, phi, indexing="ij")
  st = np.sqrt(1.0 - ct ** 2)
  w = (st * np.cos(ph))[..., None] * tangent + (st * np.sin(ph))[..., None] * bitangent \
      + ct[..., None] * normal
  radiance = _real_sh_scipy(w.reshape(-1, 3)) @ coeffs  # (P, C)
  weights = (cos_weights[:, None] * ct * (2.0 * np.pi / num_azimuth)).reshape(-1)
  return weights @ radiance


def test_irradiance_matches_quadrature_of_clamped_cosine():
  rng = np.random.default_rng(0)
  coeffs = rng.normal(size=(9, 3))
  coeffs[0] += 3.0  # mostly positive radiance, like real lighting
  normals = rng.normal(size=(6, 3))
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  got = np.asarray(shading.sh_irradiance(jnp.asarray(normals, jnp.float32),
                                         jnp.asarray(coeffs, jnp.float32)))
  want = np.stack([_irradiance_by_quadrature(n, coeffs) for n in normals])
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_basis_matches_real_harmonics_from_scipy_legendre():
  rng = np.random.default_rng(1)
  directions = rng.normal(size=(20, 3))
  directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
  np.testing.assert_allclose(shading.sh_basis(jnp.asarray(directions, jnp.float32)),
                             _real_sh_scipy(directions), atol=1e-5)


def test_ambient_light_returns_albedo_times_ambient():
  rng = np.random.default_rng(2)
  normals = rng.normal(size=(10, 3))
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  albedo = rng.uniform(size=(10, 3))
  ambient = np.array([0.2, 0.5, 0.9])
  coeffs = shading.ambient_directional_sh(ambient, 0.0, [0.0, 0.0, 1.0])
  got = shading.shade(jnp.asarray(albedo, jnp.float32), jnp.asarray(normals, jnp.float32), coeffs)
  np.testing.assert_allclose(got, albedo * ambient, rtol=1e-5)


def test_directional_light_is_band_limited_clamped_cosine():
  rng = np.random.default_rng(3)
  direction = rng.normal(size=3)
  direction /= np.linalg.norm(direction)
  normals = rng.normal(size=(200, 3))
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  intensity = 0.8
  coeffs = shading.ambient_directional_sh(0.0, intensity, direction * 3.0)  # any length
  got = np.asarray(shading.shade(jnp.ones((200, 1)), jnp.asarray(normals, jnp.float32),
                                 coeffs))[:, 0]
  # Addition theorem: sum_m Y_lm(d) Y_lm(n) = (2l + 1) / (4 pi) P_l(n.d).
  t = normals @ direction
  bands = np.array([np.pi, 2 * np.pi / 3, np.pi / 4])
  want = intensity * sum(bands[l] * (2 * l + 1) / (4 * np.pi) * eval_legendre(l, t)
                         for l in range(3))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The order-2 clamped cosine stays within 0.1 of max(n.d, 0) (Ramamoorthi & Hanrahan).
  assert np.max(np.abs(got - intensity * np.maximum(t, 0.0))) < 0.1 * intensity


def test_bad_coefficient_shape_raises():
  with pytest.raises(ValueError, match="shading.py: sh_coeffs must be"):
    shading.sh_irradiance(jnp.zeros((4, 3)), jnp.zeros((4, 9, 3)))
