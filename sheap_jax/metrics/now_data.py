"""The NoW benchmark's files: scans, landmarks, image lists, face boxes, and prediction output.

Layout of the dataset as distributed (paths relative to the dataset root):
  imagepathsvalidation.txt, imagepathstest.txt   lines `<subject>/<challenge>/<image>.jpg`
  [NoW_Dataset/]final_release_version/iphone_pictures/<subject>/<challenge>/<image>.jpg
  [NoW_Dataset/]final_release_version/detected_face/<subject>/<challenge>/<image>.npy
      a pickled dict with the face box in pixels: left, top, right, bottom
  scans/<subject>/<name>.obj                     the subject's neutral scan, in millimetres
  scans_lmks_onlypp/<subject>/<name>.pp          its 7 landmarks (MeshLab picked points, mm)
Predictions go to `<out>/<subject>/<challenge>/<image>.obj` with `<image>.npy` holding the
mesh's 7 landmarks (7, 3), which is what the official evaluation reads. This project works in
metres: scans and their landmarks are converted on reading, predictions are written in metres.
"""
import dataclasses
import glob
import itertools
import os
from xml.etree import ElementTree

import numpy as np

from sheap_jax.metrics import now

SCAN_UNIT_M = 1e-3  # NoW scans and their landmarks are in millimetres
CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")
_IMAGE_LISTS = {"val": "imagepathsvalidation.txt", "test": "imagepathstest.txt"}


def read_obj(path):
  """Vertices (V, 3) float64 and triangles (F, 3) int64 of a Wavefront OBJ.

  Accepts `v x y z [r g b]`, faces as `i`, `i/t`, `i/t/n` or `i//n` with positive or negative
  (relative) indices, and polygons (fan-triangulated); other statements are ignored.
  """
  vertices, faces = [], []
  with open(path, "r", encoding="utf-8", errors="replace") as f:
    for line_number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      try:
        if fields[0] == "v":
          vertices.append([float(x) for x in fields[1:4]])
          if len(vertices[-1]) != 3:
            raise ValueError("a vertex needs 3 coordinates")
        elif fields[0] == "f":
          corners = [int(token.split("/")[0]) for token in fields[1:]]
          if len(corners) < 3:
            raise ValueError("a face needs at least 3 vertices")
          if 0 in corners:
            raise ValueError("OBJ vertex indices start at 1")
          # Negative indices count back from the vertices read so far.
          corners = [c - 1 if c > 0 else len(vertices) + c for c in corners]
          faces.extend([corners[0], corners[i], corners[i + 1]] for i in range(1, len(corners) - 1))
      except ValueError as error:
        raise ValueError(f"{path}, line {line_number}: {error}: {line.strip()!r}") from None
  if not vertices or not faces:
    raise ValueError(f"{path}: no {'vertices' if not vertices else 'faces'} found")
  faces = np.asarray(faces, np.int64)
  if faces.min() < 0 or faces.max() >= len(vertices):
    raise ValueError(f"{path}: faces refer to vertices outside 1..{len(vertices)}")
  return np.asarray(vertices, np.float64), faces


