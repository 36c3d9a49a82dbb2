"""Shape recovery, the paired cluster bootstrap and the calibration predictors against
independent NumPy computations; the interval's coverage by simulation."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from bench import interval_coverage
from sheap_jax.head import flame
from sheap_jax.evaluation import intervals
from sheap_jax.evaluation import predictors
from sheap_jax.evaluation import scoring
from sheap_jax.evaluation import shape_recovery
from sheap_jax.metrics import now
from tests.test_objective import small_flame_model


@pytest.fixture(scope="module")
def model():
  return small_flame_model()


def _neutral(model, shape):
  return np.asarray(flame.neutral_vertices(model, jnp.asarray(shape, jnp.float32)[None])[0],
                    np.float64)


def _reference_crop(model, gt):
  """In-crop vertices (a mask), with landmarks computed here (not by scoring.now_landmarks)."""
  centre, radius = now.face_crop_sphere(_landmarks(model, gt))
  return np.linalg.norm(gt - centre, axis=1) <= radius


def _landmarks(model, vertices):
  faces = np.asarray(model.faces)[np.asarray(model.full_lmk_faces)[list(flame.NOW_LANDMARKS)]]
  bary = np.asarray(model.full_lmk_bary)[list(flame.NOW_LANDMARKS)]
  return np.sum(vertices[faces] * bary[..., None], axis=1)


def _similarity_residual(template, displacement):
  """The displacement minus its least-squares fit by the 7 first-order similarity motions,
  written as an explicit (3m, 7) generator matrix solved by lstsq."""
  c = template.mean(0)
  columns = []
  for axis in range(3):
    t = np.zeros_like(template)
    t[:, axis] = 1
    columns.append(t)
  for axis in np.eye(3):
    columns.append(np.cross(np.broadcast_to(axis, template.shape), template - c))
  columns.append(template - c)
  g = np.stack([col.ravel() for col in columns], 1)
  d = displacement.ravel()
  return (d - g @ np.linalg.lstsq(g, d, rcond=None)[0]).reshape(-1, 3)


def test_landmarks_and_crop_match_flame_forward(model, rng):
  shape = rng.standard_normal(model.shapedirs.shape[-1])
  out = flame.flame_forward(model, flame.FlameParams.zeros(
      1, model.shapedirs.shape[-1], model.exprdirs.shape[-1]).replace(
          shape=jnp.asarray(shape, jnp.float32)[None]))
  vertices = np.asarray(out.vertices[0], np.float64)
  np.testing.assert_allclose(scoring.now_landmarks(model, vertices), out.landmarks_now[0],
                             atol=1e-6)
  np.testing.assert_array_equal(scoring.crop_indices(model, vertices),
                                np.flatnonzero(_reference_crop(model, vertices)))


def test_alpha_and_cos_on_hand_built_displacements(model, rng):
  """Prediction = template + A Δ_true + β E with E orthogonal to Δ_true and to every
  similarity motion: alpha = A and cos = A|Δ| / sqrt(A²|Δ|² + β²|E|²) exactly."""
  template = np.asarray(model.v_template, np.float64)
  gt = _neutral(model, 2 * rng.standard_normal(model.shapedirs.shape[-1]))
  crop = _reference_crop(model, gt)
  truth = _similarity_residual(template[crop], gt[crop] - template[crop])
  other = _similarity_residual(template[crop], rng.standard_normal(truth.shape) * 1e-3)
  other -= np.sum(other * truth) / np.sum(truth ** 2) * truth
  for factor, beta in [(0.0, 0.0), (0.37, 0.0), (1.0, 0.0), (1.4, 0.0), (-0.5, 0.0),
                       (0.6, 2.0), (0.0, 1.0)]:
    pred = template.copy()
    pred[crop] += factor * truth + beta * other
    pred[crop] += rng.standard_normal(3) * 1e-2  # a translation changes nothing
    got = shape_recovery.recovery(model, pred, gt)
    norm_t, norm_e = np.linalg.norm(truth), np.linalg.norm(other)
    assert got["alpha"] == pytest.approx(factor, abs=1e-9)
    pred_norm = math.hypot(factor * norm_t, beta * norm_e)
    expected_cos = factor * norm_t / pred_norm if pred_norm > 0 else 0.0
    assert got["cos"] == pytest.approx(expected_cos, abs=1e-9)
    rms = lambda d: 1e3 * np.sqrt(np.sum(d ** 2) / crop.sum())
    assert got["aligned_rms_mm"] == pytest.approx(
        rms((factor - 1) * truth + beta * other), rel=1e-9, abs=1e-9)
    assert got["from_template_aligned_mm"] == pytest.approx(pred_norm * 1e3 / np.sqrt(crop.sum()),
                                                            rel=1e-9, abs=1e-9)
    assert got["truth_from_template_aligned_mm"] == pytest.approx(rms(truth), rel=1e-9)


def test_oracle_scaled_has_alpha_a_through_the_flame_layer(model, rng):
  shape = rng.standard_normal((1, model.shapedirs.shape[-1])).astype(np.float32)
  examples = {f"gt_{f}": np.zeros((1, n), np.float32) for f, n in
              [("expression", model.exprdirs.shape[-1]), ("global_pose", 3), ("neck_pose", 3),
               ("jaw_pose", 3), ("eye_pose", 6), ("eyelids", 2), ("translation", 3)]}
  examples["gt_shape"] = shape
  gt = _neutral(model, shape[0])
  for factor in (0.0, 0.25, 0.5, 1.0, 1.5):
    params = predictors.get_predictor(f"oracle_scaled:{factor}")(None, examples)
    got = shape_recovery.recovery(model, _neutral(model, params.shape[0]), gt)
    assert got["alpha"] == pytest.approx(factor, abs=1e-5)  # float32 meshes
    assert got["cos"] == pytest.approx(1.0 if factor else 0.0, abs=1e-5)


def test_mode_survival_against_direct_projection(model):
  survival = shape_recovery.mode_survival(model)
  template = np.asarray(model.v_template, np.float64)
  crop = _reference_crop(model, template)
  dirs = np.asarray(model.shapedirs, np.float64)
  for k in range(dirs.shape[-1]):
    aligned = _similarity_residual(template[crop], dirs[crop, :, k])
    assert survival["aligned_rms_mm"][k] == pytest.approx(
        1e3 * np.sqrt(np.mean(np.sum(aligned ** 2, 1))), rel=1e-9)
    assert survival["crop_rms_mm"][k] == pytest.approx(
        1e3 * np.sqrt(np.mean(np.sum(dirs[crop, :, k] ** 2, 1))), rel=1e-9)
  assert survival["aligned_share"].sum() == pytest.approx(1.0)
  assert np.all(survival["surviving"] <= 1 + 1e-12)


def _explicit_bootstrap(values_x, values_b, counts):
  """Pooled medians of each resample by concatenating the drawn identities' values."""
  ratios = []
  for row in counts:
    pick = np.repeat(np.arange(len(row)), row)
    ratios.append(np.median(np.concatenate([values_x[i] for i in pick]))
                  / np.median(np.concatenate([values_b[i] for i in pick])))
  return np.asarray(ratios)


