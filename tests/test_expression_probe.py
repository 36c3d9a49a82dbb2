"""Expressiveness probe: the classifier against an independent Newton solver and on data with a
known answer; on a small built synthetic_heads split, oracle far above chance and mean_head
exactly at chance; the CLI's JSON, PNG and table; bad input."""
import dataclasses
import json
import os

import numpy as np
import pytest
import scipy.special

from data.synthetic_heads import builder
from data.synthetic_heads import variants
from data.synthetic_heads import features as F
from sheap_jax.evaluation import benchmarks
from sheap_jax import evaluate
from sheap_jax.evaluation import expression_probe
from sheap_jax.evaluation import predictors

# 10 train and 4 held-out identities, 8 frames each at 32 px. Frames 3 s apart fall in
# different expression segments (1-3 s long), so most frames are distinct labelled samples.
PROBE_CONFIG = dataclasses.replace(
    variants.BUILDER_CONFIGS[0], name="probe32", description="tests/test_expression_probe.py",
    image_size=32, texture_size=32, supersample=1, num_train=10, num_validation=4, num_test=0,
    frames_per_video=8, frame_interval=3.0, emotion_probability=1.0, store_vertices=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("synthetic"))
  builder.SyntheticHeads(config=PROBE_CONFIG, data_dir=path,
                         file_format="array_record").download_and_prepare()
  return path


def _newton_reference(x, labels, l2, iterations=50):
  """Float64 Newton's method on the same objective, written independently: the last class's
  bias is pinned to 0 (the objective is shift-invariant in the biases), so the Hessian is
  positive definite. Returns (weights (D, K), biases (K,))."""
  n, d = x.shape
  k = labels.max() + 1
  y = np.eye(k)[labels]
  design = np.concatenate([x, np.ones((n, 1))], axis=1)  # (n, d + 1)
  theta = np.zeros((d + 1, k))
  free = np.ones((d + 1, k), bool)
  free[d, k - 1] = False
  penalty = np.zeros((d + 1, k))
  penalty[:d] = l2
  for _ in range(iterations):
    p = scipy.special.softmax(design @ theta, axis=1)
    grad = design.T @ (p - y) / n + penalty * theta
    # Hessian of the mean cross-entropy: sum_i kron(x_i x_i^T, diag(p_i) - p_i p_i^T) / n.
    hessian = np.einsum("ia,ib,ikl->akbl", design, design,
                        np.einsum("ik,kl->ikl", p, np.eye(k)) - np.einsum("ik,il->ikl", p, p)) / n
    hessian = hessian.reshape((d + 1) * k, (d + 1) * k) + np.diag(penalty.ravel())
    mask = free.ravel()
    step = np.linalg.solve(hessian[np.ix_(mask, mask)], grad.ravel()[mask])
    update = np.zeros((d + 1) * k)
    update[mask] = step
    theta -= update.reshape(d + 1, k)
  return theta[:d], theta[d]


def test_fit_matches_newton_on_random_overlapping_classes():
  rng = np.random.default_rng(7)
  n, d, k = 90, 5, 3
  features = rng.normal(size=(n, d)) * rng.uniform(0.1, 20.0, d) + rng.normal(size=d) * 5
  labels = np.argmax(features @ rng.normal(size=(d, k)) / features.std(0).mean()
                     + rng.gumbel(size=(n, k)) * 2.0, axis=1)
  l2 = 0.05
  probe = expression_probe.fit(features, labels, l2)
  standardised = (features - features.mean(0)) / features.std(0)
  weights, bias = _newton_reference(standardised, labels, l2)
  np.testing.assert_allclose(probe.weights, weights, atol=1e-6)
  np.testing.assert_allclose(probe.bias - probe.bias[-1], bias, atol=1e-6)
  np.testing.assert_array_equal(probe.predict(features),
                                np.argmax(standardised @ weights + bias, axis=1))
  # Standardisation makes the probe blind to per-feature units and offsets.
  rescaled = expression_probe.fit(features * rng.uniform(0.01, 100.0, d) - 3.0, labels, l2)
  np.testing.assert_allclose(rescaled.weights, probe.weights, atol=1e-6)


