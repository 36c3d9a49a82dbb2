"""Trains SHeaP: data-parallel over every device of every host, resumable, big_vision style.

    python -m sheap_jax.train --config configs/base.py:cpu --workdir runs/cpu
    python -m sheap_jax.train --config configs/base.py --workdir runs/paper \
        --config.losses.ssim.weight=0

The loop is `sheap_jax/training/loop.py` (the step: `training/trainer.py`); validation runs the
evaluators of `config.evals` (`evaluation/validation.py`). Rerunning the same command resumes
from the workdir's newest checkpoint; SIGTERM saves one before exiting. Several processes
(`SHEAP_JAX_COORDINATOR`, `SHEAP_JAX_NUM_PROCESSES`, `SHEAP_JAX_PROCESS_ID`) join first.
"""
import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from data import datasets
from sheap_jax.training import checkpoints
from sheap_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (path[:arguments], e.g. configs/base.py:cpu).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, previews.")


def main(argv):
  del argv
  if os.environ.get("SHEAP_JAX_COORDINATOR"):  # several processes: join them first
    jax.distributed.initialize(
        coordinator_address=os.environ["SHEAP_JAX_COORDINATOR"],
        num_processes=int(os.environ["SHEAP_JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["SHEAP_JAX_PROCESS_ID"]))
  try:
    loop.train(_CONFIG.value, _WORKDIR.value)
  except (checkpoints.LayoutMismatchError, datasets.ConfigError) as error:  # a user error:
    # the message, no traceback
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
