"""A finished fit's files, through the project's exporters (`sheap_jax.inference.export`).

- `flame_params.json` / `.npz`: the shape (S,) and every frame's pose, expression, eyelids and
  camera translation (T, ...), named as in `flame.FlameParams` (`translation`: the camera's);
- `neutral.obj`: the fitted identity's neutral mesh (zero pose and expression);
- `gaussians.ply`: the fitted Gaussians rigged to that neutral mesh, albedo colours (3DGS PLY);
- `preview.png`: for the first, middle and last frames, target | render | mesh overlay | depth
  | normals (`training/previews.py`).
"""
import dataclasses
import os
from typing import List

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sheap_jax.fitting import variables as variables_lib
from sheap_jax.head import flame as flame_lib
from sheap_jax.inference import export
from sheap_jax.render import rigging
from sheap_jax.training import objective
from sheap_jax.training import previews

PARAMS_STEM = "flame_params"
MESH_FILE = "neutral.obj"
GAUSSIANS_FILE = "gaussians.ply"
PREVIEW_FILE = "preview.png"


def preview(out: objective.Reanimation, faces) -> np.ndarray:
  """(3 H, 5 W, 3) uint8: the first, middle and last frames' strips, one per row."""
  count = out.image.shape[0]
  rows = sorted({0, count // 2, count - 1})
  panels = jax.jit(previews.reanimation_panels)
  return np.concatenate([previews.strip(panels(out, faces, jnp.int32(i))) for i in rows],
                        axis=0)


def _neutral_avatar(frozen: objective.Frozen, variables):
  """(neutral mesh (V, 3), the Gaussians rigged to it (N, ...))."""
  neutral = flame_lib.neutral_vertices(frozen.flame, variables["shape"][None])
  splats = rigging.rig_gaussians(variables_lib.local_gaussians(variables, 1), neutral,
                                 frozen.splat_faces)
  return neutral[0], jax.tree.map(lambda x: x[0], splats)


def write_outputs(workdir: str, config, frozen: objective.Frozen, variables,
                  out: objective.Reanimation) -> List[str]:
  """Writes the files of the module docstring; returns their names."""
  params = variables_lib.flame_params(variables)
  arrays = {f.name: np.asarray(getattr(params, f.name)) for f in dataclasses.fields(params)}
  arrays["shape"] = np.asarray(variables["shape"])
  export.write_params(os.path.join(workdir, PARAMS_STEM), arrays)
  neutral, splats = jax.jit(_neutral_avatar)(frozen, variables)
  export.write_obj(os.path.join(workdir, MESH_FILE), np.asarray(neutral),
                   np.asarray(frozen.flame.faces))
  export.write_gaussians_ply(os.path.join(workdir, GAUSSIANS_FILE), splats)
  Image.fromarray(preview(out, frozen.flame.faces)).save(os.path.join(workdir, PREVIEW_FILE))
  return [PARAMS_STEM + ".json", PARAMS_STEM + ".npz", MESH_FILE, GAUSSIANS_FILE, PREVIEW_FILE]
