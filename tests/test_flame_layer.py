"""The JAX FLAME layer against smplx's `lbs` (the reference FLAME implementation), on a random
FLAME-layout model with FLAME's skinning structure (tests/fixtures/flame_synthetic.py)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from smplx.lbs import batch_rodrigues, lbs, vertices2landmarks
from smplx.utils import rot_mat_to_euler

from fixtures.flame_synthetic import synthetic_flame_assets
from sheap_jax.head import flame

forward = jax.jit(flame.flame_forward)


@pytest.fixture(scope="module")
def assets():
  return synthetic_flame_assets(seed=0)


@pytest.fixture(scope="module")
def model(assets):
  return flame.FlameModel.from_assets(assets)


def _random_params(seed, batch=4, n_shape=300, n_expr=100, pose_scale=0.3):
  rng = np.random.default_rng(seed)
  f32 = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
  return flame.FlameParams(
      shape=f32(batch, n_shape), expression=f32(batch, n_expr),
      global_pose=f32(batch, 3, scale=pose_scale), neck_pose=f32(batch, 3, scale=pose_scale),
      jaw_pose=f32(batch, 3, scale=pose_scale), eye_pose=f32(batch, 6, scale=pose_scale),
      eyelids=jnp.asarray(rng.uniform(0, 1, (batch, 2)), jnp.float32),
      translation=f32(batch, 3, scale=0.1))


def _yaw_pose(degrees):
  return Rotation.from_euler("y", degrees, degrees=True).as_rotvec().astype(np.float32)


def _deca_contour_rows(full_pose):
  """DECA's FLAME._find_dynamic_lmk_idx_and_bcoords, with smplx's torch helpers."""
  rot = batch_rodrigues(full_pose.reshape(-1, 3)).reshape(full_pose.shape[0], -1, 3, 3)
  rel = torch.bmm(rot[:, 0], rot[:, 1])  # neck chain [neck, root]: R_root @ R_neck
  yaw = torch.round(torch.clamp(rot_mat_to_euler(rel) * 180.0 / np.pi, max=39)).long()
  neg_vals = torch.where(yaw < -39, torch.full_like(yaw, 78), 39 - yaw)
  return torch.where(yaw < 0, neg_vals, yaw)


def _smplx_reference(assets, params):
  """FLAME via smplx.lbs in float64, eyelids added to the template as SHeaP's TinyFlame does."""
  t = lambda x: torch.tensor(np.asarray(x, np.float64))
  batch = params.shape.shape[0]
  full_pose = t(np.concatenate([params.global_pose, params.neck_pose, params.jaw_pose,
                               params.eye_pose], axis=1))
  template = t(assets["v_template"][None] + np.einsum(
      "bk,kvc->bvc", np.asarray(params.eyelids, np.float64), assets["eyelids"]))
  betas = t(np.concatenate([params.shape, params.expression], axis=1))
  shapedirs = t(assets["shapedirs"])  # 300 shape then 100 expression: betas' order
  posedirs = t(assets["posedirs"].reshape(-1, 36).T)
  parents = torch.tensor([-1, 0, 1, 1, 1])
  vertices, joints = lbs(betas, full_pose, template, shapedirs, posedirs,
                         t(assets["J_regressor"].toarray()), parents, t(assets["weights"]))
  translation = t(params.translation)[:, None]
  vertices, joints = vertices + translation, joints + translation
  emb = assets["landmark_embedding"]
  rows = _deca_contour_rows(full_pose)
  faces = torch.tensor(assets["f"].astype(np.int64))
  static_faces = torch.tensor(emb["static_lmk_faces_idx"]).expand(batch, -1).contiguous()
  lmk_faces = torch.cat([torch.tensor(emb["dynamic_lmk_faces_idx"])[rows], static_faces], 1)
  lmk_bary = torch.cat([t(emb["dynamic_lmk_bary_coords"])[rows],
                        t(emb["static_lmk_bary_coords"]).expand(batch, -1, -1)], 1)
  landmarks = vertices2landmarks(vertices, faces, lmk_faces, lmk_bary)
  now = [36, 39, 42, 45, 33, 48, 54]
  full = vertices2landmarks(vertices, faces, torch.tensor(emb["full_lmk_faces_idx"]).expand(
      batch, -1).contiguous(), t(emb["full_lmk_bary_coords"]).expand(batch, -1, -1))
  return vertices.numpy(), joints.numpy(), landmarks.numpy(), full[:, now].numpy(), rows.numpy()


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_smplx_lbs(assets, model, seed):
  params = _random_params(seed)
  # Yaws on both sides of the contour table and beyond its +-39 degree range.
  params = params.replace(
      global_pose=params.global_pose.at[:3].set(
          np.stack([_yaw_pose(25.0), _yaw_pose(-30.0), _yaw_pose(-70.0)])),
      neck_pose=params.neck_pose.at[:3].set(0.0))
  out = forward(model, params)
  vertices, joints, landmarks, now, rows = _smplx_reference(assets, params)
  assert rows[:3].tolist() == [25, 69, 78]
  chex.assert_shape([out.vertices, out.joints, out.landmarks68, out.landmarks_now],
                    [(4, model.num_vertices, 3), (4, 5, 3), (4, 68, 3), (4, 7, 3)])
  chex.assert_type([out.vertices, out.joints, out.landmarks68, out.landmarks_now], jnp.float32)
  np.testing.assert_allclose(out.vertices, vertices, atol=1e-5)
  np.testing.assert_allclose(out.joints, joints, atol=1e-5)
  np.testing.assert_allclose(out.landmarks68, landmarks, atol=1e-5)
  np.testing.assert_allclose(out.landmarks_now, now, atol=1e-5)


