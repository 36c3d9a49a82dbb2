"""The built-in FLAME-format head: format, closed surfaces, bases, anthropometry, rig.

The head is built once per module (a few seconds); posing uses an independent NumPy
linear-blend-skinning reference written here from FLAME's definition (SciPy's Rodrigues).
"""
import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import sparse
from scipy.spatial.transform import Rotation

from sheap_jax.head import flame
from sheap_jax.head import flame_io
from sheap_jax.head import head_model

LEFT_EYE_CENTRE = np.array([0.032, 0.030, 0.066])
EYEBALL_RADIUS = 0.0125


@pytest.fixture(scope="module")
def assets():
  return head_model.build_head_assets()


def _parts(assets):
  """Vertex sets of the eyeballs and of the head shell (everything else)."""
  masks = assets["masks"]
  left, right = masks["left_eyeball"], masks["right_eyeball"]
  shell = np.setdiff1d(np.arange(len(assets["v_template"])), np.concatenate([left, right]))
  return {"shell": shell, "left_eyeball": left, "right_eyeball": right}


def _faces_of(assets, vertex_ids):
  f = assets["f"].astype(np.int64)
  return f[np.isin(f, vertex_ids).all(1)]


def _landmarks(assets, vertices):
  emb = assets["landmark_embedding"]
  f = assets["f"].astype(np.int64)
  tri = vertices[..., f[emb["full_lmk_faces_idx"][0]], :]  # (..., 68, 3, 3)
  return np.einsum("...lkc,lk->...lc", tri, emb["full_lmk_bary_coords"][0])


def _face_normals(vertices, f):
  return np.cross(vertices[..., f[:, 1], :] - vertices[..., f[:, 0], :],
                  vertices[..., f[:, 2], :] - vertices[..., f[:, 0], :])


def _lbs(assets, pose, betas=None, eyelids=None):
  """FLAME's forward pass in plain NumPy: blendshapes, joints, pose correctives, skinning.
  pose: (5, 3) axis-angle of root, neck, jaw, left eye, right eye."""
  v = assets["v_template"].copy()
  if betas is not None:
    v = v + assets["shapedirs"][:, :, :len(betas)] @ betas
  if eyelids is not None:
    v = v + np.einsum("e,evc->vc", eyelids, assets["eyelids"])
  joints = assets["J_regressor"] @ v
  rot = Rotation.from_rotvec(pose).as_matrix()
  v = v + assets["posedirs"] @ (rot[1:] - np.eye(3)).reshape(-1)
  parents = assets["kintree_table"][0].astype(np.int64)
  world = []
  for j in range(5):
    local = np.eye(4)
    local[:3, :3] = rot[j]
    local[:3, 3] = joints[j] - (joints[parents[j]] if j else 0.0)
    world.append(local if j == 0 else world[parents[j]] @ local)
  world = np.stack(world)
  world[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], joints)
  blend = np.einsum("vj,jab->vab", assets["weights"], world)
  return np.einsum("vab,vb->va", blend[:, :3, :3], v) + blend[:, :3, 3]


def test_two_builds_are_identical(assets):
  again = head_model.build_head_assets()
  assert sorted(again) == sorted(assets)
  for key, value in assets.items():
    other = again[key]
    if isinstance(value, dict):
      assert sorted(other) == sorted(value)
      for name in value:
        np.testing.assert_array_equal(other[name], value[name])
        assert other[name].dtype == value[name].dtype
    elif sparse.issparse(value):
      assert (value != other).nnz == 0
    else:
      np.testing.assert_array_equal(other, value)
      assert other.dtype == value.dtype


