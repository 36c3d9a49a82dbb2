"""The free variables of a fit, and the structures the training objective reads built from them.

One video: one shape; per frame its pose (global, neck, jaw, eyes), expression, eyelids and
camera translation; one lighting offset; one set of Gaussians bound to the mesh triangles that
carry them, in the Gaussians Regressor's own unconstrained parameterisation
(`gaussians.activate`: all zeros are its initial splats). Zeros everywhere is the mean head
(template shape, neutral face, default framing and light), the default start.

`predictions` turns them into the predictor's output structures (`PredictorOutput`: "source" =
what a video shares, "target" = one frame's motion), so `objective.render_target` and the loss
registry score a fit exactly as they score training.
"""
import dataclasses
from typing import Dict, Optional

import jax.numpy as jnp
import numpy as np

from sheap_jax.head import flame as flame_lib
from sheap_jax.models import gaussians
from sheap_jax.models import predictor as predictor_lib
from sheap_jax.render import rigging

# FLAME fields fitted per frame (shape is per video), as named in flame.FlameParams.
FRAME_FIELDS = ("expression", "global_pose", "neck_pose", "jaw_pose", "eye_pose", "eyelids")
# The per-splat variables: unconstrained inputs of `gaussians.activate`, in its argument order.
SPLAT_FIELDS = ("offsets", "rotations", "log_scales", "opacity_logits", "colour_logits")
# Optimiser groups (configs/fit.py: learning rate and start step of each) of every variable.
GROUPS = {"shape": "shape", "expression": "expression", "global_pose": "pose",
          "neck_pose": "pose", "jaw_pose": "pose", "eye_pose": "pose", "eyelids": "eyelids",
          "camera": "camera", "lighting": "lighting", "offsets": "splat_offsets",
          "rotations": "splat_rotations", "log_scales": "splat_scales",
          "opacity_logits": "splat_opacities", "colour_logits": "splat_colours"}
GEOMETRY_GROUPS = ("shape", "expression", "pose", "eyelids", "camera")


def init_variables(num_frames: int, num_splat_faces: int, slots: int, n_shape: int,
                   n_expression: int, initial: Optional[flame_lib.FlameParams] = None
                   ) -> Dict[str, jnp.ndarray]:
  """The mean head (all zeros), or with `initial` (per-frame FlameParams, (T, ...); its shape
  is averaged over frames) those FLAME values and camera translations."""
  zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
  widths = dict(expression=n_expression, global_pose=3, neck_pose=3, jaw_pose=3, eye_pose=6,
                eyelids=2)
  variables = dict(shape=zeros(n_shape), camera=zeros(num_frames, 3), lighting=zeros(9, 3),
                   **{f: zeros(num_frames, widths[f]) for f in FRAME_FIELDS})
  splat_widths = (3, 4, 2, 1, 3)
  variables["splats"] = {f: zeros(num_splat_faces, slots, w)
                         for f, w in zip(SPLAT_FIELDS, splat_widths)}
  if initial is not None:
    given = {f.name: np.asarray(getattr(initial, f.name), np.float32)
             for f in dataclasses.fields(initial)}
    expected = {f: variables[f].shape for f in FRAME_FIELDS}
    expected.update(translation=variables["camera"].shape)
    wrong = {f: given[f].shape for f in expected if given[f].shape != expected[f]}
    if wrong or given["shape"].shape[-1] != n_shape:
      raise ValueError(f"sheap_jax/fitting/variables.py: initial FLAME parameters {wrong} "
                       f"(shape {given['shape'].shape}) do not fit {num_frames} frames, "
                       f"{n_shape} shape and {n_expression} expression components")
    variables.update({f: jnp.asarray(given[f]) for f in FRAME_FIELDS},
                     shape=jnp.asarray(given["shape"].reshape(-1, n_shape).mean(0)),
                     camera=jnp.asarray(given["translation"]))
  return variables


def group_labels(variables) -> Dict:
  """The optimiser group of every leaf (a pytree of strings shaped like `variables`)."""
  return {name: ({f: GROUPS[f] for f in value} if name == "splats" else GROUPS[name])
          for name, value in variables.items()}


def local_gaussians(variables, batch: int) -> rigging.LocalGaussians:
  """The video's Gaussians, repeated for `batch` frames ((B, F, K, ...), as the loss terms read
  per-frame Gaussians)."""
  local = gaussians.activate(*(variables["splats"][f] for f in SPLAT_FIELDS))
  return local.replace(**{f.name: jnp.broadcast_to(getattr(local, f.name),
                                                   (batch,) + getattr(local, f.name).shape)
                          for f in dataclasses.fields(local)})


def predictions(variables, frames: jnp.ndarray):
  """(source, target) PredictorOutputs of the frames `frames` (B,) int: the shared shape and
  lighting in both, each frame's motion and camera in the target."""
  batch = frames.shape[0]
  shared = lambda x: jnp.broadcast_to(x, (batch,) + x.shape)
  motion = {f: variables[f][frames] for f in FRAME_FIELDS}
  target = predictor_lib.PredictorOutput(
      shape=shared(variables["shape"]), camera_translation=variables["camera"][frames],
      lighting=shared(variables["lighting"]), identity=jnp.zeros((batch, 0), jnp.float32),
      **motion)
  return target, target


def flame_params(variables) -> flame_lib.FlameParams:
  """Every frame's fitted FLAME parameters (T, ...), the camera translation as `translation`
  (the synthetic data's convention: camera.flame_viewmat's argument)."""
  frames = variables["camera"].shape[0]
  return flame_lib.FlameParams(
      shape=jnp.broadcast_to(variables["shape"], (frames,) + variables["shape"].shape),
      translation=variables["camera"], **{f: variables[f] for f in FRAME_FIELDS})