@pytest.mark.parametrize("global_yaw, neck_yaw, row", [
    (0.0, 0.0, 0), (20.0, 0.0, 20), (10.0, 15.2, 25), (50.0, 0.0, 39), (-1.0, 0.0, 40),
    (-20.0, 0.0, 59), (-15.0, -24.0, 78), (-60.0, 0.0, 78)])
def test_contour_row_follows_deca_yaw_rule(assets, model, global_yaw, neck_yaw, row):
  params = flame.FlameParams.zeros(1).replace(global_pose=jnp.asarray(_yaw_pose(global_yaw))[None],
                                              neck_pose=jnp.asarray(_yaw_pose(neck_yaw))[None])
  out = forward(model, params)
  emb = assets["landmark_embedding"]
  verts = np.asarray(out.vertices[0], np.float64)
  corners = verts[assets["f"][emb["dynamic_lmk_faces_idx"][row]]]  # (17, 3, 3)
  expected = np.einsum("lkc,lk->lc", corners, emb["dynamic_lmk_bary_coords"][row])
  np.testing.assert_allclose(out.landmarks68[0, :17], expected, atol=1e-6)


def test_static_contour_without_dynamic_table(assets, model):
  static_model = flame.FlameModel.from_assets(assets, dynamic_contour=False)
  params = _random_params(3, batch=2)
  out, ref = forward(static_model, params), forward(model, params)
  emb = assets["landmark_embedding"]
  verts = np.asarray(out.vertices, np.float64)
  corners = verts[:, assets["f"][emb["full_lmk_faces_idx"][0]]]
  full = np.einsum("blkc,lk->blc", corners, emb["full_lmk_bary_coords"][0])
  np.testing.assert_allclose(out.landmarks68[:, :17], full[:, :17], atol=1e-6)
  np.testing.assert_allclose(out.landmarks68[:, 17:], ref.landmarks68[:, 17:], atol=1e-7)


def test_zero_parameters_give_the_template(assets, model):
  out = forward(model, flame.FlameParams.zeros(2))
  np.testing.assert_allclose(out.vertices, np.broadcast_to(assets["v_template"],
                                                           out.vertices.shape), atol=1e-7)
  np.testing.assert_allclose(out.joints[0], assets["J_regressor"] @ assets["v_template"],
                             atol=1e-7)


def test_global_rotation_is_rigid_about_the_root(model):
  params = _random_params(4, batch=3).replace(global_pose=jnp.zeros((3, 3)),
                                              translation=jnp.zeros((3, 3)))
  rotvec = np.array([[0.4, -0.9, 0.3], [1.2, 0.1, 0.0], [0.0, 0.0, -2.0]], np.float32)
  base = forward(model, params)
  rotated = forward(model, params.replace(global_pose=jnp.asarray(rotvec)))
  rot = Rotation.from_rotvec(rotvec).as_matrix()
  root = np.asarray(base.joints[:, :1])
  expected = np.einsum("bij,bvj->bvi", rot, np.asarray(base.vertices) - root) + root
  np.testing.assert_allclose(rotated.vertices, expected, atol=1e-6)
  np.testing.assert_allclose(rotated.joints[:, 0], base.joints[:, 0], atol=1e-7)


def test_jaw_rotation_moves_only_the_jaw_and_opens_the_mouth(assets, model):
  params = _random_params(5, batch=1, pose_scale=0.0)
  closed = forward(model, params)
  opened = forward(model, params.replace(jaw_pose=jnp.array([[0.3, 0.0, 0.0]])))
  moved = np.linalg.norm(np.asarray(opened.vertices - closed.vertices)[0], axis=1)
  jaw_skinned = assets["weights"][:, 2] > 0
  assert moved[~jaw_skinned].max() < 1e-7
  assert moved[jaw_skinned].min() > 1e-4
  upper, lower = 0, 120  # upper lip on the head, lower lip on the jaw (flame_synthetic)
  gap = lambda out: float(out.vertices[0, upper, 1] - out.vertices[0, lower, 1])
  assert gap(opened) > gap(closed) + 0.01  # the lower lip drops by more than a centimetre


