"""A simulated 68-point landmark detector, so landmarks alone cannot recover exact geometry.

Like a real detector compared with FLAME's embedding it has
- a fixed per-landmark bias: a 3D offset in the head's frame (rotating with root and neck),
  drawn once per dataset, smooth along each landmark contour, `bias_mm` root-mean-square
  (`contour_factor` times larger on the jaw line, whose definition is the least certain);
- per-frame Gaussian noise of `noise_mm` per image axis (three times more where the point is
  hidden: the detector guesses);
- outliers: with `outlier_probability` a point lands 10-25 mm away;
- failures: with `failure_probability`, or when under 30% of the points are visible, the
  frame has no landmarks (`landmarks_valid` all false).
Millimetres are measured at the face: they become pixels by the focal length over the depth.
"""
import dataclasses

import numpy as np

# iBUG 68 contours: jaw, brows, nose bridge, nostrils, eyes, outer and inner lips.
CONTOURS = (range(0, 17), range(17, 22), range(22, 27), range(27, 31), range(31, 36),
            range(36, 42), range(42, 48), range(48, 60), range(60, 68))
JAW = range(0, 17)
HIDDEN_NOISE_FACTOR = 3.0
OUTLIER_RANGE_MM = (10.0, 25.0)
MIN_VISIBLE_FRACTION = 0.3


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  bias_mm: float = 2.5
  contour_factor: float = 1.5
  noise_mm: float = 0.8
  outlier_probability: float = 0.01
  failure_probability: float = 0.02
  seed: int = 68


def bias_field(config: DetectorConfig) -> np.ndarray:
  """(68, 3) float32 bias in metres (head frame, z = 0), fixed by the config's seed."""
  rng = np.random.default_rng(config.seed)
  raw = rng.normal(size=(68, 2))
  smooth = np.zeros_like(raw)
  for contour in CONTOURS:
    ids = np.asarray(contour)
    padded = np.concatenate([raw[ids[:1]], raw[ids], raw[ids[-1:]]])
    smooth[ids] = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
  smooth /= np.sqrt(np.mean(np.sum(smooth ** 2, axis=1)))
  smooth[np.asarray(JAW)] *= config.contour_factor
  field = np.zeros((68, 3), np.float32)
  field[:, :2] = smooth * config.bias_mm * 1e-3
  return field


def pixels_per_metre(focal: float, depth: np.ndarray) -> np.ndarray:
  """Image scale at the face: (68,) pixels per metre at each landmark's depth."""
  return focal / np.asarray(depth)


def noise_sigma_px(config: DetectorConfig, focal: float, depth: np.ndarray,
                   visible: np.ndarray) -> np.ndarray:
  """(68,) per-axis noise standard deviation in pixels."""
  factor = np.where(visible, 1.0, HIDDEN_NOISE_FACTOR)
  return config.noise_mm * 1e-3 * pixels_per_metre(focal, depth) * factor


def detect(rng: np.random.Generator, config: DetectorConfig, biased: np.ndarray,
           depth: np.ndarray, visible: np.ndarray, focal: float, width: int, height: int):
  """(landmarks (68, 2) float32, valid (68,) bool) for one frame.

  biased (68, 2): projections of the biased points; depth (68,) their camera z; visible (68,)
  the ground-truth visibility.
  """
  sigma = noise_sigma_px(config, focal, depth, visible)
  landmarks = biased + rng.normal(size=(68, 2)) * sigma[:, None]
  outlier = rng.uniform(size=68) < config.outlier_probability
  angle = rng.uniform(0, 2 * np.pi, 68)
  jump = rng.uniform(*OUTLIER_RANGE_MM, 68) * 1e-3 * pixels_per_metre(focal, depth)
  landmarks += outlier[:, None] * jump[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
  failed = (rng.uniform() < config.failure_probability
            or np.mean(visible) < MIN_VISIBLE_FRACTION)
  inside = ((landmarks[:, 0] >= -0.5) & (landmarks[:, 0] <= width - 0.5)
            & (landmarks[:, 1] >= -0.5) & (landmarks[:, 1] <= height - 0.5))
  if failed:
    return np.zeros((68, 2), np.float32), np.zeros(68, bool)
  return landmarks.astype(np.float32), inside
