"""python -m sheap_jax.evaluate: oracle ~ 0 and mean_head clearly worse on a small built
synthetic_heads split, the CLI's outputs, the NoW path on a hand-made NoW folder, bad input."""
import dataclasses
import importlib.machinery
import json
import os
import sys
import types

import numpy as np
from PIL import Image
import pytest

from data.synthetic_heads import assets
from data.synthetic_heads import builder
from data.synthetic_heads import variants
from configs import base
from data import datasets
from sheap_jax.evaluation import benchmarks
from sheap_jax.evaluation import evaluators
from sheap_jax import evaluate
from sheap_jax.head import flame
from sheap_jax.evaluation import predictors
from sheap_jax.evaluation import scoring
from sheap_jax.evaluation import validation
from sheap_jax.metrics import now
from sheap_jax.metrics import now_data

# Two held-out identities, two frames each, 64 px: the smallest build that still has variety.
EVAL_CONFIG = dataclasses.replace(
    variants.BUILDER_CONFIGS[0], name="eval64", description="tests/test_evaluate.py",
    image_size=64, texture_size=64, supersample=1, num_train=0, num_validation=2, num_test=0,
    frames_per_video=2, store_vertices=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("synthetic"))
  builder.SyntheticHeads(config=EVAL_CONFIG, data_dir=path,
                         file_format="array_record").download_and_prepare()
  return path


@pytest.fixture(scope="module")
def source(data_dir):
  return evaluate.synthetic_source(data_dir, EVAL_CONFIG.name, "validation")


def test_now_landmarks_match_flame_forward():
  model = assets.head_assets().model
  params = flame.FlameParams.zeros(1)
  params = params.replace(shape=np.random.default_rng(0).normal(size=(1, 300)).astype(np.float32),
                          jaw_pose=np.array([[0.2, 0.0, 0.0]], np.float32))
  out = flame.flame_forward(model, params)
  np.testing.assert_allclose(scoring.now_landmarks(model, out.vertices[0]),
                             out.landmarks_now[0], atol=1e-6)


def test_select_frames_interleaves_identities(source):
  assert benchmarks.select_frames(source, 2) == [0, 2, 1, 3]
  assert benchmarks.select_frames(source, 1) == [0, 2]
  assert benchmarks.select_frames(source, 5, max_items=3) == [0, 2, 1]


def test_oracle_scores_zero_and_mean_head_does_not(source):
  model = assets.head_assets().model
  oracle = benchmarks.synthetic_neutral(predictors.oracle, model, source, frames_per_identity=1)
  mean = benchmarks.synthetic_neutral(predictors.mean_head, model, source, frames_per_identity=1)
  assert oracle.item_ids == mean.item_ids and len(oracle.item_ids) == 2
  assert oracle.summary()["median_mm"] < 0.05
  assert mean.summary()["median_mm"] > 0.5
  assert mean.summary()["median_mm"] < 10.0  # adult heads differ by millimetres, not more
  # Reference for the first item: the GT mesh from FLAME, landmarks from flame_forward (not
  # benchmarks.now_landmarks), the NoW metric called directly.
  record = source[0]
  zero = flame.FlameParams.zeros(1)
  gt = flame.flame_forward(model, zero.replace(shape=record["gt_shape"][None]))
  template = flame.flame_forward(model, zero)
  np.testing.assert_allclose(record["gt_neutral_vertices"], gt.vertices[0], atol=2e-6)
  faces = np.asarray(model.faces)
  expected = now.now_errors(template.vertices[0], faces, template.landmarks_now[0],
                            gt.vertices[0], faces, gt.landmarks_now[0])
  np.testing.assert_allclose(mean.errors[0], expected, atol=1e-6)
  posed = benchmarks.synthetic_expressions(predictors.mean_head, model, source, max_items=1)
  assert posed.summary()["median_mm"] > 0.5
  # Configs that store no meshes ("full"): the ground truth is recomputed from gt_ parameters.
  meshes = ("gt_vertices", "gt_neutral_vertices")
  without_meshes = [{k: v for k, v in source[i].items() if k not in meshes}
                    for i in range(len(source))]
  recomputed = benchmarks.synthetic_expressions(predictors.mean_head, model, without_meshes,
                                                max_items=1)
  np.testing.assert_allclose(recomputed.errors[0], posed.errors[0], atol=1e-8)
  oracle_posed = benchmarks.synthetic_expressions(predictors.oracle, model, without_meshes,
                                                  max_items=1)
  assert oracle_posed.summary()["median_mm"] < 0.05