@pytest.mark.parametrize("eye, joint", [(0, 3), (1, 4)])
def test_eye_rotation_moves_only_its_eyeball(assets, model, eye, joint):
  params = _random_params(6, batch=1, pose_scale=0.0)
  eye_pose = np.zeros((1, 6), np.float32)
  eye_pose[0, 3 * eye:3 * eye + 3] = [0.1, 0.4, 0.0]
  base = forward(model, params)
  turned = forward(model, params.replace(eye_pose=jnp.asarray(eye_pose)))
  moved = np.linalg.norm(np.asarray(turned.vertices - base.vertices)[0], axis=1)
  eyeball = assets["weights"][:, joint] > 0
  assert moved[~eyeball].max() < 1e-7 and moved[eyeball].min() > 1e-5
  np.testing.assert_allclose(turned.joints, base.joints, atol=1e-7)  # turns about its centre


def test_neutral_vertices_and_truncated_parameters(model):
  params = _random_params(7, batch=2)
  neutral = jax.jit(flame.neutral_vertices)(model, params.shape)
  zero_rest = flame.FlameParams.zeros(2).replace(shape=params.shape)
  np.testing.assert_allclose(neutral, forward(model, zero_rest).vertices, atol=1e-7)
  # Fewer coefficients than the model keeps = the rest set to zero.
  short = params.replace(shape=params.shape[:, :20], expression=params.expression[:, :10])
  padded = params.replace(shape=params.shape.at[:, 20:].set(0.0),
                          expression=params.expression.at[:, 10:].set(0.0))
  np.testing.assert_allclose(forward(model, short).vertices, forward(model, padded).vertices,
                             atol=1e-7)
  with pytest.raises(ValueError, match="shape has 301 coefficients"):
    flame.flame_forward(model, params.replace(shape=jnp.zeros((2, 301))))


@pytest.mark.parametrize("at_zero", [True, False])
def test_gradients_are_finite_and_match_finite_differences(assets, model, at_zero):
  params = flame.FlameParams.zeros(2) if at_zero else _random_params(8, batch=2)
  rng = np.random.default_rng(9)
  weights = jnp.asarray(rng.normal(size=(2, model.num_vertices, 3)), jnp.float32)
  # The contour's row jumps at whole degrees of yaw, so finite differences skip it.
  lmk_weights = jnp.asarray(rng.normal(size=(2, 68, 3)), jnp.float32).at[:, :17].set(0.0)

  def loss(p):
    out = flame.flame_forward(model, p)
    return jnp.sum(weights * out.vertices) + jnp.sum(lmk_weights * out.landmarks68)

  grads = jax.jit(jax.grad(loss))(params)
  for name, g in vars(grads).items():
    assert np.all(np.isfinite(g)), name
    assert np.abs(g).max() > 0, name  # every parameter influences the output
  # Directional derivative against central differences of the float64 smplx reference.
  direction = jax.tree.map(lambda x: rng.normal(size=x.shape) * 0.5, params)

  def reference_loss(p):
    vertices, _, landmarks, _, _ = _smplx_reference(assets, p)
    return np.sum(np.asarray(weights) * vertices) + np.sum(np.asarray(lmk_weights) * landmarks)

  eps = 1e-3
  shifted = lambda s: jax.tree.map(lambda x, d: np.asarray(x, np.float64) + s * eps * d,
                                   params, direction)
  numeric = (reference_loss(shifted(1.0)) - reference_loss(shifted(-1.0))) / (2 * eps)
  analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grads),
                                                        jax.tree.leaves(direction)))
  np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-4)


def test_vmap_over_a_leading_axis(model):
  params = _random_params(10, batch=2)
  stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
  out = jax.jit(jax.vmap(flame.flame_forward, in_axes=(None, 0)))(model, stacked)
  np.testing.assert_allclose(out.vertices[1], forward(model, jax.tree.map(lambda x: 2 * x, params))
                             .vertices, atol=1e-6)


def test_bad_assets_are_rejected(assets):
  with pytest.raises(ValueError, match="landmark_embedding"):
    flame.FlameModel.from_assets({k: v for k, v in assets.items() if k != "landmark_embedding"})
  with pytest.raises(ValueError, match="n_expr=150"):
    flame.FlameModel.from_assets(assets, n_expr=150)
