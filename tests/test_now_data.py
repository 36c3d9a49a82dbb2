"""NoW files: OBJ scans, MeshLab .pp landmarks, detected_face boxes, image lists, predictions."""
import os
import pickle
import pickletools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import trimesh

from sheap_jax.metrics import now
from sheap_jax.metrics import now_data


def _write_pp(path, points):
  """A MeshLab picked-points file laid out as NoW's (7 points on lines 8-14)."""
  lines = ['<!DOCTYPE PickedPoints>', '<PickedPoints>', ' <DocumentData>',
           '  <DateTime time="12:34:56" date="2018-04-24"/>', '  <User name="annotator"/>',
           '  <DataFileName name="scan.obj"/>', '  <templateName name=""/>', ' </DocumentData>']
  lines += [f' <point x="{x!r}" y="{y!r}" z="{z!r}" active="1" name="{i + 1}"/>'
            for i, (x, y, z) in enumerate(np.asarray(points).tolist())]
  lines.append('</PickedPoints>')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _official_pp_reading(path):
  """The official loader's rule: x, y, z attributes from lines 8 to 14."""
  with open(path) as f:
    lines = f.readlines()
  points = []
  for line in lines[8:15]:
    values = dict(token.split("=", 1) for token in line.split() if "=" in token)
    points.append([float(values[k].split('"')[1]) for k in "xyz"])
  return np.asarray(points)


def _python2_style_npy(path, box):
  """Writes a dict the way Python 2's np.save did: protocol-2 pickle, byte strings as `str`.

  Python 3 pickles text as BINUNICODE; Python 2 wrote its `str` as SHORT_BINSTRING, which
  only loads with an 8-bit encoding such as latin1, and named `numpy.core.multiarray`.
  """
  payload = pickle.dumps(np.array(box, dtype=object), protocol=2)
  rewritten, last = bytearray(), 0
  for opcode, argument, position in pickletools.genops(payload):
    if opcode.name == "BINUNICODE":
      encoded = argument.encode("latin1")
      rewritten += payload[last:position] + b"U" + bytes([len(encoded)]) + encoded
      last = position + 5 + len(argument.encode("utf-8"))
  rewritten += payload[last:]
  rewritten = bytes(rewritten).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
  assert all(op.name != "BINUNICODE" for op, _, _ in pickletools.genops(rewritten))
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "|O", "fortran_order": False, "shape": ()})
    f.write(rewritten)


def test_read_obj_handles_real_world_syntax(tmp_path):
  path = tmp_path / "scan.obj"
  path.write_text(
      "# scanner export\nmtllib scan.mtl\n"
      "v 0 0 0 0.5 0.5 0.5\nv 1 0 0 0.5 0.5 0.5\nv 1 1 0\nv 0 1 0\n"
      "vt 0 0\nvt 1 0\nvt 1 1\nvn 0 0 1\n"
      "usemtl skin\ns off\n"
      "f 1/1/1 2/2/1 3/3/1 4/3/1\n"  # a quad with texture and normal indices
      "f -4//1 -2//1 -1//1\n")  # relative indices
  vertices, faces = now_data.read_obj(str(path))
  np.testing.assert_array_equal(vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
  np.testing.assert_array_equal(faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])


def test_obj_round_trip_and_errors_name_the_file_and_line(tmp_path):
  rng = np.random.default_rng(0)
  vertices = rng.normal(size=(20, 3))
  faces = rng.integers(0, 20, (30, 3))
  path = tmp_path / "nested" / "mesh.obj"
  now_data.write_obj(str(path), vertices, faces)
  read_vertices, read_faces = now_data.read_obj(str(path))
  np.testing.assert_allclose(read_vertices, vertices, rtol=1e-8)
  np.testing.assert_array_equal(read_faces, faces)
  bad = tmp_path / "bad.obj"
  bad.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n")
  with pytest.raises(ValueError, match=r"bad\.obj, line 4"):
    now_data.read_obj(str(bad))
  bad.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n")
  with pytest.raises(ValueError, match=r"bad\.obj: faces refer to vertices outside 1..3"):
    now_data.read_obj(str(bad))


