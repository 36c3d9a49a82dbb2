"""Test-wide JAX setup: 4 simulated CPU devices and the persistent compilation cache.

XLA_FLAGS must be set before JAX initialises its backends, hence here and not in a fixture.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE_DIR = os.environ.get(
    "SHEAP_JAX_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"),
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

SEED_ENV = "SHEAP_JAX_TEST_SEED"


@pytest.fixture
def rng(request):
  """A numpy Generator on a fresh seed each run (or $SHEAP_JAX_TEST_SEED), printed so that a
  failing random scene can be replayed: pytest shows it under the failure's captured output."""
  seed = int(os.environ.get(SEED_ENV) or np.random.SeedSequence().entropy % 2**63)
  print(f"{request.node.nodeid}: random seed {seed} (replay with {SEED_ENV}={seed})")
  return np.random.default_rng(seed)
