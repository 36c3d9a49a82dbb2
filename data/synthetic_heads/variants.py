"""The variants of `synthetic_heads` (TFDS builder configs: tiny, demo, small, ...): sizes,
rendering quality, behaviour probabilities."""
import dataclasses

import tensorflow_datasets as tfds

from data.synthetic_heads import detector as detector_lib


@dataclasses.dataclass(eq=False)
class SyntheticHeadsConfig(tfds.core.BuilderConfig):
  """One video per identity; identities [0, train), [train, train + validation), rest test."""

  num_train: int = 8
  num_validation: int = 2
  num_test: int = 2
  frames_per_video: int = 8
  image_size: int = 224
  texture_size: int = 512
  supersample: int = 2  # rendered at supersample x image_size, then box-filtered (anti-aliasing)
  frame_interval: float = 0.2  # seconds between stored frames
  emotion_probability: float = 0.6  # of an expression segment holding a named prototype
  occluder_probability: float = 0.25  # of a video having an occluder pass by
  detector: detector_lib.DetectorConfig = detector_lib.DetectorConfig()
  # Posed and neutral meshes per frame (136 KB each; each read pays for them): off by default,
  # ground_truth.py recomputes them from the gt_ parameters.
  store_vertices: bool = False
  seed: int = 2025

  def __post_init__(self):
    counts = (self.num_train, self.num_validation, self.num_test, self.frames_per_video)
    if min(counts) < 0 or self.frames_per_video < 1 or self.image_size < 8:
      raise ValueError(f"data/synthetic_heads/variants.py: config {self.name!r} needs >= 0 "
                       f"identities, >= 1 frame and image_size >= 8, got counts {counts}, "
                       f"image_size {self.image_size}")
    if self.supersample < 1 or self.texture_size < 16:
      raise ValueError(f"data/synthetic_heads/variants.py: config {self.name!r}: supersample "
                       f"must be >= 1 and texture_size >= 16")

  @property
  def splits(self) -> dict:
    """split name -> range of identity indices (= video ids)."""
    a, b = self.num_train, self.num_train + self.num_validation
    return {"train": range(0, a), "validation": range(a, b),
            "test": range(b, b + self.num_test)}


BUILDER_CONFIGS = (
    SyntheticHeadsConfig(
        name="tiny", description="12 identities x 8 frames at 224^2, no supersampling, 256^2 "
                                 "textures: quick to build on a CPU (tests, the CPU demo).",
        supersample=1, texture_size=256),
    SyntheticHeadsConfig(
        name="demo", description="64 identities (48 train, 16 validation) x 8 frames at 128^2, "
                                 "no supersampling, 256^2 textures: the CPU training demo (the "
                                 "README's main command); builds in about a minute.",
        num_train=48, num_validation=16, num_test=0, image_size=128, supersample=1,
        texture_size=256),
    SyntheticHeadsConfig(
        name="fit", description="16 identities x 24 frames at 128^2 (4.8 s of talking head, "
                                "yaw spread as every variant's), 256^2 textures, its own seed: "
                                "the fitting study's dev identities (docs/fitting.md), used by "
                                "nothing else.",
        num_train=0, num_validation=16, num_test=0, frames_per_video=24, image_size=128,
        supersample=1, texture_size=256, seed=1717),
    SyntheticHeadsConfig(
        name="small", description="500 identities x 24 frames at 224^2.",
        num_train=400, num_validation=50, num_test=50, frames_per_video=24),
    SyntheticHeadsConfig(
        name="full", description="5,000 identities x 32 frames at 224^2.",
        num_train=4500, num_validation=250, num_test=250, frames_per_video=32),
)
