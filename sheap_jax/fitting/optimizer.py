"""One Adam per variable group (`variables.GROUPS`), each on its own learning-rate schedule.

`config.groups.<group>` = {learning_rate, start}: the group stays put until `start` (a fraction
of `config.fit.steps`), then warms up linearly over `config.schedule.warmup_steps` and decays on
a cosine to `config.schedule.end_factor` of its rate by the last step. Learning rate 0 freezes a
group. "Appearance first, then everything" is geometry groups starting later than the splats.
"""
import math

import jax
import jax.numpy as jnp
import optax

from sheap_jax.fitting import variables as variables_lib

_FILE = "sheap_jax/fitting/optimizer.py"


def group_schedule(peak: float, start: int, total: int, warmup: int, end_factor: float):
  """step -> learning rate: 0 before `start`, then warm-up and cosine decay to the end."""
  span = max(total - start, 1)

  def schedule(count):
    t = count - start
    warm = jnp.clip((t + 1) / max(warmup, 1), 0.0, 1.0)
    progress = jnp.clip(t / span, 0.0, 1.0)
    decay = end_factor + (1.0 - end_factor) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(t >= 0, peak * warm * decay, 0.0)

  return schedule


def start_step(config, group: str) -> int:
  """The first step at which `group` moves."""
  return int(round(float(config.groups[group].start) * config.fit.steps))


def make_optimizer(config, variables) -> optax.GradientTransformation:
  """optax.multi_transform over the groups of `variables`, from `config.groups`."""
  labels = variables_lib.group_labels(variables)
  used = sorted(set(jax.tree.leaves(labels)))
  missing = [g for g in used if g not in config.groups]
  unknown = sorted(set(config.groups) - set(variables_lib.GROUPS.values()))
  if missing or unknown:
    raise ValueError(f"{_FILE}: config.groups lacks {missing} / has unknown groups {unknown}; "
                     f"groups: {sorted(set(variables_lib.GROUPS.values()))}")
  transforms = {}
  for group in used:
    rate = float(config.groups[group].learning_rate)
    if rate == 0.0:
      transforms[group] = optax.set_to_zero()
      continue
    transforms[group] = optax.adam(group_schedule(
        rate, start_step(config, group), config.fit.steps, config.schedule.warmup_steps,
        config.schedule.end_factor))
  return optax.multi_transform(transforms, labels)
