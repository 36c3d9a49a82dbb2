"""Pinhole cameras: intrinsics, world-to-camera transforms, projection, and SHeaP's framing.

Axis and pixel-centre conventions are those written down in `rasterizer/types.py` (OpenCV camera
axes; pixel (i, j) centred at continuous coordinates (i, j)). This module is the one place where
FLAME's head frame (x to the subject's left, y up, z out of the face) meets those camera axes.
"""
from typing import Optional, Tuple

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

# FLAME direction (x subject's left, y up, z out of the face) -> OpenCV camera axes (x right,
# y down, z forward) for a camera facing the subject: the subject's left is the viewer's right,
# up is up in the image, and the camera looks along FLAME's -z.
FLAME_TO_OPENCV = np.diag([1.0, -1.0, -1.0]).astype(np.float32)

# SHeaP's public renderer: vertical field of view 14.2539 degrees (tan(fov / 2) ~ 0.125: the
# image spans about 0.25 m at the head), camera 1 m in front of the head.
SHEAP_FOV_Y_DEGREES = 14.2539
SHEAP_CAMERA_DISTANCE = 1.0


@struct.dataclass
class Camera:
  """Pinhole camera(s) in OpenCV axes: one ((3, 3) K, (4, 4) viewmat) or a batch ((B, ...)).

  `Ks` and `viewmats` give the batched (B, 3, 3) and (B, 4, 4) arrays the rasterizer takes.
  """

  K: jnp.ndarray  # (3, 3) or (B, 3, 3) intrinsics, in pixels
  viewmat: jnp.ndarray  # (4, 4) or (B, 4, 4) world-to-camera transform
  width: int = struct.field(pytree_node=False)
  height: int = struct.field(pytree_node=False)

  @property
  def batch_size(self) -> int:
    """B of the batched arrays; 1 for a single camera."""
    _check_shapes(self)
    return int(np.broadcast_shapes(self.K.shape[:-2], self.viewmat.shape[:-2], (1,))[0])

  @property
  def Ks(self) -> jnp.ndarray:  # pylint: disable=invalid-name
    """(B, 3, 3) intrinsics (a single camera gives B = 1)."""
    return jnp.broadcast_to(self.K, (self.batch_size, 3, 3))

  @property
  def viewmats(self) -> jnp.ndarray:
    """(B, 4, 4) world-to-camera transforms (a single camera gives B = 1)."""
    return jnp.broadcast_to(self.viewmat, (self.batch_size, 4, 4))


def _check_shapes(camera: Camera) -> None:
  k_shape, v_shape = tuple(camera.K.shape), tuple(camera.viewmat.shape)
  if k_shape[-2:] != (3, 3) or len(k_shape) > 3:
    raise ValueError(f"sheap_jax/geometry/camera.py: K must be (3, 3) or (B, 3, 3), got {k_shape}")
  if v_shape[-2:] != (4, 4) or len(v_shape) > 3:
    raise ValueError("sheap_jax/geometry/camera.py: "
                     f"viewmat must be (4, 4) or (B, 4, 4), got {v_shape}")
  if len(k_shape) == 3 and len(v_shape) == 3 and k_shape[0] != v_shape[0]:
    raise ValueError(
        "sheap_jax/geometry/camera.py: "
        f"K batch {k_shape[0]} differs from viewmat batch {v_shape[0]}")


def intrinsics_from_fov(fov_y_degrees: float, width: int, height: int) -> jnp.ndarray:
  """(3, 3) K with square pixels whose `height` rows span the vertical field of view.

  The image covers [-0.5, W - 0.5] x [-0.5, H - 0.5], so the principal point (image centre)
  sits at ((W - 1) / 2, (H - 1) / 2).
  """
  if not 0.0 < fov_y_degrees < 180.0:
    raise ValueError("sheap_jax/geometry/camera.py: "
                     f"fov_y_degrees must be in (0, 180), got {fov_y_degrees}")
  focal = 0.5 * height / np.tan(np.deg2rad(fov_y_degrees) / 2.0)
  return jnp.array([[focal, 0.0, (width - 1) / 2.0],
                    [0.0, focal, (height - 1) / 2.0],
                    [0.0, 0.0, 1.0]], jnp.float32)


def flame_viewmat(head_translation: Optional[jnp.ndarray] = None,
                  distance: float = SHEAP_CAMERA_DISTANCE) -> jnp.ndarray:
  """(4, 4) world-to-camera transform of a camera facing a FLAME head.

  The camera sits `distance` metres along FLAME's +z and looks down -z; the head (world frame =
  FLAME frame) is first moved by `head_translation` (3,), the translation SHeaP's predictor
  outputs. Camera point = FLAME_TO_OPENCV @ (x + head_translation) + (0, 0, distance).
  """
  rotation = jnp.asarray(FLAME_TO_OPENCV)
  translation = jnp.array([0.0, 0.0, distance], jnp.float32)
  if head_translation is not None:
    translation = translation + jnp.dot(rotation, jnp.asarray(head_translation, jnp.float32),
                                        precision=jax.lax.Precision.HIGHEST)
  top = jnp.concatenate([rotation, translation[:, None]], axis=1)
  return jnp.concatenate([top, jnp.array([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)


def default_camera(width: int = 224, height: int = 224,
                   fov_y_degrees: float = SHEAP_FOV_Y_DEGREES,
                   distance: float = SHEAP_CAMERA_DISTANCE) -> Camera:
  """SHeaP's framing: a camera `distance` m in front of the FLAME head, vertical FOV 14.25 deg."""
  return Camera(K=intrinsics_from_fov(fov_y_degrees, width, height),
                viewmat=flame_viewmat(distance=distance), width=width, height=height)


def world_to_camera(viewmat: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
  """Applies a (4, 4) world-to-camera transform to (..., 3) points.

  Full float32 precision: GPUs (TF32) and TPUs (bfloat16) would otherwise round the matmul.
  """
  rotated = jnp.einsum("...j,ij->...i", points, viewmat[:3, :3],
                       precision=jax.lax.Precision.HIGHEST)
  return rotated + viewmat[:3, 3]


def project(K: jnp.ndarray,  # pylint: disable=invalid-name
            points_camera: jnp.ndarray) -> jnp.ndarray:
  """(..., 3) camera-space points -> (..., 2) pixel coordinates (x = column, y = row)."""
  x = points_camera[..., 0] / points_camera[..., 2]
  y = points_camera[..., 1] / points_camera[..., 2]
  return jnp.stack([K[0, 0] * x + K[0, 1] * y + K[0, 2], K[1, 1] * y + K[1, 2]], axis=-1)


def project_points(camera: Camera, points: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(..., N, 3) world points -> ((..., N, 2) pixels, (..., N) camera z) for one camera.

  For a batch of cameras, vmap over the camera and the points together.
  """
  _check_shapes(camera)
  if camera.K.ndim != 2 or camera.viewmat.ndim != 2:
    raise ValueError("sheap_jax/geometry/camera.py: "
                     "project_points takes one camera; vmap over a batch "
                     f"(got K {tuple(camera.K.shape)}, viewmat {tuple(camera.viewmat.shape)})")
  if points.shape[-1] != 3:
    raise ValueError("sheap_jax/geometry/camera.py: "
                     f"points must be (..., 3), got {tuple(points.shape)}")
  points_camera = world_to_camera(camera.viewmat, points)
  return project(camera.K, points_camera), points_camera[..., 2]
