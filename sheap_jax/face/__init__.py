"""Offline face detection, 68 landmarks and person mattes for real photos and videos.

MediaPipe's TFLite models (BlazeFace detectors, the 468-point face mesh, selfie segmentation),
taken from the mediapipe 0.10.14 wheel and run with ai-edge-litert; mediapipe itself is not
needed. `python -m sheap_jax.face fetch` caches the models (weights.py). docs/face.md.

  models = FaceModels.load()
  faces = models.detect(image)                        # [Detection], best first
  points, score, valid = models.landmarks68(image)    # (68, 2) iBUG, 3D-type
  alpha = models.matte(image)                         # (H, W) person probability
  result = models.track(frames)                       # a video: tracked, smoothed
"""
from sheap_jax.face.detector import Detection
from sheap_jax.face.mesh import LANDMARK_TYPE, MeshResult
from sheap_jax.face.models import BadFrame, FaceLandmarks, FaceModels, check_frame
from sheap_jax.face.tracker import OneEuro, Track
from sheap_jax.face.weights import FETCH_COMMAND, FaceModelsUnavailable

__all__ = ["BadFrame", "Detection", "FETCH_COMMAND", "FaceLandmarks", "FaceModels",
           "FaceModelsUnavailable", "LANDMARK_TYPE", "MeshResult", "OneEuro", "Track",
           "check_frame"]
