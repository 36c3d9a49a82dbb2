"""`gradient_routing.route_gradients`: one evaluation, each output field's gradient sent to the
argument copy it is routed to, against closed-form derivatives."""
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from sheap_jax.training import gradient_routing


@struct.dataclass
class _Outputs:
  wave: jnp.ndarray
  cube: jnp.ndarray
  count: jnp.ndarray  # an integer output: no cotangent to route


def _fn(x, scale):
  return _Outputs(wave=jnp.sin(x) * scale, cube=x ** 3 * scale,
                  count=jnp.sum(x > 0).astype(jnp.int32))


def test_routed_fields_send_their_gradient_to_the_second_copy(rng):
  x = jnp.asarray(rng.normal(size=5), jnp.float32)
  scale = jnp.float32(rng.uniform(0.5, 2.0))
  a, b = jnp.asarray(rng.normal(size=5), jnp.float32), jnp.asarray(rng.normal(size=5), jnp.float32)

  def loss(primary, secondary):
    out = gradient_routing.route_gradients(_fn, ("cube",), primary, secondary)
    return jnp.sum(a * out.wave) + jnp.sum(b * out.cube)

  value = loss((x, scale), (x, scale))
  np.testing.assert_allclose(value, np.sum(a * np.sin(x) * scale + b * x ** 3 * scale),
                             rtol=1e-6)
  (dx1, dscale1), (dx2, dscale2) = jax.grad(loss, argnums=(0, 1))((x, scale), (x, scale))
  np.testing.assert_allclose(dx1, a * np.cos(x) * scale, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dscale1, np.sum(a * np.sin(x)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dx2, b * 3 * x ** 2 * scale, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dscale2, np.sum(b * x ** 3), rtol=1e-5, atol=1e-6)
  out = jax.jit(lambda p, s: gradient_routing.route_gradients(_fn, ("cube",), p, s))(
      (x, scale), (x, scale))
  assert int(out.count) == int(np.sum(np.asarray(x) > 0))