# The code at a349c4d on this split (how: docs/evaluation.md, "Pinned values"):
# benchmarks.synthetic_neutral with its default 2 frames per identity, and training validation
# (then train.validation_set: first frame per identity, 32 px, scored by
# train.synthetic_neutral; now `config.evals`' synthetic_neutral). Both frames of an
# identity give the same neutral errors under these predictors, so one frame per identity has
# the same median, mean and std with half the points (and half the time).
OLD_BENCHMARK = {"mean_head": dict(median_mm=0.7042155801905225, mean_mm=1.0857097259777262,
                                   std_mm=1.110050189481107, num_points=10976 // 2, num_items=2),
                 "oracle": dict(median_mm=8.330471877158689e-08, num_points=10976 // 2,
                                num_items=2)}
OLD_VALIDATION = dict(median_mm=0.7042155801905225, mean_mm=1.0857097259777262,
                      std_mm=1.110050189481107, num_points=5488, from_template_mm=0.0,
                      gt_from_template_mm=5.88520073712715)


def test_scores_equal_the_old_code_and_the_baselines_stay_put(source, tmp_path):
  """Guards the ruler: mean_head's and oracle's synthetic_neutral on this fixed split, and the
  training validation path (`config.evals` through `validation.Validation`), equal the
  pre-merge values."""
  model = assets.head_assets().model
  for name, old in OLD_BENCHMARK.items():
    summary = benchmarks.synthetic_neutral(predictors.BUILT_IN[name], model, source,
                                           frames_per_identity=1).summary()
    tolerance = dict(rel=1e-9) if name == "mean_head" else dict(abs=1e-6)  # oracle: float32 0
    assert {k: summary[k] for k in old} == pytest.approx(old, **tolerance)
  config = base.get_config("cpu")
  config.evals.synthetic_neutral.images = 5
  splits = []
  evals = validation.Validation.from_config(
      config, model, lambda split: splits.append(split) or source, str(tmp_path))
  assert splits == ["validation"]
  baseline = evals.baseline_metrics()
  metrics = evals(predictors.mean_head, step=3)
  for key in ("median_mm", "mean_mm", "std_mm", "num_points", "from_template_mm"):
    assert metrics[f"synthetic_neutral/{key}"] == pytest.approx(OLD_VALIDATION[key], rel=1e-9)
    assert baseline[f"synthetic_neutral/mean_head/{key}"] == metrics[f"synthetic_neutral/{key}"]
  assert metrics["synthetic_neutral/num_identities"] == 2
  assert metrics["synthetic_neutral/ratio"] == 1.0
  evals.write(str(tmp_path))
  with open(tmp_path / "synthetic_neutral.json") as f:
    written = json.load(f)
  assert written["split"] == "validation (generalisation)" and written["model"]["step"] == 3
  assert written["ground_truth"]["from_template_mm"] == pytest.approx(
      OLD_VALIDATION["gt_from_template_mm"], rel=1e-9)


def test_evaluators_are_chosen_by_name(source, tmp_path):
  """The registry runs the benchmark functions; unknown names and options are one line naming
  the accepted ones, from the registry and from `config.evals`."""
  model = assets.head_assets().model
  direct = benchmarks.synthetic_expressions(predictors.mean_head, model, source, max_items=2)
  named = evaluators.run("synthetic_expressions", predictors.mean_head, model, source,
                         max_items=2)
  assert named.summary() == direct.summary() and named.item_ids == direct.item_ids
  with pytest.raises(ValueError, match=r"unknown evaluator 'synthetic'; accepted: "
                     r"synthetic_neutral, synthetic_expressions, now$"):
    evaluators.get("synthetic")
  with pytest.raises(ValueError, match=r"takes no option \['challenge'\]"):
    evaluators.run("synthetic_neutral", predictors.mean_head, model, source, challenge="x")
  config = base.get_config("cpu")
  config.evals = {"synthetic_neutrals": {}}
  with pytest.raises(datasets.ConfigError, match="^config.evals: .*accepted: synthetic_neutral"):
    validation.Validation.from_config(config, model, lambda split: source, str(tmp_path))
  config.evals = {"synthetic_neutral": {"identities": 3}}
  with pytest.raises(datasets.ConfigError, match=r"synthetic_neutral: unknown options "
                     r"\['identities'\]; accepted: images, split"):
    validation.Validation.from_config(config, model, lambda split: source, str(tmp_path))
  config.evals = {"now": {"split": "validation"}}
  with pytest.raises(datasets.ConfigError, match="now_dir='': not a NoW dataset folder"):
    validation.Validation.from_config(config, model, None, str(tmp_path))
  config.evals = {"synthetic_neutral": {}}  # no synthetic data: skipped
  assert validation.Validation.from_config(config, model, None, str(tmp_path)) is None


def test_oracle_scaled_zero_is_the_mean_head_and_calibrates(source):
  model = assets.head_assets().model
  mean = benchmarks.synthetic_neutral(predictors.mean_head, model, source, frames_per_identity=1)
  zero = benchmarks.synthetic_neutral(predictors.get_predictor("oracle_scaled:0"), model, source,
                                      frames_per_identity=1)
  for a, b in zip(mean.errors, zero.errors):
    np.testing.assert_array_equal(a, b)
  half = benchmarks.synthetic_neutral(predictors.get_predictor("oracle_scaled:0.5"), model,
                                      source, frames_per_identity=1)
  for item in half.recovery:  # float32 meshes: alpha is 0.5 to their rounding
    assert item["alpha"] == pytest.approx(0.5, abs=1e-4)
    assert item["cos"] == pytest.approx(1.0, abs=1e-4)
  assert half.summary()["median_mm"] < mean.summary()["median_mm"]
  assert [r["alpha"] for r in zero.recovery] == [0.0, 0.0]
  comparison = half.compare(mean)
  assert comparison.low <= comparison.ratio <= comparison.high
  assert comparison.ratio == pytest.approx(half.summary()["median_mm"]
                                           / mean.summary()["median_mm"], rel=1e-9)


def test_cli_writes_json_png_and_table(data_dir, tmp_path, capsys):
  out = str(tmp_path / "eval")
  evaluate.main(["--benchmark", "synthetic_neutral,synthetic_expressions",
                 "--predictor", "mean_head,oracle", "--data_dir", data_dir,
                 "--config", EVAL_CONFIG.name, "--max_items", "1", "--out", out])
  printed = capsys.readouterr().out
  for name in ("synthetic_neutral", "synthetic_expressions"):
    with open(os.path.join(out, f"{name}.json")) as f:
      report = json.load(f)
    summary = report["predictors"]
    assert summary["oracle"]["summary"]["median_mm"] < 0.05
    assert summary["mean_head"]["summary"]["median_mm"] > 0.5
    assert summary["oracle"]["summary"]["num_items"] == 1
    with open(os.path.join(out, f"{name}_cumulative.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    row = next(l for l in printed.splitlines() if l.startswith(name) and "oracle" in l)
    assert float(row.split()[6]) == pytest.approx(summary["oracle"]["summary"]["median_mm"],
                                                  abs=1e-4)
    against = summary["oracle"]["against_mean_head"]
    assert f"{against['ratio']:.3f} [{against['low']:.3f}, {against['high']:.3f}]" in row
    assert "validation (generalisation)" in row and report["measures"] == "generalisation"


def _write_now_folder(root, scans, faces, model):
  """A NoW folder with one neutral image per subject: scans (name -> vertices in metres) and
  their landmarks written in mm, the validation list, iPhone images and face boxes."""
  images = [now_data.NowImage(name, "multiview_neutral", "IMG_0001.jpg") for name in scans]
  os.makedirs(root)
  with open(os.path.join(root, "imagepathsvalidation.txt"), "w") as f:
    f.write("".join(im.relative_path + "\n" for im in images))
  dataset = now_data.NowDataset(root)
  rng = np.random.default_rng(0)
  for image in images:
    vertices = scans[image.subject]
    now_data.write_obj(os.path.join(root, "scans", image.subject, "scan.obj"), vertices * 1000,
                       faces)
    landmarks_mm = scoring.now_landmarks(model, vertices) * 1000
    points = "".join(f'<point x="{x}" y="{y}" z="{z}" name="{i}"/>\n'
                     for i, (x, y, z) in enumerate(landmarks_mm))
    os.makedirs(os.path.join(root, "scans_lmks_onlypp", image.subject))
    with open(os.path.join(root, "scans_lmks_onlypp", image.subject, "scan.pp"), "w") as f:
      f.write(f"<!DOCTYPE PickedPoints>\n<PickedPoints>\n{points}</PickedPoints>\n")
    os.makedirs(os.path.dirname(dataset.image_path(image)))
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), np.uint8)).save(dataset.image_path(image))
    os.makedirs(os.path.dirname(dataset.face_box_path(image)))
    np.save(dataset.face_box_path(image),
            np.array({"left": 10.0, "top": 8.0, "right": 30.0, "bottom": 36.0}, dtype=object))


