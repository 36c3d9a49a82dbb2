"""Scores of a fit against the synthetic video's ground truth, for `python -m sheap_jax.fit`.

Ground truth scores a fit; it never enters the fitting library (`sheap_jax/fitting`): the
entry point hands `scorer` to the fit as a callback, and `initial_params` only to the control
run (`--init=ground_truth_control`, labelled so in its outputs) that checks a fit started at the
truth keeps the shape.

Scores: the NoW protocol's median (mm) of the fitted neutral head against the identity's true
neutral head, the same for the mean head and their ratio, shape recovery alpha and cos
(`shape_recovery`), and the mean per-frame jaw rotation error (degrees) and camera translation
error (mm).
"""
from typing import Dict

import numpy as np

from sheap_jax.evaluation import benchmarks
from sheap_jax.evaluation import predictors
from sheap_jax.fitting import variables as variables_lib
from sheap_jax.head import flame


class GroundTruth:
  """The ground truth of the records a fit reads (indices into a synthetic split's source)."""

  def __init__(self, model: flame.FlameModel, source, records, video: str):
    rows = [source[int(i)] for i in records]
    examples = {key: np.stack([r[key] for r in rows]) for key in rows[0]
                if key.startswith(predictors.GROUND_TRUTH_PREFIX)}
    self._model = model
    self._video = video
    self._truth = predictors.oracle(None, examples)
    self._gt_neutral = np.asarray(flame.neutral_vertices(model, self._truth.shape[:1]))
    self._mean_head = self._score_shape(np.zeros(self._truth.shape.shape[1], np.float32))

  def initial_params(self, n_shape: int, n_expression: int) -> flame.FlameParams:
    """The true per-frame parameters, cut to the fit's component counts: the CONTROL's start
    only."""
    return self._truth.replace(shape=self._truth.shape[:, :n_shape],
                               expression=self._truth.expression[:, :n_expression])

  def _score_shape(self, shape) -> dict:
    pred = np.asarray(flame.neutral_vertices(self._model, np.asarray(shape)[None]))
    result = benchmarks.score_neutral_meshes(self._model, pred, self._gt_neutral,
                                             [self._video], [self._video])
    summary = result.summary()
    return {key: summary[key] for key in ("median_mm", "alpha", "cos", "aligned_rms_mm",
                                          "from_template_aligned_mm")}

  @property
  def mean_head(self) -> dict:
    return dict(self._mean_head)

  def scorer(self, variables) -> Dict[str, float]:
    """Scores of the fit's current variables (`score/...` keys, for metrics.jsonl)."""
    fitted = variables_lib.flame_params(variables)
    scores = self._score_shape(fitted.shape[0])
    scores["median_ratio_to_mean_head"] = scores["median_mm"] / self._mean_head["median_mm"]
    jaw = np.asarray(fitted.jaw_pose) - np.asarray(self._truth.jaw_pose)
    camera = np.asarray(fitted.translation) - np.asarray(self._truth.translation)
    scores["jaw_error_deg"] = float(np.degrees(np.mean(np.linalg.norm(jaw, axis=-1))))
    scores["camera_error_mm"] = float(1e3 * np.mean(np.linalg.norm(camera, axis=-1)))
    return {f"score/{key}": float(value) for key, value in scores.items()}
