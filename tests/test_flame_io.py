"""FLAME file loading: real chumpy pickles, the chumpy-free formats, bad files, torch files.

tests/fixtures/flame_chumpy/ was written by real chumpy under Python 2.7 / numpy 1.16
(tools/build_flame_fixture.py); tests/fixtures/flame_chumpy.npz holds the same arrays, drawn
again from the same seed and written without chumpy.
"""
import os
import pickle
import pickletools
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import scipy.sparse
import torch

from fixtures.flame_synthetic import synthetic_flame_assets
from sheap_jax.head import flame
from sheap_jax.head import flame_io
from sheap_jax.head.flame_io import FlameFileError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CHUMPY_DIR = os.path.join(FIXTURES, "flame_chumpy")
CHUMPY_NPZ = os.path.join(FIXTURES, "flame_chumpy.npz")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_assets_equal(a: dict, b: dict):
  """Exact equality: same keys, dtypes and values, sparse regressor included."""
  assert sorted(a) == sorted(b)
  for key in a:
    x, y = a[key], b[key]
    if isinstance(x, dict):
      assert_assets_equal(x, y)
    elif scipy.sparse.issparse(x):
      assert x.format == y.format == "csc" and x.shape == y.shape
      for part in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(x, part), getattr(y, part), err_msg=key)
    else:
      assert x.dtype == y.dtype, key
      np.testing.assert_array_equal(x, y, err_msg=key)


