"""Reading and writing FLAME model files without chumpy or torch.

A FLAME model in memory is a plain dict of numpy arrays, "assets" (docs/flame.md):
  v_template (V, 3), shapedirs (V, 3, 300 + 100), posedirs (V, 3, 36), J_regressor scipy csc
  (5, V), weights (V, 5), kintree_table (2, 5) (root parent 4294967295), f (F, 3) uint32;
  extras: landmark_embedding (dict, DECA's format), vt (T, 2) and ft (F, 3) (UV template OBJ),
  masks (dict region -> vertex indices), eyelids (2, V, 3) [left, right].

On disk it is either FLAME's own layout (a directory with generic_model.pkl or flame2023.pkl,
landmark_embedding.npy, head_template.obj, FLAME_masks.pkl, l_eyelid.npy, r_eyelid.npy) or the
project's single chumpy-free `.npz`. FLAME's pickles were written by Python 2 with chumpy `Ch`
arrays; a restricted unpickler maps `Ch` to the ndarray in its state, reads plainly pickled
torch tensors (DECA's landmark embedding) as numpy arrays without torch, and refuses any class
it does not know, so reading a file never runs code from it. Any problem with a file raises one
`FlameFileError` naming the file and what is wrong.

Command line, for files only torch can read (torch.save's .pt, e.g. SHeaP's eyelids):
  python -m sheap_jax.head.flame_io convert-pt IN.pt OUT.npy
"""
import argparse
import io
import os
import pickle
import sys
import zipfile

import numpy as np
import scipy.sparse

try:
  from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy < 2
  from numpy.core import multiarray as _multiarray, numeric as _numeric

MODEL_FILE_NAMES = ("generic_model.pkl", "flame2023.pkl", "flame2023_no_jaw.pkl")
LANDMARK_EMBEDDING_FILE = "landmark_embedding.npy"
UV_TEMPLATE_FILE = "head_template.obj"
MASKS_FILE = "FLAME_masks.pkl"
EYELID_FILES = ("l_eyelid.npy", "r_eyelid.npy")

MODEL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
LANDMARK_EMBEDDING_KEYS = (
    "static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
    "dynamic_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords")
ROOT_PARENT = 4294967295  # how FLAME stores the root's missing parent (uint32 -1)

# Fixed timestamp of every member of a written .npz, so the same arrays give the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class FlameFileError(ValueError):
  """A FLAME file is missing, unreadable, or does not hold what FLAME files hold."""

  def __init__(self, path, problem: str):
    super().__init__(f"{os.fspath(path)}: {problem}")
    self.path = os.fspath(path)
    self.problem = problem


# ----------------------------------------------------------------------------------------------
# Restricted unpickling of Python-2 / chumpy pickles.


class _ChumpyArray:
  """Stand-in for chumpy.ch.Ch: keeps the pickled state, whose 'x' entry is the array."""

  def __setstate__(self, state):
    self.state = state


class _SparseMatrix:
  """Stand-in for a pickled scipy.sparse matrix of any scipy version: keeps its state."""

  format = None

  def __setstate__(self, state):
    self.state = state


def _sparse_stand_in(fmt: str):
  return type(f"_Sparse_{fmt}", (_SparseMatrix,), {"format": fmt})


def _numpy_classes(core: str) -> dict:
  """What pickled arrays reference, under numpy 1 (numpy.core) or 2 (numpy._core) names."""
  return {
      (core + ".multiarray", "_reconstruct"): _multiarray._reconstruct,
      (core + ".multiarray", "scalar"): _multiarray.scalar,
      (core + ".numeric", "_frombuffer"): _numeric._frombuffer,
  }