def test_now_benchmark_on_a_hand_made_folder(source, tmp_path, capsys):
  """Subject A's scan is the template head: mean_head predicts exactly it (error ~ 0). Subject
  B's scan is a synthetic identity's GT neutral mesh: the NoW path (OBJ and .pp files in mm,
  crops, written predictions) gives the errors synthetic_neutral gives for the same pair."""
  model = assets.head_assets().model
  identity = source[0]["gt_neutral_vertices"].astype(np.float64)
  _write_now_folder(str(tmp_path / "now"),
                    {"A": np.asarray(model.v_template, np.float64), "B": identity},
                    np.asarray(model.faces), model)
  rows = evaluate.main(["--benchmark", "now", "--predictor", "mean_head", "--now_dir",
                        str(tmp_path / "now"), "--out", str(tmp_path / "out")])
  assert [(r[2], r[3]["num_items"]) for r in rows] == [("mean_head", 2)]
  assert "val (generalisation)" in capsys.readouterr().out
  with open(tmp_path / "out" / "now.json") as f:
    items = {i["id"]: i for i in json.load(f)["predictors"]["mean_head"]["items"]}
  assert items["A/multiview_neutral/IMG_0001.jpg"]["median_mm"] < 1e-3
  synthetic = benchmarks.synthetic_neutral(predictors.mean_head, model, source, max_items=1)
  assert items["B/multiview_neutral/IMG_0001.jpg"]["mean_mm"] == pytest.approx(
      1000 * synthetic.errors[0].mean(), abs=1e-3)
  predicted = tmp_path / "out" / "now_predictions" / "mean_head" / "B" / "multiview_neutral"
  assert (predicted / "IMG_0001.obj").is_file()
  assert np.load(predicted / "IMG_0001.npy").shape == (7, 3)


