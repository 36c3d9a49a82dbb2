"""A trained SHeaP rebuilt from its training workdir alone, for prediction and evaluation.

    predictor = checkpoint_predictor.load("runs/cpu")
    params = predictor(images, {})                 # a `predictors.Predictor`: FLAME parameters
    out = predictor.predict(images, avatar=True)   # + camera, posed mesh, Gaussian avatar

Everything comes from the checkpoint: the config it stores names the networks, the FLAME model
(`config.flame_path`, else the built-in head) and DINOv2 (`config.dinov2.path`, else the same
seeded random encoder training used), and the train state holds the weights.

What a prediction means (as in `objective.reanimate`): FLAME parameters with zero translation
give the posed mesh in FLAME's frame; the predicted camera translation moves the head in SHeaP's
default framing (`camera.flame_viewmat`, FOV 14.25 degrees), which is how the mesh lines up with
the input crop. The avatar is the Gaussians Regressor's output for the image (identity features
+ DINOv2 tokens) rigged onto the predicted mesh: world-space 2D Gaussians whose features are the
unshaded albedo.
"""
import functools
import os
from typing import Any, Optional

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import rasterizer
from sheap_jax.geometry import camera as camera_lib
from sheap_jax.training import checkpoints
from sheap_jax.head import flame as flame_lib
from sheap_jax.training import objective
from sheap_jax.render import rigging
from sheap_jax.models import dinov2

_FILE = "sheap_jax/inference/checkpoint_predictor.py"


@struct.dataclass
class Prediction:
  """What the model reads off a batch of head crops (batch first)."""

  flame: flame_lib.FlameParams  # translation zero: the head in FLAME's frame
  camera_translation: jnp.ndarray  # (B, 3) metres, moves the head in the default framing
  vertices: jnp.ndarray  # (B, V, 3) posed mesh, FLAME frame
  landmarks: jnp.ndarray  # (B, 68, 3) FLAME's 68 landmarks on that mesh
  splats: Optional[rasterizer.Splats] = None  # (B, N, ...) the rigged avatar (albedo features)


def crop_cameras(camera_translation: jnp.ndarray, size: int) -> camera_lib.Camera:
  """Batched cameras (B) that see the predicted heads as the `size` x `size` input crops do."""
  viewmats = jax.vmap(camera_lib.flame_viewmat)(jnp.asarray(camera_translation, jnp.float32))
  K = camera_lib.intrinsics_from_fov(camera_lib.SHEAP_FOV_Y_DEGREES, size, size)
  return camera_lib.Camera(K=jnp.broadcast_to(K, (viewmats.shape[0], 3, 3)), viewmat=viewmats,
                           width=size, height=size)


def predict(networks: objective.Networks, params, frozen: objective.Frozen, config,
            images: jnp.ndarray, avatar: bool = False) -> Prediction:
  """Images (B, H, W, 3) -> `Prediction` (pure, jittable; `avatar` adds DINOv2, the Gaussians
  Regressor and rigging). Float images are in [0, 1], uint8 ones in [0, 255]; both are resized
  to the networks' square `config.model.image_size`."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  images = objective.resize_images(images.astype(jnp.float32), config.model.image_size)
  out = networks.predictor.apply({"params": params["predictor"]}, images)
  flame_params = flame_lib.FlameParams(
      shape=out.shape, expression=out.expression, global_pose=out.global_pose,
      neck_pose=out.neck_pose, jaw_pose=out.jaw_pose, eye_pose=out.eye_pose,
      eyelids=out.eyelids, translation=jnp.zeros_like(out.camera_translation))
  mesh = flame_lib.flame_forward(frozen.flame, flame_params)
  splats = None
  if avatar:
    if "regressor" not in params:
      raise ValueError(f"{_FILE}: this model was trained with config.renderer="
                       f"{config.renderer!r} and has no Gaussians Regressor: predict without "
                       "the avatar")
    tokens = dinov2.frozen_features(
        networks.dinov2, frozen.dinov2,
        objective.resize_images(images, config.dinov2.image_size)).patch_tokens
    local = networks.regressor.apply({"params": params["regressor"]}, out.identity, tokens,
                                     frozen.layout)
    splats = rigging.rig_gaussians(local, mesh.vertices, frozen.splat_faces)
  return Prediction(flame=flame_params, camera_translation=out.camera_translation,
                    vertices=mesh.vertices, landmarks=mesh.landmarks68, splats=splats)


class CheckpointPredictor:
  """A trained model: call it as a `predictors.Predictor`, or `predict` for everything."""

  def __init__(self, config, params, frozen: objective.Frozen, step: Optional[int] = None):
    self.config = config
    self.params = params
    self.frozen = frozen
    self.step = step
    self.networks = objective.build_networks(config)
    self._predict = jax.jit(functools.partial(predict, self.networks, config=config),
                            static_argnames=("avatar",))

  @property
  def image_size(self) -> int:
    """The square input size the networks were trained at."""
    return int(self.config.model.image_size)

  @property
  def has_gaussians(self) -> bool:
    """Whether the model predicts a Gaussian avatar (trained through the Gaussians, not the
    mesh renderer)."""
    return "regressor" in self.params

  @property
  def flame_model(self) -> flame_lib.FlameModel:
    return self.frozen.flame

  @property
  def faces(self) -> np.ndarray:
    return np.asarray(self.frozen.flame.faces)

  def predict(self, images, avatar: bool = False) -> Prediction:
    """Images (B, H, W, 3), float in [0, 1] or uint8 (converted on the device), any square size
    (resized to `image_size` on the device)."""
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"{_FILE}: images must be (B, H, W, 3), got {tuple(images.shape)}")
    return self._predict(self.params, frozen=self.frozen, images=images, avatar=avatar)

  def __call__(self, images, examples: Any = None) -> flame_lib.FlameParams:
    """`predictors.Predictor`: FLAME parameters (zero translation) of head crops."""
    del examples
    return self.predict(images).flame


def load(directory: str, step: Optional[int] = None) -> CheckpointPredictor:
  """The model of a training workdir's newest checkpoint (or of `step`): its stored config and
  the params of its train state (the optimiser state is not read)."""
  checkpoints_dir = checkpoints.checkpoints_dir(directory)
  steps = ocp.utils.checkpoint_steps(checkpoints_dir) if os.path.isdir(checkpoints_dir) else []
  if not steps:
    raise ValueError(f"{_FILE}: {directory!r} holds no checkpoint (checkpoint_predictor.load "
                     "expects a training workdir with checkpoints/<step>/, as `python -m "
                     "sheap_jax.train` writes)")
  if step is not None and step not in steps:
    raise ValueError(f"{_FILE}: {directory!r} has no checkpoint of step {step} (has "
                     f"{sorted(steps)})")
  config = checkpoints.load_config(directory, step)
  networks = objective.build_networks(config)
  frozen = objective.build_frozen(config, objective.load_flame_model(config))
  abstract = jax.eval_shape(lambda: objective.init_params(networks, frozen, config,
                                                          jax.random.PRNGKey(0)))
  params, step = checkpoints.restore_params(directory, abstract, config, step)
  return CheckpointPredictor(config, params, frozen, step)
