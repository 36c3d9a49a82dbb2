"""The dense reference against the NumPy transcription of the official loop, closed forms,
the official edge cases, and float64 finite differences."""
import dataclasses
import os
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import rasterizer
import test_rasterizer_oracle as oracle

OUTPUTS = ("color", "alpha", "depth", "median_depth", "normals", "distortion")
render_jit = jax.jit(rasterizer.rasterize, static_argnums=(3, 4),
                     static_argnames=("impl", "capacity", "pixels_per_chunk", "chunk_size",
                                      "tile_size"))


def render(scene, viewmats, Ks, width, height, background, impl="reference", **options):
  """rasterize on numpy inputs; numpy outputs as a dict."""
  splats = rasterizer.Splats(**{k: jnp.asarray(v) for k, v in scene.items()})
  out = render_jit(splats, jnp.asarray(viewmats, jnp.float32), jnp.asarray(Ks, jnp.float32),
                   width, height, jnp.asarray(background, jnp.float32), impl=impl, **options)
  return {f.name: np.asarray(getattr(out, f.name)) for f in dataclasses.fields(out)}


def mismatched_pixels(got, want, atol):
  """(H, W) mask of pixels where any output differs by more than atol."""
  bad = np.zeros(want["alpha"].shape, bool)
  for name in OUTPUTS:
    err = np.abs(got[name] - want[name])
    bad |= (err > atol).reshape(bad.shape + (-1,)).any(-1)
  return bad


@pytest.mark.parametrize("impl,options", [
    ("reference", dict(pixels_per_chunk=97)), ("tiled", dict(chunk_size=8)), ("pallas", {}),
    ("tiled", dict(chunk_size=8, tile_size=8)), ("pallas", dict(tile_size=8))])
def test_matches_official_loop_on_random_scenes(impl, options, rng):
  """In float64, so that only threshold decisions (never rounding) can differ: in float32 the
  ray-splat intersection of grazing, filter-dominated pixels is ill-conditioned. Pallas runs
  its kernels in float64 here (interpret mode), as the dtype check and the tolerance need."""
  width, height = 40, 33
  K = oracle.pinhole(width, height, 45.0).astype(np.float64)
  background = np.array([0.2, 0.4, 0.6])
  scene = {k: v.astype(np.float64) for k, v in oracle.random_scene(rng, 80).items()}
  with jax.enable_x64(True):
    splats = rasterizer.Splats(**{k: jnp.asarray(v) for k, v in scene.items()})
    out = render_jit(splats, jnp.eye(4, dtype=jnp.float64)[None], jnp.asarray(K)[None], width,
                     height, jnp.asarray(background), impl=impl, **options)
    got = {name: np.asarray(getattr(out, name))[0] for name in OUTPUTS}
  assert all(value.dtype == np.float64 for value in got.values())
  want, margin = oracle.render(**scene, viewmat=np.eye(4), K=K, width=width, height=height,
                               background=background)
  bad = mismatched_pixels(got, want, atol=1e-9)
  assert bad.mean() <= 1e-3, bad.mean()
  assert np.all(margin[bad] < 1e-9), margin[bad]  # those sit exactly on a threshold


