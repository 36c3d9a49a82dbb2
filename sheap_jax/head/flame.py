"""The FLAME head model in JAX: parameters -> vertices, joints and landmarks.

Follows FLAME as smplx's `lbs` computes it: shape, expression (and SHeaP's two eyelid
blendshapes) offset the template; joints are regressed from that shaped mesh; pose correctives
add posedirs @ flatten(R_j - I) for joints 1..4; linear blend skinning poses the result through
the kinematic tree (root, neck, jaw, left eye, right eye); the translation is added last.

Landmarks follow DECA: 68 = 17 contour + 51 static points (iBUG order). With DECA's dynamic
embedding, the contour row is picked by the head's yaw from the neck chain's rotation; without
one, the contour of the full 68-point embedding is used. `landmarks68_static` is the full
embedding (DECA's landmarks3d), for 3D-type detections. The 7 NoW points (iBUG 36, 39, 42, 45,
33, 48, 54) come from the full 68-point embedding, as in DECA's NoW export.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sheap_jax.head import flame_io
from sheap_jax.geometry.rotation import axis_angle_to_matrix

NUM_JOINTS = 5  # global, neck, jaw, left eye, right eye
NECK_JOINT = 1
FLAME_NUM_SHAPE = 300  # FLAME's shapedirs: 300 shape components, then the expression ones
NOW_LANDMARKS = (36, 39, 42, 45, 33, 48, 54)  # iBUG indices: eye corners, nose bottom, mouth
NUM_CONTOUR = 17
# DECA's contour table has one row per degree of yaw: 0..39 for yaw >= 0, 40..78 for -1..-39.
DYNAMIC_CONTOUR_MAX_YAW = 39

_HIGHEST = jax.lax.Precision.HIGHEST  # geometry in metres: no reduced-precision matmuls


@struct.dataclass
class FlameParams:
  """FLAME parameters for a batch; poses are axis-angle in radians, translation in metres."""

  shape: jnp.ndarray  # (B, S), S <= the model's shape components
  expression: jnp.ndarray  # (B, E), E <= the model's expression components
  global_pose: jnp.ndarray  # (B, 3) root rotation
  neck_pose: jnp.ndarray  # (B, 3)
  jaw_pose: jnp.ndarray  # (B, 3)
  eye_pose: jnp.ndarray  # (B, 6) left eye then right eye
  eyelids: jnp.ndarray  # (B, 2) left, right eyelid blendshape weights
  translation: jnp.ndarray  # (B, 3) added to every output point

  @classmethod
  def zeros(cls, batch_size: int, n_shape: int = 300, n_expr: int = 100) -> "FlameParams":
    z = lambda n: jnp.zeros((batch_size, n), jnp.float32)
    return cls(shape=z(n_shape), expression=z(n_expr), global_pose=z(3), neck_pose=z(3),
               jaw_pose=z(3), eye_pose=z(6), eyelids=z(2), translation=z(3))

  def full_pose(self) -> jnp.ndarray:
    """(B, 5, 3) axis-angle of all joints in FLAME's order."""
    b = self.global_pose.shape[0]
    return jnp.concatenate([self.global_pose, self.neck_pose, self.jaw_pose, self.eye_pose],
                           axis=-1).reshape(b, NUM_JOINTS, 3)


@struct.dataclass
class FlameOutput:
  vertices: jnp.ndarray  # (B, V, 3)
  joints: jnp.ndarray  # (B, 5, 3) posed joint locations
  landmarks68: jnp.ndarray  # (B, 68, 3) iBUG 68 (dynamic contour + static), as DECA's 2D set
  # (B, 68, 3) iBUG 68 of the full embedding: the jaw on the 3D jaw line whatever the yaw, as
  # DECA's landmarks3d; what 3D-type detections (face mesh, FAN 3D) mark.
  landmarks68_static: jnp.ndarray
  landmarks_now: jnp.ndarray  # (B, 7, 3) NoW's 7 points


