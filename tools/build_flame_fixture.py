"""Builds the FLAME-file test fixture: a tiny random model in FLAME's own file formats.

Two outputs hold the same arrays, drawn from a seeded legacy RandomState (identical streams in
numpy 1.x and 2.x, Python 2 and 3):

  chumpy   FLAME's directory layout written the way FLAME's files were: generic_model.pkl
           pickled with protocol 2 holding chumpy `Ch` arrays (and plain ndarrays, a scipy csc
           J_regressor, a 4294967295 root parent, FLAME's extra keys), plus
           landmark_embedding.npy (DECA's dict in a 0-d object array), FLAME_masks.pkl,
           l_eyelid.npy, r_eyelid.npy and head_template.obj. Needs chumpy, which is NOT part of
           this project: pass the directory that contains chumpy's `chumpy` package (a checkout
           of github.com/mattloper/chumpy) with --chumpy. Run it under Python 2.7 with
           numpy 1.16 / scipy 1.2 to get exactly what FLAME 2020's files are (Python-2 `str`
           array payloads, `numpy.core.multiarray` class paths). Under Python 3 it patches the
           few names chumpy needs from old numpy/inspect; numpy 2 then writes `numpy._core`
           paths and `_codecs.encode` payloads instead.
  npz      the project's chumpy-free .npz of the same arrays, written by
           sheap_jax.head.flame_io.save_flame (Python 3, run from the repository root).

The committed fixture (tests/fixtures/flame_chumpy/ and tests/fixtures/flame_chumpy.npz) was
made with:
  python2.7 tools/build_flame_fixture.py chumpy --chumpy /path/to/chumpy-checkout \
      --out tests/fixtures/flame_chumpy        # Python 2.7.18, numpy 1.16.6, scipy 1.2.3
  python tools/build_flame_fixture.py npz --out tests/fixtures/flame_chumpy.npz
"""
from __future__ import print_function

import argparse
import os
import pickle
import sys

import numpy as np
import scipy.sparse

