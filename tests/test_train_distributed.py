"""Two CPU processes joined by `jax.distributed.initialize` (2 devices each) train two SGD steps
and agree with one process on 4 devices.

Each run is a subprocess (device counts are fixed when JAX starts) executing this file's
`worker`: the same tiny setup as tests/test_train.py, the same global batches, each process
feeding its own devices' rows.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def worker(process_id: int, num_processes: int, port: int, out_dir: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", os.path.join(ROOT, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                               num_processes=num_processes, process_id=process_id)
  import warnings  # pylint: disable=import-outside-toplevel
  from sheap_jax.training import objective
  from sheap_jax.training import trainer  # pylint: disable=import-outside-toplevel
  from tests.test_objective import random_batch  # pylint: disable=import-outside-toplevel
  from tests.test_objective import small_flame_model  # pylint: disable=import-outside-toplevel
  from tests.test_train import sgd_config  # pylint: disable=import-outside-toplevel

  assert jax.device_count() == 4, jax.devices()
  config = sgd_config()
  networks = objective.build_networks(config)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    frozen_local = objective.build_frozen(config, small_flame_model())
  optimizer = trainer.make_optimizer(config)
  mesh = trainer.make_mesh()
  frozen = trainer.replicate(frozen_local, mesh)
  state = trainer.replicate(trainer.init_state(networks, frozen_local, config, optimizer), mesh)
  step = trainer.make_train_step(networks, config, optimizer, mesh)
  local = jax.local_device_count()
  rows = slice(process_id * local, (process_id + 1) * local)
  batches = []
  for i in range(STEPS):
    batch = random_batch(np.random.default_rng(100 + i), 4)
    mine = {k: np.asarray(v)[rows].reshape((local, 1) + v.shape[1:]) for k, v in batch.items()}
    batches.append(trainer.shard_batch(mine, mesh))
  # Compile first, then meet: Gloo gives a process 30 s to join the first collective, less
  # than a compilation takes on a busy CPU, so the barrier cannot be a collective itself
  # (multihost_utils.sync_global_devices is one).
  step = step.lower(state, frozen, batches[0]).compile()
  if num_processes > 1:
    file_barrier(out_dir, "train_step_compiled", process_id, num_processes)
  losses = []
  for batch in batches:
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics["loss"]))
  params = jax.tree.leaves(jax.device_get(state.params))
  if process_id == 0:
    np.savez(os.path.join(out_dir, "params.npz"), *params)
    with open(os.path.join(out_dir, "losses.json"), "w") as f:
      json.dump(losses, f)


def file_barrier(directory: str, name: str, process_id: int, num_processes: int,
                 timeout_s: float = 900.0) -> None:
  """Returns once every process has called it: each leaves a marker file in the directory they
  share (one machine), then waits for the others' markers."""
  marker = lambda i: os.path.join(directory, f"{name}.{i}")
  with open(marker(process_id), "w"):
    pass
  deadline = time.monotonic() + timeout_s
  while not all(os.path.exists(marker(i)) for i in range(num_processes)):
    if time.monotonic() > deadline:
      raise TimeoutError(f"tests/test_train_distributed.py: barrier {name!r}: not every one of "
                         f"{num_processes} processes arrived within {timeout_s} s")
    time.sleep(0.05)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(num_processes: int, devices_each: int, out_dir: str):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, __file__, str(i), str(num_processes), str(port), out_dir], env=env,
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(num_processes)]
  for p in procs:
    output, _ = p.communicate(timeout=900)
    assert p.returncode == 0, output[-4000:]
  with open(os.path.join(out_dir, "losses.json")) as f:
    losses = json.load(f)
  params = np.load(os.path.join(out_dir, "params.npz"))
  return losses, [params[k] for k in sorted(params.files, key=lambda n: int(n.split("_")[1]))]


def test_two_processes_agree_with_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  one.mkdir()
  two.mkdir()
  losses1, params1 = _launch(1, 4, str(one))
  losses2, params2 = _launch(2, 2, str(two))
  np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
  assert len(params1) == len(params2)
  for a, b in zip(params1, params2):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # updates have norm <= 1


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