@struct.dataclass
class FlameModel:
  """FLAME's arrays as float32/int32 jnp arrays (a pytree: pass it through jit freely)."""

  v_template: jnp.ndarray  # (V, 3)
  shapedirs: jnp.ndarray  # (V, 3, S)
  exprdirs: jnp.ndarray  # (V, 3, E)
  posedirs: jnp.ndarray  # (V, 3, 9 (J - 1))
  eyelid_dirs: jnp.ndarray  # (2, V, 3); zeros when the model has no eyelid blendshapes
  j_regressor: jnp.ndarray  # (J, V)
  lbs_weights: jnp.ndarray  # (V, J)
  faces: jnp.ndarray  # (F, 3) int32
  static_lmk_faces: jnp.ndarray  # (51,) int32
  static_lmk_bary: jnp.ndarray  # (51, 3)
  contour_lmk_faces: jnp.ndarray  # (K, 17) int32, K = 79 yaw rows (DECA) or 1 (static contour)
  contour_lmk_bary: jnp.ndarray  # (K, 17, 3)
  full_lmk_faces: jnp.ndarray  # (68,) int32
  full_lmk_bary: jnp.ndarray  # (68, 3)
  parents: tuple = struct.field(pytree_node=False)  # parent joint of each joint, root -1

  @property
  def num_vertices(self) -> int:
    return self.v_template.shape[0]

  @classmethod
  def from_assets(cls, assets: dict, n_shape: int = 300, n_expr: int = 100,
                  dynamic_contour: bool = True) -> "FlameModel":
    """Builds the model from an assets dict (flame_io), keeping n_shape / n_expr components.

    dynamic_contour=False uses the full embedding's fixed contour even when DECA's yaw table
    is present.
    """
    if "landmark_embedding" not in assets:
      raise ValueError("FLAME assets lack 'landmark_embedding': put DECA's landmark_embedding.npy "
                       "next to the FLAME model file (or pass its path to load_flame)")
    shapedirs = np.asarray(assets["shapedirs"])
    num_components = shapedirs.shape[-1]
    if not 0 <= n_shape <= FLAME_NUM_SHAPE or FLAME_NUM_SHAPE + n_expr > num_components:
      raise ValueError(f"n_shape={n_shape}, n_expr={n_expr} do not fit FLAME's shapedirs with "
                       f"{num_components} components ({FLAME_NUM_SHAPE} shape, then expression)")
    parents = np.asarray(assets["kintree_table"])[0].astype(np.int64)
    parents[0] = -1  # stored as 4294967295
    if len(parents) != NUM_JOINTS or any(not 0 <= p < i for i, p in enumerate(parents) if i):
      raise ValueError(f"kintree_table parents {parents.tolist()}: expected FLAME's {NUM_JOINTS} "
                       "joints, each after its parent")
    num_v = shapedirs.shape[0]
    eyelids = np.asarray(assets.get("eyelids", np.zeros((2, num_v, 3))))
    lmk = assets["landmark_embedding"]
    if dynamic_contour:
      contour_faces = lmk["dynamic_lmk_faces_idx"]
      contour_bary = lmk["dynamic_lmk_bary_coords"]
    else:
      contour_faces = np.asarray(lmk["full_lmk_faces_idx"])[:, :NUM_CONTOUR]
      contour_bary = np.asarray(lmk["full_lmk_bary_coords"])[:, :NUM_CONTOUR]
    contour_rows = np.asarray(contour_faces).shape[0]
    if contour_rows not in (1, 2 * DYNAMIC_CONTOUR_MAX_YAW + 1):
      raise ValueError(f"dynamic landmark table has {contour_rows} rows, expected DECA's "
                       f"{2 * DYNAMIC_CONTOUR_MAX_YAW + 1} (one per degree of yaw)")
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float64), jnp.float32)
    i32 = lambda a: jnp.asarray(np.asarray(a, np.int64), jnp.int32)
    j_regressor = assets["J_regressor"]
    j_regressor = j_regressor.toarray() if hasattr(j_regressor, "toarray") else j_regressor
    return cls(
        v_template=f32(assets["v_template"]),
        shapedirs=f32(shapedirs[..., :n_shape]),
        exprdirs=f32(shapedirs[..., FLAME_NUM_SHAPE:FLAME_NUM_SHAPE + n_expr]),
        posedirs=f32(assets["posedirs"]),
        eyelid_dirs=f32(eyelids),
        j_regressor=f32(j_regressor),
        lbs_weights=f32(assets["weights"]),
        faces=i32(assets["f"]),
        static_lmk_faces=i32(lmk["static_lmk_faces_idx"]),
        static_lmk_bary=f32(lmk["static_lmk_bary_coords"]),
        contour_lmk_faces=i32(contour_faces),
        contour_lmk_bary=f32(contour_bary),
        full_lmk_faces=i32(lmk["full_lmk_faces_idx"]).reshape(-1),
        full_lmk_bary=f32(lmk["full_lmk_bary_coords"]).reshape(-1, 3),
        parents=tuple(int(p) for p in parents),
    )


