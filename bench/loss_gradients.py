"""Which loss terms steer training: the gradient norm of each weighted term at initialisation.

    python bench/loss_gradients.py --config configs/base.py:cpu --out bench/results/loss_gradients_cpu.json

With global-norm clipping (`config.optimizer.clip_norm`) the update follows the sum of the
weighted terms' gradients; a term whose gradient norm is 100x another's sets the direction
alone. This prints, per active term of `config.losses`, the norm of d(weight * term)/d(params)
for the predictor and the Gaussians Regressor (or albedo head), on one batch of random images
and landmarks at the config's sizes, freshly initialised parameters. Writes JSON records
`term`, `weight`, `predictor_norm`, `renderer_norm`, `config`, `device`.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from sheap_jax import objective  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py:cpu", "Training config.")
_BATCH = flags.DEFINE_integer("batch", 2, "Pairs in the batch.")
_OUT = flags.DEFINE_string("out", "", "JSON file to write.")


def _norm(tree) -> jnp.ndarray:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def term_gradient_norms(config, batch_size: int, seed: int = 0):
  """{term: (predictor norm, renderer-network norm)} of each active weighted term."""
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
                                                              batch)[1][name]
    grads = {n: jax.grad(weighted)(params, n) for n in names}
    return {n: (_norm(g["predictor"]), _norm(g[renderer_key])) for n, g in grads.items()}

  return {n: tuple(float(v) for v in pair) for n, pair in norms(params).items()}


def main(argv):
  del argv
  config = _CONFIG.value
  results = term_gradient_norms(config, _BATCH.value)
  device = f"{jax.devices()[0].device_kind}"
  print(f"{'term':<20}{'weight':>10}{'|grad| predictor':>18}{'|grad| renderer':>17}")
  records = []
  for name, (predictor_norm, renderer_norm) in sorted(results.items(), key=lambda kv: -kv[1][0]):
    weight = config.losses[name].weight
    print(f"{name:<20}{weight:>10g}{predictor_norm:>18.4g}{renderer_norm:>17.4g}")
    records.append(dict(term=name, weight=weight, predictor_norm=predictor_norm,
                        renderer_norm=renderer_norm,
                        config=config_flags.get_config_filename(flags.FLAGS["config"]),
                        device=device))
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump(records, f, indent=2)


if __name__ == "__main__":
  app.run(main)