_ALLOWED_CLASSES = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("chumpy.ch", "Ch"): _ChumpyArray,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
    ("collections", "OrderedDict"): dict,
    ("_codecs", "encode"): lambda text, encoding: text.encode(encoding),  # Python-3 bytes
    **_numpy_classes("numpy.core"),
    **_numpy_classes("numpy._core"),
}
_SPARSE_FORMATS = {"csc_matrix": "csc", "csr_matrix": "csr", "coo_matrix": "coo"}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays, chumpy Ch arrays, scipy sparse matrices, plainly pickled torch
  tensors (as numpy arrays, without torch) and builtins; nothing else."""

  def __init__(self, file, path):
    super().__init__(file, encoding="latin1")
    self._path = path

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_CLASSES:
      return _ALLOWED_CLASSES[(module, name)]
    if module.startswith("scipy.sparse") and name in _SPARSE_FORMATS:
      return _sparse_stand_in(_SPARSE_FORMATS[name])
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return lambda *args: _rebuild_tensor(self._path, *args)
    if (module, name) == ("torch.storage", "_load_from_bytes"):
      return lambda data: _read_torch_storage(data, self._path)
    if module.split(".")[0] == "torch":
      raise FlameFileError(
          self._path, f"holds torch objects ({module}.{name}) that need torch to read; convert "
          f"it once with `python -m sheap_jax.head.flame_io convert-pt {self._path} OUT.npy`")
    raise FlameFileError(self._path, f"unexpected class {module}.{name} in the pickle "
                         "(not a FLAME file, or a FLAME file holding something unsupported)")

  def persistent_load(self, pid):
    raise FlameFileError(self._path, "holds persistent references (a torch file?), not FLAME data")


# ----------------------------------------------------------------------------------------------
# Torch tensors pickled with plain pickle (DECA's landmark_embedding.npy holds some), read
# without torch. A tensor pickles as _rebuild_tensor_v2(storage, offset, size, stride, ...);
# its storage as _load_from_bytes(bytes of torch's legacy torch.save format): five pickles
# (magic number, protocol version, system info, the storage as a persistent id, storage keys),
# then per storage its element count (int64) and raw little-endian data.

_TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _TorchStorageUnpickler(pickle.Unpickler):
  """Reads the pickles of torch's legacy storage format; storage types become numpy dtypes."""

  def __init__(self, file, path):
    super().__init__(file, encoding="latin1")
    self._path = path
    self.storages = {}  # key -> (dtype, element count)

  def find_class(self, module, name):
    if module == "torch" and name in _TORCH_STORAGE_DTYPES:
      return np.dtype(_TORCH_STORAGE_DTYPES[name])
    raise FlameFileError(self._path, f"unexpected class {module}.{name} in a torch storage")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise FlameFileError(self._path, f"unsupported torch storage reference {pid!r}")
    _, dtype, key, _, numel = pid[:5]
    if len(pid) > 5 and pid[5] is not None:
      raise FlameFileError(self._path, "holds a torch storage view (torch < 1.0); convert it "
                           "with `python -m sheap_jax.head.flame_io convert-pt`")
    self.storages[key] = (dtype, int(numel))
    return key


def _read_torch_storage(data: bytes, path) -> np.ndarray:
  stream = io.BytesIO(data)
  unpickler = _TorchStorageUnpickler(stream, path)
  try:
    magic, _, sys_info = unpickler.load(), unpickler.load(), unpickler.load()
    if magic != _TORCH_LEGACY_MAGIC or not sys_info.get("little_endian", False):
      raise FlameFileError(path, "holds a torch storage in an unknown format")
    root, keys = unpickler.load(), unpickler.load()
    arrays = {}
    for key in keys:
      dtype, numel = unpickler.storages[key]
      count = int(np.frombuffer(stream.read(8), "<i8")[0])
      if count != numel:
        raise FlameFileError(path, "holds a torch storage whose size does not match its header")
      raw = stream.read(count * dtype.itemsize)
      arrays[key] = np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype)
    return arrays[root]
  except FlameFileError:
    raise
  except Exception as e:  # truncated or foreign bytes
    raise FlameFileError(path, f"holds an unreadable torch storage ({type(e).__name__}: {e})") \
        from None


def _rebuild_tensor(path, storage, offset, size, stride, *unused):
  """A tensor's values as a numpy array, from its storage and (offset, size, stride)."""
  size, stride = tuple(size), tuple(stride)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
  if offset < 0 or any(s < 0 for s in stride) or (all(size) and last >= storage.size):
    raise FlameFileError(path, "holds a torch tensor that reaches outside its storage")
  if not all(size):
    return np.zeros(size, storage.dtype)
  strides = tuple(s * storage.itemsize for s in stride)
  return np.lib.stride_tricks.as_strided(storage[offset:], size, strides).copy()


