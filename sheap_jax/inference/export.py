"""Writes predictions in files other tools open: parameters (JSON, NPZ), meshes (OBJ, PLY) and
Gaussian avatars in the 3D Gaussian Splatting PLY layout.

The Gaussians PLY follows the public 3DGS code (graphdeco-inria/gaussian-splatting,
`GaussianModel.save_ply`), which SuperSplat, the INRIA viewer and most splat tools read: one
`vertex` element of float32 properties

    x y z  nx ny nz  f_dc_0..2  f_rest_0..44  opacity  scale_0..2  rot_0..3

with normals zero, colour as the degree-0 spherical-harmonics coefficient
f_dc = (rgb - 0.5) / SH_C0 (higher degrees zero), opacity as a logit, scales as logarithms and
rot the quaternion (w, x, y, z). The project's splats are 2D discs, so the third scale (along
the disc normal, the rotation's third column) is a tiny DISC_THICKNESS.
"""
import json
import os
from typing import Dict

import numpy as np

import rasterizer

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
SH_REST = 45  # degree-3 coefficients beyond the first: 15 per colour channel
DISC_THICKNESS = 1e-7  # metres: the standard deviation a 2D disc gets along its normal
_OPACITY_EPS = 1e-6  # keeps logit(opacity) finite


def gaussian_property_names():
  """The 3DGS PLY vertex properties, in file order."""
  return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
          + [f"f_rest_{i}" for i in range(SH_REST)] + ["opacity"]
          + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


def _check_faces(vertices, faces, path):
  vertices, faces = np.asarray(vertices), np.asarray(faces)
  if vertices.ndim != 2 or vertices.shape[1] != 3:
    raise ValueError(f"{path}: vertices must be (V, 3), got {vertices.shape}")
  if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
    raise ValueError(f"{path}: faces must be integer (F, 3), got {faces.dtype} {faces.shape}")
  if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
    raise ValueError(f"{path}: face indices outside [0, {len(vertices)})")
  return vertices.astype(np.float32), faces.astype(np.int32)


def write_obj(path: str, vertices, faces) -> None:
  """Wavefront OBJ: `v x y z` per vertex, `f a b c` per triangle (1-based)."""
  vertices, faces = _check_faces(vertices, faces, path)
  with open(path, "w") as f:
    f.write("".join(f"v {x:.7g} {y:.7g} {z:.7g}\n" for x, y, z in vertices))
    f.write("".join(f"f {a} {b} {c}\n" for a, b, c in faces + 1))


def _ply_header(elements) -> bytes:
  """`elements`: [(name, count, [property lines])]."""
  lines = ["ply", "format binary_little_endian 1.0", "comment written by sheap_jax"]
  for name, count, properties in elements:
    lines.append(f"element {name} {count}")
    lines.extend(properties)
  lines.append("end_header")
  return ("\n".join(lines) + "\n").encode("ascii")


def write_mesh_ply(path: str, vertices, faces) -> None:
  """Binary little-endian PLY: float32 x y z per vertex, a uchar-counted int32 index list per
  face."""
  vertices, faces = _check_faces(vertices, faces, path)
  face_records = np.empty(len(faces), [("count", "u1"), ("indices", "<i4", (3,))])
  face_records["count"] = 3
  face_records["indices"] = faces
  header = _ply_header([
      ("vertex", len(vertices), ["property float x", "property float y", "property float z"]),
      ("face", len(faces), ["property list uchar int vertex_indices"])])
  with open(path, "wb") as f:
    f.write(header)
    f.write(vertices.astype("<f4").tobytes())
    f.write(face_records.tobytes())


def gaussian_records(splats: rasterizer.Splats) -> np.ndarray:
  """One image's splats ((N, ...) arrays, RGB features in [0, 1]) as 3DGS PLY records (N,)."""
  means = np.asarray(splats.means, np.float64)
  if means.ndim != 2 or means.shape[1] != 3:
    raise ValueError(f"gaussian_records: one image's splats (N, 3) expected, got means "
                     f"{means.shape}")
  colors = np.asarray(splats.features, np.float64)
  if colors.shape != means.shape:
    raise ValueError(f"gaussian_records: RGB features (N, 3) expected, got {colors.shape}")
  opacity = np.clip(np.asarray(splats.opacities, np.float64), _OPACITY_EPS, 1 - _OPACITY_EPS)
  scales = np.asarray(splats.scales, np.float64)
  quats = np.asarray(splats.quats, np.float64)
  records = np.zeros(len(means), [(name, "<f4") for name in gaussian_property_names()])
  for i, axis in enumerate("xyz"):
    records[axis] = means[:, i]
  for i in range(3):
    records[f"f_dc_{i}"] = (colors[:, i] - 0.5) / SH_C0
  records["opacity"] = np.log(opacity / (1 - opacity))
  records["scale_0"], records["scale_1"] = np.log(scales[:, 0]), np.log(scales[:, 1])
  records["scale_2"] = np.log(DISC_THICKNESS)
  for i in range(4):
    records[f"rot_{i}"] = quats[:, i]
  return records


def write_gaussians_ply(path: str, splats: rasterizer.Splats) -> None:
  """The 3DGS PLY of one image's splats (module docstring)."""
  records = gaussian_records(splats)
  header = _ply_header([("vertex", len(records),
                         [f"property float {name}" for name in records.dtype.names])])
  with open(path, "wb") as f:
    f.write(header)
    f.write(records.tobytes())


def write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
  """Named arrays, as saved by NumPy (np.load reads them back)."""
  np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def write_json(path: str, arrays: Dict[str, np.ndarray]) -> None:
  """Named arrays as nested lists of numbers (float32 values written exactly)."""
  with open(path, "w") as f:
    json.dump({k: np.asarray(v).tolist() for k, v in arrays.items()}, f, indent=1)
    f.write("\n")


def write_params(path_stem: str, arrays: Dict[str, np.ndarray]) -> None:
  """`<stem>.json` and `<stem>.npz` of the same arrays."""
  os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
  write_json(path_stem + ".json", arrays)
  write_npz(path_stem + ".npz", arrays)
