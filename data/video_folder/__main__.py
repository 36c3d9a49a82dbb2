"""Builds `video_folder` from a folder of videos:

  python -m data.video_folder --videos path/to/videos --data_dir ~/tensorflow_datasets

prints the built dataset's directory (what `data.pairs.make_pair_iterator` takes) and the
sources it skipped.
"""
import argparse
import logging

import tensorflow_datasets as tfds

from data.video_folder import VideoFolder


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--videos", required=True, help="folder of videos / frame folders")
  parser.add_argument("--data_dir", required=True, help="where TFDS writes the dataset")
  parser.add_argument("--config", default="224", choices=[c.name for c in
                                                          VideoFolder.BUILDER_CONFIGS])
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  builder = VideoFolder(config=args.config, data_dir=args.data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=args.videos))
  for name, why in builder.info.metadata.get("skipped", {}).items():
    print(f"skipped {name}: {why}")
  print(builder.data_path)


if __name__ == "__main__":
  main()
