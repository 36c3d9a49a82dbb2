"""Prediction from a tiny training checkpoint (never trained: trainer.init_state +
checkpoints.save; the tests' small FLAME-format model saved as the `.npz` that the checkpoint's
config names): the checkpoint predictor against a direct apply of the networks, and
`python -m sheap_jax.predict` on a folder of good and bad inputs and on a video (windows of a
real photo, so the face detector runs)."""
import dataclasses
import functools
import os

import av
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
from skimage import data as skimage_data
import trimesh

from sheap_jax.geometry import camera
from sheap_jax.training import checkpoints
from sheap_jax.inference import checkpoint_predictor
from sheap_jax.face import crop
from sheap_jax.head import flame
from sheap_jax.head import flame_io
from sheap_jax.training import objective
from sheap_jax import predict
from sheap_jax.inference import pipeline
from sheap_jax.face import crops as face_crops
from sheap_jax.evaluation import predictors
from sheap_jax.render import rigging
from sheap_jax.training import trainer
from tests.test_export import read_vertex_ply
from tests.test_objective import perturbed_params, small_config, small_flame_model

FRAME_W, FRAME_H = 160, 128
CROP = 48  # --crop_size of the CLI runs
VIDEO_OFFSETS = [(40, 0), (30, 4), (20, 8)]


def flame_assets(model: flame.FlameModel) -> dict:
  """The FLAME file contents that load back as `model` (shapedirs padded to FLAME's 300 shape
  components before the expression ones)."""
  num_v = model.num_vertices
  padding = np.zeros((num_v, 3, flame.FLAME_NUM_SHAPE - model.shapedirs.shape[-1]), np.float32)
  parents = np.array(model.parents)
  return {
      "v_template": np.asarray(model.v_template),
      "shapedirs": np.concatenate([model.shapedirs, padding, model.exprdirs], axis=-1),
      "posedirs": np.asarray(model.posedirs), "J_regressor": np.asarray(model.j_regressor),
      "weights": np.asarray(model.lbs_weights), "f": np.asarray(model.faces),
      "kintree_table": np.stack([np.where(parents < 0, 2**32 - 1, parents),
                                 np.arange(len(parents))]),
      "eyelids": np.asarray(model.eyelid_dirs),
      "landmark_embedding": {
          "static_lmk_faces_idx": np.asarray(model.static_lmk_faces),
          "static_lmk_bary_coords": np.asarray(model.static_lmk_bary),
          "dynamic_lmk_faces_idx": np.asarray(model.contour_lmk_faces),
          "dynamic_lmk_bary_coords": np.asarray(model.contour_lmk_bary),
          "full_lmk_faces_idx": np.asarray(model.full_lmk_faces)[None],
          "full_lmk_bary_coords": np.asarray(model.full_lmk_bary)[None]}}