def test_crop_face_box_pads_and_resizes():
  image = np.zeros((20, 30, 3), np.uint8)
  image[5:15, 10:20] = 255  # the box itself is white, outside black
  # Pixel centres at integers: the white pixels span [9.5, 19.5] x [4.5, 14.5].
  crop = benchmarks.crop_face_box(image, (9.5, 4.5, 19.5, 14.5), size=36, enlargement=0.8)
  assert crop.shape == (36, 36, 3) and crop.dtype == np.float32
  # Side 18 px -> 2 output px per input px; output column k samples x = 5.75 + k / 2 (row k:
  # y = 0.75 + k / 2), bilinear between pixel centres: columns 9-26 all white, column 8 (x =
  # 9.75) three quarters white, the padded corner black.
  assert crop[1, 1].max() == 0.0 and crop[9:27, 9:27].min() == 1.0
  np.testing.assert_allclose(crop[18, 8], 191 / 255)  # 0.75 * 255, stored as uint8
  np.testing.assert_allclose(crop[8, 18], 191 / 255)


def test_train_split_is_labelled_fitting(tmp_path, capsys):
  """A split with training identities: --split train scores them and says 'fitting'."""
  data_dir = str(tmp_path / "data")
  config = dataclasses.replace(EVAL_CONFIG, name="train_split", num_train=1, num_validation=0,
                               frames_per_video=1, image_size=16, texture_size=16)
  builder.SyntheticHeads(config=config, data_dir=data_dir,
                         file_format="array_record").download_and_prepare()
  rows = evaluate.main(["--predictor", "oracle_scaled:0.5", "--split", "train", "--data_dir",
                        data_dir, "--config", config.name, "--out", str(tmp_path / "out")])
  assert [(r[1], r[2]) for r in rows] == [("train (fitting)", "mean_head"),
                                          ("train (fitting)", "oracle_scaled:0.5")]
  printed = capsys.readouterr().out
  assert printed.count("train (fitting)") == 4  # two score rows, two recovery rows
  with open(tmp_path / "out" / "synthetic_neutral.json") as f:
    assert json.load(f)["measures"] == "fitting"