def load_flame(path, n_shape: int = 300, n_expr: int = 100, dynamic_contour: bool = True,
               **extra_paths) -> FlameModel:
  """Loads a FLAME model from a file or directory (see flame_io.load_flame_assets)."""
  return FlameModel.from_assets(flame_io.load_flame_assets(path, **extra_paths), n_shape, n_expr,
                                dynamic_contour)


def _blend(coefficients: jnp.ndarray, dirs: jnp.ndarray, name: str) -> jnp.ndarray:
  """(B, K) coefficients of the leading K of (V, 3, N) directions -> (B, V, 3) offsets."""
  k = coefficients.shape[-1]
  if k > dirs.shape[-1]:
    raise ValueError(f"{name} has {k} coefficients but the model keeps {dirs.shape[-1]}")
  return jnp.einsum("bk,vck->bvc", coefficients, dirs[..., :k], precision=_HIGHEST)


def shaped_vertices(model: FlameModel, params: FlameParams) -> jnp.ndarray:
  """Template + shape + expression + eyelid offsets, before any rotation: (B, V, 3)."""
  return (model.v_template + _blend(params.shape, model.shapedirs, "shape")
          + _blend(params.expression, model.exprdirs, "expression")
          + jnp.einsum("bk,kvc->bvc", params.eyelids, model.eyelid_dirs, precision=_HIGHEST))


def neutral_vertices(model: FlameModel, shape: jnp.ndarray) -> jnp.ndarray:
  """(B, S) shape -> (B, V, 3) neutral mesh (zero pose, expression, eyelids; no translation),
  the geometry the NoW benchmark scores."""
  return model.v_template + _blend(shape, model.shapedirs, "shape")


def _world_transforms(rotations: jnp.ndarray, joints: jnp.ndarray, parents: tuple):
  """Chains local joint rotations down the tree: (world rotations, posed joint positions)."""
  world_rot, world_pos = [rotations[:, 0]], [joints[:, 0]]
  for i in range(1, len(parents)):
    p = parents[i]
    offset = joints[:, i] - joints[:, p]
    world_rot.append(jnp.einsum("bij,bjk->bik", world_rot[p], rotations[:, i], precision=_HIGHEST))
    world_pos.append(world_pos[p] + jnp.einsum("bij,bj->bi", world_rot[p], offset,
                                               precision=_HIGHEST))
  return jnp.stack(world_rot, axis=1), jnp.stack(world_pos, axis=1)


