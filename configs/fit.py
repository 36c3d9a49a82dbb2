"""Configs of `python -m sheap_jax.fit` (fitting the rigged Gaussian head to one video).

    python -m sheap_jax.fit --config configs/fit.py --video synthetic_heads:demo/validation/48 \
        --workdir runs/fit/48
    python -m sheap_jax.fit --config configs/fit.py:losses=landmarks_only ... \
        --config.fit.steps=600 --config.groups.shape.learning_rate=0.02

`arg`: named arguments, comma-separated: `losses=<full|landmarks_only|no_landmarks>` (the loss
presets of configs/base.py), `matte=<none|stored|face_model>`. Any field can be overridden on
the command line. The objective's fields (flame, renderer, regressor.regions, render, losses)
mean what they mean in configs/base.py; the renderer draws Gaussians only.
"""
import ml_collections

from configs import base

_FILE = "configs/fit.py"
ARGUMENTS = {"losses": "|".join(base.LOSS_PRESETS), "matte": "none|stored|face_model"}


def learning_rates() -> dict:
  """`config.groups`: Adam's peak learning rate per variable group and the share of the steps
  before it moves (sheap_jax/fitting/optimizer.py). Appearance first: the Gaussians and the
  lighting fit the first quarter on the starting head, then everything moves (the control of
  issue 17 uses the same schedule). Rates are per step, in each variable's units: shape and
  expression coefficients (unit variance), radians, metres (camera), the splats' unconstrained
  values (`gaussians.activate`). Guesses, not tuned."""
  geometry = 0.25
  return dict(
      shape=dict(learning_rate=0.01, start=geometry),
      expression=dict(learning_rate=0.02, start=geometry),
      pose=dict(learning_rate=0.01, start=geometry),
      eyelids=dict(learning_rate=0.02, start=geometry),
      camera=dict(learning_rate=0.005, start=geometry),
      lighting=dict(learning_rate=0.02, start=0.0),
      splat_offsets=dict(learning_rate=0.01, start=0.0),
      splat_rotations=dict(learning_rate=0.01, start=0.0),
      splat_scales=dict(learning_rate=0.02, start=0.0),
      splat_opacities=dict(learning_rate=0.05, start=0.0),
      splat_colours=dict(learning_rate=0.05, start=0.0))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.flame_path = ""  # the built-in head (the synthetic data's); real FLAME for real clips
  c.flame = dict(n_shape=300, n_expression=100)
  c.renderer = "gaussians"
  # One Gaussian per triangle of the regions configs/base.py:cpu splats (face, forehead, ears,
  # eyeballs).
  c.regressor = dict(gaussians_per_face=1, regions=base.CPU_SPLAT_REGIONS)
  c.render = dict(size=64, impl="pallas", capacity=12_288, background=(0.0, 0.0, 0.0),
                  geometry_gradients="gaussians")
  c.losses = base.loss_weights()
  c.losses.perceptual.weight = 0.0  # no DINOv2 weights here: a random encoder's features
  c.data = dict(data_dir="", build_if_missing=True)  # where datasets live (data/datasets.py)
  # steps; frames of the video used (evenly spaced, 0: all) and per step (0: all); the matte
  # (sheap_jax/fitting/clip.py); how often metrics, scores and the resumable state are written.
  c.fit = dict(steps=300, max_frames=8, frames_per_step=0, matte="none", log_every=10,
               score_every=50, checkpoint_every=50)
  c.groups = learning_rates()
  c.schedule = dict(warmup_steps=10, end_factor=0.1)
  for token in [t.strip() for t in arg.split(",") if t.strip()]:
    name, _, value = token.partition("=")
    if name == "losses":
      base.apply_arguments(c, {"losses": value})
    elif name == "matte" and value in ("none", "stored", "face_model"):
      c.fit.matte = value
    else:
      raise ValueError(f"{_FILE}: unknown argument {token!r} in {arg!r}; accepted: " +
                       ", ".join(f"{k}=<{v}>" for k, v in ARGUMENTS.items()))
  return c