def test_pp_landmarks_match_the_official_reading(tmp_path):
  rng = np.random.default_rng(1)
  points = rng.normal(size=(7, 3)) * 50
  path = str(tmp_path / "scans_lmks_onlypp" / "subject" / "landmarks.pp")
  _write_pp(path, points)
  landmarks = now_data.read_scan_landmarks(path)
  np.testing.assert_array_equal(landmarks, points)
  np.testing.assert_array_equal(landmarks, _official_pp_reading(path))
  _write_pp(path, points[:6])
  with pytest.raises(ValueError, match="landmarks.pp: expected the 7 NoW landmarks, found 6"):
    now_data.read_scan_landmarks(path)
  with open(path, "w") as f:
    f.write("not xml")
  with pytest.raises(ValueError, match="landmarks.pp: not a MeshLab picked-points"):
    now_data.read_scan_landmarks(path)


def test_face_boxes_from_python3_and_python2_style_files(tmp_path):
  box = {"left": 812.0, "top": 1210.5, "right": 1650.25, "bottom": 2203.0}
  modern = str(tmp_path / "modern.npy")
  np.save(modern, {k: np.float64(v) for k, v in box.items()})
  legacy = str(tmp_path / "legacy.npy")
  _python2_style_npy(legacy, box)
  for path in (modern, legacy):
    np.testing.assert_array_equal(now_data.read_face_box(path), [812.0, 1210.5, 1650.25, 2203.0])
  wrong = str(tmp_path / "wrong.npy")
  np.save(wrong, {"x": 1})
  with pytest.raises(ValueError, match="wrong.npy: expected a pickled dict with keys"):
    now_data.read_face_box(wrong)


def _head_scan():
  """A closed scan-like surface in millimetres with 7 landmark vertices."""
  sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
  vertices = np.asarray(sphere.vertices) * np.array([75.0, 100.0, 90.0])
  directions = np.array([[-0.5, 0.3, 0.8], [-0.2, 0.3, 0.9], [0.2, 0.3, 0.9], [0.5, 0.3, 0.8],
                         [0.0, -0.15, 1.0], [-0.3, -0.5, 0.8], [0.3, -0.5, 0.8]])
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  landmark_ids = np.argmax(np.asarray(sphere.vertices) @ directions.T, axis=0)
  return vertices, np.asarray(sphere.faces), vertices[landmark_ids]


def _make_dataset(root):
  vertices, faces, landmarks = _head_scan()
  now_data.write_obj(os.path.join(root, "scans", "FaMoS_1", "natural_head_rotation.obj"),
                     vertices, faces)
  _write_pp(os.path.join(root, "scans_lmks_onlypp", "FaMoS_1", "natural_head_rotation.pp"),
            landmarks)
  entries = ["FaMoS_1/multiview_neutral/IMG_0001.jpg", "FaMoS_1/selfie/IMG_0002.jpg"]
  with open(os.path.join(root, "imagepathsvalidation.txt"), "w") as f:
    f.write("\n".join(entries) + "\n")
  for entry in entries:
    box_path = os.path.join(root, "NoW_Dataset", "final_release_version", "detected_face",
                            entry.replace(".jpg", ".npy"))
    os.makedirs(os.path.dirname(box_path), exist_ok=True)
    np.save(box_path, {"left": 10, "top": 20, "right": 110, "bottom": 140})
  return vertices, faces, landmarks