def _filter_centre_renders(size, num_splats):
  """bench/scenes.py's head, rendered by the rasterizer (reference, float64) and by the
  official loop with either filter centre."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from bench import scenes  # pylint: disable=g-import-not-at-top
  head = scenes.head_scene(num_splats)
  scene = {f.name: np.asarray(getattr(head, f.name), np.float64)
           for f in dataclasses.fields(head)}
  _, K = scenes.camera(size, size)
  K = np.asarray(K, np.float64)
  with jax.enable_x64(True):
    splats = rasterizer.Splats(**{k: jnp.asarray(v) for k, v in scene.items()})
    out = render_jit(splats, jnp.eye(4, dtype=jnp.float64)[None], jnp.asarray(K)[None], size,
                     size, jnp.zeros(3, jnp.float64), impl="reference")
    got = {name: np.asarray(getattr(out, name))[0] for name in OUTPUTS}
  args = dict(**scene, viewmat=np.eye(4), K=K, width=size, height=size, background=np.zeros(3))
  return (got, *oracle.render(**args, filter_centre="projected"),
          oracle.render(**args, filter_centre="official")[0])


def test_filter_centre_is_the_projected_centre_and_the_official_rule_differs_as_measured():
  """The low-pass filter is centred on the splat centre's projection; the official code centres
  it on its 3-sigma ellipse's box (oracle.official_filter_centres). A fixed scene, on purpose:
  the difference is pinned as measured (docs/rasterizer.md, bench/filter_centre.py), on the
  64^2, 2,000-splat head, where the centres move by 0.019 px on average and 0.056 px at most."""
  got, today, margin, official = _filter_centre_renders(64, 2000)
  bad = mismatched_pixels(got, today, atol=1e-9)
  assert np.all(margin[bad] < 1e-9), margin[bad]  # the rasterizer draws the projected rule
  changed = np.zeros(got["alpha"].shape)
  measured = dict(color=(1.1741e-2, 3.9357e-4), alpha=(8.6773e-3, 1.8529e-4),
                  depth=(1.7324e-2, 1.0709e-4))
  for name, (max_abs, mean_abs) in measured.items():
    diff = np.abs(official[name] - today[name])
    np.testing.assert_allclose([diff.max(), diff.mean()], [max_abs, mean_abs], rtol=1e-3,
                               err_msg=name)
    changed = np.maximum(changed, diff.reshape(changed.shape + (-1,)).max(-1))
  assert (today["alpha"] > 0).sum() == 2225
  assert abs((changed > 1e-4).sum() - 1671) <= 2 and (changed > 1e-2).sum() == 5


def _single_splat_cases():
  """One splat per image: name -> (mean, quat, scales, opacity). All render at 32 x 32."""
  edge_on = [0.5, 0.5, 0.5, 0.5]  # axes (y, z, x) exactly: the normal is x, across the ray
  return {
      "face_on": ([0, 0, 2.0], [1, 0, 0, 0], [0.25, 0.15], 0.8),
      "whole_image": ([0.05, -0.03, 1.5], [0.9, 0.1, -0.2, 0.05], [3.0, 2.0], 0.6),
      "behind_camera": ([0, 0, 0.15], [1, 0, 0, 0], [0.3, 0.3], 0.9),  # centre z <= near
      "edge_on": ([0, 0, 2.0], edge_on, [0.3, 0.3], 0.9),
      "zero_opacity": ([0, 0, 2.0], [1, 0, 0, 0], [0.3, 0.3], 0.0),
  }


def render_single_splat_cases(impl):
  cases = _single_splat_cases()
  size, focal = 32, 40.0
  f32 = lambda a: np.asarray(a, np.float32)
  scene = dict(means=f32([[c[0]] for c in cases.values()]),
               quats=f32([[c[1]] for c in cases.values()]),
               scales=f32([[c[2]] for c in cases.values()]),
               opacities=f32([[c[3]] for c in cases.values()]),
               features=np.tile(f32([[[1.0, 0.5, 0.25]]]), (len(cases), 1, 1)))
  background = f32([0.3, 0.6, 0.9])
  K = oracle.pinhole(size, size, focal)
  got = render(scene, np.tile(np.eye(4), (len(cases), 1, 1)), np.tile(K, (len(cases), 1, 1)),
               size, size, background, impl=impl)
  per_case = {name: {k: v[i] for k, v in got.items()} for i, name in enumerate(cases)}
  return per_case, {name: {k: v[i] for k, v in scene.items()} for name in cases
                    for i in [list(cases).index(name)]}, K, background


def check_single_splat_cases(impl):
  """Closed form for the face-on disc; official results for the rest."""
  got, scenes, K, background = render_single_splat_cases(impl)
  size, focal = 32, float(K[0, 0])
  mean, _, (sigma_u, sigma_v), opacity = _single_splat_cases()["face_on"]
  ys, xs = np.mgrid[:size, :size]
  dx, dy = xs - (size - 1) / 2, ys - (size - 1) / 2
  rho3d = (dx * mean[2] / focal / sigma_u) ** 2 + (dy * mean[2] / focal / sigma_v) ** 2
  alpha = np.minimum(0.99, opacity * np.exp(-0.5 * np.minimum(rho3d, 2 * (dx**2 + dy**2))))
  alpha[alpha < 1 / 255] = 0
  face_on = got["face_on"]
  np.testing.assert_allclose(face_on["alpha"], alpha, atol=1e-6)
  np.testing.assert_allclose(face_on["color"],
                             alpha[..., None] * [1.0, 0.5, 0.25] + (1 - alpha[..., None])
                             * background, atol=1e-6)
  np.testing.assert_allclose(face_on["depth"][alpha > 0], mean[2], rtol=2e-5)
  np.testing.assert_allclose(face_on["median_depth"], np.where(alpha > 0, mean[2], 0), rtol=2e-5)
  np.testing.assert_allclose(face_on["normals"], alpha[..., None] * [0, 0, -1], atol=1e-6)
  np.testing.assert_allclose(face_on["distortion"], 0, atol=1e-7)  # one surface: no spread

  whole = got["whole_image"]
  want, _ = oracle.render(**scenes["whole_image"], viewmat=np.eye(4), K=K, width=size,
                          height=size, background=background)
  assert np.all(want["alpha"] > 0.3)  # the splat covers every pixel
  for name in OUTPUTS:
    np.testing.assert_allclose(whole[name], want[name], atol=2e-6, err_msg=name)

  for name in ("behind_camera", "edge_on", "zero_opacity"):
    np.testing.assert_array_equal(got[name]["color"], np.broadcast_to(background, (size, size, 3)))
    for output in ("alpha", "depth", "median_depth", "normals", "distortion"):
      np.testing.assert_array_equal(got[name][output], 0, err_msg=f"{name} {output}")
    assert got[name]["splats_culled"] == 1, name
    assert got[name]["pairs_needed"] == 0, name  # a culled splat asks for no tile
  assert got["face_on"]["splats_culled"] == got["whole_image"]["splats_culled"] == 0
  assert got["whole_image"]["pairs_needed"] == (size // 16) ** 2  # every tile


def check_empty_scene(impl):
  scene = dict(means=np.zeros((0, 3)), quats=np.zeros((0, 4)), scales=np.zeros((0, 2)),
               opacities=np.zeros((0,)), features=np.zeros((0, 3)))
  scene = {k: v.astype(np.float32) for k, v in scene.items()}
  background = np.array([0.3, 0.6, 0.9], np.float32)
  got = render(scene, np.eye(4)[None], oracle.pinhole(20, 18, 20.0)[None], 20, 18, background,
               impl=impl)
  np.testing.assert_array_equal(got["color"][0], np.broadcast_to(background, (18, 20, 3)))
  for output in ("alpha", "depth", "median_depth", "normals", "distortion", "splats_culled",
                 "pairs_dropped", "pairs_needed"):
    np.testing.assert_array_equal(got[output], 0, err_msg=output)


@pytest.mark.parametrize("impl", ["reference", "tiled", "pallas"])
def test_single_splat_cases_behave_as_the_official_rasteriser(impl):
  check_single_splat_cases(impl)


@pytest.mark.parametrize("impl", ["reference", "tiled", "pallas"])
def test_empty_scene_renders_the_background(impl):
  check_empty_scene(impl)


def _well_conditioned_scene(rng, width, height, K, viewmat, stopping):
  """Three large splats at well separated depths, every decision far from its threshold, and
  no filter-dominated pixel (whose depth gradient holds s fixed, as the official backward does:
  tested on its own below), so the gradient is the exact derivative. `stopping`: nearly opaque
  splats (below the 0.99 alpha cap) stacked near the centre, so that pixels stop early (at
  least 2; about 1% of such draws qualify, 1.4% of the translucent ones)."""
  offset, opacities = ((0.05, (0.95, 0.98)) if stopping else (0.2, (0.2, 0.9)))
  for _ in range(4000):
    scene = dict(
        means=rng.uniform(-offset, offset, (3, 3)) * [1, 1, 0]
        + [[0, 0, 1.5], [0, 0, 2.2], [0, 0, 3]],
        quats=rng.normal(size=(3, 4)) * [0.3, 1, 1, 1] + [2, 0, 0, 0],
        scales=rng.uniform(0.6, 1.2, (3, 2)),
        opacities=rng.uniform(*opacities, 3),
        features=rng.uniform(0, 1, (3, 2)),
    )
    buffers, margin = oracle.render(**scene, viewmat=viewmat, K=K, width=width,
                                    height=height, background=np.zeros(2))
    stops = buffers["stopped"].sum()
    if (margin.min() > 0.05 and not buffers["filtered"].any()
        and (stops >= 2 if stopping else stops == 0)):
      return scene
  raise AssertionError("no well-conditioned scene found")


@pytest.mark.parametrize("stopping", [False, True], ids=["translucent", "stopping_early"])
def test_reference_gradients_match_finite_differences_in_float64(stopping, rng):
  width, height = 10, 9
  K = oracle.pinhole(width, height, 12.0).astype(np.float64)
  rotation = oracle.quat_to_rotmat(np.array([1.0, *rng.normal(0, 0.05, 3)]))
  viewmat = np.block([[rotation, rng.normal(0, 0.02, (3, 1))], [np.zeros((1, 3)), 1]])
  scene = _well_conditioned_scene(rng, width, height, K, viewmat, stopping)
  weights = {name: rng.normal(size=(1, height, width) + {"normals": (3,), "color": (2,)}.get(
      name, ())) for name in OUTPUTS}
  background = np.array([0.3, 0.7])
  with jax.enable_x64(True):
    @jax.jit
    def loss(params):
      splats = rasterizer.Splats(**{k: params[k] for k in scene})
      out = rasterizer.rasterize(splats, params["viewmat"][None], jnp.asarray(K)[None], width,
                                 height, params["background"], impl="reference")
      return sum(jnp.sum(getattr(out, name) * weights[name]) for name in OUTPUTS)

    params = {k: jnp.asarray(v, jnp.float64)
              for k, v in {**scene, "viewmat": viewmat, "background": background}.items()}
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    flat_loss = jax.jit(lambda v: loss(unravel(v)))
    eps = 1e-6
    steps = eps * np.eye(flat.size)
    values = np.asarray(jax.jit(jax.vmap(flat_loss))(jnp.concatenate([flat + steps, flat - steps])))
    numeric = unravel(jnp.asarray((values[:flat.size] - values[flat.size:]) / (2 * eps)))
    analytic = jax.grad(loss)(params)
    for name in params:
      want, got = np.asarray(numeric[name]), np.asarray(analytic[name])
      if name == "viewmat":  # the last row is not a camera parameter
        want, got = want[:3], got[:3]
      assert np.abs(want).max() > 1e-3, name  # the input matters to the loss
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(),
                                 err_msg=name)


def _intersection_depth(tu, tv, tw, x, y):
  """NumPy float64: the ray-splat intersection s and its depth at pixel (x, y)."""
  k, l = x * tw - tu, y * tw - tv
  p = np.cross(k, l)
  s = p[:2] / p[2]
  return s, s @ tw[:2] + tw[2]


def test_depth_gradient_holds_s_fixed_where_the_low_pass_filter_wins(rng):
  """Official backward: an unfiltered pixel's depth is differentiated through s (checked by
  central differences); a filtered one's only through T_w, d depth / d T_w = (s_x, s_y, 1)."""
  from rasterizer import splat_math, types  # pylint: disable=import-outside-toplevel
  checked = {True: 0, False: 0}
  with jax.enable_x64(True):
    def depth(tu, tv, tw, mean, x, y):
      return splat_math.splat_alpha_depth(tuple(tu), tuple(tv), tuple(tw), mean[0], mean[1],
                                          0.9, x, y)[1]
    depth_grad = jax.jit(jax.grad(depth, argnums=(0, 1, 2)))
    while min(checked.values()) < 5:
      tw = np.array([*rng.normal(0, 0.3, 2), rng.uniform(1.5, 3.0)])
      tu = np.array([*rng.normal(0, 4.0, 2), 0.0]) + 5.0 * tw  # pixel = (T_u . h) / (T_w . h)
      tv = np.array([*rng.normal(0, 4.0, 2), 0.0]) + 4.0 * tw
      tu[rng.integers(2)] *= rng.choice([1.0, 0.05])  # sometimes nearly edge-on: filtered
      mean = np.array([tu[2] / tw[2], tv[2] / tw[2]])
      x, y = mean + rng.normal(0, 0.8, 2)
      s, want_depth = _intersection_depth(tu, tv, tw, x, y)
      rho3d = s @ s
      rho2d = types.FILTER_INV_SQUARE * np.sum((mean - [x, y]) ** 2)
      alpha = 0.9 * np.exp(-0.5 * min(rho3d, rho2d))
      if abs(rho3d - rho2d) < 0.1 * max(rho3d, rho2d) or alpha < 0.05 or want_depth < 0.5:
        continue  # keep a margin from the switch, the alpha cut-off and the near plane
      filtered = bool(rho2d < rho3d)
      got = [np.asarray(g) for g in depth_grad(tu, tv, tw, mean, x, y)]
      if filtered:
        want = [np.zeros(3), np.zeros(3), np.array([s[0], s[1], 1.0])]
      else:
        want = []
        for row in range(3):
          rows = [tu, tv, tw]
          column = np.zeros(3)
          for i in range(3):
            step = np.zeros(3)
            step[i] = 1e-6
            plus = [r + step if j == row else r for j, r in enumerate(rows)]
            minus = [r - step if j == row else r for j, r in enumerate(rows)]
            column[i] = (_intersection_depth(*plus, x, y)[1]
                         - _intersection_depth(*minus, x, y)[1]) / 2e-6
          want.append(column)
      for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7 * (1 + np.abs(w).max()))
      checked[filtered] += 1
