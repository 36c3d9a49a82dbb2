"""python -m sheap_jax.fit end to end on a tiny synthetic video: the inputs carry no ground
truth, the outputs parse, a rerun skips the finished fit, and the CONTROL (started at the true
parameters, FLAME frozen while the Gaussians fit, then everything free) keeps the shape."""
import dataclasses
import json
import os

import numpy as np
from PIL import Image
import pytest

from configs import fit as fit_config
from data.synthetic_heads import builder
from data.synthetic_heads import variants
from sheap_jax import fit
from sheap_jax.fitting import clip
from sheap_jax.fitting import fitter
from sheap_jax.fitting import optimizer
from sheap_jax.fitting import outputs
from sheap_jax.head import flame

# One identity, two frames at 64 px: the smallest video with motion.
FIT_CONFIG = dataclasses.replace(
    variants.BUILDER_CONFIGS[0], name="fit_test", description="tests/test_fit.py",
    image_size=64, texture_size=64, supersample=1, num_train=0, num_validation=1, num_test=0,
    frames_per_video=2)
VIDEO = "synthetic_heads:fit_test/validation/0"
STEPS = 20


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("synthetic"))
  builder.SyntheticHeads(config=FIT_CONFIG, data_dir=data_dir,
                         file_format="array_record").download_and_prepare()
  c = fit_config.get_config()
  c.data.data_dir = data_dir
  c.data.build_if_missing = False
  # 32 px renders with the pure-JAX rasteriser: the cheapest compile on CPU.
  c.render.size, c.render.impl, c.render.capacity = 32, "tiled", None
  c.fit.update(steps=STEPS, log_every=5, score_every=10, checkpoint_every=10)
  return c


@pytest.fixture(scope="module")
def control(config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("control"))
  return workdir, fit.run(config, VIDEO, workdir, init="ground_truth_control")


def test_inputs_carry_no_ground_truth(config):
  frames, records = clip.load_clip(clip.parse_video_spec(VIDEO), config)
  assert not [key for key in frames if "gt_" in key]
  assert set(frames) == {"target_image", "target_landmarks", "target_landmarks_valid",
                         "target_landmarks_3d"}
  assert frames["target_image"].shape == (2, 64, 64, 3) and list(records) == [0, 1]


def test_bad_video_spec_names_the_format():
  with pytest.raises(ValueError, match="NAME:VARIANT/SPLIT/VIDEO_ID"):
    clip.parse_video_spec("synthetic_heads:fit_test/validation")


def test_outputs_parse(control, config):
  workdir, summary = control
  assert summary["init"] == "ground_truth_control" and "CONTROL" in summary["init_note"]
  assert "gt_" not in " ".join(summary["inputs"])
  with open(os.path.join(workdir, fitter.METRICS_FILE)) as f:
    lines = [json.loads(line) for line in f]
  assert [line["step"] for line in lines] == list(range(5, STEPS + 1, 5))
  for line in lines:
    assert np.isfinite(line["loss"])
    # every weighted term is logged (perceptual and the zero-weight ones are not)
    assert {"loss/l1", "loss/ssim", "loss/landmarks", "loss/shape_prior",
            "loss/gaussian_scale"} <= set(line)
  scored = [line for line in lines if "score/median_mm" in line]
  assert [line["step"] for line in scored] == [10, 20]
  params = np.load(os.path.join(workdir, outputs.PARAMS_STEM + ".npz"))
  assert params["shape"].shape == (300,) and params["jaw_pose"].shape == (2, 3)
  with open(os.path.join(workdir, outputs.PARAMS_STEM + ".json")) as f:
    np.testing.assert_allclose(json.load(f)["shape"], params["shape"], rtol=1e-6)
  with open(os.path.join(workdir, outputs.MESH_FILE)) as f:
    vertices = np.array([[float(x) for x in line.split()[1:]] for line in f
                         if line.startswith("v ")])
  model = fit.objective.load_flame_model(config)
  np.testing.assert_allclose(
      vertices, flame.neutral_vertices(model, params["shape"][None])[0], atol=1e-6)
  size = config.render.size
  assert np.asarray(Image.open(os.path.join(workdir, outputs.PREVIEW_FILE))).shape == (
      2 * size, 5 * size, 3)  # frames 0 and 1 (first = middle)


def test_control_keeps_the_shape(control):
  _, summary = control
  final = summary["final"]
  assert final["step"] == STEPS
  assert final["score/alpha"] >= 0.9, final
  assert final["score/median_ratio_to_mean_head"] < 0.5, final


def test_rerun_skips_and_resumes(control, config):
  workdir, summary = control
  assert fit.run(config, VIDEO, workdir, init="ground_truth_control") == summary
  # Without fit.json the saved state is resumed (here after the last step: no step to take).
  os.remove(os.path.join(workdir, fitter.SUMMARY_FILE))
  resumed = fit.run(config, VIDEO, workdir, init="ground_truth_control")
  assert resumed["resumed_from_step"] == STEPS
  assert resumed["final"] == summary["final"]


def test_config_arguments():
  c = fit_config.get_config("losses=landmarks_only,matte=face_model")
  assert c.losses.l1.weight == 0.0 and c.losses.landmarks.weight > 0 and c.fit.matte == "face_model"
  with pytest.raises(ValueError, match="configs/fit.py: unknown argument"):
    fit_config.get_config("cpu")


def test_group_schedule_waits_warms_and_decays(rng):
  peak, start, total, warmup, end = rng.uniform(0.01, 1), 7, 40, 5, rng.uniform(0.05, 0.5)
  schedule = optimizer.group_schedule(peak, start, total, warmup, end)
  steps = np.arange(total + 3)
  t = steps - start
  expected = np.where(t >= 0, peak * np.clip((t + 1) / warmup, 0, 1) * (
      end + (1 - end) * 0.5 * (1 + np.cos(np.pi * np.clip(t / (total - start), 0, 1)))), 0)
  np.testing.assert_allclose([float(schedule(s)) for s in steps], expected, rtol=1e-5,
                             atol=1e-7)
  assert float(schedule(start - 1)) == 0.0 and float(schedule(total)) == pytest.approx(peak * end)
