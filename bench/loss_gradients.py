"""Which loss terms steer training: the gradient norm of each weighted term at initialisation.

    python bench/loss_gradients.py --config configs/base.py:cpu --out bench/results/loss_gradients_cpu.json
    python bench/loss_gradients.py --config configs/base.py:cpu --config.render.geometry_gradients=all

With global-norm clipping (`config.optimizer.clip_norm`) the update follows the sum of the
weighted terms' gradients, and Adam normalises each parameter by its own history: a term whose
gradient on a head is 100x another's sets that head's direction alone. This prints, per active
term of `config.losses`, the norm of d(weight * term)/d(params) for the predictor, split into its
output heads (shape, expression, pose = global/neck/jaw/eyes/eyelids, camera, lighting, identity
features) and its trunk, and for the Gaussians Regressor (or albedo head), on one batch of random
images and landmarks at the config's sizes, freshly initialised parameters. Writes JSON records
`term`, `weight`, `predictor_norm`, `heads` ({group: norm}), `renderer_norm`, `config`,
`geometry_gradients`, `device`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from bench import json_out  # noqa: E402
from sheap_jax.training import objective  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py:cpu", "Training config.")
_BATCH = flags.DEFINE_integer("batch", 2, "Pairs in the batch.")
_OUT = flags.DEFINE_string("out", "", "JSON file to write.")


def _norm(tree) -> jnp.ndarray:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


# Predictor heads grouped by what they predict (the rest of the predictor is its trunk).
HEAD_GROUPS = {
    "shape": ("head_shape",), "expression": ("head_expression",),
    "pose": ("head_global_pose", "head_neck_pose", "head_jaw_pose", "head_eye_pose",
             "head_eyelids"),
    "camera": ("head_camera_translation",), "lighting": ("head_lighting",),
    "identity": ("head_identity",),
}


def _head_norms(predictor_grads) -> dict:
  """{group: norm} of the predictor gradient per head group, plus "trunk" for the rest."""
  grouped = {name for names in HEAD_GROUPS.values() for name in names}
  norms = {group: _norm([predictor_grads[n] for n in names if n in predictor_grads])
           for group, names in HEAD_GROUPS.items()}
  norms["trunk"] = _norm([v for k, v in predictor_grads.items() if k not in grouped])
  return norms


def term_gradient_norms(config, batch_size: int, seed: int = 0):
  """{term: (predictor norm, {head group: norm}, renderer-network norm)} of each active
  weighted term."""
  networks = objective.build_networks(config)
  frozen = objective.build_frozen(config, objective.load_flame_model(config))
  params = objective.init_params(networks, frozen, config, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  size = config.model.image_size
  batch = {name: jnp.asarray(rng.random((batch_size, size, size, 3), np.float32))
           for name in ("source_image", "target_image")}
  batch["target_landmarks"] = jnp.asarray(rng.random((batch_size, 68, 2), np.float32) * size)
  batch["target_landmarks_valid"] = jnp.ones((batch_size, 68), jnp.float32)
  names = [n for n, entry in objective.applicable_losses(config).items() if entry.weight != 0]
  renderer_key = next(k for k in params if k != "predictor")

  @jax.jit
  def norms(params):
    def weighted(p, name):
      return config.losses[name].weight * objective.mean_loss(networks, p, frozen, config,
                                                              batch)[1][0][name]
    grads = {n: jax.grad(weighted)(params, n) for n in names}
    return {n: (_norm(g["predictor"]), _head_norms(g["predictor"]), _norm(g[renderer_key]))
            for n, g in grads.items()}

  return {n: (float(total), {k: float(v) for k, v in heads.items()}, float(renderer))
          for n, (total, heads, renderer) in norms(params).items()}


def main(argv):
  del argv
  config = _CONFIG.value
  results = term_gradient_norms(config, _BATCH.value)
  device = f"{jax.devices()[0].device_kind}"
  groups = list(HEAD_GROUPS) + ["trunk"]
  routing = config.render.get("geometry_gradients", "gaussians")
  print(f"geometry_gradients={routing}; |d(weight * term)/d(params)| at initialisation")
  print(f"{'term':<16}{'weight':>8}{'predictor':>11}" + "".join(f"{g:>11}" for g in groups)
        + f"{'renderer':>11}")
  records = []
  for name, (predictor_norm, heads, renderer_norm) in sorted(results.items(),
                                                             key=lambda kv: -kv[1][0]):
    weight = config.losses[name].weight
    print(f"{name:<16}{weight:>8g}{predictor_norm:>11.3g}"
          + "".join(f"{heads[g]:>11.3g}" for g in groups) + f"{renderer_norm:>11.3g}")
    records.append(dict(term=name, weight=weight, predictor_norm=predictor_norm, heads=heads,
                        renderer_norm=renderer_norm,
                        config=config_flags.get_config_filename(flags.FLAGS["config"]),
                        geometry_gradients=routing, device=device))
  if _OUT.value:
    json_out.write_json(_OUT.value, records)


if __name__ == "__main__":
  app.run(main)