def _convert_stand_ins(obj, path):
  """Replaces chumpy and sparse stand-ins by numpy arrays and scipy matrices, recursively."""
  if isinstance(obj, _ChumpyArray):
    if "x" not in obj.state:
      raise FlameFileError(path, "holds a chumpy object without an 'x' array (a chumpy "
                           "expression, not a plain Ch array)")
    return np.asarray(obj.state["x"])
  if isinstance(obj, _SparseMatrix):
    state = obj.state
    shape = state.get("_shape", state.get("shape"))
    try:
      if obj.format == "coo":
        return scipy.sparse.coo_matrix((state["data"], (state["row"], state["col"])), shape=shape)
      build = {"csc": scipy.sparse.csc_matrix, "csr": scipy.sparse.csr_matrix}[obj.format]
      return build((state["data"], state["indices"], state["indptr"]), shape=shape)
    except (KeyError, ValueError, TypeError) as e:
      raise FlameFileError(path, f"holds a malformed scipy sparse matrix ({e})") from None
  if isinstance(obj, dict):
    return {_as_str(k): _convert_stand_ins(v, path) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_convert_stand_ins(v, path) for v in obj)
  return obj


def _as_str(key):
  return key.decode("latin1") if isinstance(key, bytes) else key


def _read_bytes(path) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise FlameFileError(path, "file not found") from None
  except IsADirectoryError:
    raise FlameFileError(path, "is a directory, expected a file") from None
  except OSError as e:
    raise FlameFileError(path, f"cannot be read ({e.strerror})") from None


def _unpickle(data: bytes, path):
  try:
    obj = _RestrictedUnpickler(io.BytesIO(data), path).load()
  except FlameFileError:
    raise
  except Exception as e:  # pickle reports corrupt or foreign data with many exception types
    raise FlameFileError(path, f"is not a readable pickle ({type(e).__name__}: {e})") from None
  return _convert_stand_ins(obj, path)


def read_pickle(path):
  """Reads a (Python 2 or 3) pickle of numpy / chumpy / scipy-sparse data safely."""
  return _unpickle(_read_bytes(path), path)


def read_npy(path, *, allow_object: bool = False):
  """Reads a .npy file; object arrays (pickled payloads) go through the restricted unpickler."""
  data = _read_bytes(path)
  stream = io.BytesIO(data)
  try:
    version = np.lib.format.read_magic(stream)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    _, _, dtype = read_header(stream)
  except ValueError as e:
    raise FlameFileError(path, f"is not a .npy file ({e})") from None
  if dtype.hasobject:
    if not allow_object:
      raise FlameFileError(path, "holds pickled Python objects where a numeric array is expected")
    array = _unpickle(data[stream.tell():], path)
    return array[()] if isinstance(array, np.ndarray) and array.shape == () else array
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except ValueError as e:
    raise FlameFileError(path, f"is a truncated or corrupt .npy file ({e})") from None


# ----------------------------------------------------------------------------------------------
# The UV template OBJ.


def read_uv_obj(path) -> tuple[np.ndarray, np.ndarray]:
  """(vt (T, 2) float64, ft (F, 3) int64) from an OBJ's `vt` lines and `f v/vt ...` faces."""
  text = _read_bytes(path).decode("utf-8", errors="replace")
  vt, ft = [], []
  for line_number, line in enumerate(text.splitlines(), 1):
    fields = line.split()
    try:
      if fields[:1] == ["vt"]:
        vt.append([float(fields[1]), float(fields[2])])
      elif fields[:1] == ["f"]:
        corners = [c.split("/") for c in fields[1:]]
        if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
          raise ValueError("expected a triangle 'f v/vt v/vt v/vt'")
        ft.append([int(c[1]) - 1 for c in corners])
    except (ValueError, IndexError) as e:
      raise FlameFileError(path, f"line {line_number}: {e}: {line.strip()!r}") from None
  if not vt or not ft:
    raise FlameFileError(path, "has no UV coordinates ('vt' lines and 'f v/vt' faces); "
                         "expected FLAME's head_template.obj")
  return np.asarray(vt, np.float64), np.asarray(ft, np.int64)


