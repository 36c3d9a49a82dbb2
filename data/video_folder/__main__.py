"""Builds `video_folder` from a folder of videos:

  python -m data.video_folder --videos path/to/videos --data_dir ~/tensorflow_datasets

prints the built dataset's directory (what `data.pairs.make_pair_iterator` takes) and the
sources and frames it skipped. Options that change a named configuration (224, 64) make a custom
one, which needs its own --name (train with --config.data.variant=NAME).
"""
import argparse
import dataclasses
import logging

import tensorflow_datasets as tfds

from data.video_folder import VideoFolder


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--videos", required=True, help="folder of videos / frame folders")
  parser.add_argument("--data_dir", required=True, help="where TFDS writes the dataset")
  parser.add_argument("--config", default="224", choices=[c.name for c in
                                                          VideoFolder.BUILDER_CONFIGS])
  parser.add_argument("--name", help="name of a custom configuration (needed with the options "
                                     "below)")
  parser.add_argument("--landmark_type", choices=("2d", "3d"),
                      help="what the landmark files hold (default 2d)")
  parser.add_argument("--validation_every", type=int,
                      help="hold out every k-th source as `validation` (default 10; 0: none)")
  parser.add_argument("--no_face_models", action="store_true",
                      help="crops from the LBP cascade only: no landmarks, no matte")
  parser.add_argument("--max_frames", type=int, help="at most this many frames per video")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  config = next(c for c in VideoFolder.BUILDER_CONFIGS if c.name == args.config)
  changes = {key: value for key, value in (
      ("given_landmark_type", args.landmark_type), ("validation_every", args.validation_every),
      ("face_models", False if args.no_face_models else None),
      ("max_frames", args.max_frames)) if value is not None}
  if changes:
    if not args.name or args.name in [c.name for c in VideoFolder.BUILDER_CONFIGS]:
      parser.error(f"{sorted(changes)} make a custom configuration: give it a new --name")
    config = dataclasses.replace(config, name=args.name, **changes)
  elif args.name:
    parser.error("--name is for custom configurations (with --landmark_type, "
                 "--validation_every, --no_face_models or --max_frames)")
  builder = VideoFolder(config=config, data_dir=args.data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=args.videos))
  for name, why in builder.info.metadata.get("skipped", {}).items():
    print(f"skipped {name}: {why}")
  for name, frames in builder.info.metadata.get("skipped_frames", {}).items():
    print(f"{name}: {len(frames)} frame(s) without a face skipped (first: frame {frames[0][0]}, "
          f"{frames[0][1]})")
  print(builder.data_path)


if __name__ == "__main__":
  main()
