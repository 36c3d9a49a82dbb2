"""The public entry point: batching conventions and input validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures import jaxprs
import rasterizer
import test_rasterizer_oracle as oracle

WIDTH, HEIGHT = 20, 16


def _splats(rng, num_splats, batch=()):
  scene = oracle.random_scene(rng, num_splats * int(np.prod(batch, dtype=int)))
  return rasterizer.Splats(**{k: jnp.asarray(v.reshape(batch + (num_splats,) + v.shape[1:]))
                              for k, v in scene.items()})


def _two_cameras():
  """(viewmats (2, 4, 4), Ks (2, 3, 3)): the identity and a camera moved 0.1 along x."""
  viewmats = jnp.stack([jnp.eye(4), jnp.eye(4).at[0, 3].set(0.1)])
  return viewmats, jnp.asarray(np.stack([oracle.pinhole(WIDTH, HEIGHT, 20.0)] * 2))


@pytest.mark.parametrize("impl", ["reference", "tiled", "pallas"])
def test_batched_rasterize_equals_one_image_at_a_time(impl, rng):
  shared = _splats(rng, 12)
  per_image = _splats(rng, 12, batch=(2,))
  viewmats, Ks = _two_cameras()
  background = jnp.asarray(rng.uniform(0, 1, (2, 3)), jnp.float32)
  render = jax.jit(rasterizer.rasterize, static_argnums=(3, 4), static_argnames="impl")
  one = jax.jit(rasterizer.rasterize_image, static_argnums=(3, 4), static_argnames="impl")
  for splats, pick in ((shared, lambda s, b: s), (per_image, lambda s, b: jax.tree.map(
      lambda a: a[b], s))):
    batched = render(splats, viewmats, Ks, WIDTH, HEIGHT, background, impl=impl)
    for b in range(2):
      single = one(pick(splats, b), viewmats[b], Ks[b], WIDTH, HEIGHT, background[b],
                   impl=impl)
      for name in ("color", "alpha", "depth", "median_depth", "normals", "distortion"):
        np.testing.assert_allclose(getattr(batched, name)[b], getattr(single, name), atol=1e-6)


@pytest.mark.parametrize("impl", rasterizer.IMPLEMENTATIONS)
def test_float32_inputs_render_the_same_under_jax_enable_x64(impl, rng):
  """x64 changes only the default types: float32 inputs keep float32 outputs and gradients
  (float64 inputs: test_rasterizer_reference.py). Pallas once failed here (int64 tile index)."""
  splats = _splats(rng, 12)
  viewmats, Ks = _two_cameras()
  background = jnp.asarray(rng.uniform(0, 1, 3), jnp.float32)

  def render(splats):
    out = rasterizer.rasterize(splats, viewmats, Ks, WIDTH, HEIGHT, background, impl=impl)
    return jnp.sum(out.color) + jnp.sum(out.depth) + jnp.sum(out.distortion), out

  plain = jax.jit(jax.grad(render, has_aux=True))(splats)
  with jax.enable_x64(True):
    wide = jax.jit(jax.grad(render, has_aux=True))(splats)
  for got, want in zip(jax.tree.leaves(wide), jax.tree.leaves(plain)):
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_background_of_shape_c_is_shared_by_every_image(rng):
  """(Broadcasting happens before any impl runs: the reference stands for all.)"""
  splats = _splats(rng, 12)
  viewmats, Ks = _two_cameras()
  background = jnp.asarray(rng.uniform(0, 1, 3), jnp.float32)
  render = jax.jit(rasterizer.rasterize, static_argnums=(3, 4), static_argnames="impl")
  shared = render(splats, viewmats, Ks, WIDTH, HEIGHT, background, impl="reference")
  stacked = render(splats, viewmats, Ks, WIDTH, HEIGHT, jnp.stack([background] * 2),
                   impl="reference")
  np.testing.assert_array_equal(shared.color, stacked.color)


@pytest.mark.parametrize("change, message", [
    (dict(impl="cuda"), "impl must be one of"),
    (dict(viewmats=jnp.eye(4)), "viewmats must be"),
    (dict(Ks=jnp.eye(3)[None]), "Ks must be"),
    (dict(background=jnp.zeros(4)), "background must be"),
    (dict(splats="quats"), "splats.quats must be"),
    (dict(splats="batch"), "3 splat sets for 2 cameras"),
    (dict(tile_size=12), "tile_size must be a power of two"),
])
def test_bad_input_is_named(change, message):
  rng = np.random.default_rng(0)
  args = dict(splats=_splats(rng, 4), viewmats=jnp.stack([jnp.eye(4)] * 2),
              Ks=jnp.stack([jnp.eye(3)] * 2), background=jnp.zeros(3), impl="reference")
  if change.get("splats") == "quats":
    change = dict(splats=args["splats"].replace(quats=jnp.zeros((4, 3))))
  elif change.get("splats") == "batch":
    change = dict(splats=_splats(rng, 4, batch=(3,)))
  args.update(change)
  with pytest.raises(ValueError, match=message) as error:
    rasterizer.rasterize(args["splats"], args["viewmats"], args["Ks"], WIDTH, HEIGHT,
                         args["background"], impl=args["impl"],
                         tile_size=args.get("tile_size", 16))
  assert "rasterizer.rasterize" in str(error.value)


@pytest.mark.parametrize("impl", rasterizer.IMPLEMENTATIONS)
def test_every_matmul_asks_for_full_float32(impl):
  # GPUs run float32 matmuls in TF32 (relative error 2^-11) unless told otherwise; that was the
  # 4.9e-4 colour / 3.6e-4 normal difference of the first H200 check (docs/pallas.md).
  rng = np.random.default_rng(0)
  splats = _splats(rng, 6)
  Ks = jnp.asarray(oracle.pinhole(WIDTH, HEIGHT, 20.0))[None]

  def loss(splats, viewmats):
    out = rasterizer.rasterize(splats, viewmats, Ks, WIDTH, HEIGHT, jnp.zeros(3), impl=impl)
    return jnp.sum(out.color) + jnp.sum(out.normals) + jnp.sum(out.depth)

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(splats, jnp.eye(4)[None])
  precisions = [e.params["precision"] for e in jaxprs.equations(jaxpr.jaxpr)
                if e.primitive.name == "dot_general"]
  assert precisions  # the walk reaches the matmuls (projection, colour and normal sums)
  highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
  assert all(p == highest for p in precisions), precisions