def photo_frame(x, y):
  """A FRAME_W x FRAME_H window at (x, y) of scikit-image's astronaut photo (bundled, offline)
  shrunk to 256 px: a real face the LBP detector finds."""
  photo = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((256, 256), Image.BILINEAR))
  return np.ascontiguousarray(photo[y:y + FRAME_H, x:x + FRAME_W])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(workdir, its predictor, (networks, frozen, saved params)): the params are perturbed from
  their initialisation so that every head of the predictor gives non-zero outputs."""
  root = tmp_path_factory.mktemp("predict")
  flame_io.save_flame(str(root / "small_flame.npz"), flame_assets(small_flame_model()))
  config = small_config()
  config.flame_path = str(root / "small_flame.npz")
  networks = objective.build_networks(config)
  with pytest.warns(UserWarning, match="random initialisation"):
    frozen = objective.build_frozen(config, objective.load_flame_model(config))
  optimizer = trainer.make_optimizer(config)
  state = trainer.init_state(networks, frozen, config, optimizer)
  state = state.replace(params=perturbed_params(state.params, np.random.default_rng(0)))
  workdir = str(root / "workdir")
  manager = checkpoints.open_manager(workdir, config)
  checkpoints.save(manager, state, {"index": 0}, config)
  manager.close()
  with pytest.warns(UserWarning, match="random initialisation"):
    model = checkpoint_predictor.load(workdir)
  return workdir, model, (networks, frozen, state.params)


def direct_apply(networks, params, frozen, images):
  """The networks applied by hand to uint8 images: (predictor output, FLAME mesh, splats)."""
  resized = jax.image.resize(images / 255.0, (len(images), 32, 32, 3), "linear", antialias=True)
  direct = networks.predictor.apply({"params": params["predictor"]}, resized)
  flame_params = flame.FlameParams(
      shape=direct.shape, expression=direct.expression, global_pose=direct.global_pose,
      neck_pose=direct.neck_pose, jaw_pose=direct.jaw_pose, eye_pose=direct.eye_pose,
      eyelids=direct.eyelids, translation=jnp.zeros((len(images), 3)))
  mesh = flame.flame_forward(frozen.flame, flame_params)
  dinov2_input = jax.image.resize(resized, (len(images), 28, 28, 3), "linear", antialias=True)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet
  tokens = networks.dinov2.apply({"params": frozen.dinov2},
                                 (dinov2_input - mean) / std).patch_tokens
  local = networks.regressor.apply({"params": params["regressor"]}, direct.identity, tokens,
                                   frozen.layout)
  return direct, mesh, rigging.rig_gaussians(local, mesh.vertices, frozen.flame.faces)


def test_checkpoint_predictor_equals_direct_apply(setup, tmp_path):
  workdir, model, (networks, frozen, params) = setup
  assert model.step == 0 and model.image_size == 32
  # uint8 crops of the CLI runs' size and batch: one compiled program serves all tests.
  images = np.random.default_rng(3).integers(0, 256, (2, CROP, CROP, 3), np.uint8)
  out = model.predict(images, avatar=True)

  direct, mesh, splats = jax.jit(functools.partial(direct_apply, networks))(
      params, frozen, jnp.asarray(images))
  for field in ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eye_pose",
                "eyelids"):
    np.testing.assert_allclose(getattr(out.flame, field), getattr(direct, field), atol=1e-6)
  np.testing.assert_allclose(out.camera_translation, direct.camera_translation, atol=1e-6)
  assert np.abs(np.asarray(direct.shape)).max() > 1e-3  # the perturbed heads are not zero
  np.testing.assert_allclose(out.vertices, mesh.vertices, atol=1e-6)
  for field in ("means", "quats", "scales", "opacities", "features"):
    np.testing.assert_allclose(getattr(out.splats, field), getattr(splats, field), atol=1e-5)

  # A `predictors.Predictor`, as `evaluate --predictor checkpoint:DIR` loads it.
  with pytest.warns(UserWarning, match="random initialisation"):
    loaded = predictors.get_predictor(f"checkpoint:{workdir}")
  np.testing.assert_allclose(loaded(images, {}).shape, direct.shape, atol=1e-6)
  with pytest.raises(ValueError, match="holds no checkpoint"):
    checkpoint_predictor.load(str(tmp_path))


def _run(capsys, *args):
  code = predict.main(list(args) + ["--crop_size", str(CROP), "--batch_size", "2", "--quiet"])
  out, err = capsys.readouterr()
  return code, out, err


def test_predict_folder_writes_good_inputs_and_one_line_per_bad(setup, tmp_path, capsys):
  workdir, model, _ = setup
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  good = photo_frame(20, 0)
  Image.fromarray(good).save(inputs / "good.png")
  Image.fromarray(photo_frame(40, 10)).save(inputs / "good2.jpg", quality=95)
  jpeg = (inputs / "good2.jpg").read_bytes()
  (inputs / "corrupt.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  (inputs / "notes.png").write_text("this is text, not a picture\n")
  (inputs / "broken.mp4").write_bytes(jpeg[:300])
  Image.fromarray(np.full((FRAME_H, FRAME_W, 3), 128, np.uint8)).save(inputs / "faceless.png")

  with pytest.warns(UserWarning, match="random initialisation"):
    code, out, err = _run(capsys, "--checkpoint", workdir, "--input", str(inputs), "--output",
                          str(tmp_path / "out"))
  assert code == 0
  assert "Traceback" not in out + err
  lines = err.strip().splitlines()
  assert len(lines) == 4, err
  for name, reason in (("corrupt.jpg", "unreadable image"), ("notes.png", "not an image"),
                       ("faceless.png", "no face found"), ("broken.mp4", "cannot decode video")):
    assert sum(name in line for line in lines) == 1
    assert any(name in line and reason in line for line in lines), (name, err)
  assert "2 of 6 inputs done, 4 skipped" in out and "frames/s" in out
  assert sorted(os.listdir(tmp_path / "out")) == ["good", "good2"]
  for name in ("good", "good2"):
    files = sorted(os.listdir(tmp_path / "out" / name))
    assert files == ["gaussians.ply", "mesh.obj", "mesh.ply", "overlay.png", "params.json",
                     "params.npz"]
    assert Image.open(tmp_path / "out" / name / "overlay.png").size == (3 * CROP, CROP)

  # The stored results are the model's on SHeaP's crop of the face's landmarks (the LBP
  # cascade's box without the face models).
  result = tmp_path / "out" / "good"
  params = np.load(result / "params.npz")
  models = face_crops.load_models()
  box = pipeline.face_box(good) if models is None else face_crops.photo_faces(models,
                                                                             good).boxes[0]
  np.testing.assert_allclose(params["crop_box"], box, atol=1e-4)
  expected = model.predict(np.stack([crop.crop_image(good, box, CROP)] * 2), avatar=True)
  np.testing.assert_allclose(params["shape"], expected.flame.shape[0], atol=1e-5)
  np.testing.assert_allclose(params["camera_translation"], expected.camera_translation[0],
                             atol=1e-5)
  vertices = np.asarray(jax.jit(flame.flame_forward)(model.flame_model, flame.FlameParams(
      **{f.name: jnp.asarray(params[f.name])[None]
         for f in dataclasses.fields(flame.FlameParams)})).vertices[0])
  for mesh_file in ("mesh.obj", "mesh.ply"):
    mesh = trimesh.load(str(result / mesh_file), process=False, maintain_order=True)
    np.testing.assert_array_equal(mesh.faces, model.faces)
    np.testing.assert_allclose(mesh.vertices, vertices, atol=2e-6)
  _, records = read_vertex_ply(str(result / "gaussians.ply"))
  np.testing.assert_allclose(np.stack([records[a] for a in "xyz"], 1), expected.splats.means[0],
                             atol=2e-6)
  np.testing.assert_allclose(1 / (1 + np.exp(-records["opacity"])),
                             expected.splats.opacities[0], atol=1e-5)
  # Landmarks: projected by the crop camera, then mapped back to the input's pixels.
  cam = checkpoint_predictor.crop_cameras(expected.camera_translation, CROP)
  in_crop, _ = camera.project_points(
      camera.Camera(K=cam.K[0], viewmat=cam.viewmat[0], width=CROP, height=CROP),
      expected.landmarks[0])
  scale = (box[2:] - box[:2]) / CROP  # per axis: a box clamped to the frame is not square
  np.testing.assert_allclose(params["landmarks68"], (np.asarray(in_crop) + 0.5) * scale + box[:2],
                             atol=1e-3)


def test_predict_without_usable_input_or_checkpoint_fails_cleanly(setup, tmp_path, capsys):
  workdir = setup[0]
  (tmp_path / "notes.png").write_text("text")
  with pytest.warns(UserWarning, match="random initialisation"):
    code, out, err = _run(capsys, "--checkpoint", workdir, "--input",
                          str(tmp_path / "notes.png"), "--output", str(tmp_path / "out"))
  assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
  code, out, err = _run(capsys, "--checkpoint", str(tmp_path), "--input",
                        str(tmp_path / "notes.png"), "--output", str(tmp_path / "out"))
  assert code == 2 and "holds no checkpoint" in err and len(err.strip().splitlines()) == 1


def test_predict_video_writes_one_overlay_frame_per_input_frame(setup, tmp_path, capsys):
  workdir = setup[0]
  path = str(tmp_path / "clip.mp4")
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = FRAME_W, FRAME_H, "yuv420p"
    for x, y in VIDEO_OFFSETS:
      frame = av.VideoFrame.from_ndarray(photo_frame(x, y), format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())

  with pytest.warns(UserWarning, match="random initialisation"):
    code, out, err = _run(capsys, "--checkpoint", workdir, "--input", path, "--output",
                          str(tmp_path / "out"))
  assert code == 0 and err == "", err
  result = tmp_path / "out" / "clip"
  with av.open(str(result / "overlay.mp4")) as container:
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  assert len(frames) == len(VIDEO_OFFSETS)
  assert frames[0].shape == (CROP, 3 * CROP, 3)
  params = np.load(result / "params.npz")
  assert params["shape"].shape == (len(VIDEO_OFFSETS), 8)
  np.testing.assert_array_equal(params["frame_index"], np.arange(len(VIDEO_OFFSETS)))
  # The face moves right as the window moves left; the boxes follow it.
  boxes = params["crop_box"]
  assert np.all(np.diff(boxes[:, 0]) > 0)
  meshes = np.load(result / "meshes.npz")
  assert meshes["vertices"].shape[0] == len(VIDEO_OFFSETS)


def test_predict_landmark_files_set_the_crop(setup, tmp_path, capsys):
  workdir = setup[0]
  inputs, landmarks = tmp_path / "inputs", tmp_path / "landmarks"
  inputs.mkdir()
  landmarks.mkdir()
  rng = np.random.default_rng(4)
  points = rng.uniform((50, 30), (110, 100), (68, 2)).astype(np.float32)
  points[:5] = np.nan  # missing points are left out of the box
  for name in ("marked", "misshapen"):
    Image.fromarray(photo_frame(20, 0)).save(inputs / f"{name}.png")
  np.save(landmarks / "marked.npy", points)
  np.save(landmarks / "misshapen.npy", points[:5])

  with pytest.warns(UserWarning, match="random initialisation"):
    code, out, err = _run(capsys, "--checkpoint", workdir, "--input", str(inputs), "--output",
                          str(tmp_path / "out"), "--landmarks", str(landmarks), "--no_gaussians")
  assert code == 0 and "Traceback" not in out + err
  assert err.strip().splitlines() == [
      f"skipped {inputs / 'misshapen.png'}: landmark file {landmarks / 'misshapen.npy'} is "
      "shaped (5, 2), expected (68, 2)"]
  assert sorted(os.listdir(tmp_path / "out" / "marked")) == [
      "mesh.obj", "mesh.ply", "overlay.png", "params.json", "params.npz"]
  # SHeaP's release rule by hand (DESIGN.md 4.2): normalised by the frame's size, h0 = half the
  # landmark box's larger side; x c.x +- 1.9 h0 / (W / H), y c.y - 0.5 h0 +- 1.9 h0; clamped to
  # the frame; corners truncated to whole pixels.
  (u0, v0), (u1, v1) = (np.nanmin(points, 0) + 0.5) / (FRAME_W, FRAME_H), (
      np.nanmax(points, 0) + 0.5) / (FRAME_W, FRAME_H)
  h0 = max(u1 - u0, v1 - v0) / 2
  cu, cv = (u0 + u1) / 2, (v0 + v1) / 2 - 0.5 * h0
  box = np.clip([cu - 1.9 * h0 * FRAME_H / FRAME_W, cv - 1.9 * h0,
                 cu + 1.9 * h0 * FRAME_H / FRAME_W, cv + 1.9 * h0], 0, 1)
  edges = [int(box[0] * FRAME_W), int(box[1] * FRAME_H), int(box[2] * FRAME_W),
           int(box[3] * FRAME_H)]
  np.testing.assert_allclose(np.load(tmp_path / "out" / "marked" / "params.npz")["crop_box"],
                             np.array(edges) - 0.5, atol=1e-4)
