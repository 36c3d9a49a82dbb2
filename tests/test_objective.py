"""The SHeaP objective on a tiny FLAME-format model: composition, projection, shading, per-pair
averaging and config-driven loss weights, each against an independent computation; the mesh
renderer switch (render, gradients, skipped terms, UV errors, checkpoints)."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from scipy import spatial

from configs import base
from sheap_jax.geometry import camera as camera_lib
from sheap_jax.training import checkpoints
from sheap_jax.head import flame
from sheap_jax.head import flame_io
from sheap_jax.render import mesh_baseline
from sheap_jax.training import objective
from sheap_jax import predict
from sheap_jax.geometry import shading
from sheap_jax.training import trainer
from sheap_jax.models import dinov2
from tests.fixtures.flame_synthetic import synthetic_flame_assets

SIZE = 32  # predictor input and render size


def small_flame_assets(outward_winding: bool = False) -> dict:
  """The synthetic FLAME-format fixture cut down to the convex hull of its vertices: every
  vertex on a closed surface of ~220 triangles (so a mesh scored against itself has zero
  NoW error), per-vertex arrays restricted to the hull, landmark faces remapped into it, and
  UVs (azimuth, elevation) for the hull's faces.

  `outward_winding` winds every face counter-clockwise seen from outside, as FLAME does; the
  mesh renderer needs it (vertex normals, silhouettes). The Gaussian tests keep scipy's mixed
  winding: with outward winding, the Gaussian objective's `depth` gradient norm grows from 7
  to 4.9e3 and 1 and 4 devices disagree by 5 % (an open issue of the Gaussian path)."""
  assets = synthetic_flame_assets()
  hull = spatial.ConvexHull(assets["v_template"])
  keep = np.sort(hull.vertices)
  new_index = np.full(len(assets["v_template"]), -1)
  new_index[keep] = np.arange(len(keep))
  for key in ("v_template", "shapedirs", "posedirs", "weights"):
    assets[key] = np.asarray(assets[key])[keep]
  assets["eyelids"] = np.asarray(assets["eyelids"])[:, keep]
  regressor = np.asarray(assets["J_regressor"].toarray())[:, keep]
  empty = regressor.sum(1) == 0  # joints regressed from interior vertices only: use them all
  regressor[empty] = 1.0
  assets["J_regressor"] = regressor / regressor.sum(1, keepdims=True)
  faces = new_index[hull.simplices]
  if outward_winding:
    corners = assets["v_template"][faces]
    outward = np.einsum("fi,fi->f", np.cross(corners[:, 1] - corners[:, 0],
                                             corners[:, 2] - corners[:, 0]),
                        corners.mean(1) - assets["v_template"].mean(0))
    faces = np.where((outward < 0)[:, None], faces[:, ::-1], faces)
  assets["f"] = faces.astype(np.uint32)
  direction = assets["v_template"] - assets["v_template"].mean(0)
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  assets["vt"] = np.stack([0.5 + np.arctan2(direction[:, 0], direction[:, 2]) / (2 * np.pi),
                           0.5 + np.arcsin(direction[:, 1]) / np.pi], axis=1)
  assets["ft"] = faces.astype(np.int64)
  del assets["masks"]  # vertex indices of the full fixture
  embedding = dict(assets["landmark_embedding"])
  for key in ("static_lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx"):
    embedding[key] = np.asarray(embedding[key]) % len(faces)
  assets["landmark_embedding"] = embedding
  return assets


def small_flame_model(n_shape: int = 8, n_expression: int = 6) -> flame.FlameModel:
  """`small_flame_assets` as a FLAME model."""
  return flame.FlameModel.from_assets(small_flame_assets(), n_shape, n_expression)


def small_config():
  """The cpu variant shrunk further: 32 px, the dense reference rasteriser, tiny DINOv2."""
  c = base.get_config("cpu")
  c.flame.n_shape, c.flame.n_expression = 8, 6
  c.model.image_size = SIZE
  c.render.size = SIZE
  c.render.impl = "reference"
  c.dinov2.image_size = 28
  c.dinov2.arch.pos_embed_grid = (2, 2)
  c.dinov2.feature_blocks = (0,)
  c.regressor.width = 16
  c.regressor.regions = ()  # the fixture has no masks: Gaussians on every triangle
  return c


def random_batch(rng, batch: int, size: int = SIZE):
  return dict(
      source_image=jnp.asarray(rng.random((batch, size, size, 3)), jnp.float32),
      target_image=jnp.asarray(rng.random((batch, size, size, 3)), jnp.float32),
      target_landmarks=jnp.asarray(rng.random((batch, 68, 2)) * size, jnp.float32),
      target_landmarks_valid=jnp.asarray(rng.random((batch, 68)) > 0.2, jnp.float32))


def perturbed_params(params, rng, scale=0.01):
  """Parameters with every zero-initialised head moved, so pose, shape and light are non-trivial."""
  return jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape).astype(np.float32),
                      params)


def _objective_setup(config, model, params_seed):
  """(config, networks, frozen, perturbed params) of the objective for `model`."""
  networks = objective.build_networks(config)
  with pytest.warns(UserWarning, match="random initialisation"):
    frozen = objective.build_frozen(config, model)
  params = objective.init_params(networks, frozen, config, jax.random.PRNGKey(0))
  return config, networks, frozen, perturbed_params(params, np.random.default_rng(params_seed))


@pytest.fixture(scope="module")
def setup():
  return _objective_setup(small_config(), small_flame_model(), params_seed=1)


def test_reanimation_composes_source_identity_with_target_motion(setup):
  config, networks, frozen, params = setup
  batch = random_batch(np.random.default_rng(2), 1)  # the shapes train.py's previews compile
  out = jax.jit(lambda p, f, s, t: objective.reanimate(networks, p, f, config, s, t))(
      params, frozen, batch["source_image"], batch["target_image"])
  source = networks.predictor.apply({"params": params["predictor"]}, batch["source_image"])
  target = networks.predictor.apply({"params": params["predictor"]}, batch["target_image"])
  assert np.abs(np.asarray(source.shape - target.shape)).max() > 1e-4  # frames differ

  mixed = flame.FlameParams(
      shape=source.shape, expression=target.expression, global_pose=target.global_pose,
      neck_pose=target.neck_pose, jaw_pose=target.jaw_pose, eye_pose=target.eye_pose,
      eyelids=target.eyelids, translation=jnp.zeros((1, 3)))
  expected = flame.flame_forward(frozen.flame, mixed)
  np.testing.assert_allclose(out.vertices, expected.vertices, atol=1e-5)

  # Camera: head at 1 m along FLAME +z moved by the target's translation, OpenCV axes, pinhole.
  flip = np.diag([1.0, -1.0, -1.0])
  points = np.einsum("ij,blj->bli", flip, np.asarray(expected.landmarks68, np.float64)
                     + np.asarray(target.camera_translation)[:, None])
  points[..., 2] += 1.0
  focal = 0.5 * SIZE / np.tan(np.deg2rad(14.2539) / 2)
  pixels = focal * points[..., :2] / points[..., 2:] + (SIZE - 1) / 2
  np.testing.assert_allclose(out.landmarks, pixels, atol=2e-3)

  assert out.render.color.shape == (1, SIZE, SIZE, 3)
  assert float(out.mesh_mask.mean()) > 0.05  # the head is in view
  covered = np.asarray(out.mesh_mask) > 0
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out.mesh_normals)[covered], axis=-1), 1.0,
                             atol=1e-4)
  assert np.all(np.asarray(out.mesh_depth)[covered] > 0.8)


def test_splat_shading_matches_lambertian_formula():
  rng = np.random.default_rng(3)
  b, n = 2, 7
  quats = rng.standard_normal((b, n, 4))
  quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
  means = rng.standard_normal((b, n, 3)) * 0.05
  albedo = rng.random((b, n, 3))
  viewmats = np.stack([np.asarray(objective.camera_lib.flame_viewmat(rng.standard_normal(3) * 0.01))
                       for _ in range(b)])
  sh = rng.standard_normal((b, 9, 3)) * 0.2 + np.asarray(objective.DEFAULT_LIGHTING)
  splats = objective.rasterizer.Splats(
      means=jnp.asarray(means, jnp.float32), quats=jnp.asarray(quats, jnp.float32),
      scales=jnp.ones((b, n, 2)), opacities=jnp.ones((b, n)),
      features=jnp.asarray(albedo, jnp.float32))
  shaded = objective._shade_splats(splats, jnp.asarray(viewmats, jnp.float32),
                                   jnp.asarray(sh, jnp.float32))

  w, x, y, z = np.moveaxis(quats, -1, 0)  # third column of the rotation matrix of (w, x, y, z)
  normal = np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], -1)
  normal_cam = np.einsum("bij,bnj->bni", viewmats[:, :3, :3], normal)
  centre_cam = np.einsum("bij,bnj->bni", viewmats[:, :3, :3], means) + viewmats[:, None, :3, 3]
  normal_cam *= np.where(np.sum(normal_cam * centre_cam, -1, keepdims=True) > 0, -1, 1)
  expected = np.stack([np.asarray(shading.shade(albedo[i], normal_cam[i], sh[i]))
                       for i in range(b)])
  np.testing.assert_allclose(shaded.features, expected, rtol=1e-4, atol=1e-5)
  # The default light leaves albedo unchanged.
  plain = objective._shade_splats(splats, jnp.asarray(viewmats, jnp.float32),
                                  jnp.broadcast_to(objective.DEFAULT_LIGHTING, (b, 9, 3)))
  np.testing.assert_allclose(plain.features, albedo, rtol=1e-5)


def test_loss_is_a_mean_over_pairs_and_weights_change_only_their_term(setup):
  config, networks, frozen, params = setup
  batch = random_batch(np.random.default_rng(4), 2)

  overridden = small_config()
  overridden.losses.ssim.weight = 0.7

  @jax.jit
  def per_pair(p, b):  # both configs in one program: the reanimation is shared
    return (objective.pair_losses(networks, p, frozen, config, b),
            objective.pair_losses(networks, p, frozen, overridden, b))

  (totals, terms, counters), (totals2, terms2, _) = per_pair(params, batch)
  np.testing.assert_array_equal(counters["pairs_dropped"], 0)  # the dense reference drops none
  assert set(terms) == {k for k, v in config.losses.items() if v.weight}
  for name, value in terms.items():
    assert np.all(np.isfinite(value)), name
  # The total is the weighted sum of the logged terms.
  weighted = sum(config.losses[k].weight * np.asarray(v) for k, v in terms.items())
  np.testing.assert_allclose(totals, weighted, rtol=1e-5)
  # Changing one weight changes only that term's share of the total.
  for name in terms:
    np.testing.assert_allclose(terms2[name], terms[name], rtol=1e-5)
  np.testing.assert_allclose(totals2 - totals, (0.7 - config.losses.ssim.weight) * terms["ssim"],
                             rtol=1e-4, atol=1e-6)

  # Nothing mixes pairs: replacing pair 1 leaves pair 0's losses as they were.
  other = random_batch(np.random.default_rng(5), 2)
  mixed = jax.tree.map(lambda a, b: a.at[1].set(b[1]), batch, other)
  (totals3, terms3, _), _ = per_pair(params, mixed)
  np.testing.assert_allclose(totals3[0], totals[0], rtol=2e-5)
  assert abs(float(totals3[1] - totals[1])) > 1e-4
  for name in terms:
    np.testing.assert_allclose(terms3[name][0], terms[name][0], rtol=2e-5, atol=1e-7)


def test_geometry_terms_train_only_the_gaussians_by_default(setup):
  """With geometry_gradients="gaussians" the depth/normal/distortion terms reach the Gaussians
  Regressor exactly as with "all", and no predictor head but the identity features (the
  regressor's input); the photometric term's gradient is the same either way."""
  config, networks, frozen, params = setup
  batch = random_batch(np.random.default_rng(6), 2)
  everywhere = small_config()
  everywhere.render.geometry_gradients = "all"
  geometry = ("depth", "normal", "depth_normal", "distortion")

  def term_sums(p, cfg):
    terms = objective.mean_loss(networks, p, frozen, cfg, batch)[1][0]
    return jnp.stack([sum(terms[name] for name in geometry), terms["l1"]])

  routed, plain = jax.jit(lambda p: (jax.jacrev(term_sums)(p, config),
                                     jax.jacrev(term_sums)(p, everywhere)))(params)
  for path, leaf in jax.tree_util.tree_leaves_with_path(routed["predictor"]):
    name = jax.tree_util.keystr(path)
    if name.startswith("['head_") and not name.startswith("['head_identity"):
      assert np.all(np.asarray(leaf[0]) == 0), name
  assert np.abs(np.asarray(plain["predictor"]["head_shape"]["kernel"][0])).max() > 0
  for got, want in zip(jax.tree.leaves(routed["regressor"]), jax.tree.leaves(plain["regressor"])):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-6 * np.abs(want[0]).max())
  for got, want in zip(jax.tree.leaves(routed), jax.tree.leaves(plain)):
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)


def test_pairs_over_the_rasteriser_capacity_are_counted(setup):
  """The objective passes the rasteriser's own counters on (train.py logs and warns on them)."""
  config, networks, frozen, params = setup
  tight = small_config()
  tight.render.impl, tight.render.capacity = "tiled", 16
  batch = random_batch(np.random.default_rng(8), 2)

  @jax.jit
  def run(p):
    out = objective.reanimate(networks, p, frozen, tight, batch["source_image"],
                              batch["target_image"])
    return out.render, objective.mean_loss(networks, p, frozen, tight, batch)[1][1]

  render, counters = run(params)
  assert np.all(np.asarray(render.pairs_dropped) > 0)
  np.testing.assert_array_equal(render.pairs_needed, render.pairs_dropped + 16)
  np.testing.assert_allclose(counters["pairs_dropped"], np.mean(render.pairs_dropped))
  np.testing.assert_allclose(counters["pairs_needed"], np.mean(render.pairs_needed))
  np.testing.assert_allclose(counters["splats_culled"], np.mean(render.splats_culled))


def test_splat_regions_keep_the_faces_touching_them(rng):
  faces = rng.integers(0, 50, (200, 3))
  masks = {"face": rng.choice(50, 12, replace=False), "ears": rng.choice(50, 5, replace=False),
           "scalp": rng.choice(50, 20, replace=False)}
  kept = objective.splat_faces(faces, masks, ("face", "ears"), "head.pkl")
  touching = [f for f in faces if set(f) & (set(masks["face"]) | set(masks["ears"]))]
  np.testing.assert_array_equal(kept, np.asarray(touching).reshape(-1, 3))
  assert 0 < len(kept) < len(faces)
  np.testing.assert_array_equal(objective.splat_faces(faces, masks, (), "head.pkl"), faces)
  with pytest.raises(flame_io.FlameFileError, match=r"head.pkl.*no vertex mask \['nose'\]"):
    objective.splat_faces(faces, masks, ("face", "nose"), "head.pkl")


def test_unknown_renderer_is_rejected(setup):
  config, networks, frozen, params = setup
  bad = small_config()
  bad.renderer = "nerf"
  batch = random_batch(np.random.default_rng(5), 1)
  expected = (r"sheap_jax/training/renderers.py: config.renderer='nerf'; registered renderers: "
              r"\['gaussians', 'mesh'\]")
  with pytest.raises(ValueError, match=expected):
    objective.reanimate(networks, params, frozen, bad, batch["source_image"],
                        batch["target_image"])


def mesh_config(flame_path):
  """`small_config` switched to the mesh renderer on the small head saved at `flame_path`, with
  image terms only (no landmarks or priors), so shape and camera gradients must come through
  the render. Perceptual is off too: it is renderer-agnostic and the Gaussian tests cover it."""
  c = small_config()
  c.renderer = "mesh"
  c.flame_path = str(flame_path)
  c.albedo = dict(texture_size=16, grid_size=4)
  for name in ("perceptual", "landmarks", "shape_prior", "expression_prior", "jaw_prior",
               "eyelid_prior"):
    c.losses[name].weight = 0.0
  return c


@pytest.fixture(scope="module")
def mesh_setup(tmp_path_factory):
  path = tmp_path_factory.mktemp("head") / "small_head.npz"
  flame_io.save_flame(path, small_flame_assets(outward_winding=True))
  config = mesh_config(path)
  return _objective_setup(config, objective.load_flame_model(config), params_seed=6)


def test_mesh_renderer_renders_the_albedo_head_texture_and_trains_both_networks(mesh_setup):
  config, networks, frozen, params = mesh_setup
  assert set(params) == {"predictor", "albedo"} and networks.regressor is None
  assert frozen.layout is None and frozen.mesh.faces.shape == frozen.flame.faces.shape
  batch = random_batch(np.random.default_rng(7), 2)

  @jax.jit
  def run(p, b):
    (total, (terms, _)), grads = jax.value_and_grad(
        lambda p: objective.mean_loss(networks, p, frozen, config, b), has_aux=True)(p)
    out = objective.reanimate(networks, p, frozen, config, b["source_image"], b["target_image"])
    # The same render composed by hand: albedo from the source's identity features and DINOv2
    # tokens, source lighting, target camera.
    source = networks.predictor.apply({"params": p["predictor"]}, b["source_image"])
    target = networks.predictor.apply({"params": p["predictor"]}, b["target_image"])
    tokens = dinov2.frozen_features(
        networks.dinov2, frozen.dinov2,
        objective.resize_images(b["source_image"], config.dinov2.image_size)).patch_tokens
    texture = networks.albedo.apply({"params": p["albedo"]}, source.identity, tokens)
    camera = camera_lib.Camera(
        K=jnp.broadcast_to(camera_lib.intrinsics_from_fov(14.2539, SIZE, SIZE), (2, 3, 3)),
        viewmat=jax.vmap(camera_lib.flame_viewmat)(target.camera_translation),
        width=SIZE, height=SIZE)
    direct = mesh_baseline.render(out.vertices, frozen.mesh, camera, texture,
                                  objective.DEFAULT_LIGHTING + source.lighting,
                                  jnp.asarray(config.render.background, jnp.float32))
    return total, terms, grads, out, direct

  total, terms, grads, out, direct = run(params, batch)
  assert out.local_gaussians is None and out.texture.shape == (2, 16, 16, 3)
  for field in ("color", "alpha", "depth", "median_depth", "normals"):
    np.testing.assert_allclose(getattr(out.render, field), getattr(direct, field), atol=1e-5,
                               err_msg=field)
  alpha = np.asarray(out.render.alpha)
  assert 0.05 < alpha.mean() < 0.95  # the head is in view, not filling it
  assert np.any((alpha > 0.01) & (alpha < 0.99))  # antialiased silhouette
  np.testing.assert_array_equal(out.mesh_mask, np.asarray(direct.depth) > 0)
  np.testing.assert_allclose(out.mesh_depth, direct.depth, atol=1e-6)

  # Splat-only terms are skipped, the others are evaluated, finite, and add up to the total.
  expected = {k for k, v in config.losses.items() if v.weight} - set(objective.SPLAT_ONLY_LOSSES)
  assert set(terms) == expected == {"l1", "ssim", "depth_normal"}
  assert all(np.isfinite(v) for v in terms.values())
  np.testing.assert_allclose(total, sum(config.losses[k].weight * v for k, v in terms.items()),
                             rtol=1e-5)

  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Every term reads the render: gradients reach geometry (shape, camera), lighting and texels.
  for head in ("head_shape", "head_camera_translation", "head_lighting"):
    assert float(np.abs(grads["predictor"][head]["kernel"]).max()) > 1e-7, head
  assert float(np.abs(grads["albedo"]["texels"]["kernel"]).max()) > 1e-7


def test_mesh_renderer_needs_uvs_and_matching_faces(tmp_path):
  assets = small_flame_assets(outward_winding=True)
  without_uvs = tmp_path / "no_uvs.npz"
  flame_io.save_flame(without_uvs, {k: v for k, v in assets.items() if k not in ("vt", "ft")})
  config = mesh_config(without_uvs)
  model = objective.load_flame_model(config)
  message = re.escape(f"{without_uvs}: has no UV coordinates")
  with pytest.raises(flame_io.FlameFileError, match=message):
    objective.build_frozen(config, model)
  with_uvs = tmp_path / "uvs.npz"
  flame_io.save_flame(with_uvs, assets)
  other = flame.FlameModel.from_assets(assets, 8, 6).replace(faces=model.faces[:, ::-1])
  with pytest.raises(ValueError, match="belong to other faces than the FLAME model"):
    objective.build_frozen(mesh_config(with_uvs), other)


def test_mesh_renderer_params_survive_a_checkpoint(mesh_setup, tmp_path, capsys):
  config, networks, frozen, _ = mesh_setup
  optimizer = trainer.make_optimizer(config)
  state = trainer.init_state(networks, frozen, config, optimizer)
  manager = checkpoints.open_manager(str(tmp_path), config)
  checkpoints.save(manager, state, {"position": 3}, config)
  abstract = jax.eval_shape(lambda: trainer.init_state(networks, frozen, config, optimizer))
  restored, data_state = checkpoints.restore(manager, abstract, config)
  manager.close()
  assert set(restored.params) == {"predictor", "albedo"} and data_state == {"position": 3}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  assert checkpoints.load_config(str(tmp_path)).renderer == "mesh"
  # Prediction from it writes everything but the Gaussian avatar, and says why.
  image = tmp_path / "face.png"
  Image.fromarray(np.random.default_rng(9).integers(0, 255, (40, 40, 3), np.uint8)).save(image)
  with pytest.warns(UserWarning, match="random initialisation"):
    code = predict.main(["--checkpoint", str(tmp_path), "--input", str(image), "--output",
                         str(tmp_path / "out"), "--whole_image", "--quiet"])
  assert code == 0 and "trained with the mesh renderer" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path / "out" / "face")) == [
      "mesh.obj", "mesh.ply", "overlay.png", "params.json", "params.npz"]
