"""Predicts FLAME heads, meshes and Gaussian avatars for images, folders and videos.

    python -m sheap_jax.predict --checkpoint runs/cpu --input photo.jpg --output out/
    python -m sheap_jax.predict --checkpoint runs/cpu --input frames/ --output out/ --batch_size 32
    python -m sheap_jax.predict --checkpoint runs/cpu --input clip.mp4 --output out/

Each input is an image or a video (PyAV: .mp4, .avi, .mov, .mkv, .webm, ...); a folder is read
file by file, in name order. The face's 68 landmarks come from the face models
(`sheap_jax.face`: detection and face mesh; a video's face is tracked through its frames), or
from `--landmarks DIR/<input stem>.npy` ((68, 2) for an image, (T, 68, 2) for a video), and
SHeaP's video crop (`crop.py`) cuts it out; a video's boxes are smoothed over frames, and frames
where no face is found take the box of the nearest frame where one is. Without the face models
(`python -m sheap_jax.face fetch`; or `--lbp`), scikit-image's LBP cascade finds the face, with
a warning: its crops are looser. `--whole_image`
takes inputs that are head crops already (such as `synthetic_heads` frames) as they are.

Outputs, in `<output>/<input stem>/`:
- images: `params.json` and `params.npz` (FLAME parameters, camera, crop box, landmarks),
  `mesh.obj` and `mesh.ply` (posed, FLAME frame), `gaussians.ply` (the avatar, 3DGS layout,
  `export.py`), `overlay.png` (crop | mesh | blend);
- videos: `params.json` / `params.npz` with one row per frame, `meshes.npz` (vertices per frame
  and the faces), `overlay.mp4` (one overlay strip per input frame); no avatar.
Inputs that are not images or videos, cannot be read, or show no face get one line each on
stderr and are skipped. The exit code is 0 when at least one input succeeded, 1 otherwise.
"""
import argparse
import os
import sys

from sheap_jax.face import crop
from sheap_jax.inference import pipeline


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="training workdir (checkpoints/<step>)")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  parser.add_argument("--input", required=True, help="an image, a video, or a folder of them")
  parser.add_argument("--output", required=True, help="folder for the results")
  parser.add_argument("--batch_size", type=int, default=8, help="frames per model call")
  parser.add_argument("--landmarks", help="folder of <input stem>.npy 68-point landmarks "
                                          "(pixels); without one, the face detector")
  parser.add_argument("--lbp", action="store_true",
                      help="find faces with scikit-image's LBP cascade, not the face models")
  parser.add_argument("--whole_image", action="store_true",
                      help="inputs are head crops already (e.g. synthetic_heads frames): use "
                           "each whole frame, padded to a square, instead of finding the face")
  parser.add_argument("--crop_size", type=int, default=crop.CROP_SIZE,
                      help="side of the head crop and of each overlay panel, pixels")
  parser.add_argument("--no_gaussians", action="store_true",
                      help="skip the Gaussian avatar (DINOv2 + regressor) and gaussians.ply")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
  if args.crop_size < 16:
    parser.error(f"--crop_size must be >= 16, got {args.crop_size}")
  if args.landmarks and not os.path.isdir(args.landmarks):
    parser.error(f"--landmarks {args.landmarks}: not a folder")
  return args


def main(argv=None) -> int:
  """Returns the exit code: 0 when some input succeeded (`inference/pipeline.py`)."""
  return pipeline.run(parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