def _dynamic_contour_row(rotations: jnp.ndarray, num_rows: int) -> jnp.ndarray:
  """DECA's rule: the yaw of (root rotation @ neck rotation), rounded to whole degrees, picks
  row yaw (0..39) for yaw >= 0 and 39 - yaw (40..78) for yaw < 0, clamped to +-39 degrees."""
  batch = rotations.shape[0]
  if num_rows == 1:
    return jnp.zeros((batch,), jnp.int32)
  rot = jax.lax.stop_gradient(
      jnp.einsum("bij,bjk->bik", rotations[:, 0], rotations[:, NECK_JOINT], precision=_HIGHEST))
  # Euler yaw (about y) as smplx's rot_mat_to_euler computes it.
  yaw = jnp.arctan2(-rot[:, 2, 0], jnp.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2))
  degrees = jnp.round(jnp.minimum(jnp.degrees(yaw), DYNAMIC_CONTOUR_MAX_YAW)).astype(jnp.int32)
  max_yaw = DYNAMIC_CONTOUR_MAX_YAW
  negative_row = jnp.where(degrees < -max_yaw, 2 * max_yaw, max_yaw - degrees)
  return jnp.where(degrees < 0, negative_row, degrees)


def _barycentric_points(vertices, faces, lmk_faces, lmk_bary):
  """(B, L, 3) points at barycentrics lmk_bary ((B,) L, 3) in the faces lmk_faces ((B,) L)."""
  batch = vertices.shape[0]
  lmk_faces = jnp.broadcast_to(lmk_faces, (batch,) + lmk_faces.shape[-1:])
  lmk_bary = jnp.broadcast_to(lmk_bary, (batch,) + lmk_bary.shape[-2:])
  corners = jax.vmap(lambda v, ids: v[ids])(vertices, faces[lmk_faces])  # (B, L, 3, 3)
  return jnp.einsum("blkc,blk->blc", corners, lmk_bary, precision=_HIGHEST)


def flame_forward(model: FlameModel, params: FlameParams) -> FlameOutput:
  """FLAME parameters -> posed vertices, joints and landmarks (all + translation)."""
  batch = params.global_pose.shape[0]
  v_shaped = shaped_vertices(model, params)
  joints_rest = jnp.einsum("jv,bvc->bjc", model.j_regressor, v_shaped, precision=_HIGHEST)

  rotations = axis_angle_to_matrix(params.full_pose())  # (B, J, 3, 3)
  pose_feature = (rotations[:, 1:] - jnp.eye(3, dtype=rotations.dtype)).reshape(batch, -1)
  v_posed = v_shaped + jnp.einsum("bp,vcp->bvc", pose_feature, model.posedirs,
                                  precision=_HIGHEST)

  world_rot, joints = _world_transforms(rotations, joints_rest, model.parents)
  # Joint j maps a rest-pose point x to R_j x + (posed_j - R_j rest_j); blend per vertex.
  world_trans = joints - jnp.einsum("bjik,bjk->bji", world_rot, joints_rest, precision=_HIGHEST)
  vertex_rot = jnp.einsum("vj,bjik->bvik", model.lbs_weights, world_rot, precision=_HIGHEST)
  vertex_trans = jnp.einsum("vj,bji->bvi", model.lbs_weights, world_trans, precision=_HIGHEST)
  vertices = jnp.einsum("bvik,bvk->bvi", vertex_rot, v_posed, precision=_HIGHEST) + vertex_trans
  vertices = vertices + params.translation[:, None, :]

  row = _dynamic_contour_row(rotations, model.contour_lmk_faces.shape[0])
  num_static = model.static_lmk_faces.shape[0]
  lmk_faces = jnp.concatenate(
      [model.contour_lmk_faces[row], jnp.broadcast_to(model.static_lmk_faces, (batch, num_static))],
      axis=1)
  lmk_bary = jnp.concatenate(
      [model.contour_lmk_bary[row],
       jnp.broadcast_to(model.static_lmk_bary, (batch, num_static, 3))], axis=1)
  now = np.asarray(NOW_LANDMARKS)
  return FlameOutput(
      vertices=vertices,
      joints=joints + params.translation[:, None, :],
      landmarks68=_barycentric_points(vertices, model.faces, lmk_faces, lmk_bary),
      landmarks68_static=_barycentric_points(vertices, model.faces, model.full_lmk_faces,
                                             model.full_lmk_bary),
      landmarks_now=_barycentric_points(vertices, model.faces, model.full_lmk_faces[now],
                                        model.full_lmk_bary[now]),
  )
