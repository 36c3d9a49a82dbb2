"""A video's script: smooth per-frame head motion, expressions, blinks, gaze, lighting,
background and an occasional occluder, all drawn with NumPy from the video's generator.

Motions are sums of a few random sinusoids (0.05-0.6 Hz), so any two frames of a video are
related by a smooth path and the script is defined for any frame count. Expressions follow a
schedule of segments (1-3 s) each holding a prototype emotion or a random talking face, with
smooth transitions; only frames held close to one prototype carry its label.
"""
from flax import struct
import numpy as np

from data.synthetic_heads import expressions
from sheap_jax.geometry import shading

NUM_BLOBS = 4
LABEL_BLEND = 0.9  # a frame carries a prototype's label when its weight is at least this


@struct.dataclass
class Background:
  """Per-video backdrop in image space (coordinates are fractions of the image)."""

  colours: np.ndarray  # (2, 3) gradient end colours
  direction: np.ndarray  # (2,) unit gradient direction
  blob_centres: np.ndarray  # (NUM_BLOBS, 2)
  blob_radii: np.ndarray  # (NUM_BLOBS,)
  blob_colours: np.ndarray  # (NUM_BLOBS, 3)
  stripe_frequency: np.ndarray  # (2,) cycles per image along x, y
  stripe_amplitude: np.ndarray  # ()


@struct.dataclass
class Occluder:
  """A hand (skin-coloured ellipse) or an object (rounded box) passing in front of the face."""

  active: np.ndarray  # (T,) bool
  centre: np.ndarray  # (T, 2) fractions of the image
  half_size: np.ndarray  # (2,) fractions of the image
  angle: np.ndarray  # () radians
  roundness: np.ndarray  # () 1: ellipse, 0: box with small rounded corners
  colour: np.ndarray  # (3,)


@struct.dataclass
class VideoScript:
  """Per-frame FLAME parameters (leading T) and per-video scene settings."""

  expression: np.ndarray  # (T, 100)
  global_pose: np.ndarray  # (T, 3)
  neck_pose: np.ndarray  # (T, 3)
  jaw_pose: np.ndarray  # (T, 3)
  eye_pose: np.ndarray  # (T, 6)
  eyelids: np.ndarray  # (T, 2)
  translation: np.ndarray  # (T, 3)
  emotion: np.ndarray  # (T,) int64, -1 when not held at a prototype
  lighting: np.ndarray  # (9, 3) SH radiance, camera frame
  light_direction: np.ndarray  # (3,) unit, towards the key light, camera frame
  light_colour: np.ndarray  # (3,) key light radiance (also drives the highlights)
  background: Background
  occluder: Occluder


def _sinusoids(rng, times, amplitude, low=0.05, high=0.6, count=3):
  """(T,) smooth signal: random sinusoids, total amplitude about `amplitude`."""
  freq = rng.uniform(low, high, count)
  phase = rng.uniform(0, 2 * np.pi, count)
  weight = rng.dirichlet(np.ones(count)) * amplitude
  return np.sum(weight * np.sin(2 * np.pi * freq * times[:, None] + phase), axis=1)


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def _expression_schedule(rng, times, emotion_probability):
  """Expression, jaw opening, eyelid closure and label per frame."""
  duration = times[-1] + 1.0
  starts = [0.0]
  while starts[-1] < duration:
    starts.append(starts[-1] + rng.uniform(1.0, 3.0))
  transition = 0.4
  targets, labels = [], []
  for _ in starts:
    emotion = int(rng.integers(0, 7)) if rng.uniform() < emotion_probability else -1
    targets.append(expressions.sample_expression(rng, emotion))
    labels.append(emotion)
  # Weight of each segment: ramps in over `transition` seconds after its start.
  index = np.searchsorted(np.asarray(starts), times, side="right") - 1
  ramp = _smoothstep((times - np.asarray(starts)[index]) / transition)
  expression = np.zeros((len(times), expressions.NUM_EXPRESSION), np.float32)
  jaw = np.zeros(len(times))
  lids = np.zeros(len(times))
  label = np.full(len(times), -1, np.int64)
  for t, (k, w) in enumerate(zip(index, ramp)):
    previous = targets[max(k - 1, 0)]
    current = targets[k]
    expression[t] = (1 - w) * previous[0] + w * current[0]
    jaw[t] = (1 - w) * previous[1] + w * current[1]
    lids[t] = (1 - w) * previous[2] + w * current[2]
    if w >= LABEL_BLEND or k == 0:
      label[t] = labels[k]
  return expression, jaw, lids, label


def _blinks(rng, times):
  """Eyelid closure from blinks every 2-6 s, each about 0.25 s long."""
  closure = np.zeros(len(times))
  t = rng.uniform(0.0, 3.0)
  while t < times[-1] + 1.0:
    closure = np.maximum(closure, np.clip(1.0 - np.abs(times - t) / 0.125, 0.0, 1.0))
    t += rng.uniform(2.0, 6.0)
  return closure


