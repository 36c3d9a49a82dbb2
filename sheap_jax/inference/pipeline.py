"""Prediction for images, folders and videos: inputs read, faces found and cropped, the model
run in fixed-size batches, outputs written. The command line is `sheap_jax/predict.py`, whose
docstring describes the inputs and outputs (docs/predict.md).
"""
import dataclasses
import functools
import os
import sys
import time
from typing import Dict, List, Optional

import av
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tqdm

from data.video_folder import reader
import rasterizer
from sheap_jax.geometry import camera as camera_lib
from sheap_jax.inference import checkpoint_predictor
from sheap_jax.face import crop
from sheap_jax.inference import export
from sheap_jax.render import mesh_render
from sheap_jax.face import crops as face_crops

DETECT_MAX_SIDE = 320  # frames are shrunk to this longest side for the face detector
MESH_BACKGROUND = 0.2  # grey behind the mesh panel
DEFAULT_FPS = 25


class SkipInput(Exception):
  """An input that cannot be used; the message says why (the path is added by the caller)."""


# ---------------------------------------------------------------------------------------------
# Reading inputs and finding the face.


def list_inputs(path: str) -> List[str]:
  """The file, or the files of a folder (not hidden, name order)."""
  if os.path.isfile(path):
    return [path]
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    return [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
  raise FileNotFoundError(f"--input {path}: no such file or folder")


def is_video(path: str) -> bool:
  return path.lower().endswith(reader.VIDEO_EXTENSIONS)


def read_image(path: str) -> np.ndarray:
  """(H, W, 3) uint8, or SkipInput naming what is wrong with the file."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except Image.UnidentifiedImageError:
    raise SkipInput("not an image or video (no image format recognises it)") from None
  except (OSError, ValueError, Image.DecompressionBombError) as error:
    raise SkipInput(f"unreadable image ({error})") from None


def read_landmarks(directory: Optional[str], path: str, shape) -> Optional[np.ndarray]:
  """`<directory>/<input stem>.npy` shaped `shape` (None = any length), or None without one."""
  if not directory:
    return None
  landmark_path = os.path.join(directory, os.path.splitext(os.path.basename(path))[0] + ".npy")
  if not os.path.isfile(landmark_path):
    return None
  try:
    points = np.load(landmark_path, allow_pickle=False)
  except (OSError, ValueError) as error:
    raise SkipInput(f"unreadable landmark file {landmark_path} ({error})") from None
  if points.ndim != len(shape) or any(s not in (None, d) for s, d in zip(shape, points.shape)):
    raise SkipInput(f"landmark file {landmark_path} is shaped {points.shape}, expected "
                    f"{tuple('T' if s is None else s for s in shape)}")
  return points.astype(np.float32)


def whole_image_box(frame: np.ndarray) -> np.ndarray:
  """The square box (4,) around the whole frame, for inputs that are head crops already."""
  height, width = frame.shape[:2]
  return crop.square_box(np.array([-0.5, -0.5, width - 0.5, height - 0.5]))


def face_box(frame: np.ndarray, landmarks: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
  """SHeaP's video crop box (4,) of a frame: from its 68 landmarks when at least half are
  finite, else from the largest face the LBP cascade finds (its landmark box estimated by
  `crop.landmark_box_from_detection`; the fallback without the face models); None when there
  is no face."""
  height, width = frame.shape[:2]
  if landmarks is not None:
    valid = np.all(np.isfinite(landmarks), axis=1)
    if valid.sum() >= len(valid) // 2:
      try:
        return crop.video_box(crop.landmarks_box(landmarks, valid), width, height)
      except ValueError as error:
        raise SkipInput(f"unusable landmarks ({error})") from None
  shrink = min(1.0, DETECT_MAX_SIDE / max(height, width))
  small = frame
  if shrink < 1:
    small = np.asarray(Image.fromarray(frame).resize(
        (max(1, round(width * shrink)), max(1, round(height * shrink))), Image.BILINEAR))
  detections = crop.detect_faces(small)
  if not len(detections):
    return None
  scale = np.array([small.shape[1] / width, small.shape[0] / height] * 2)
  detection = (detections[0] + 0.5) / scale - 0.5  # pixel edges scale with the resize
  return crop.video_box(crop.landmark_box_from_detection(detection), width, height)


def fill_and_smooth(boxes: List[Optional[np.ndarray]]) -> np.ndarray:
  """(T, 4) smoothed boxes; frames without a face take the nearest found frame's box."""
  found = np.flatnonzero([b is not None for b in boxes])
  if not len(found):
    raise SkipInput("no face found in any frame")
  nearest = found[np.abs(np.arange(len(boxes))[:, None] - found[None]).argmin(1)]
  return crop.smooth_boxes(np.stack([boxes[i] for i in nearest]))


# ---------------------------------------------------------------------------------------------
# Prediction and pictures, a batch at a time.


@dataclasses.dataclass
class FrameResult:
  """Host arrays of one predicted frame."""

  params: Dict[str, np.ndarray]
  vertices: np.ndarray  # (V, 3)
  splats: Optional[Dict[str, np.ndarray]]  # rasterizer.Splats fields, (N, ...)
  overlay: np.ndarray  # (S, 3 S, 3) uint8: crop | mesh | blend


@functools.partial(jax.jit, static_argnames=("size",))
def overlay_strips(crops: jnp.ndarray, vertices: jnp.ndarray, faces: jnp.ndarray,
                   camera_translation: jnp.ndarray, size: int) -> jnp.ndarray:
  """(B, S, 3 S, 3) uint8: the crop (uint8), the predicted mesh alone, and the mesh over the
  crop."""
  crops = crops.astype(jnp.float32) / 255.0
  cameras = checkpoint_predictor.crop_cameras(camera_translation, size)

  def one(image, verts, K, viewmat):
    camera = camera_lib.Camera(K=K, viewmat=viewmat, width=size, height=size)
    grey = jnp.full_like(image, MESH_BACKGROUND)
    mesh = mesh_render.overlay_mesh(grey, verts, faces, camera, opacity=1.0)
    blend = mesh_render.overlay_mesh(image, verts, faces, camera)
    return jnp.concatenate([image, mesh, blend], axis=1)

  strips = jax.vmap(one)(crops, vertices, cameras.K, cameras.viewmat)
  return (jnp.clip(strips, 0.0, 1.0) * 255 + 0.5).astype(jnp.uint8)


class BatchPredictor:
  """Runs the model on fixed-size batches of crops (the last one padded: one compilation)."""

  def __init__(self, model: checkpoint_predictor.CheckpointPredictor, batch_size: int):
    self.model = model
    self.batch_size = batch_size
    self.faces = jnp.asarray(model.faces)
    self.calls = []  # (frames, seconds) of each model call; the first one compiles

  def __call__(self, crops: np.ndarray, boxes: np.ndarray, avatar: bool) -> List[FrameResult]:
    """crops (B, S, S, 3) uint8, B <= batch_size; boxes (B, 4) in input pixels; `avatar` adds
    the Gaussians."""
    count, size = len(crops), crops.shape[1]
    padded = np.zeros((self.batch_size,) + crops.shape[1:], np.uint8)
    padded[:count] = crops
    start = time.perf_counter()
    images = jnp.asarray(padded)
    prediction = jax.block_until_ready(self.model.predict(images, avatar=avatar))
    self.calls.append((count, time.perf_counter() - start))
    strips = overlay_strips(images, prediction.vertices, self.faces,
                            prediction.camera_translation, size)
    prediction, strips = jax.device_get((prediction, strips))
    cameras = jax.device_get(checkpoint_predictor.crop_cameras(prediction.camera_translation,
                                                               size))
    landmarks_crop = np.asarray(jax.vmap(
        lambda K, viewmat, points: camera_lib.project(
            K, camera_lib.world_to_camera(viewmat, points)))(
                cameras.K, cameras.viewmat, prediction.landmarks))
    results = []
    for i in range(count):
      params = {f.name: getattr(prediction.flame, f.name)[i]
                for f in dataclasses.fields(prediction.flame)}
      params.update(
          camera_translation=prediction.camera_translation[i], camera_K=cameras.K[i],
          camera_viewmat=cameras.viewmat[i], crop_box=boxes[i].astype(np.float32),
          landmarks68=crop.points_from_crop(landmarks_crop[i], boxes[i], size))
      splats = None if prediction.splats is None else {
          f.name: getattr(prediction.splats, f.name)[i]
          for f in dataclasses.fields(prediction.splats)}
      results.append(FrameResult(params=params, vertices=prediction.vertices[i], splats=splats,
                                 overlay=strips[i]))
    return results

  @property
  def frames(self) -> int:
    return sum(count for count, _ in self.calls)

  def model_rate(self) -> Optional[float]:
    """Frames/s of the model calls after the first (which compiles); None with one call."""
    later = self.calls[1:]
    return sum(c for c, _ in later) / sum(s for _, s in later) if later else None


# ---------------------------------------------------------------------------------------------
# Writing outputs.


def output_dir(root: str, path: str, taken: set) -> str:
  """`<root>/<stem>`, or `<root>/<stem>_<ext>` when another input already took the stem."""
  stem, ext = os.path.splitext(os.path.basename(path))
  name = stem if stem not in taken else f"{stem}_{ext.lstrip('.')}"
  while name in taken:
    name += "_"
  taken.add(name)
  return os.path.join(root, name)


def write_image_outputs(directory: str, result: FrameResult, faces: np.ndarray) -> None:
  os.makedirs(directory, exist_ok=True)
  export.write_params(os.path.join(directory, "params"), result.params)
  export.write_obj(os.path.join(directory, "mesh.obj"), result.vertices, faces)
  export.write_mesh_ply(os.path.join(directory, "mesh.ply"), result.vertices, faces)
  if result.splats is not None:
    export.write_gaussians_ply(os.path.join(directory, "gaussians.ply"),
                               rasterizer.Splats(**result.splats))
  Image.fromarray(result.overlay).save(os.path.join(directory, "overlay.png"))


class VideoWriter:
  """H.264 MP4 of overlay strips, one per input frame."""

  def __init__(self, path: str, fps, width: int, height: int):
    self.container = av.open(path, "w")
    self.stream = self.container.add_stream("libx264", rate=fps)
    # yuv420p needs even sizes: strips are padded by at most one pixel.
    self.stream.width, self.stream.height = width + width % 2, height + height % 2
    self.stream.pix_fmt = "yuv420p"

  def write(self, strip: np.ndarray) -> None:
    padded = np.zeros((self.stream.height, self.stream.width, 3), np.uint8)
    padded[:strip.shape[0], :strip.shape[1]] = strip
    frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
    self.container.mux(self.stream.encode(frame))

  def close(self) -> None:
    self.container.mux(self.stream.encode())
    self.container.close()


# ---------------------------------------------------------------------------------------------
# The run.


class Runner:
  """Feeds inputs through the model: images share batches, a video fills its own."""

  def __init__(self, args, model: checkpoint_predictor.CheckpointPredictor):
    self.args = args
    self.predictor = BatchPredictor(model, args.batch_size)
    self.faces = model.faces
    self.avatar = model.has_gaussians and not args.no_gaussians
    if not model.has_gaussians and not args.no_gaussians:
      tqdm.tqdm.write(f"{args.checkpoint}: trained with the mesh renderer, so no Gaussian avatar "
                      "(gaussians.ply); writing everything else", file=sys.stderr)
    self.taken = set()
    self.pending = []  # (output dir, crop, box) of images waiting for a full batch
    self.succeeded = 0
    self.skipped = 0
    self.progress = tqdm.tqdm(total=0, unit="frame", dynamic_ncols=True, file=sys.stderr,
                              disable=args.quiet)

  def box(self, frame: np.ndarray, landmarks: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if self.args.whole_image:
      return whole_image_box(frame)
    if landmarks is None and self.face_models is not None:
      return face_crops.photo_faces(self.face_models, frame).boxes[0]
    return face_box(frame, landmarks)

  def video_boxes(self, source: reader.Source, landmarks: Optional[np.ndarray]):
    """Per frame: the crop box, or None where no face is found."""
    if landmarks is None and not self.args.whole_image and self.face_models is not None:
      return face_crops.video_faces(self.face_models, reader.read_frames(source)).boxes
    return [self.box(frame, None if landmarks is None or t >= len(landmarks) else landmarks[t])
            for t, frame in enumerate(reader.read_frames(source))]

  @functools.cached_property
  def face_models(self):
    """The face models (loaded at the first face to find), or None: the LBP cascade instead."""
    return None if self.args.lbp else face_crops.load_models()

  def skip(self, path: str, reason: str) -> None:
    self.skipped += 1
    tqdm.tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)

  def image(self, path: str) -> None:
    frame = read_image(path)
    box = self.box(frame, read_landmarks(self.args.landmarks, path, (68, 2)))
    if box is None:
      raise SkipInput("no face found")
    self.progress.total += 1
    self.progress.refresh()
    size = self.args.crop_size
    self.pending.append((output_dir(self.args.output, path, self.taken),
                         crop.crop_image(frame, box, size), box))
    if len(self.pending) == self.args.batch_size:
      self.flush_images()

  def flush_images(self) -> None:
    if not self.pending:
      return
    dirs, crops, boxes = zip(*self.pending)
    self.pending = []
    results = self.predictor(np.stack(crops), np.stack(boxes), avatar=self.avatar)
    for directory, result in zip(dirs, results):
      write_image_outputs(directory, result, self.faces)
      self.succeeded += 1
      self.progress.update(1)

  def video(self, path: str) -> None:
    source = reader.Source(os.path.basename(path), path)
    landmarks = read_landmarks(self.args.landmarks, path, (None, 68, 2))
    boxes = self.video_boxes(source, landmarks)
    if not boxes:
      raise SkipInput("the video has no frames")
    # Whole frames are one box per video: nothing to fill or smooth (and, padded to a square,
    # not necessarily on whole pixels as the moving average needs).
    boxes = np.stack(boxes) if self.args.whole_image else fill_and_smooth(boxes)
    self.progress.total += len(boxes)
    self.progress.refresh()
    with av.open(path) as container:
      fps = container.streams.video[0].average_rate or DEFAULT_FPS
    directory = output_dir(self.args.output, path, self.taken)
    os.makedirs(directory, exist_ok=True)
    size = self.args.crop_size
    writer = VideoWriter(os.path.join(directory, "overlay.mp4"), fps, 3 * size, size)
    params, vertices, chunk = [], [], []  # per frame: only what is written at the end
    try:
      for t, frame in enumerate(reader.read_frames(source)):
        if t >= len(boxes):
          break
        chunk.append(crop.crop_image(frame, boxes[t], size))
        if len(chunk) == self.args.batch_size or t == len(boxes) - 1:
          start = len(params)
          for result in self.predictor(np.stack(chunk), boxes[start:start + len(chunk)],
                                       avatar=False):
            writer.write(result.overlay)
            params.append(result.params)
            vertices.append(result.vertices)
            self.progress.update(1)
          chunk = []
    finally:
      writer.close()
    stacked = {k: np.stack([row[k] for row in params]) for k in params[0]}
    stacked["frame_index"] = np.arange(len(params), dtype=np.int32)
    export.write_params(os.path.join(directory, "params"), stacked)
    export.write_npz(os.path.join(directory, "meshes.npz"),
                     {"vertices": np.stack(vertices), "faces": self.faces.astype(np.int32)})
    self.succeeded += 1

  def run(self, paths: List[str]) -> None:
    for path in paths:
      try:
        if is_video(path):
          self.video(path)
        else:
          self.image(path)
      except (SkipInput, reader.SourceError) as error:
        self.skip(path, str(error).removeprefix(f"{path}: "))
    self.flush_images()
    self.progress.close()


def run(args) -> int:
  """Predicts every input of `args` (`sheap_jax.predict`'s flags), prints a summary line;
  returns the exit code: 0 when some input succeeded."""
  try:
    paths = list_inputs(args.input)
    model = checkpoint_predictor.load(args.checkpoint, args.step)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if not paths:
    print(f"error: --input {args.input}: the folder holds no files", file=sys.stderr)
    return 1
  os.makedirs(args.output, exist_ok=True)
  runner = Runner(args, model)
  start = time.perf_counter()
  runner.run(paths)
  seconds = time.perf_counter() - start
  frames = runner.predictor.frames
  model_rate = runner.predictor.model_rate()
  model_text = ("model rate: needs a second batch" if model_rate is None else
                f"model {model_rate:.1f} frames/s after compilation")
  print(f"{runner.succeeded} of {len(paths)} inputs done, {runner.skipped} skipped; {frames} "
        f"frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.1f} frames/s end to end, "
        f"{model_text}) -> {args.output}")
  return 0 if runner.succeeded else 1

