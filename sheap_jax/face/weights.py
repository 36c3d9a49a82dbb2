"""The four TFLite face models: where they are cached, and how they get there.

Google ships them under Apache-2.0 inside the `mediapipe==0.10.14` wheel (DESIGN.md 4.5). They
are fetched from that wheel through the package registry with `pip download --no-deps` (the
wheel only: mediapipe is never installed), checked against the SHA-256 sums below and copied
into the cache folder: $SHEAP_JAX_FACE_MODELS, else $XDG_CACHE_HOME/sheap_jax/face_models
(~/.cache/... by default). The weights are never part of this repository.

Every platform's wheel holds the same four files; the pinned one is CPython 3.11 manylinux, and
its own SHA-256 is checked before anything is extracted.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, Optional

FETCH_COMMAND = "python -m sheap_jax.face fetch"
CACHE_ENV = "SHEAP_JAX_FACE_MODELS"
PACKAGE = "mediapipe==0.10.14"
# pip's platform selection for the pinned wheel (any platform's wheel holds the same models).
WHEEL_PLATFORM = ("--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
                  "--implementation", "cp", "--abi", "cp311")
WHEEL_NAME = "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
WHEEL_MB = 36

# Model name -> (path inside the wheel, SHA-256 of the file). The full-range sum equals the
# one MediaPipe's own build pins for face_detection_full_range_sparse.tflite.
MODELS: Dict[str, tuple] = {
    "face_detection_short_range": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "face_detection_full_range_sparse": (
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"),
    "face_landmark": (
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    "selfie_segmentation": (
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
}


class FaceModelsUnavailable(RuntimeError):
  """The face models are neither cached nor obtainable from the package registry."""


def cache_dir() -> str:
  """The folder the models are cached in (not created here)."""
  if os.environ.get(CACHE_ENV):
    return os.path.abspath(os.environ[CACHE_ENV])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "sheap_jax", "face_models")


def model_path(name: str, directory: Optional[str] = None) -> str:
  return os.path.join(directory or cache_dir(), name + ".tflite")


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def missing_models(directory: Optional[str] = None) -> list:
  """Names of the models absent from `directory` or whose SHA-256 does not match."""
  return [name for name, (_, digest) in MODELS.items()
          if not (os.path.isfile(model_path(name, directory))
                  and sha256(model_path(name, directory)) == digest)]


def extract_models(wheel: str, directory: str) -> None:
  """Copies the four models out of the mediapipe wheel `wheel` into `directory`, checking the
  wheel's and every file's SHA-256; a file is renamed into place only once it checks out."""
  if sha256(wheel) != WHEEL_SHA256:
    raise FaceModelsUnavailable(
        f"{wheel}: SHA-256 differs from the pinned {WHEEL_NAME} ({WHEEL_SHA256}); not using it")
  os.makedirs(directory, exist_ok=True)
  with zipfile.ZipFile(wheel) as archive:
    for name, (member, digest) in MODELS.items():
      target = model_path(name, directory)
      partial = target + ".partial"
      with archive.open(member) as source, open(partial, "wb") as out:
        out.write(source.read())
      measured = sha256(partial)
      if measured != digest:
        os.remove(partial)
        raise FaceModelsUnavailable(
            f"{wheel}: {member} has SHA-256 {measured}, not the pinned {digest}")
      os.replace(partial, target)


def download_wheel(into: str) -> str:
  """Downloads the pinned mediapipe wheel (no dependencies, nothing installed) into `into` with
  this interpreter's pip; returns its path."""
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             *WHEEL_PLATFORM, "--dest", into, "--quiet", PACKAGE]
  try:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  except (OSError, subprocess.TimeoutExpired) as error:
    raise FaceModelsUnavailable(f"pip download {PACKAGE} failed: {error}") from error
  wheel = os.path.join(into, WHEEL_NAME)
  if result.returncode != 0 or not os.path.isfile(wheel):
    detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    raise FaceModelsUnavailable(f"pip download {PACKAGE} failed: " + " | ".join(detail))
  return wheel


def fetch(directory: Optional[str] = None, wheel: Optional[str] = None, quiet=False) -> str:
  """Makes sure the four models are in `directory` (default `cache_dir()`), from `wheel` (a
  downloaded mediapipe-0.10.14 wheel) or else from the registry. Returns the folder."""
  directory = directory or cache_dir()
  if not missing_models(directory):
    return directory
  if not quiet:
    print(f"sheap_jax.face: fetching the face models from the {PACKAGE} wheel ({WHEEL_MB} MB) "
          f"into {directory} ...", file=sys.stderr, flush=True)
  if wheel:
    extract_models(wheel, directory)
  else:
    with tempfile.TemporaryDirectory() as scratch:
      extract_models(download_wheel(scratch), directory)
  if not quiet:
    print("sheap_jax.face: face models ready.", file=sys.stderr, flush=True)
  return directory


def ensure_models(directory: Optional[str] = None) -> str:
  """The folder holding the four checked models, fetching them on first use. Raises
  FaceModelsUnavailable, naming FETCH_COMMAND, when they cannot be had."""
  directory = directory or cache_dir()
  try:
    return fetch(directory)
  except FaceModelsUnavailable as error:
    raise FaceModelsUnavailable(
        f"the face models are not in {directory} and could not be fetched ({error}). Run "
        f"`{FETCH_COMMAND}` where the package registry is reachable (or `{FETCH_COMMAND} "
        f"--wheel {WHEEL_NAME}` with a downloaded wheel), or set ${CACHE_ENV} to a folder "
        f"holding {', '.join(n + '.tflite' for n in MODELS)}.") from error