def test_layout_matches_flame(assets):
  v = assets["v_template"]
  num = len(v)
  assert 4000 <= num <= 6000
  assert v.dtype == np.float64 and v.shape == (num, 3)
  assert assets["shapedirs"].shape == (num, 3, 400) and assets["shapedirs"].dtype == np.float64
  assert assets["posedirs"].shape == (num, 3, 36) and assets["posedirs"].dtype == np.float64
  assert assets["f"].dtype == np.uint32 and assets["f"].max() < num
  np.testing.assert_array_equal(assets["kintree_table"],
                                [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
  regressor = assets["J_regressor"]
  assert isinstance(regressor, sparse.csc_matrix) and regressor.shape == (5, num)
  dense = regressor.toarray()
  assert (dense >= 0).all() and np.allclose(dense.sum(1), 1.0)
  assert regressor.nnz < 0.1 * num  # a few vertices per joint
  weights = assets["weights"]
  assert weights.shape == (num, 5) and (weights >= 0).all()
  np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-12)
  assert assets["eyelids"].shape == (2, num, 3)
  assert 0 < np.abs(assets["posedirs"]).max() < 0.005  # small correctives
  # Joints sit where FLAME's do: neck above root, jaw joint in front of the neck, eyes at the
  # eyeball centres, everything on the midline except the eyes.
  joints = regressor @ v
  np.testing.assert_allclose(joints[:3, 0], 0.0, atol=1e-12)
  assert joints[0, 1] < joints[1, 1] < joints[2, 1] < joints[3, 1]
  np.testing.assert_allclose(joints[3], LEFT_EYE_CENTRE, atol=1e-9)
  np.testing.assert_allclose(joints[4], LEFT_EYE_CENTRE * [-1, 1, 1], atol=1e-9)
  # UVs: every triangle has a UV triangle; coordinates in the unit square.
  assert assets["ft"].shape == assets["f"].shape
  assert assets["ft"].min() >= 0 and assets["ft"].max() < len(assets["vt"])
  assert (assets["vt"] >= 0).all() and (assets["vt"] <= 1).all()
  masks = assets["masks"]
  assert set(masks) == {"face", "scalp", "left_eyeball", "right_eyeball", "eye_region",
                        "left_eye_region", "right_eye_region", "lips", "nose", "neck",
                        "forehead", "boundary", "left_ear", "right_ear"}
  for name, ids in masks.items():
    assert len(ids) > 20, name
    assert ids.min() >= 0 and ids.max() < num and len(np.unique(ids)) == len(ids), name
  # Masks land where their names say (FLAME frame: +x is the subject's left).
  mean = {name: v[ids].mean(0) for name, ids in masks.items()}
  assert mean["left_eyeball"][0] > 0 > mean["right_eyeball"][0]
  assert mean["left_ear"][0] > 0.06 and mean["right_ear"][0] < -0.06
  assert mean["forehead"][1] > mean["nose"][1] > mean["lips"][1] > mean["neck"][1]
  assert mean["nose"][2] > mean["face"][2] > mean["scalp"][2]


@pytest.mark.parametrize("part", ["shell", "left_eyeball", "right_eyeball"])
def test_surfaces_are_closed_and_outward(assets, part):
  v = assets["v_template"]
  f = _faces_of(assets, _parts(assets)[part])
  directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
  undirected = np.sort(directed, axis=1)
  _, counts = np.unique(undirected, axis=0, return_counts=True)
  assert (counts == 2).all()  # closed: every edge has exactly two triangles
  assert len(np.unique(directed, axis=0)) == len(directed)  # consistently oriented
  areas = 0.5 * np.linalg.norm(_face_normals(v, f), axis=-1)
  assert areas.min() > 1e-8  # no degenerate triangles (0.01 mm^2)
  volume = np.einsum("ij,ij->", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])) / 6.0
  assert volume > 0.0  # normals point outwards
  if part != "shell":
    np.testing.assert_allclose(volume, 4 / 3 * np.pi * EYEBALL_RADIUS ** 3, rtol=0.05)