def test_separable_clusters_constant_features_and_chance_levels():
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(5, 6)) * 10.0
  centres[3] = centres[4]  # label 3, never seen in training, looks like label 4
  train_labels = np.repeat([0, 1, 2, 4], 12)
  test_labels = np.array([0, 1, 2, 4, 4, 3, 1, 1])
  draw = lambda labels: centres[labels] + rng.normal(size=(len(labels), 6)) * 0.3
  names = ("a", "b", "c", "d", "e")
  result = expression_probe.evaluate(draw(train_labels), train_labels, draw(test_labels),
                                     test_labels, names)
  # Every test frame of a known class is right; the unseen class cannot be.
  assert result["accuracy"] == 7 / 8
  expected = np.zeros((5, 5), int)
  np.add.at(expected, (test_labels, [0, 1, 2, 4, 4, 4, 1, 1]), 1)
  np.testing.assert_array_equal(result["confusion"], expected)
  assert result["train_counts"] == {"a": 12, "b": 12, "c": 12, "d": 0, "e": 12}
  assert result["test_counts"]["b"] == 3 and result["num_test"] == 8
  assert result["chance_uniform"] == pytest.approx((7 / 8) / 4)
  # Constant features: the answer is the most frequent training label (the first of a tie),
  # exactly the majority chance level.
  constant = expression_probe.evaluate(np.zeros((48, 6)), train_labels, np.zeros((8, 6)),
                                       test_labels, names)
  assert constant["chance_majority"] == 1 / 8  # label 0: the first of a four-way tie
  assert constant["accuracy"] == constant["chance_majority"]


def test_oracle_far_above_chance_mean_head_at_chance(data_dir, tmp_path, capsys):
  out = str(tmp_path / "eval")
  rows = evaluate.main(["--benchmark", "expression_probe", "--predictor", "mean_head,oracle",
                        "--data_dir", data_dir, "--config", PROBE_CONFIG.name, "--out", out])
  with open(os.path.join(out, "expression_probe.json")) as f:
    report = json.load(f)
  results = report["predictors"]
  oracle, mean = results["oracle"], results["mean_head"]
  assert mean["accuracy"] == mean["chance_majority"]
  assert oracle["accuracy"] >= 0.6
  assert oracle["accuracy"] >= oracle["chance_majority"] + 0.3
  assert oracle["chance_uniform"] <= 1 / 5
  # Counts against the records themselves.
  for split, key in (("train", "train_counts"), ("validation", "test_counts")):
    source = evaluate.synthetic_source(data_dir, PROBE_CONFIG.name, split)
    labels = [int(source[i][F.GT_EMOTION]) for i in range(len(source))]
    expected = {n: labels.count(i) for i, n in enumerate(F.EMOTIONS)}
    assert oracle[key] == expected == mean[key]
  assert np.sum(oracle["confusion"]) == oracle["num_test"] == sum(oracle["test_counts"].values())
  assert oracle["num_features"] == 103 and oracle["features"] == ["expression", "jaw_pose"]
  with open(os.path.join(out, report["confusion_plot"]), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  printed = capsys.readouterr().out
  row = next(l for l in printed.splitlines() if l.startswith("expression_probe") and "oracle" in l)
  assert float(row.split()[6]) == pytest.approx(oracle["accuracy"], abs=1e-4)
  assert "validation (generalisation)" in row and report["measures"] == "generalisation"
  assert [(b, split, p) for b, split, p, _ in rows] == [
      ("expression_probe", "validation (generalisation)", "mean_head"),
      ("expression_probe", "validation (generalisation)", "oracle")]
  # --max_items thins each split evenly.
  source = evaluate.synthetic_source(data_dir, PROBE_CONFIG.name, "validation")
  thinned = benchmarks.labelled_frames(source, max_items=5)
  assert len(thinned) == 5 and thinned == sorted(thinned)
  assert set(thinned) <= set(benchmarks.labelled_frames(source))


def test_bad_input_gives_clear_errors():
  unlabelled = [{F.GT_EMOTION: np.int64(-1)}] * 3
  with pytest.raises(ValueError, match="train split holds no emotion-labelled frames"):
    benchmarks.expression_probe(predictors.mean_head, unlabelled, unlabelled)
  with pytest.raises(ValueError, match="at least two"):
    expression_probe.fit(np.ones((4, 2)), np.zeros(4, int))
  with pytest.raises(ValueError, match=r"features \(N, D\) and labels \(N,\)"):
    expression_probe.fit(np.ones((4, 2)), np.zeros(3, int))
