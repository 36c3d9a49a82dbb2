"""sheap_jax.geometry.rotation against scipy's Rotation on fresh random inputs, values and
gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rasterizer import quaternion as raster_quaternion
from sheap_jax.geometry import rotation

# Jitted once per test session: eager op-by-op dispatch is what makes small tests slow on CPU.
to_matrix = jax.jit(rotation.axis_angle_to_matrix)
to_quaternion = jax.jit(rotation.axis_angle_to_quaternion)
matrix_to_quaternion = jax.jit(rotation.matrix_to_quaternion)
matrix_to_axis_angle = jax.jit(rotation.matrix_to_axis_angle)
quaternion_to_axis_angle = jax.jit(rotation.quaternion_to_axis_angle)


def _random_axis_angles(seed, n=64):
  """Random rotations with angles spread over [0, pi), plus tiny and zero ones."""
  rng = np.random.default_rng(seed)
  axes = rng.normal(size=(n, 3))
  axes /= np.linalg.norm(axes, axis=1, keepdims=True)
  angles = rng.uniform(0.0, np.pi - 1e-3, n)
  angles[:4] = [0.0, 1e-7, 3e-4, 2e-3]  # zero, and both sides of the series switch
  return (axes * angles[:, None]).astype(np.float32)


def _wxyz(r: Rotation):
  q = r.as_quat()  # scipy: (x, y, z, w)
  q = np.concatenate([q[:, 3:], q[:, :3]], axis=1)
  return np.where(q[:, :1] < 0, -q, q)


@pytest.mark.parametrize("seed", [0, 1])
def test_axis_angle_conversions_match_scipy(seed):
  aa = _random_axis_angles(seed)
  ref = Rotation.from_rotvec(aa.astype(np.float64))
  np.testing.assert_allclose(to_matrix(jnp.asarray(aa)), ref.as_matrix(),
                             atol=1e-6)
  np.testing.assert_allclose(to_quaternion(jnp.asarray(aa)), _wxyz(ref),
                             atol=1e-6)


@pytest.mark.parametrize("seed", [2, 3])
def test_matrix_and_quaternion_to_axis_angle_match_scipy(seed):
  aa = _random_axis_angles(seed)
  ref = Rotation.from_rotvec(aa.astype(np.float64))
  matrices = jnp.asarray(ref.as_matrix(), jnp.float32)
  q = matrix_to_quaternion(matrices)
  np.testing.assert_allclose(q, _wxyz(ref), atol=2e-6)
  np.testing.assert_allclose(matrix_to_axis_angle(matrices), aa, atol=2e-5)
  # Any length, either sign: same rotation.
  scaled = -3.0 * jnp.asarray(_wxyz(ref), jnp.float32)
  np.testing.assert_allclose(quaternion_to_axis_angle(scaled), aa, atol=2e-5)


def test_half_turns_round_trip():
  """Angle pi, where the trace-based formula is singular and q's sign is ambiguous."""
  rng = np.random.default_rng(4)
  axes = rng.normal(size=(16, 3))
  axes /= np.linalg.norm(axes, axis=1, keepdims=True)
  matrices = Rotation.from_rotvec(axes * np.pi).as_matrix()
  q = matrix_to_quaternion(jnp.asarray(matrices, jnp.float32))
  np.testing.assert_allclose(rotation.quaternion_to_matrix(q), matrices, atol=1e-6)
  aa = matrix_to_axis_angle(jnp.asarray(matrices, jnp.float32))
  np.testing.assert_allclose(np.linalg.norm(aa, axis=1), np.pi, atol=1e-5)
  np.testing.assert_allclose(to_matrix(aa), matrices, atol=1e-5)


def test_gradients_are_finite_and_correct_at_zero():
  # d/d(aa) of R(aa) at 0 is the skew generator: dR/d(aa_i) = skew(e_i).
  jac = jax.jit(jax.jacfwd(rotation.axis_angle_to_matrix))(jnp.zeros(3))
  skews = np.array([[[0, 0, 0], [0, 0, -1], [0, 1, 0]], [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
                    [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], np.float32)
  np.testing.assert_allclose(jnp.moveaxis(jac, -1, 0), skews, atol=1e-7)
  jac_rev = jax.jit(jax.jacrev(rotation.axis_angle_to_matrix))(jnp.zeros(3))
  np.testing.assert_allclose(jac_rev, jac, atol=1e-7)
  # Back from matrices and quaternions: the identity maps to zero with identity-like Jacobians.
  jq = jax.jit(jax.jacrev(rotation.quaternion_to_axis_angle))(jnp.array([1.0, 0.0, 0.0, 0.0]))
  np.testing.assert_allclose(jq, np.concatenate([np.zeros((3, 1)), 2 * np.eye(3)], 1), atol=1e-6)
  loss = lambda aa: jnp.sum(rotation.matrix_to_axis_angle(rotation.axis_angle_to_matrix(aa)) ** 2)
  grad = jax.jit(jax.grad(loss))
  for aa in [jnp.zeros(3), jnp.array([0.0, 1e-6, 0.0]), jnp.array([0.3, -0.2, 0.5])]:
    g = grad(aa)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, 2 * aa, atol=1e-5)


def test_gradient_matches_finite_differences():
  """JAX's gradient against central differences of scipy's float64 rotation."""
  rng = np.random.default_rng(5)
  aa = rng.normal(size=(8, 3)) * 0.7
  weights = rng.normal(size=(8, 3, 3))
  direction = rng.normal(size=(8, 3))
  reference_loss = lambda a: np.sum(weights * Rotation.from_rotvec(a).as_matrix())
  eps = 1e-5
  numeric = (reference_loss(aa + eps * direction)
             - reference_loss(aa - eps * direction)) / (2 * eps)
  loss = lambda a: jnp.sum(jnp.asarray(weights, jnp.float32) * rotation.axis_angle_to_matrix(a))
  grad = jax.jit(jax.grad(loss))(jnp.asarray(aa, jnp.float32))
  np.testing.assert_allclose(np.sum(np.asarray(grad) * direction), numeric, rtol=1e-5, atol=1e-5)


def test_quaternion_functions_are_the_rasterizers():
  assert rotation.quaternion_to_matrix is raster_quaternion.quaternion_to_matrix
  assert rotation.normalize_quaternion is raster_quaternion.normalize_quaternion