def test_pooled_median_and_paired_ratio_match_an_explicit_bootstrap(rng):
  identities = 7
  sizes = rng.integers(1, 9, identities)
  values_b = [rng.gamma(2.0, 1.0 + i, n) for i, n in enumerate(sizes)]
  values_x = [0.8 * v * rng.lognormal(0, 0.2, v.size) for v in values_b]
  counts = intervals.resample_counts(identities, 300, seed=3)
  np.testing.assert_array_equal(counts.sum(1), identities)
  pooled = intervals.PooledMedian(values_x)
  expected = [np.median(np.concatenate([values_x[i] for i in np.repeat(np.arange(identities),
                                                                       row)]))
              for row in counts]
  np.testing.assert_allclose(pooled(counts), expected, rtol=0, atol=0)
  # Items: split each identity's values into frames; the ratio pools them back per identity.
  frames_x, frames_b, clusters = [], [], []
  for i in range(identities):
    cut = rng.integers(0, sizes[i] + 1)
    for part in (slice(0, cut), slice(cut, None)):
      frames_x.append(values_x[i][part])
      frames_b.append(values_b[i][part])
      clusters.append(f"id{i}")
  result = intervals.paired_ratio(frames_x, frames_b, clusters, resamples=300, seed=3)
  assert result.ratio == pytest.approx(np.median(np.concatenate(values_x))
                                       / np.median(np.concatenate(values_b)), rel=1e-12)
  reference = _explicit_bootstrap(values_x, values_b, counts)
  assert (result.low, result.high) == pytest.approx(tuple(np.quantile(reference, [0.025, 0.975])),
                                                    rel=1e-12)
  per_x = np.array([np.median(v) for v in values_x])
  per_b = np.array([np.median(v) for v in values_b])
  assert (result.better, result.worse) == (np.sum(per_x < per_b), np.sum(per_x > per_b))
  k, n = min(result.better, result.worse), result.better + result.worse
  assert result.sign_p == pytest.approx(min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1))
                                            / 2 ** n), rel=1e-9)
  same = intervals.paired_ratio(frames_b, frames_b, clusters, resamples=50)
  assert (same.ratio, same.low, same.high, same.better, same.worse) == (1.0, 1.0, 1.0, 0, 0)


