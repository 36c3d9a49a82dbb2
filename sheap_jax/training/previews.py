"""Preview strips of a reanimated target view, for training's and fitting's previews."""
from typing import List

import jax.numpy as jnp
import numpy as np

from sheap_jax.geometry import camera as camera_lib
from sheap_jax.render import mesh_render
from sheap_jax.training import objective


def reanimation_panels(out: objective.Reanimation, faces, index: int = 0) -> List[jnp.ndarray]:
  """Item `index` of `out` as (H, W, 3) panels: target | render | mesh overlay | depth (near
  bright, over the render's opaque pixels) | normals."""
  size = out.image.shape[1]
  camera = camera_lib.Camera(K=out.Ks[index], viewmat=out.viewmats[index], width=size,
                             height=size)
  overlay = mesh_render.overlay_mesh(out.image[index], out.vertices[index], faces, camera)
  depth = out.render.depth[index]
  on = out.render.alpha[index] > 0.5
  lo, hi = (jnp.min(jnp.where(on, depth, jnp.inf)), jnp.max(jnp.where(on, depth, -jnp.inf)))
  depth = jnp.where(on, 1.0 - (depth - lo) / jnp.maximum(hi - lo, 1e-6), 0.0)
  return [out.image[index], out.render.color[index], overlay,
          jnp.repeat(depth[..., None], 3, -1), 0.5 - 0.5 * out.render.normals[index]]


def strip(panels) -> np.ndarray:
  """Equal-height (H, W, 3) panels in [0, 1] side by side, as (H, sum W, 3) uint8."""
  joined = jnp.concatenate([jnp.clip(p, 0.0, 1.0) for p in panels], axis=1)
  return np.asarray(joined * 255 + 0.5).astype(np.uint8)