def _globals(path):
  with open(path, "rb") as f:
    data = f.read()
  return data, {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_fixture_is_a_python2_chumpy_pickle():
  """The fixture has what real FLAME files have, so loading it tests the real thing."""
  data, classes = _globals(os.path.join(CHUMPY_DIR, "generic_model.pkl"))
  assert data[:2] == b"\x80\x02"  # protocol 2
  assert {"chumpy.ch Ch", "numpy.core.multiarray _reconstruct",
          "scipy.sparse.csc csc_matrix"} <= classes
  assert b"U\x01x" in data  # Python-2 str keys (SHORT_BINSTRING), e.g. the Ch state's 'x'
  with pytest.raises(ModuleNotFoundError, match="chumpy"):
    with open(os.path.join(CHUMPY_DIR, "generic_model.pkl"), "rb") as f:
      pickle.load(f, encoding="latin1")  # what naive loading does without chumpy


def test_chumpy_pickle_equals_chumpy_free_file():
  from_chumpy = flame_io.load_flame_assets(CHUMPY_DIR)
  assert_assets_equal(from_chumpy, flame_io.load_flame_assets(CHUMPY_NPZ))
  assert from_chumpy["kintree_table"][0, 0] == flame_io.ROOT_PARENT
  # The model file alone, extras given explicitly, reads the same.
  alone = flame_io.load_flame_assets(
      os.path.join(CHUMPY_DIR, "generic_model.pkl"),
      eyelids=[os.path.join(CHUMPY_DIR, n) for n in flame_io.EYELID_FILES])
  assert alone["eyelids"].shape == (2, 6, 3)
  np.testing.assert_array_equal(alone["eyelids"], from_chumpy["eyelids"])


def test_fixture_runs_through_the_flame_layer():
  model = flame.load_flame(CHUMPY_DIR)
  params = flame.FlameParams.zeros(2).replace(jaw_pose=np.full((2, 3), 0.2, np.float32))
  out = jax.jit(flame.flame_forward)(model, params)
  assert out.vertices.shape == (2, 6, 3) and out.landmarks68.shape == (2, 68, 3)
  assert out.landmarks_now.shape == (2, 7, 3) and np.all(np.isfinite(out.vertices))
  assert model.parents == (-1, 0, 1, 1, 1)


@pytest.mark.parametrize("layout", ["assets.npz", "flame_dir"])
def test_save_load_round_trip_is_exact_and_deterministic(tmp_path, layout):
  assets = synthetic_flame_assets(seed=3)
  first, second = tmp_path / "a" / layout, tmp_path / "b" / layout
  for path in (first, second):
    path.parent.mkdir()
    flame_io.save_flame(path, assets)
  loaded = flame_io.load_flame_assets(first)
  expected = dict(assets, J_regressor=scipy.sparse.csc_matrix(assets["J_regressor"]))
  assert_assets_equal(loaded, expected)
  files = sorted(os.listdir(first)) if first.is_dir() else [""]
  for name in files:
    assert (first / name).read_bytes() == (second / name).read_bytes(), name
  if first.is_dir():
    assert files == sorted(["generic_model.pkl", "landmark_embedding.npy", "head_template.obj",
                            "FLAME_masks.pkl", "l_eyelid.npy", "r_eyelid.npy"])
    # FLAME's own way of reading it works too (plain numpy pickle, DECA's embedding format).
    with open(first / "generic_model.pkl", "rb") as f:
      np.testing.assert_array_equal(pickle.load(f, encoding="latin1")["posedirs"],
                                    assets["posedirs"])
    embedding = np.load(first / "landmark_embedding.npy", allow_pickle=True,
                        encoding="latin1").item()
    np.testing.assert_array_equal(embedding["dynamic_lmk_faces_idx"],
                                  assets["landmark_embedding"]["dynamic_lmk_faces_idx"])


def test_numpy2_chumpy_pickle(tmp_path, monkeypatch):
  """A Ch pickle written under numpy 2 (numpy._core paths, _codecs-encoded payloads)."""
  module = types.ModuleType("chumpy.ch")

  class Ch:
    def __init__(self, x):
      self.x, self._dirty_vars, self._itr = x, {"x"}, None
  Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
  module.Ch = Ch
  monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
  monkeypatch.setitem(sys.modules, "chumpy.ch", module)
  assets = synthetic_flame_assets(seed=4)
  model = {k: assets[k] for k in flame_io.MODEL_KEYS}
  model["shapedirs"], model["weights"] = Ch(model["shapedirs"]), Ch(model["weights"])
  path = tmp_path / "generic_model.pkl"
  path.write_bytes(pickle.dumps(model, protocol=2))
  monkeypatch.delitem(sys.modules, "chumpy.ch")
  _, classes = _globals(path)
  assert {"chumpy.ch Ch", "numpy._core.multiarray _reconstruct", "_codecs encode"} <= classes
  loaded = flame_io.load_flame_assets(path)
  np.testing.assert_array_equal(loaded["shapedirs"], assets["shapedirs"])
  np.testing.assert_array_equal(loaded["weights"], assets["weights"])


def _write_model_pickle(path, **changes):
  assets = synthetic_flame_assets(seed=5)
  model = {k: assets[k] for k in flame_io.MODEL_KEYS}
  model.update(changes)
  model = {k: v for k, v in model.items() if v is not None}
  path.write_bytes(pickle.dumps(model, protocol=2))
  return str(path)


def _expect_error(path_or_call, *fragments, **kwargs):
  call = path_or_call if callable(path_or_call) else (
      lambda: flame_io.load_flame_assets(path_or_call, **kwargs))
  with pytest.raises(FlameFileError) as info:
    call()
  message = str(info.value)
  for fragment in fragments:
    assert fragment in message, message
  return message


def test_bad_model_files_give_one_clear_error(tmp_path):
  missing = str(tmp_path / "nowhere" / "generic_model.pkl")
  _expect_error(missing, missing, "file not found")
  text = tmp_path / "notes.pkl"
  text.write_text("these are not the arrays you are looking for\n")
  _expect_error(str(text), str(text), "is not a readable pickle")
  no_posedirs = _write_model_pickle(tmp_path / "no_posedirs.pkl", posedirs=None)
  _expect_error(no_posedirs, no_posedirs, "missing key(s) 'posedirs'")
  bad_shape = _write_model_pickle(tmp_path / "bad_shape.pkl", posedirs=np.zeros((210, 3, 35)))
  _expect_error(bad_shape, bad_shape, "'posedirs' has shape (210, 3, 35), expected (210, 3, 36)")
  bad_faces = _write_model_pickle(tmp_path / "bad_faces.pkl", f=np.full((4, 3), 999, np.uint32))
  _expect_error(bad_faces, bad_faces, "'f' indexes vertices outside [0, 210)")
  not_a_dict = tmp_path / "list.pkl"
  not_a_dict.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
  _expect_error(str(not_a_dict), str(not_a_dict), "holds a list, expected a dict")
  _expect_error(str(tmp_path), str(tmp_path), "no FLAME model file in this directory")


def test_save_refuses_assets_that_would_not_load(tmp_path):
  assets = synthetic_flame_assets(seed=9)
  out = str(tmp_path / "bad.npz")
  _expect_error(lambda: flame_io.save_flame(out, dict(assets, weights=np.ones((210, 4)))), out,
                "'weights' has shape (210, 4), expected (210, 5)")
  _expect_error(lambda: flame_io.save_flame(out, dict(assets, eyelids=np.ones((210, 3)))), out,
                "'eyelids' has shape (210, 3), expected (2, 210, 3)")
  assert not os.path.exists(out)


def test_pickles_cannot_run_code(tmp_path):
  class Exploit:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  path = tmp_path / "generic_model.pkl"
  path.write_bytes(pickle.dumps({"v_template": Exploit()}, protocol=2))
  _expect_error(str(path), str(path), "unexpected class posix.system")


def test_bad_extras_and_npz(tmp_path):
  flame_io.save_flame(tmp_path / "flame", synthetic_flame_assets(seed=6))
  model = str(tmp_path / "flame" / "generic_model.pkl")
  lmk = tmp_path / "lmk.npy"
  holder = np.empty((), object)
  holder[()] = {"static_lmk_faces_idx": np.zeros(51, np.int64)}
  np.save(lmk, holder)
  _expect_error(model, str(lmk), "missing key(s) 'static_lmk_bary_coords'",
                landmark_embedding=str(lmk))
  eyelid = tmp_path / "eyelids.npy"
  np.save(eyelid, np.zeros((3, 210, 3)))
  _expect_error(model, str(eyelid), "expected (2, V, 3) or (V, 3, 2)", eyelids=str(eyelid))
  obj = tmp_path / "head_template.obj"
  obj.write_text("v 0 0 0\nf 1 2 3\n")
  _expect_error(model, str(obj), "line 2: expected a triangle 'f v/vt v/vt v/vt'",
                uv_template=str(obj))
  obj.write_text("v 0 0 0\n")
  _expect_error(model, str(obj), "has no UV coordinates", uv_template=str(obj))
  npz = tmp_path / "partial.npz"
  np.savez(npz, v_template=np.zeros((4, 3)))
  _expect_error(str(npz), str(npz), "missing key(s) 'shapedirs'")
  parameter = tmp_path / "parameter.npy"
  holder = np.empty((), object)
  holder[()] = {"static_lmk_faces_idx": torch.nn.Parameter(torch.zeros(51))}
  np.save(parameter, holder)
  _expect_error(model, str(parameter), "torch._utils._rebuild_parameter", "convert-pt",
                landmark_embedding=str(parameter))
  not_zip = tmp_path / "text.npz"
  not_zip.write_text("hello")
  _expect_error(str(not_zip), str(not_zip), "is not a readable .npz")


def _run_without_torch(code, *args):
  code = "import sys; sys.modules['torch'] = None\n" + code
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)