def write_obj(path, vertices, faces):
  """Writes a triangle mesh as OBJ (creating the directory), vertices without colours."""
  vertices = np.asarray(vertices, np.float64)
  faces = np.asarray(faces, np.int64)
  if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
    raise ValueError(f"{path}: need vertices (V, 3) and faces (F, 3), got {vertices.shape} and "
                     f"{faces.shape}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write("".join("v %.9g %.9g %.9g\n" % tuple(v) for v in vertices))
    f.write("".join("f %d %d %d\n" % tuple(face) for face in faces + 1))


def read_picked_points(path):
  """Points (N, 3) of a MeshLab picked-points file (.pp), in document order."""
  try:
    root = ElementTree.parse(path).getroot()
  except ElementTree.ParseError as error:
    raise ValueError(f"{path}: not a MeshLab picked-points XML file ({error})") from None
  if root.tag != "PickedPoints":
    raise ValueError(f"{path}: root element is <{root.tag}>, expected <PickedPoints>")
  points = []
  for i, point in enumerate(root.iter("point")):
    try:
      points.append([float(point.attrib[axis]) for axis in "xyz"])
    except (KeyError, ValueError):
      raise ValueError(f"{path}: point {i} lacks numeric x, y, z attributes: "
                       f"{point.attrib}") from None
  return np.asarray(points, np.float64).reshape(-1, 3)


def read_scan_landmarks(path):
  """The 7 NoW landmarks (7, 3) of a scan's .pp file, in the file's unit."""
  points = read_picked_points(path)
  if len(points) != 7:
    raise ValueError(f"{path}: expected the 7 NoW landmarks, found {len(points)} points")
  return points


def read_face_box(path):
  """NoW's detected face box (left, top, right, bottom) in pixels, float64 (4,)."""
  try:
    content = np.load(path, allow_pickle=True, encoding="latin1")
  except (OSError, ValueError) as error:
    raise ValueError(f"{path}: not a readable .npy file ({error})") from None
  box = content.item() if content.dtype == object and content.shape == () else None
  keys = ("left", "top", "right", "bottom")
  if not isinstance(box, dict) or not all(k in box for k in keys):
    raise ValueError(f"{path}: expected a pickled dict with keys {keys}, got "
                     f"{type(box).__name__ if box is not None else content.dtype}")
  box = np.array([float(box[k]) for k in keys])
  if not (box[0] < box[2] and box[1] < box[3]):
    raise ValueError(f"{path}: empty face box {box.tolist()}")
  return box


@dataclasses.dataclass(frozen=True)
class NowImage:
  """One entry of a NoW image list."""

  subject: str
  challenge: str
  filename: str  # e.g. IMG_0101.jpg

  @property
  def relative_path(self):
    return f"{self.subject}/{self.challenge}/{self.filename}"

  @property
  def stem(self):
    return os.path.splitext(self.filename)[0]


def read_image_list(path):
  """Entries of a NoW image list (`<subject>/<challenge>/<image>` per line)."""
  images = []
  with open(path, "r") as f:
    for line_number, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      parts = line.split("/")
      if len(parts) < 3 or not all(parts[-3:]):
        raise ValueError(f"{path}, line {line_number}: expected <subject>/<challenge>/<image>, "
                         f"got {line!r}")
      images.append(NowImage(*parts[-3:]))
  return images


class NowDataset:
  """Paths into a NoW dataset folder (see the module docstring for the layout)."""

  def __init__(self, root):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"NoW dataset folder not found: {root}")
    self.root = root
    nested = os.path.join(root, "NoW_Dataset", "final_release_version")
    self.release = nested if os.path.isdir(nested) else os.path.join(root,
                                                                     "final_release_version")

  def images(self, split="val", challenge=None):
    if split not in _IMAGE_LISTS:
      raise ValueError(f"split must be one of {sorted(_IMAGE_LISTS)}, got {split!r}")
    if challenge is not None and challenge not in CHALLENGES:
      raise ValueError(f"challenge must be one of {CHALLENGES}, got {challenge!r}")
    path = os.path.join(self.root, _IMAGE_LISTS[split])
    if not os.path.isfile(path):
      raise FileNotFoundError(f"NoW image list not found: {path}")
    return [im for im in read_image_list(path) if challenge in (None, im.challenge)]

  def image_path(self, image):
    return os.path.join(self.release, "iphone_pictures", image.subject, image.challenge,
                        image.filename)

  def face_box_path(self, image):
    return os.path.join(self.release, "detected_face", image.subject, image.challenge,
                        image.stem + ".npy")

  def face_box(self, image):
    return read_face_box(self.face_box_path(image))

  def _only_file(self, folder, subject, pattern):
    matches = sorted(glob.glob(os.path.join(self.root, folder, subject, pattern)))
    if not matches:
      raise FileNotFoundError(f"no {pattern} file for subject {subject} in "
                              f"{os.path.join(self.root, folder, subject)}")
    return matches[0]

  def scan_path(self, subject):
    return self._only_file("scans", subject, "*.obj")

  def scan_landmarks_path(self, subject):
    return self._only_file("scans_lmks_onlypp", subject, "*.pp")

  def scan(self, subject):
    """(vertices (V, 3), faces (F, 3), landmarks (7, 3)) of the subject's scan, in metres."""
    vertices, faces = read_obj(self.scan_path(subject))
    landmarks = read_scan_landmarks(self.scan_landmarks_path(subject))
    return vertices * SCAN_UNIT_M, faces, landmarks * SCAN_UNIT_M


def prediction_paths(predictions_dir, image):
  """(mesh .obj, landmarks .npy) paths of an image's prediction, as the official code reads."""
  base = os.path.join(predictions_dir, image.subject, image.challenge, image.stem)
  return base + ".obj", base + ".npy"


def write_prediction(predictions_dir, image, vertices, faces, landmarks7):
  """Writes a predicted mesh and its 7 NoW landmarks (metres) in the official layout."""
  landmarks7 = np.asarray(landmarks7, np.float64)
  if landmarks7.shape != (7, 3):
    raise ValueError(f"landmarks7 for {image.relative_path} must have shape (7, 3), got "
                     f"{landmarks7.shape}")
  mesh_path, landmarks_path = prediction_paths(predictions_dir, image)
  write_obj(mesh_path, vertices, faces)
  np.save(landmarks_path, landmarks7)


def read_prediction(predictions_dir, image):
  """(vertices, faces, landmarks (7, 3)) written by `write_prediction` or another method."""
  mesh_path, landmarks_path = prediction_paths(predictions_dir, image)
  vertices, faces = read_obj(mesh_path)
  landmarks = np.load(landmarks_path)
  landmarks = landmarks[0] if landmarks.shape == (1, 7, 3) else landmarks
  if landmarks.shape != (7, 3):
    raise ValueError(f"{landmarks_path}: expected 7 landmarks (7, 3), got {landmarks.shape}")
  return vertices, faces, landmarks.astype(np.float64)


def evaluate_predictions(dataset, predictions_dir, images, scale=True):
  """NoW errors (metres) of the predictions for `images`, like the official compute_error.py.

  Returns (errors: dict relative_path -> (N,) per cropped-scan-vertex errors, missing: list of
  the images without a prediction). scale=False is the metrical variant: predictions must then
  be in metres like this project's.
  """
  errors, missing = {}, []
  for subject, group in itertools.groupby(sorted(images, key=lambda im: im.subject),
                                          key=lambda im: im.subject):
    scan_vertices, scan_faces, scan_landmarks = dataset.scan(subject)
    cropped, _ = now.crop_scan(scan_vertices, scan_faces, scan_landmarks)
    for image in group:
      if not all(os.path.isfile(p) for p in prediction_paths(predictions_dir, image)):
        missing.append(image)
        continue
      vertices, faces, landmarks = read_prediction(predictions_dir, image)
      errors[image.relative_path] = now.rigid_align(vertices, faces, landmarks, cropped,
                                                    scan_landmarks, scale=scale).errors
  return errors, missing