def _write_uv_obj(path, vertices: np.ndarray, faces: np.ndarray, vt: np.ndarray, ft: np.ndarray):
  lines = [f"v {x!r} {y!r} {z!r}" for x, y, z in np.asarray(vertices, np.float64).tolist()]
  lines += [f"vt {u!r} {v!r}" for u, v in np.asarray(vt, np.float64).tolist()]
  lines += ["f " + " ".join(f"{a + 1}/{b + 1}" for a, b in zip(fv, fuv))
            for fv, fuv in zip(np.asarray(faces).tolist(), np.asarray(ft).tolist())]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Validation.


def _shape_error(path, key, expected, array) -> FlameFileError:
  got = getattr(array, "shape", type(array).__name__)
  return FlameFileError(path, f"'{key}' has shape {got}, expected {expected}")


def _check_indices(path, key, array, limit, what):
  if array.size and (array.min() < 0 or array.max() >= limit):
    raise FlameFileError(path, f"'{key}' indexes {what} outside [0, {limit})")


def validate_model(model: dict, path) -> dict:
  """Checks the core FLAME keys and shapes; returns them as numpy/scipy arrays."""
  if not isinstance(model, dict):
    raise FlameFileError(path, f"holds a {type(model).__name__}, expected a dict of FLAME arrays")
  missing = [k for k in MODEL_KEYS if k not in model]
  if missing:
    raise FlameFileError(path, f"missing key(s) {', '.join(map(repr, missing))} (a FLAME model "
                         f"holds {', '.join(MODEL_KEYS)})")
  out = {}
  for key in MODEL_KEYS:
    value = model[key]
    if key == "J_regressor":
      if not scipy.sparse.issparse(value):
        value = np.asarray(value)
      out[key] = scipy.sparse.csc_matrix(value, dtype=np.float64)
    else:
      out[key] = np.asarray(value)
  v = out["v_template"]
  if v.ndim != 2 or v.shape[1] != 3:
    raise _shape_error(path, "v_template", "(V, 3)", v)
  num_v = v.shape[0]
  kintree = out["kintree_table"]
  if kintree.ndim != 2 or kintree.shape[0] != 2:
    raise _shape_error(path, "kintree_table", "(2, J)", kintree)
  num_j = kintree.shape[1]
  expected = {
      "shapedirs": ((num_v, 3, None), f"({num_v}, 3, K)"),
      "posedirs": ((num_v, 3, 9 * (num_j - 1)), f"({num_v}, 3, {9 * (num_j - 1)})"),
      "J_regressor": ((num_j, num_v), f"({num_j}, {num_v})"),
      "weights": ((num_v, num_j), f"({num_v}, {num_j})"),
      "f": ((None, 3), "(F, 3)"),
  }
  for key, (shape, text) in expected.items():
    got = out[key].shape
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
      raise _shape_error(path, key, text, out[key])
  _check_indices(path, "f", out["f"].astype(np.int64), num_v, "vertices")
  for key in ("v_template", "shapedirs", "posedirs", "weights"):
    if not np.issubdtype(out[key].dtype, np.number):
      raise FlameFileError(path, f"'{key}' has non-numeric dtype {out[key].dtype}")
  return out


