"""Real signals to a training process: SIGTERM saves a checkpoint and exits; SIGKILL between
checkpoints loses the steps since the last one; rerunning resumes the exact loss sequence.

The runs are subprocesses executing this file's `worker`, whose pair iterator sends the signal
to its own process when asked for a given batch, so the kill lands at a known step.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(workdir: str, signal_name: str, at_batch: int) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", os.path.join(ROOT, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  import warnings  # pylint: disable=import-outside-toplevel
  from sheap_jax.training import loop  # pylint: disable=import-outside-toplevel
  from tests.test_objective import small_flame_model  # pylint: disable=import-outside-toplevel
  from tests.test_train import PairBatches, sgd_config  # pylint: disable=import-outside-toplevel

  class SignallingBatches(PairBatches):
    def __next__(self):
      if signal_name != "none" and self.index == at_batch:
        os.kill(os.getpid(), getattr(signal, signal_name))
      return super().__next__()

  warnings.simplefilter("ignore")
  loop.train(sgd_config(), workdir, SignallingBatches(4, 1), flame_model=small_flame_model())


def _run(workdir: str, signal_name: str = "none", at_batch: int = -1):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, __file__, workdir, signal_name, str(at_batch)], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  return proc.returncode, proc.stdout[-3000:] + proc.stderr[-3000:]


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def _checkpoints(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_sigterm_saves_and_sigkill_resumes_exactly(tmp_path):
  reference, run = str(tmp_path / "reference"), str(tmp_path / "run")
  code, log = _run(reference)  # never signalled: the uninterrupted sequence
  assert code == 0, log
  expected = _records(reference)
  assert [s for s, _ in expected] == [1, 2, 3, 4, 5, 6]

  # SIGTERM arrives while batch 2 is fetched: step 3 completes, is checkpointed, the run exits.
  code, log = _run(run, "SIGTERM", 2)
  assert code == 0, log
  assert _records(run) == expected[:3]
  assert _checkpoints(run) == [2, 3]

  # Resumed at 3; SIGKILL while fetching batch 5 (for step 6): step 4 is checkpointed, step 5
  # was logged but never checkpointed, and is lost.
  code, log = _run(run, "SIGKILL", 5)
  assert code == -signal.SIGKILL, log
  assert _records(run) == expected[:5]
  assert _checkpoints(run) == [3, 4]

  code, log = _run(run)
  assert code == 0, log
  records = _records(run)
  assert [s for s, _ in records] == [1, 2, 3, 4, 5, 5, 6]
  np.testing.assert_array_equal([l for _, l in records[5:]], [l for _, l in expected[4:]])


if __name__ == "__main__":
  worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
