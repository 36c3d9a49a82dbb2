"""Export formats read back by independent readers: trimesh for OBJ / PLY meshes, a NumPy PLY
parser and SciPy rotations for the 3DGS Gaussians, NumPy / json for parameters."""
import json

import numpy as np
from scipy.spatial import transform
import trimesh

import rasterizer
from sheap_jax.inference import export

STANDARD_3DGS = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                 + [f"f_rest_{i}" for i in range(45)]
                 + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def read_vertex_ply(path):
  """(property names, structured records) of a binary little-endian PLY whose only element is
  `vertex` with float properties: the layout splat viewers read."""
  with open(path, "rb") as f:
    data = f.read()
  end = data.index(b"end_header\n") + len(b"end_header\n")
  lines = data[:end].decode("ascii").splitlines()
  assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
  elements = [line.split() for line in lines if line.startswith("element")]
  assert [e[1] for e in elements] == ["vertex"]
  names = [line.split()[2] for line in lines if line.startswith("property")]
  assert all(line.split()[1] == "float" for line in lines if line.startswith("property"))
  records = np.frombuffer(data[end:], dtype=[(n, "<f4") for n in names])
  assert len(records) == int(elements[0][2])
  return names, records


def random_mesh(rng, vertices=40, faces=70):
  return (rng.standard_normal((vertices, 3)).astype(np.float32),
          rng.integers(0, vertices, (faces, 3)).astype(np.int32))


def test_obj_and_ply_meshes_read_back_equal(tmp_path):
  vertices, faces = random_mesh(np.random.default_rng(0))
  export.write_obj(str(tmp_path / "m.obj"), vertices, faces)
  export.write_mesh_ply(str(tmp_path / "m.ply"), vertices, faces)
  for name in ("m.obj", "m.ply"):
    mesh = trimesh.load(str(tmp_path / name), process=False, maintain_order=True)
    np.testing.assert_array_equal(mesh.faces, faces)
    # OBJ prints 7 significant digits; PLY stores the float32 bits.
    np.testing.assert_allclose(mesh.vertices, vertices, rtol=1e-6 if name.endswith("obj") else 0,
                               atol=1e-7 if name.endswith("obj") else 0)
  header = (tmp_path / "m.ply").read_bytes()[:200]
  assert b"format binary_little_endian 1.0" in header


def test_gaussians_ply_has_the_3dgs_layout_and_values(tmp_path):
  rng = np.random.default_rng(1)
  n = 50
  quats = rng.standard_normal((n, 4))
  quats /= np.linalg.norm(quats, axis=1, keepdims=True)
  splats = rasterizer.Splats(
      means=rng.standard_normal((n, 3)).astype(np.float32) * 0.1,
      quats=quats.astype(np.float32),
      scales=rng.uniform(1e-4, 1e-2, (n, 2)).astype(np.float32),
      opacities=rng.uniform(0.01, 0.99, n).astype(np.float32),
      features=rng.random((n, 3)).astype(np.float32))
  path = str(tmp_path / "g.ply")
  export.write_gaussians_ply(path, splats)
  names, records = read_vertex_ply(path)
  assert names == STANDARD_3DGS

  np.testing.assert_array_equal(np.stack([records[a] for a in "xyz"], 1), splats.means)
  for name in ["nx", "ny", "nz"] + [f"f_rest_{i}" for i in range(45)]:
    assert not records[name].any(), name
  colors = np.stack([records[f"f_dc_{i}"] for i in range(3)], 1) * 0.28209479177387814 + 0.5
  np.testing.assert_allclose(colors, splats.features, atol=1e-6)
  np.testing.assert_allclose(1 / (1 + np.exp(-records["opacity"])), splats.opacities, rtol=1e-5)
  scales = np.exp(np.stack([records[f"scale_{i}"] for i in range(3)], 1))
  np.testing.assert_allclose(scales[:, :2], splats.scales, rtol=1e-5)
  assert np.all(scales[:, 2] < 1e-6)
  rot = np.stack([records[f"rot_{i}"] for i in range(4)], 1)
  np.testing.assert_array_equal(rot, splats.quats)

  # A viewer's covariance R S^2 R^T (w-first quaternion, scale_i along column i) is the disc's:
  # variance s_u^2 and s_v^2 along its tangent axes, ~0 along its normal.
  matrices = transform.Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()
  viewer = np.einsum("nij,nj,nkj->nik", matrices, scales ** 2, matrices)
  tangents = matrices[:, :, :2]
  disc = np.einsum("nij,nj,nkj->nik", tangents, np.asarray(splats.scales, np.float64) ** 2,
                   tangents)
  np.testing.assert_allclose(viewer, disc, atol=1e-9)


def test_params_json_and_npz_hold_the_same_arrays(tmp_path):
  rng = np.random.default_rng(2)
  arrays = {"shape": rng.standard_normal((3, 8)).astype(np.float32),
            "camera_K": rng.standard_normal((3, 3)).astype(np.float32),
            "frame_index": np.arange(3, dtype=np.int32)}
  export.write_params(str(tmp_path / "sub" / "params"), arrays)
  with open(tmp_path / "sub" / "params.json") as f:
    from_json = json.load(f)
  stored = np.load(tmp_path / "sub" / "params.npz")
  assert sorted(from_json) == sorted(stored.files) == sorted(arrays)
  for name, value in arrays.items():
    np.testing.assert_array_equal(np.asarray(from_json[name], value.dtype), value)
    np.testing.assert_array_equal(stored[name], value)