def validate_landmark_embedding(embedding, path, num_faces: int) -> dict:
  """Checks DECA's landmark_embedding.npy format (keys, shapes, face indices)."""
  if not isinstance(embedding, dict):
    raise FlameFileError(path, f"holds a {type(embedding).__name__}, expected DECA's landmark "
                         "embedding dict")
  missing = [k for k in LANDMARK_EMBEDDING_KEYS if k not in embedding]
  if missing:
    raise FlameFileError(path, f"missing key(s) {', '.join(map(repr, missing))} of DECA's "
                         "landmark embedding")
  out = {k: np.asarray(embedding[k]) for k in LANDMARK_EMBEDDING_KEYS}
  expected = {
      "static_lmk_faces_idx": (51,), "static_lmk_bary_coords": (51, 3),
      "dynamic_lmk_faces_idx": (None, 17), "dynamic_lmk_bary_coords": (None, 17, 3),
      "full_lmk_faces_idx": (1, 68), "full_lmk_bary_coords": (1, 68, 3),
  }
  for key, shape in expected.items():
    got = out[key].shape
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
      raise _shape_error(path, key, str(shape).replace("None", "K"), out[key])
  if out["dynamic_lmk_faces_idx"].shape[0] != out["dynamic_lmk_bary_coords"].shape[0]:
    raise FlameFileError(path, "'dynamic_lmk_faces_idx' and 'dynamic_lmk_bary_coords' have "
                         "different numbers of rows")
  for key in ("static_lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx"):
    _check_indices(path, key, out[key].astype(np.int64), num_faces, "faces")
  return out


_EXTRAS = ("landmark_embedding", "vt", "masks", "eyelids")


def _validate_extras(assets: dict, sources: dict) -> dict:
  """Checks the extras present against the model; sources names each one's file."""
  num_v, num_f = assets["v_template"].shape[0], assets["f"].shape[0]
  if "landmark_embedding" in assets:
    assets["landmark_embedding"] = validate_landmark_embedding(
        assets["landmark_embedding"], sources["landmark_embedding"], num_f)
  if "vt" in assets or "ft" in assets:
    if "vt" not in assets or "ft" not in assets:
      raise FlameFileError(sources["vt"], "holds only one of 'vt' and 'ft'; UVs need both")
    vt, ft = np.asarray(assets["vt"]), np.asarray(assets["ft"])
    if vt.ndim != 2 or vt.shape[1] != 2:
      raise _shape_error(sources["vt"], "vt", "(T, 2)", vt)
    if ft.shape != (num_f, 3):
      raise FlameFileError(sources["vt"], f"has {ft.shape[0]} UV faces, the model has {num_f}")
    _check_indices(sources["vt"], "ft", ft, vt.shape[0], "UV coordinates")
    assets["vt"], assets["ft"] = vt, ft
  if "masks" in assets:
    masks = assets["masks"]
    if not isinstance(masks, dict) or not masks:
      raise FlameFileError(sources["masks"], "expected a dict region name -> vertex indices")
    assets["masks"] = {str(k): np.asarray(v).astype(np.int64) for k, v in masks.items()}
    for name, idx in assets["masks"].items():
      if idx.ndim != 1:
        raise _shape_error(sources["masks"], name, "(N,) vertex indices", idx)
      _check_indices(sources["masks"], name, idx, num_v, "vertices")
  if "eyelids" in assets:
    eyelids = np.asarray(assets["eyelids"])
    if eyelids.shape != (2, num_v, 3):
      raise _shape_error(sources["eyelids"], "eyelids", f"(2, {num_v}, 3)", eyelids)
    assets["eyelids"] = eyelids
  return assets


# ----------------------------------------------------------------------------------------------
# Loading.


def _read_eyelids(paths) -> np.ndarray:
  """Eyelid blendshapes as (2, V, 3) [left, right] from l/r (V, 3) files or one combined file.

  A combined file may be (2, V, 3) or SHeaP's (V, 3, 2) layout.
  """
  if len(paths) == 2:
    arrays = [read_npy(p) for p in paths]
    for p, a in zip(paths, arrays):
      if a.ndim != 2 or a.shape[1] != 3:
        raise _shape_error(p, "eyelid", "(V, 3)", a)
    return np.stack(arrays)
  (path,) = paths
  a = read_npy(path)
  if a.ndim == 3 and a.shape[0] == 2 and a.shape[2] == 3:
    return a
  if a.ndim == 3 and a.shape[1] == 3 and a.shape[2] == 2:
    return np.moveaxis(a, 2, 0)
  raise _shape_error(path, "eyelids", "(2, V, 3) or (V, 3, 2)", a)