def test_landmark_embedding_format_and_anatomy(assets):
  emb = assets["landmark_embedding"]
  shapes = {"static_lmk_faces_idx": (51,), "static_lmk_bary_coords": (51, 3),
            "dynamic_lmk_faces_idx": (79, 17), "dynamic_lmk_bary_coords": (79, 17, 3),
            "full_lmk_faces_idx": (1, 68), "full_lmk_bary_coords": (1, 68, 3)}
  assert {k: emb[k].shape for k in emb} == shapes
  num_faces = len(assets["f"])
  for key in shapes:
    if key.endswith("faces_idx"):
      assert np.issubdtype(emb[key].dtype, np.integer)
      assert emb[key].min() >= 0 and emb[key].max() < num_faces
    else:
      assert (emb[key] >= -1e-12).all()
      np.testing.assert_allclose(emb[key].sum(-1), 1.0, atol=1e-12)
  np.testing.assert_array_equal(emb["static_lmk_faces_idx"], emb["full_lmk_faces_idx"][0, 17:])
  np.testing.assert_array_equal(emb["dynamic_lmk_faces_idx"][0], emb["full_lmk_faces_idx"][0, :17])

  lm = _landmarks(assets, assets["v_template"])
  x, y, z = lm.T
  # iBUG 68: image left is the subject's right (-x).
  assert np.all(np.diff(x[:9]) > 0) and np.all(np.diff(x[8:17]) > 0)  # jaw, right to left
  assert y[8] == y[:17].min()  # chin lowest
  assert x[17:22].max() < 0 < x[22:27].min()  # brows
  assert y[17:27].min() > y[36:48].max()  # brows above the eyes
  assert np.all(np.diff(y[27:31]) < 0) and z[30] == z.max()  # bridge down to the tip
  assert np.all(np.diff(x[31:36]) > 0) and y[33] < y[30]
  assert x[36] < x[39] < 0 < x[42] < x[45]  # eye corners: outer, inner, inner, outer
  assert y[37] > y[41] and y[38] > y[40] and y[43] > y[47] and y[44] > y[46]  # lids
  assert x[48] < x[60] < 0 < x[64] < x[54]  # mouth corners
  assert y[51] > y[62] >= y[66] > y[57]  # upper lip above lower lip
  for i in range(36, 48):  # eye landmarks lie on the lid margins, just outside the eyeball
    centre = LEFT_EYE_CENTRE * ([1, 1, 1] if i >= 42 else [-1, 1, 1])
    assert np.linalg.norm(lm[i] - centre) < EYEBALL_RADIUS + 0.002
  # The contour follows the yaw: turning the face to its left (+yaw, DECA rows 1..39) moves
  # the receding left-side contour towards the face's middle, and -yaw the right side's.
  v = assets["v_template"]
  f = assets["f"].astype(np.int64)
  contour = lambda row: np.einsum("lkc,lk->lc", v[f[emb["dynamic_lmk_faces_idx"][row]]],
                                  emb["dynamic_lmk_bary_coords"][row])
  assert contour(39)[12:16, 0].mean() < contour(0)[12:16, 0].mean() - 0.005
  assert contour(78)[1:5, 0].mean() > contour(0)[1:5, 0].mean() + 0.005


def test_shape_space_matches_adult_head_dimensions(assets):
  points = head_model.anthropometric_vertices(assets["v_template"])
  v = assets["v_template"]
  (left, right), (glabella, opisthocranion), (nasion, menton) = points.values()
  assert v[left, 0] > 0.07 and np.isclose(v[left, 0], -v[right, 0])
  assert v[glabella, 2] > 0.08 and v[opisthocranion, 2] < -0.09
  assert v[nasion, 1] > 0.02 and v[menton, 1] < -0.07
  betas = np.random.default_rng(0).normal(size=(300, 300))
  samples = v + np.einsum("vck,nk->nvc", assets["shapedirs"][:, :, :300], betas)
  dims = head_model.head_dimensions(samples, points)
  survey = {"head_breadth": 0.152, "head_length": 0.195, "face_height": 0.120}
  for name, values in dims.items():
    assert 0.004 <= values.std() <= 0.010, (name, values.std())
    assert abs(values.mean() - survey[name]) < 0.004, (name, values.mean())


def test_shape_samples_are_plausible_heads(assets):
  v = assets["v_template"]
  f = assets["f"].astype(np.int64)
  betas = np.random.default_rng(1).normal(size=(200, 300))
  samples = v + np.einsum("vck,nk->nvc", assets["shapedirs"][:, :, :300], betas)
  assert np.isfinite(samples).all()
  rest = _face_normals(v, f)
  rest /= np.linalg.norm(rest, axis=-1, keepdims=True)
  normals = _face_normals(samples, f)
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  assert np.einsum("nfc,fc->nf", normals, rest).min() > 0.2  # no face turns over
  points = head_model.anthropometric_vertices(v)
  for values in head_model.head_dimensions(samples, points).values():
    assert np.all(np.abs(values - values.mean()) < 4 * values.std())
  # Eyeballs move rigidly and stay inside their sockets' linings.
  parts = _parts(assets)
  right_eye_centre = LEFT_EYE_CENTRE * [-1, 1, 1]
  for name, centre in (("left_eyeball", LEFT_EYE_CENTRE), ("right_eyeball", right_eye_centre)):
    ids = parts[name]
    moved = samples[:, ids] - v[ids]
    np.testing.assert_allclose(moved, np.broadcast_to(moved[:, :1], moved.shape), atol=1e-12)
    shifted = samples[:, ids].mean(1)
    near = np.linalg.norm(v - centre, axis=-1) < EYEBALL_RADIUS + 0.0015
    near[ids] = False
    gaps = np.linalg.norm(samples[:, near] - shifted[:, None], axis=-1)
    assert gaps.min() > EYEBALL_RADIUS


