"""Named expression prototypes in the built-in head's leading expression modes.

Each prototype sets the semantic modes of `sheap_jax.head.head_model.EXPRESSION_MODES` (in units of
their standard deviation), a jaw opening (radians) and eyelid closure. Frames drawn from a
prototype carry its index in `features.EMOTIONS` as `gt_emotion`, for the expressiveness probe.
"""
import numpy as np

from data.synthetic_heads import features
from sheap_jax.head import head_model

NUM_EXPRESSION = 100
_MODE = {name: i for i, (name, _) in enumerate(head_model.EXPRESSION_MODES)}

# name -> ({mode: sd}, jaw opening (rad), eyelid closure).
PROTOTYPES = {
    "neutral": ({}, 0.0, 0.0),
    "happy": ({"smile": 2.2, "squint": 1.2, "mouth open": 0.3, "cheek puff": 0.4}, 0.04, 0.15),
    "sad": ({"smile": -1.6, "frown": 1.0, "brow raise": 0.8, "pucker": 0.4}, 0.0, 0.3),
    "surprise": ({"brow raise": 2.5, "mouth open": 1.4}, 0.22, -0.15),
    "fear": ({"brow raise": 1.7, "frown": 1.1, "lip stretch": 2.0, "mouth open": 0.6}, 0.1, -0.1),
    "anger": ({"frown": 2.5, "brow raise": -1.0, "squint": 0.9, "pucker": 0.6}, 0.0, 0.2),
    "disgust": ({"left smirk": 1.8, "squint": 1.6, "frown": 1.0, "smile": -0.6}, 0.02, 0.35),
}
assert tuple(PROTOTYPES) == features.EMOTIONS


def prototype(name: str) -> tuple:
  """(expression (100,), jaw opening, eyelid closure) of a named prototype."""
  modes, jaw, eyelids = PROTOTYPES[name]
  expression = np.zeros(NUM_EXPRESSION, np.float32)
  for mode, value in modes.items():
    expression[_MODE[mode]] = value
  return expression, jaw, eyelids


def sample_expression(rng: np.random.Generator, emotion: int) -> tuple:
  """One occurrence: a prototype (emotion >= 0) at a random intensity with a little of every
  other mode, or a random talking face (emotion -1). Returns (expression, jaw, eyelids)."""
  if emotion >= 0:
    expression, jaw, eyelids = prototype(features.EMOTIONS[emotion])
    intensity = rng.uniform(0.7, 1.2)
    expression = intensity * expression + rng.normal(0.0, 0.15, NUM_EXPRESSION)
    return expression.astype(np.float32), intensity * jaw, intensity * eyelids
  scale = np.where(np.arange(NUM_EXPRESSION) < len(_MODE), 0.7, 0.25)
  return ((rng.normal(0.0, 1.0, NUM_EXPRESSION) * scale).astype(np.float32),
          rng.uniform(0.0, 0.12), rng.uniform(0.0, 0.2))
