"""TFDS builder `synthetic_heads`: talking-head videos rendered from the built-in FLAME head.

One record per frame, in video then frame order (shuffling disabled; see features.py for the
layout and feature names). Builds and reads without TensorFlow: ArrayRecord files, images as
PNG bytes.

    import tensorflow_datasets as tfds
    from data.synthetic_heads import builder  # registers the builder
    b = builder.SyntheticHeads(config="tiny", data_dir=DIR, file_format="array_record")
    b.download_and_prepare()
    source = b.as_data_source(split="train")  # or tfds.data_source("synthetic_heads/tiny", ...)
"""
import tensorflow_datasets as tfds

from data.synthetic_heads import variants
from data.synthetic_heads import expressions
from data.synthetic_heads import features


class SyntheticHeads(tfds.core.GeneratorBasedBuilder):
  """Synthetic talking heads with ground-truth FLAME geometry (evaluation only)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = list(variants.BUILDER_CONFIGS)
  DEFAULT_CONFIG_NAME = "tiny"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=features.features_dict(300, expressions.NUM_EXPRESSION,
                                        self.builder_config.store_vertices),
        disable_shuffling=True,  # records stay in (video, frame) order
        metadata=tfds.core.MetadataDict(
            image_size=self.builder_config.image_size,
            frames_per_video=self.builder_config.frames_per_video,
            emotions=list(features.EMOTIONS)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated
    return {name: self._generate_examples(identities)
            for name, identities in self.builder_config.splits.items() if len(identities)}

  def _generate_examples(self, identities):
    from data.synthetic_heads import generator  # JAX and the head build: only when generating
    frames = generator.FrameGenerator(self.builder_config)
    for identity_index in identities:
      for example in frames.video(identity_index):
        yield f"{identity_index:06d}_{example[features.FRAME_INDEX]:04d}", example