def _find_model_file(directory) -> str:
  for name in MODEL_FILE_NAMES:
    candidate = os.path.join(directory, name)
    if os.path.isfile(candidate):
      return candidate
  raise FlameFileError(directory, f"no FLAME model file in this directory (looked for "
                       f"{', '.join(MODEL_FILE_NAMES)})")


def load_flame_assets(path, *, landmark_embedding=None, uv_template=None, masks=None,
                      eyelids=None) -> dict:
  """Reads a FLAME model into the assets dict (see the module docstring).

  Args:
    path: the project's `.npz`; a FLAME model pickle (generic_model.pkl, flame2023.pkl); or a
      directory holding one. Next to a pickle, the extras are read from FLAME's file names when
      present.
    landmark_embedding, uv_template, masks: paths that override those found next to the model.
    eyelids: a path to a (2, V, 3) or (V, 3, 2) `.npy`, or a pair of (V, 3) `.npy` [left, right].
  """
  path = os.fspath(path)
  if path.endswith(".npz"):
    return _validate_extras(_load_npz(path), dict.fromkeys(_EXTRAS, path))
  model_path = _find_model_file(path) if os.path.isdir(path) else path
  assets = validate_model(read_pickle(model_path), model_path)
  directory = os.path.dirname(model_path)

  def beside_model(name):
    candidate = os.path.join(directory, name)
    return candidate if os.path.isfile(candidate) else None

  if eyelids is None:
    eyelids = [beside_model(n) for n in EYELID_FILES]
    eyelids = eyelids if all(eyelids) else None
  elif isinstance(eyelids, (str, os.PathLike)):
    eyelids = [eyelids]
  sources = {
      "landmark_embedding": landmark_embedding or beside_model(LANDMARK_EMBEDDING_FILE),
      "vt": uv_template or beside_model(UV_TEMPLATE_FILE),
      "masks": masks or beside_model(MASKS_FILE),
      "eyelids": eyelids[0] if eyelids else None,
  }
  if sources["landmark_embedding"]:
    assets["landmark_embedding"] = read_npy(sources["landmark_embedding"], allow_object=True)
  if sources["vt"]:
    assets["vt"], assets["ft"] = read_uv_obj(sources["vt"])
  if sources["masks"]:
    assets["masks"] = read_pickle(sources["masks"])
  if eyelids:
    assets["eyelids"] = _read_eyelids(list(eyelids))
  return _validate_extras(assets, sources)


# ----------------------------------------------------------------------------------------------
# The project's chumpy-free single file.


def _flatten(assets: dict) -> dict:
  """assets -> flat {name: ndarray}; dict extras become 'group/key', sparse J its csc parts."""
  flat = {}
  for key, value in assets.items():
    if key == "J_regressor":
      csc = scipy.sparse.csc_matrix(value)
      flat.update({"J_regressor/data": csc.data, "J_regressor/indices": csc.indices,
                   "J_regressor/indptr": csc.indptr,
                   "J_regressor/shape": np.asarray(csc.shape, np.int64)})
    elif isinstance(value, dict):
      flat.update({f"{key}/{k}": np.asarray(v) for k, v in value.items()})
    else:
      flat[key] = np.asarray(value)
  return flat


def _load_npz(path) -> dict:
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {k: npz[k] for k in npz.files}
  except FileNotFoundError:
    raise FlameFileError(path, "file not found") from None
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise FlameFileError(path, f"is not a readable .npz ({e})") from None
  assets = {}
  for name, array in flat.items():
    if "/" in name:
      group, key = name.split("/", 1)
      assets.setdefault(group, {})[key] = array
    else:
      assets[name] = array
  if "J_regressor" in assets:
    parts = assets["J_regressor"]
    try:
      assets["J_regressor"] = scipy.sparse.csc_matrix(
          (parts["data"], parts["indices"], parts["indptr"]), shape=tuple(parts["shape"]))
    except (KeyError, ValueError) as e:
      raise FlameFileError(path, f"'J_regressor' parts are malformed ({e})") from None
  model = validate_model(assets, path)
  return {**assets, **model}