def test_dataset_layout_paths_and_image_lists(tmp_path):
  root = str(tmp_path)
  _, _, landmarks = _make_dataset(root)
  dataset = now_data.NowDataset(root)
  images = dataset.images("val")
  assert [im.relative_path for im in images] == ["FaMoS_1/multiview_neutral/IMG_0001.jpg",
                                                 "FaMoS_1/selfie/IMG_0002.jpg"]
  assert [im.filename for im in dataset.images("val", challenge="selfie")] == ["IMG_0002.jpg"]
  assert dataset.image_path(images[0]) == os.path.join(
      root, "NoW_Dataset", "final_release_version", "iphone_pictures", "FaMoS_1",
      "multiview_neutral", "IMG_0001.jpg")
  np.testing.assert_array_equal(dataset.face_box(images[1]), [10, 20, 110, 140])
  scan_vertices, _, scan_landmarks = dataset.scan("FaMoS_1")
  np.testing.assert_allclose(scan_landmarks, landmarks / 1000)  # millimetres -> metres
  assert np.abs(scan_vertices).max() == pytest.approx(0.1, rel=1e-6)
  with pytest.raises(FileNotFoundError, match="no \\*.obj file for subject FaMoS_2"):
    dataset.scan_path("FaMoS_2")
  with pytest.raises(ValueError, match="challenge must be one of"):
    dataset.images("val", challenge="selfies")
  bad_list = tmp_path / "list.txt"
  bad_list.write_text("FaMoS_1/IMG_0001.jpg\n")
  with pytest.raises(ValueError, match=r"list\.txt, line 1: expected <subject>/<challenge>"):
    now_data.read_image_list(str(bad_list))


def test_predictions_are_written_where_the_official_evaluation_reads_them(tmp_path):
  rng = np.random.default_rng(2)
  image = now_data.NowImage("FaMoS_1", "multiview_expressions", "IMG_0042.jpg")
  vertices, faces = rng.normal(size=(10, 3)) * 0.1, rng.integers(0, 10, (12, 3))
  landmarks = rng.normal(size=(7, 3)) * 0.05
  out = str(tmp_path / "predictions")
  now_data.write_prediction(out, image, vertices, faces, landmarks)
  folder = os.path.join(out, "FaMoS_1", "multiview_expressions")
  assert sorted(os.listdir(folder)) == ["IMG_0042.npy", "IMG_0042.obj"]
  stored = np.load(os.path.join(folder, "IMG_0042.npy"))
  assert stored.shape == (7, 3)
  np.testing.assert_array_equal(stored, landmarks)
  read_vertices, read_faces, read_landmarks = now_data.read_prediction(out, image)
  np.testing.assert_allclose(read_vertices, vertices, rtol=1e-8)
  np.testing.assert_array_equal(read_faces, faces)
  with pytest.raises(ValueError, match=r"landmarks7 for FaMoS_1/.*must have shape \(7, 3\)"):
    now_data.write_prediction(out, image, vertices, faces, landmarks[:5])


def test_evaluating_a_prediction_folder_end_to_end(tmp_path):
  root, out = str(tmp_path / "now"), str(tmp_path / "predictions")
  os.makedirs(root)
  vertices, faces, landmarks = _make_dataset(root)
  dataset = now_data.NowDataset(root)
  images = dataset.images("val")
  rng = np.random.default_rng(3)
  # The prediction is the scan itself in metres, in some other frame; the second is missing.
  pose = now.Similarity(1.0, Rotation.random(random_state=4).as_matrix(), rng.normal(size=3))
  now_data.write_prediction(out, images[0], pose.apply(vertices / 1000), faces,
                            pose.apply(landmarks / 1000))
  for scale in (True, False):
    errors, missing = now_data.evaluate_predictions(dataset, out, images, scale=scale)
    assert missing == [images[1]]
    assert list(errors) == [images[0].relative_path]
    cropped, _ = now.crop_scan(vertices / 1000, faces, landmarks / 1000)
    assert errors[images[0].relative_path].shape == (len(cropped),)
    assert now.summarize(list(errors.values()))["mean_mm"] < 1e-4  # OBJ text keeps 9 digits
