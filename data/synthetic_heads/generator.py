"""Frames of `synthetic_heads`, deterministic per (config, identity, frame).

Every random draw comes from a generator seeded by (config.seed, identity, purpose[, frame]),
so a frame is the same whichever process, order or shard produces it, and `frame(i, t)` equals
the t-th record of `video(i)`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from data.synthetic_heads import assets as assets_lib
from data.synthetic_heads import variants
from data.synthetic_heads import detector
from data.synthetic_heads import features as F
from data.synthetic_heads import identity as identity_lib
from data.synthetic_heads import render
from data.synthetic_heads import texture
from data.synthetic_heads import trajectories
from sheap_jax.geometry import camera as camera_lib
from sheap_jax.head import flame

_IDENTITY, _SCRIPT, _DETECTOR = 0, 1, 2  # purposes in the seed sequence


class FrameGenerator:
  """Builds the static scene once, then renders any identity's frames."""

  def __init__(self, config: variants.SyntheticHeadsConfig):
    self.config = config
    self.static = assets_lib.head_assets()
    self.scene = render.build_scene(self.static)
    self.maps = assets_lib.texel_maps(config.texture_size)
    self.camera = camera_lib.default_camera(config.image_size, config.image_size)
    self.bias_field = detector.bias_field(config.detector)

  def _rng(self, *purpose) -> np.random.Generator:
    return np.random.default_rng([self.config.seed, *purpose])

  def identity(self, identity_index: int) -> identity_lib.Identity:
    return identity_lib.sample_identity(self._rng(identity_index, _IDENTITY),
                                        self.maps.face_texels, len(self.static.hair.source))

  def script(self, identity_index: int, ident: identity_lib.Identity):
    c = self.config
    return trajectories.sample_script(self._rng(identity_index, _SCRIPT), c.frames_per_video,
                                      c.frame_interval, c.emotion_probability,
                                      c.occluder_probability, ident.appearance.skin)

  def _video_state(self, identity_index: int) -> tuple:
    """What all frames of a video share: identity, script, texture, neutral mesh."""
    ident = self.identity(identity_index)
    script = self.script(identity_index, ident)
    paint = texture.paint_texture(self.maps.positions, self.maps.regions,
                                  self.static.landmark_points, self.static.eye_centres, ident)
    neutral = flame.neutral_vertices(self.static.model, jnp.asarray(ident.shape)[None])[0]
    return ident, script, paint, np.asarray(neutral)

  def video(self, identity_index: int):
    """Yields the feature dicts (features.py) of the identity's video, in frame order."""
    state = self._video_state(identity_index)
    for t in range(self.config.frames_per_video):
      yield self._frame(identity_index, t, *state)

  def frame(self, identity_index: int, frame_index: int) -> dict:
    """One frame alone (re-derives its identity and script)."""
    if not 0 <= frame_index < self.config.frames_per_video:
      raise ValueError(f"data/synthetic_heads/generator.py: frame {frame_index} outside "
                       f"[0, {self.config.frames_per_video})")
    return self._frame(identity_index, frame_index, *self._video_state(identity_index))

  def _frame(self, identity_index, t, ident, script, paint, neutral) -> dict:
    c = self.config
    frame = render.frame_at(script, t)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.seed), identity_index), t)
    out = render.render_frame(self.scene, ident, paint, script, frame, self.camera,
                              jnp.asarray(self.bias_field), key, supersample=c.supersample)
    out = jax.tree_util.tree_map(np.asarray, out)
    focal = float(self.camera.K[0, 0])
    landmarks, valid = detector.detect(
        self._rng(identity_index, _DETECTOR, t), c.detector, out.biased_landmarks,
        out.landmark_depth, out.landmarks_visible, focal, c.image_size, c.image_size)
    image = np.round(out.image * 255.0).astype(np.uint8)
    example = {
        F.IMAGE: F.encode_image(image),
        F.LANDMARKS: landmarks,
        F.LANDMARKS_VALID: valid,
        F.VIDEO_ID: identity_index,
        F.FRAME_INDEX: t,
        F.VIDEO_NUM_FRAMES: c.frames_per_video,
        F.GT_SHAPE: ident.shape,
        F.GT_EXPRESSION: frame.expression,
        F.GT_GLOBAL_POSE: frame.global_pose,
        F.GT_NECK_POSE: frame.neck_pose,
        F.GT_JAW_POSE: frame.jaw_pose,
        F.GT_EYE_POSE: frame.eye_pose,
        F.GT_EYELIDS: frame.eyelids,
        F.GT_TRANSLATION: frame.translation,
        F.GT_CAMERA_K: np.asarray(self.camera.K),
        F.GT_CAMERA_VIEWMAT: np.asarray(self.camera.viewmat),
        F.GT_LANDMARKS: out.landmarks.astype(np.float32),
        F.GT_LANDMARKS_VISIBLE: out.landmarks_visible,
        F.GT_LIGHTING: script.lighting,
        F.GT_EMOTION: int(script.emotion[t]),
        F.GT_OCCLUDED: bool(out.occluded),
    }
    if c.store_vertices:
      example[F.GT_VERTICES] = out.vertices.astype(np.float32)
      example[F.GT_NEUTRAL_VERTICES] = neutral.astype(np.float32)
    return example