SEED = 20250
NUM_VERTICES = 6  # an octahedron: the smallest closed triangle mesh with FLAME's layout
NUM_COMPONENTS = 400  # FLAME's 300 shape + 100 expression components
ROOT_PARENT = 4294967295
OCTAHEDRON_FACES = [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                    [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]


def _quantised(rng, shape, scale):
  """Random values on a 2^-12 grid: exact in float32 and float64, and compressible."""
  return np.round(rng.randn(*shape) * scale * 4096.0) / 4096.0


def fixture_arrays():
  """The fixture's arrays, as FLAME's files hold them (float64, uint32 faces, csc regressor)."""
  rng = np.random.RandomState(SEED)
  v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
  v_template = v * 0.1 + _quantised(rng, (NUM_VERTICES, 3), 0.01)
  shapedirs = _quantised(rng, (NUM_VERTICES, 3, NUM_COMPONENTS), 0.002)
  posedirs = _quantised(rng, (NUM_VERTICES, 3, 36), 0.001)
  weights = rng.rand(NUM_VERTICES, 5)
  weights /= weights.sum(axis=1, keepdims=True)
  regressor = rng.rand(5, NUM_VERTICES) * (rng.rand(5, NUM_VERTICES) < 0.6)
  regressor[:, 0] += 0.1  # no empty rows
  regressor /= regressor.sum(axis=1, keepdims=True)
  faces = np.array(OCTAHEDRON_FACES, np.uint32)
  num_faces = len(faces)

  def bary(n):
    b = rng.rand(n, 3) + 0.05
    return b / b.sum(axis=1, keepdims=True)

  embedding = {
      "static_lmk_faces_idx": rng.randint(0, num_faces, 51).astype(np.int64),
      "static_lmk_bary_coords": bary(51),
      "dynamic_lmk_faces_idx": rng.randint(0, num_faces, (79, 17)).astype(np.int64),
      "dynamic_lmk_bary_coords": bary(79 * 17).reshape(79, 17, 3).astype(np.float32),
      "full_lmk_faces_idx": rng.randint(0, num_faces, (1, 68)).astype(np.int64),
      "full_lmk_bary_coords": bary(68).reshape(1, 68, 3),
  }
  vt = np.round(rng.rand(NUM_VERTICES + 2, 2) * 4096.0) / 4096.0
  ft = rng.randint(0, len(vt), (num_faces, 3)).astype(np.int64)
  eyelids = _quantised(rng, (2, NUM_VERTICES, 3), 0.002)
  masks = {"face": np.array([0, 1, 2, 4], np.int64), "left_eyeball": np.array([0], np.int64),
           "right_eyeball": np.array([1], np.int64), "lips": np.array([3, 4], np.int64)}
  return {
      "v_template": v_template,
      "shapedirs": shapedirs,
      "posedirs": posedirs,
      "J_regressor": scipy.sparse.csc_matrix(regressor),
      "weights": weights,
      "kintree_table": np.array([[ROOT_PARENT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
      "f": faces,
      "landmark_embedding": embedding,
      "vt": vt,
      "ft": ft,
      "masks": masks,
      "eyelids": eyelids,
  }


def _import_chumpy(chumpy_dir):
  """Imports chumpy from chumpy_dir; on Python 3 first restores the old names it uses."""
  if sys.version_info[0] >= 3:
    import inspect
    if not hasattr(inspect, "getargspec"):
      inspect.getargspec = inspect.getfullargspec
    for name, value in (("bool", bool), ("int", int), ("float", float), ("complex", complex),
                        ("object", object), ("unicode", str), ("str", str)):
      if name not in np.__dict__:
        setattr(np, name, value)
  sys.path.insert(0, os.path.abspath(chumpy_dir))
  import chumpy  # noqa: F401  (from the path given on the command line)
  return chumpy


def write_chumpy_layout(out_dir, chumpy_dir):
  ch = _import_chumpy(chumpy_dir)
  arrays = fixture_arrays()
  if not os.path.isdir(out_dir):
    os.makedirs(out_dir)
  # Which entries are Ch and which plain ndarrays mirrors SMPL/FLAME pickles: a mix of both.
  model = {
      "v_template": arrays["v_template"],
      "shapedirs": ch.array(arrays["shapedirs"]),
      "posedirs": ch.array(arrays["posedirs"]),
      "J_regressor": arrays["J_regressor"],
      "weights": ch.array(arrays["weights"]),
      "kintree_table": arrays["kintree_table"],
      "f": arrays["f"],
      "J": ch.array(arrays["J_regressor"].dot(arrays["v_template"])),
      "bs_style": "lbs",
      "bs_type": "lrotmin",
  }
  with open(os.path.join(out_dir, "generic_model.pkl"), "wb") as f:
    pickle.dump(model, f, 2)
  with open(os.path.join(out_dir, "FLAME_masks.pkl"), "wb") as f:
    pickle.dump(arrays["masks"], f, 2)
  embedding = np.empty((), dtype=object)
  embedding[()] = arrays["landmark_embedding"]
  np.save(os.path.join(out_dir, "landmark_embedding.npy"), embedding)
  np.save(os.path.join(out_dir, "l_eyelid.npy"), arrays["eyelids"][0])
  np.save(os.path.join(out_dir, "r_eyelid.npy"), arrays["eyelids"][1])
  lines = ["v %r %r %r" % tuple(p) for p in arrays["v_template"].tolist()]
  lines += ["vt %r %r" % tuple(p) for p in arrays["vt"].tolist()]
  lines += ["f " + " ".join("%d/%d" % (a + 1, b + 1) for a, b in zip(fv, fuv))
            for fv, fuv in zip(arrays["f"].tolist(), arrays["ft"].tolist())]
  with open(os.path.join(out_dir, "head_template.obj"), "w") as f:
    f.write("\n".join(lines) + "\n")


def write_npz(out_path):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from sheap_jax.head.flame_io import save_flame
  save_flame(out_path, fixture_arrays())


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("format", choices=["chumpy", "npz"])
  parser.add_argument("--out", required=True, help="output directory (chumpy) or .npz path")
  parser.add_argument("--chumpy", help="directory containing the `chumpy` package (chumpy only)")
  args = parser.parse_args()
  if args.format == "chumpy":
    if not args.chumpy:
      parser.error("the chumpy format needs --chumpy PATH (a checkout of mattloper/chumpy)")
    write_chumpy_layout(args.out, args.chumpy)
  else:
    write_npz(args.out)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