def test_bases_are_orthogonal_and_ordered_by_variance(assets):
  for block in (assets["shapedirs"][:, :, :300], assets["shapedirs"][:, :, 300:]):
    flat = block.reshape(-1, block.shape[-1])
    norms = np.linalg.norm(flat, axis=0)
    assert np.all(np.diff(norms) <= 1e-12) and norms[-1] > 0
    cosines = (flat / norms).T @ (flat / norms)
    np.testing.assert_allclose(cosines, np.eye(len(norms)), atol=1e-8)
  expression = assets["shapedirs"][:, :, 300:]
  for ids in (_parts(assets)["left_eyeball"], _parts(assets)["right_eyeball"]):
    assert np.abs(expression[ids]).max() == 0.0


def test_jaw_opens_the_mouth_and_moves_only_the_lower_face(assets):
  v = assets["v_template"]
  gaps = []
  for angle in (0.0, 0.1, 0.2, 0.3):
    pose = np.zeros((5, 3))
    pose[2, 0] = angle
    posed = _lbs(assets, pose)
    lm = _landmarks(assets, posed)
    gaps.append(lm[62, 1] - lm[66, 1])
    moved = np.linalg.norm(posed - v, axis=-1)
    upper_face = (v[:, 1] > 0.0) | ((np.abs(v[:, 0]) < 0.03) & (v[:, 1] > -0.028))
    assert moved[upper_face].max() < 1e-12
    if angle:
      chin = lm[8]
      assert chin[1] < _landmarks(assets, v)[8, 1] - 0.03 * angle  # about 3 mm per 0.1 rad
  assert np.all(np.diff(gaps) > 0.004) and gaps[-1] > 0.02


def test_pose_matches_reference_and_expressions_open_the_lips(assets):
  v = assets["v_template"]
  rest = _lbs(assets, np.zeros((5, 3)))
  np.testing.assert_allclose(rest, v, atol=1e-12)
  # Turning the whole head by the root moves every vertex rigidly.
  pose = np.zeros((5, 3))
  pose[0] = [0.1, -0.4, 0.05]
  rot = Rotation.from_rotvec(pose[0]).as_matrix()
  root = (assets["J_regressor"] @ v)[0]
  np.testing.assert_allclose(_lbs(assets, pose), (v - root) @ rot.T + root, atol=1e-12)
  # The first expression ("mouth open") parts the lips, the second ("smile") lifts the corners.
  betas = np.zeros(400)
  betas[300] = 2.0
  lm0, lm1 = _landmarks(assets, v), _landmarks(assets, v + assets["shapedirs"] @ betas)
  assert (lm1[62, 1] - lm1[66, 1]) - (lm0[62, 1] - lm0[66, 1]) > 0.005
  betas[:] = 0.0
  betas[301] = 2.0
  lm1 = _landmarks(assets, v + assets["shapedirs"] @ betas)
  assert lm1[48, 1] - lm0[48, 1] > 0.003 and lm1[54, 1] - lm0[54, 1] > 0.003


