"""The seed study's variants, bookkeeping and statistics (training itself is tested elsewhere:
here `loop.train` is replaced by a recorder that writes what a finished run writes)."""
import json
import os

import numpy as np
import pytest

from configs import base
from sheap_jax import loss_study
from sheap_jax.training import loop
from sheap_jax.training import losses


def test_landmarks_only_keeps_exactly_landmarks_and_priors():
  config = loss_study.variant_config(base.get_config("cpu"), "landmarks_only", seed=3)
  active = {name for name in losses.registered_losses() if config.losses[name].weight != 0}
  assert active == {"landmarks", "shape_prior", "expression_prior", "jaw_prior", "eyelid_prior"}
  assert config.seed == 3


def test_no_landmarks_changes_only_the_landmark_weight():
  original = base.get_config("cpu")
  config = loss_study.variant_config(original, "no_landmarks", seed=original.seed)
  assert config.losses.landmarks.weight == 0
  config.losses.landmarks.weight = original.losses.landmarks.weight
  assert config.eval_every == config.total_steps and config.preview_every == 0
  config.eval_every, config.preview_every = original.eval_every, original.preview_every
  assert config.to_dict() == original.to_dict()
  assert original.losses.landmarks.weight != 0  # the original is not edited


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="'bogus'"):
    loss_study.variant_config(base.get_config("cpu"), "bogus", 0)


def test_study_trains_missing_runs_and_summarises(tmp_path, monkeypatch, rng):
  medians = {}
  trained = []

  def fake_train(config, workdir):
    """Writes a finished run's synthetic_neutral.json with a random median."""
    trained.append(workdir)
    medians[workdir] = float(rng.uniform(0.3, 1.0))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "synthetic_neutral.json"), "w") as f:
      json.dump({"model": {"median_mm": medians[workdir], "mean_mm": 1.0,
                           "step": config.total_steps, "from_template_mm": 2 * medians[workdir],
                           "ratio": medians[workdir] / 0.8,
                           "ratio_low": medians[workdir] / 0.8 - 0.1,
                           "ratio_high": medians[workdir] / 0.8 + 0.2},
                 "mean_head": {"median_mm": 0.8}, "ground_truth": {"from_template_mm": 3.5}},
                f)

  monkeypatch.setattr(loop, "train", fake_train)
  config = base.get_config("cpu")
  variants, seeds = ["full", "landmarks_only"], [0, 1, 2]
  study = loss_study.run_study(config, str(tmp_path), variants, seeds)
  assert len(trained) == 6
  for variant in variants:
    values = [medians[str(tmp_path / variant / f"seed{s}")] for s in seeds]
    summary = study["summary"][variant]
    np.testing.assert_allclose(summary["mean"], np.mean(values), rtol=1e-12)
    np.testing.assert_allclose(summary["std"], np.std(values, ddof=1), rtol=1e-12)
    assert summary["min"] == min(values) and summary["max"] == max(values)
    np.testing.assert_allclose(summary["from_template_mm"], 2 * np.mean(values), rtol=1e-12)
  assert study["summary"]["mean_head"]["mean"] == 0.8
  assert (tmp_path / "study.png").stat().st_size > 0
  table = loss_study.markdown_table(study["summary"], study["ground_truth_from_template_mm"])
  assert f"{study['summary']['full']['mean'] / 0.8:.2f}" in table
  first = medians[str(tmp_path / "full" / "seed0")] / 0.8
  assert f"{first:.3f} [{first - 0.1:.3f}, {first + 0.2:.3f}]" in table
  assert "true heads: 3.50" in table

  trained.clear()  # rerunning skips finished runs
  again = loss_study.run_study(config, str(tmp_path), variants, seeds)
  assert not trained and again["summary"] == study["summary"]