def test_deca_embedding_with_torch_tensors_reads_without_torch(tmp_path):
  """DECA's landmark_embedding.npy pickles torch tensors (strided views included)."""
  assets = synthetic_flame_assets(seed=7)
  flame_io.save_flame(tmp_path / "flame", assets)
  expected = assets["landmark_embedding"]
  emb = {k: torch.from_numpy(np.asarray(v)) for k, v in expected.items()}
  emb["dynamic_lmk_faces_idx"] = torch.from_numpy(expected["dynamic_lmk_faces_idx"].T.copy()).T
  emb["dynamic_lmk_bary_coords"] = emb["dynamic_lmk_bary_coords"].float()
  holder = np.empty((), object)
  holder[()] = emb
  torch_npy = tmp_path / "landmark_embedding.npy"
  np.save(torch_npy, holder)
  out = tmp_path / "read.npz"
  code = ("import numpy as np; from sheap_jax.head import flame_io\n"
          "a = flame_io.load_flame_assets(sys.argv[1], landmark_embedding=sys.argv[2])\n"
          "np.savez(sys.argv[3], **a['landmark_embedding'])")
  result = _run_without_torch(code, str(tmp_path / "flame"), str(torch_npy), str(out))
  assert result.returncode == 0, result.stderr
  with np.load(out) as read:
    for key, value in expected.items():
      want = value.astype(np.float32) if key == "dynamic_lmk_bary_coords" else value
      assert read[key].dtype == want.dtype, key
      np.testing.assert_array_equal(read[key], want, err_msg=key)


def test_convert_pt(tmp_path):
  assets = synthetic_flame_assets(seed=8)
  flame_io.save_flame(tmp_path / "flame", {k: v for k, v in assets.items() if k != "eyelids"})
  model = str(tmp_path / "flame" / "generic_model.pkl")
  # SHeaP's eyelids.pt (torch.save's zip format): one (V, 3, 2) tensor.
  pt = tmp_path / "eyelids.pt"
  torch.save(torch.tensor(np.moveaxis(assets["eyelids"], 0, 2), dtype=torch.float32), pt)
  _expect_error(model, str(pt), "is not a .npy file", eyelids=str(pt))
  out = tmp_path / "eyelids.npy"
  flame_io.main(["convert-pt", str(pt), str(out)])
  loaded = flame_io.load_flame_assets(model, eyelids=str(out))
  np.testing.assert_array_equal(loaded["eyelids"], assets["eyelids"].astype(np.float32))
  # A dict of tensors becomes DECA's format: a dict in a 0-d object array.
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in
              assets["landmark_embedding"].items()}, tmp_path / "lmk.pt")
  flame_io.main(["convert-pt", str(tmp_path / "lmk.pt"), str(tmp_path / "lmk.npy")])
  loaded = flame_io.load_flame_assets(model, landmark_embedding=str(tmp_path / "lmk.npy"))
  for key, value in assets["landmark_embedding"].items():
    np.testing.assert_array_equal(loaded["landmark_embedding"][key], value)
  # Without torch the converter says so, and nothing else.
  code = "from sheap_jax.head.flame_io import main; main(sys.argv[1:])"
  result = _run_without_torch(code, "convert-pt", str(pt), str(tmp_path / "x.npy"))
  assert result.returncode != 0 and "convert-pt needs torch" in result.stderr
  assert "Traceback" not in result.stderr