def test_eyelid_closes_the_upper_lid_over_the_eye(assets):
  v = assets["v_template"]
  lm0 = _landmarks(assets, v)
  closed = v + assets["eyelids"][0]  # left eye (+x): landmarks 42-47
  lm1 = _landmarks(assets, closed)
  assert lm1[43, 1] < lm0[43, 1] - 0.005 and lm1[44, 1] < lm0[44, 1] - 0.005
  assert np.abs(lm1[43:45, 1] - lm0[[47, 46], 1]).max() < 0.002  # meets the lower lid
  np.testing.assert_allclose(lm1[[46, 47]], lm0[[46, 47]], atol=1e-12)  # lower lid still
  moved = np.linalg.norm(assets["eyelids"][0], axis=-1) > 0
  assert np.linalg.norm(v[moved] - LEFT_EYE_CENTRE, axis=-1).max() < 0.025
  assert np.linalg.norm(closed[moved] - LEFT_EYE_CENTRE, axis=-1).min() > EYEBALL_RADIUS
  assert np.abs(assets["eyelids"][0][v[:, 0] < 0]).max() == 0.0  # the other eye stays open
  # Looking down lowers the upper lid a little (pose corrective), looking up raises it.
  for pitch, sign in ((0.3, -1), (-0.3, 1)):
    pose = np.zeros((5, 3))
    pose[3, 0] = pitch
    lm = _landmarks(assets, _lbs(assets, pose))
    assert sign * (lm[43, 1] - lm0[43, 1]) > 0.0005


def test_cli_files_round_trip_through_flame_io(assets, tmp_path, monkeypatch):
  # Builds are compared in test_two_builds_are_identical; here the CLI writes this module's.
  monkeypatch.setattr(head_model, "build_head_assets", lambda: assets)
  paths = [tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "flame_dir"]
  for path in paths:
    head_model.main(["--out", os.fspath(path)])
  assert paths[0].read_bytes() == paths[1].read_bytes()  # deterministic files
  assert sorted(os.listdir(paths[2])) == [
      "FLAME_masks.pkl", "generic_model.pkl", "head_template.obj", "l_eyelid.npy",
      "landmark_embedding.npy", "r_eyelid.npy"]
  for path in (paths[0], paths[2]):
    loaded = flame_io.load_flame_assets(path)
    for key in ("v_template", "shapedirs", "posedirs", "weights", "f", "eyelids", "ft"):
      np.testing.assert_array_equal(np.asarray(loaded[key]), assets[key])
    np.testing.assert_array_equal(loaded["J_regressor"].toarray(), assets["J_regressor"].toarray())
    np.testing.assert_allclose(loaded["vt"], assets["vt"], atol=1e-12)
    for name, ids in assets["masks"].items():
      np.testing.assert_array_equal(loaded["masks"][name], ids)
    for name, value in assets["landmark_embedding"].items():
      np.testing.assert_array_equal(loaded["landmark_embedding"][name], value)


def test_flame_layer_poses_the_built_in_head(assets):
  model = flame.FlameModel.from_assets(assets)
  rng = np.random.default_rng(3)
  pose = np.zeros((5, 3))
  pose[1] = [0.1, 0.2, 0.0]
  pose[2] = [0.25, 0.0, 0.0]
  pose[3] = pose[4] = [0.1, 0.1, 0.0]
  betas = rng.normal(size=300)
  expression = rng.normal(size=100)
  eyelids = np.array([0.3, 0.6])
  params = flame.FlameParams.zeros(1).replace(
      shape=jnp.asarray(betas[None], jnp.float32),
      expression=jnp.asarray(expression[None], jnp.float32),
      neck_pose=jnp.asarray(pose[1:2], jnp.float32), jaw_pose=jnp.asarray(pose[2:3], jnp.float32),
      eye_pose=jnp.asarray(pose[3:].reshape(1, 6), jnp.float32),
      eyelids=jnp.asarray(eyelids[None], jnp.float32))
  out = flame.flame_forward(model, params)
  expected = _lbs(assets, pose, np.concatenate([betas, expression]), eyelids)
  np.testing.assert_allclose(np.asarray(out.vertices[0]), expected, atol=2e-6)
  # The dynamic contour stays on the silhouette of the receding cheek when the head turns.
  for yaw, side in ((25.0, slice(11, 16)), (-25.0, slice(1, 6))):  # cheek, not chin
    turned = params.replace(jaw_pose=jnp.zeros((1, 3)), global_pose=jnp.asarray(
        Rotation.from_euler("y", yaw, degrees=True).as_rotvec()[None], jnp.float32))
    out = flame.flame_forward(model, turned)
    v = np.asarray(out.vertices[0])
    for point in np.asarray(out.landmarks68[0, side]):
      level = (np.abs(v[:, 1] - point[1]) < 0.003) & (v[:, 2] > 0.0)
      extreme = v[level, 0].max() if yaw > 0 else v[level, 0].min()
      assert abs(point[0] - extreme) < 0.005