def _lighting(rng):
  """SH radiance: tinted ambient plus a key light from the camera's side, plus a little of
  every band (bounce light)."""
  tint = rng.uniform(0.85, 1.15, 3)
  direction = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.3), rng.uniform(-1.5, -0.3)])
  direction /= np.linalg.norm(direction)
  colour = rng.uniform(0.35, 0.9) * tint * rng.uniform(0.9, 1.1, 3)
  ambient = rng.uniform(0.35, 0.7) * tint
  coeffs = np.asarray(shading.ambient_directional_sh(ambient, colour, direction), np.float64)
  coeffs[1:] += rng.normal(0.0, 0.04, (8, 3))
  return coeffs.astype(np.float32), direction.astype(np.float32), colour.astype(np.float32)


def _background(rng):
  angle = rng.uniform(0, 2 * np.pi)
  return Background(
      colours=rng.uniform(0.05, 0.95, (2, 3)).astype(np.float32),
      direction=np.array([np.cos(angle), np.sin(angle)], np.float32),
      blob_centres=rng.uniform(0, 1, (NUM_BLOBS, 2)).astype(np.float32),
      blob_radii=rng.uniform(0.08, 0.4, NUM_BLOBS).astype(np.float32),
      blob_colours=rng.uniform(0.0, 1.0, (NUM_BLOBS, 3)).astype(np.float32),
      stripe_frequency=rng.uniform(-12, 12, 2).astype(np.float32),
      stripe_amplitude=np.float32(rng.choice([0.0, rng.uniform(0.02, 0.12)])))


def _occluder(rng, num_frames, probability, skin):
  active = np.zeros(num_frames, bool)
  if rng.uniform() < probability:
    first = rng.integers(0, num_frames)
    active[first:first + rng.integers(1, max(2, num_frames // 2) + 1)] = True
  start, end = rng.uniform(0.15, 0.85, (2, 2))
  start[1], end[1] = rng.uniform(0.45, 0.95, 2)  # mostly over the lower face
  steps = np.linspace(0.0, 1.0, num_frames)[:, None]
  is_hand = rng.uniform() < 0.5
  return Occluder(
      active=active,
      centre=((1 - steps) * start + steps * end).astype(np.float32),
      half_size=rng.uniform(0.08, 0.2, 2).astype(np.float32),
      angle=np.float32(rng.uniform(0, np.pi)),
      roundness=np.float32(1.0 if is_hand else 0.0),
      colour=(skin * rng.uniform(0.9, 1.1, 3) if is_hand
              else rng.uniform(0.05, 0.95, 3)).astype(np.float32))


def sample_script(rng: np.random.Generator, num_frames: int, frame_interval: float,
                  emotion_probability: float, occluder_probability: float,
                  skin: np.ndarray) -> VideoScript:
  """Draws a video's script; frame t is at time t * frame_interval seconds."""
  times = np.arange(num_frames) * frame_interval
  expression, jaw, lids, emotion = _expression_schedule(rng, times, emotion_probability)
  talking = (emotion < 0) * np.abs(_sinusoids(rng, times, 0.08, 2.0, 5.0))
  yaw = rng.uniform(-0.35, 0.35) + _sinusoids(rng, times, 0.35)
  pitch = rng.uniform(-0.12, 0.12) + _sinusoids(rng, times, 0.18)
  roll = rng.uniform(-0.08, 0.08) + _sinusoids(rng, times, 0.08)
  body = np.stack([_sinusoids(rng, times, a) for a in (0.04, 0.08, 0.03)], axis=1)
  # Both eyes turn together (pitch about x, yaw about y, radians).
  gaze = np.stack([_sinusoids(rng, times, 0.15), _sinusoids(rng, times, 0.25),
                   np.zeros_like(times)], axis=1)
  lids = np.clip(lids + _blinks(rng, times), 0.0, 1.0)
  base = np.array([rng.uniform(-0.012, 0.012), rng.uniform(-0.035, -0.015),
                   rng.uniform(-0.3, 0.02)])
  drift = np.stack([_sinusoids(rng, times, a) for a in (0.006, 0.004, 0.02)], axis=1)
  lighting, light_direction, light_colour = _lighting(rng)
  f32 = lambda a: np.asarray(a, np.float32)
  return VideoScript(
      expression=f32(expression),
      global_pose=f32(body),
      neck_pose=f32(np.stack([pitch, yaw, roll], axis=1)),
      jaw_pose=f32(np.stack([np.clip(jaw + talking, 0.0, 0.35), np.zeros_like(times),
                             np.zeros_like(times)], axis=1)),
      eye_pose=f32(np.concatenate([gaze, gaze], axis=1)),
      eyelids=f32(np.stack([lids, lids], axis=1)),
      translation=f32(base + drift),
      emotion=emotion,
      lighting=lighting, light_direction=light_direction, light_colour=light_colour,
      background=_background(rng),
      occluder=_occluder(rng, num_frames, occluder_probability, skin))