def _write_npz(path, flat: dict):
  """np.savez-compatible, but with fixed member timestamps: deterministic bytes."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for name in sorted(flat):
      info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
      info.compress_type = zipfile.ZIP_DEFLATED
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.ascontiguousarray(flat[name]), allow_pickle=False)
      zf.writestr(info, buffer.getvalue())


def save_flame(path, assets: dict):
  """Writes assets as the project's `.npz` (path ends in .npz) or as a FLAME-layout directory.

  The directory holds generic_model.pkl (a plain-numpy pickle, no chumpy), and, for the extras
  present, landmark_embedding.npy, head_template.obj, FLAME_masks.pkl, l_eyelid.npy and
  r_eyelid.npy. Same arrays, same bytes. Assets that would not load back are refused before
  anything is written.
  """
  path = os.fspath(path)
  assets = _validate_extras({**assets, **validate_model(assets, path)},
                            dict.fromkeys(_EXTRAS, path))
  if path.endswith(".npz"):
    _write_npz(path, _flatten(assets))
    return
  os.makedirs(path, exist_ok=True)
  model = {k: assets[k] for k in MODEL_KEYS}
  with open(os.path.join(path, MODEL_FILE_NAMES[0]), "wb") as f:
    pickle.dump(model, f, protocol=2)
  if "landmark_embedding" in assets:
    embedding = np.empty((), dtype=object)
    embedding[()] = {k: np.asarray(v) for k, v in assets["landmark_embedding"].items()}
    np.save(os.path.join(path, LANDMARK_EMBEDDING_FILE), embedding, allow_pickle=True)
  if "vt" in assets:
    _write_uv_obj(os.path.join(path, UV_TEMPLATE_FILE), assets["v_template"], assets["f"],
                  assets["vt"], assets["ft"])
  if "masks" in assets:
    with open(os.path.join(path, MASKS_FILE), "wb") as f:
      pickle.dump({k: np.asarray(v) for k, v in assets["masks"].items()}, f, protocol=2)
  if "eyelids" in assets:
    for name, blendshape in zip(EYELID_FILES, np.asarray(assets["eyelids"])):
      np.save(os.path.join(path, name), blendshape, allow_pickle=False)


# ----------------------------------------------------------------------------------------------
# Converting files that only torch can read.


def _to_numpy(obj):
  """torch tensors (nested in dicts/lists) -> numpy arrays."""
  if hasattr(obj, "detach") and hasattr(obj, "cpu"):
    return obj.detach().cpu().numpy()
  if isinstance(obj, dict):
    return {k: _to_numpy(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_numpy(v) for v in obj)
  return obj


def convert_torch_file(in_path, out_path):
  """Converts a torch file (.pt, or a .npy pickling torch tensors) to a torch-free .npy.

  A single tensor becomes a numeric .npy; a dict (e.g. DECA's landmark embedding) becomes a
  0-d object .npy holding the same dict with numpy arrays.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SystemExit(
        f"convert-pt needs torch to read {in_path}; install it (e.g. pip install torch==2.14.1) "
        "in any Python environment, run the conversion there, and use the .npy it writes "
        "(reading that needs no torch)") from None
  in_path, out_path = os.fspath(in_path), os.fspath(out_path)
  if not os.path.isfile(in_path):
    raise FlameFileError(in_path, "file not found")
  if in_path.endswith(".npy"):
    obj = np.load(in_path, allow_pickle=True, encoding="latin1")
    obj = obj[()] if obj.shape == () else obj
  else:
    obj = torch.load(in_path, map_location="cpu", weights_only=True)
  obj = _to_numpy(obj)
  if isinstance(obj, np.ndarray) and obj.dtype != object:
    np.save(out_path, obj, allow_pickle=False)
  else:
    holder = np.empty((), dtype=object)
    holder[()] = obj
    np.save(out_path, holder, allow_pickle=True)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m sheap_jax.head.flame_io", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  convert = commands.add_parser(
      "convert-pt", help="convert a torch-only file (SHeaP's eyelids .pt, a .npy of torch "
      "tensors) to a torch-free .npy; needs torch")
  convert.add_argument("input")
  convert.add_argument("output")
  args = parser.parse_args(argv)
  try:
    convert_torch_file(args.input, args.output)
  except FlameFileError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main(sys.argv[1:])