def test_mean_interval_matches_explicit_resampling(rng):
  values = rng.normal(0.5, 0.2, 11)
  got = intervals.mean_interval(values, resamples=400, seed=5)
  counts = intervals.resample_counts(11, 400, seed=5)
  means = [np.mean(np.repeat(values, row)) for row in counts]
  assert (got.low, got.high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])),
                                              rel=1e-12)
  assert got.mean == pytest.approx(values.mean())


def test_ratio_interval_covers_at_the_identity_count_used(rng):
  """16 identities (the demo split's held-out identities, which evaluate, training validation
  and the seed study score): the 95% percentile interval of the ratio of pooled medians holds
  the true ratio in 92.5-97.5% of 1,000 simulated evaluations (one standard error: 0.7%;
  bench/interval_coverage.py measured 94.7%, and 90-93% for BCa, which this would reject)."""
  share, _ = interval_coverage.coverage(rng, datasets=1000, identities=16, points=20,
                                        resamples=500)["percentile"]
  assert 0.925 <= share <= 0.975


def test_calibration_predictors(rng):
  batch = 4
  examples = {f"gt_{f}": rng.standard_normal((batch, n)).astype(np.float32) for f, n in
              [("shape", 300), ("expression", 100), ("global_pose", 3), ("neck_pose", 3),
               ("jaw_pose", 3), ("eye_pose", 6), ("eyelids", 2), ("translation", 3)]}
  examples["video_id"] = np.array([3, 5, 3, 9])
  true = predictors.oracle(None, examples)
  scaled = predictors.get_predictor("oracle_scaled:0.25")(None, examples)
  np.testing.assert_array_equal(scaled.shape, np.float32(0.25) * examples["gt_shape"])
  np.testing.assert_array_equal(scaled.jaw_pose, true.jaw_pose)
  np.testing.assert_array_equal(scaled.translation, true.translation)
  truncated = predictors.get_predictor("oracle_truncated:12")(None, examples)
  np.testing.assert_array_equal(truncated.shape[:, :12], examples["gt_shape"][:, :12])
  assert not np.any(truncated.shape[:, 12:])
  noisy = np.asarray(predictors.get_predictor("oracle_noise:0.5")(None, examples).shape)
  noise = noisy - examples["gt_shape"]
  np.testing.assert_allclose(noise[0], noise[2], atol=1e-6)  # one draw per identity
  assert not np.allclose(noise[0], noise[1])
  assert np.std(noise) == pytest.approx(0.5, rel=0.1)
  again = predictors.get_predictor("oracle_noise:0.5")(None, {k: v[1:2] for k, v in
                                                             examples.items()})
  np.testing.assert_array_equal(np.asarray(again.shape)[0], noisy[1])  # batching-independent
  for spec, message in [("oracle_scaled:x", "finite number"), ("oracle_noise:-1", ">= 0"),
                        ("oracle_truncated:1.5", "component count"), ("oracle_scal:1",
                                                                      "unknown predictor")]:
    with pytest.raises(ValueError, match=message):
      predictors.get_predictor(spec)
  with pytest.raises(ValueError, match="video_id"):
    predictors.get_predictor("oracle_noise:1")(None, {k: v for k, v in examples.items()
                                                      if k != "video_id"})


def test_split_roles():
  assert scoring.split_label("train") == "train (fitting)"
  assert scoring.split_label("validation") == "validation (generalisation)"
  with pytest.raises(ValueError, match="unknown split"):
    scoring.split_role("val")