def test_bad_benchmark_predictor_and_now_path_give_clear_errors(data_dir, tmp_path, capsys):
  cases = [
      (["--benchmark", "now", "--now_dir", str(tmp_path), "--split", "train"],
       "NoW lists only validation and test"),
      (["--predictor", "oracle_scaled:big"], "must be a finite number"),
      (["--benchmark", "nowish"], "unknown benchmark"),
      (["--benchmark", "now"], "needs --now_dir"),
      (["--benchmark", "now", "--now_dir", str(tmp_path / "absent")],
       "NoW dataset folder not found"),
      (["--predictor", "mean_hed"], "unknown predictor 'mean_hed'"),
      (["--predictor", f"checkpoint:{tmp_path}"], "sheap_jax/inference/checkpoint_predictor.py"),
  ]
  for argv, message in cases:
    with pytest.raises(SystemExit):
      evaluate.parse_args(argv + ["--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
  with pytest.raises(ValueError, match="oracle predictor needs ground-truth"):
    predictors.oracle(np.zeros((1, 8, 8, 3)), {"face_box": np.zeros((1, 4))})
  with pytest.raises(ValueError, match="need the built-in head the data was rendered with"):
    evaluate.main(["--flame", os.path.join(os.path.dirname(__file__), "fixtures", "flame_chumpy"),
                   "--data_dir", data_dir, "--config", EVAL_CONFIG.name, "--out", str(tmp_path)])
  with pytest.raises(ValueError, match="no built synthetic_heads dataset"):
    evaluate.synthetic_source(str(tmp_path), "nonexistent", "validation")


def test_checkpoint_predictor_plugs_in(monkeypatch, tmp_path):
  """`checkpoint:DIR` hands DIR to sheap_jax.inference.checkpoint_predictor.load once that
  module exists."""
  loaded = []
  module = types.ModuleType(predictors.CHECKPOINT_MODULE)
  module.__spec__ = importlib.machinery.ModuleSpec(predictors.CHECKPOINT_MODULE, None)
  module.load = lambda directory: loaded.append(directory) or predictors.mean_head
  monkeypatch.setitem(sys.modules, predictors.CHECKPOINT_MODULE, module)
  assert predictors.get_predictor(f"checkpoint:{tmp_path}") is predictors.mean_head
  assert loaded == [str(tmp_path)]
