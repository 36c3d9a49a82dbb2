"""Ground-truth meshes of `synthetic_heads` records for evaluation: the stored mesh when the
config keeps meshes (`store_vertices`), otherwise recomputed from the record's `gt_`
parameters with the built-in head the frames were rendered from, the same FLAME pass the
generator ran (equal to 2 um; tests/test_synthetic_heads.py). The built-in configs store none:
two meshes are 272 KB a frame against the 80 KB image, and every training read paid for them.
"""
import jax.numpy as jnp
import numpy as np

from data.synthetic_heads import assets
from data.synthetic_heads import features as F
from sheap_jax.head import flame


def neutral_vertices(record) -> np.ndarray:
  """(V, 3) float64: the identity's mesh at zero pose, expression and eyelids, in metres."""
  if F.GT_NEUTRAL_VERTICES in record:
    return np.asarray(record[F.GT_NEUTRAL_VERTICES], np.float64)
  shape = jnp.asarray(record[F.GT_SHAPE], jnp.float32)[None]
  return np.asarray(flame.neutral_vertices(assets.head_assets().model, shape)[0], np.float64)
