"""Executes notebooks/training.ipynb, then notebooks/quickstart.ipynb on its checkpoint, with
nbclient at small settings (a few steps, 32 px), and checks what they show against the files
the runs wrote."""
import json
import os

import numpy as np
import pytest

nbclient = pytest.importorskip("nbclient", reason="needs nbclient, nbformat and ipykernel")
import nbformat  # noqa: E402  pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
STEPS = 2
# The CPU config shrunk further: 32 px inputs and renders, a 28 px DINOv2, batch 2.
SMALL_FLAGS = ("--config.model.image_size=32 --config.render.size=32 "
               "--config.dinov2.image_size=28 --config.batch_size=2")


def _execute(name, env):
  """Runs every cell of notebooks/<name> in a fresh kernel (from notebooks/); returns it."""
  notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": NOTEBOOKS}})
  client.execute(env=env)
  return notebook


def _text(cell):
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _has_image(cell):
  return any("image/png" in o.get("data", {}) for o in cell.outputs)


def _cell(notebook, fragment):
  return next(c for c in notebook.cells if c.cell_type == "code" and fragment in c.source)


def test_training_then_quickstart(tmp_path):
  kernel_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  kernel_env.update(
      JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
      JAX_COMPILATION_CACHE_DIR=os.environ.get("SHEAP_JAX_CACHE_DIR",
                                               os.path.join(REPO, ".jax_cache")),
      SHEAP_NB_DATA_DIR=str(tmp_path / "data"), SHEAP_NB_STEPS=str(STEPS),
      SHEAP_NB_WORKDIR=str(tmp_path / "train"), SHEAP_NB_PREVIEW_EVERY="1",
      SHEAP_NB_TRAIN_FLAGS=SMALL_FLAGS + " --config.eval_every=0")
  training = _execute("training.ipynb", kernel_env)

  with open(tmp_path / "train" / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f]
  losses = [r["loss"] for r in logged if "loss" in r]
  assert [r["step"] for r in logged if "loss" in r] == list(range(1, STEPS + 1))
  assert all(np.isfinite(losses))
  curves = _cell(training, "metrics.jsonl")
  assert f"{STEPS} steps logged; loss {losses[0]:.4f} -> {losses[-1]:.4f}" in _text(curves)
  assert _has_image(curves)
  previews = sorted(os.listdir(tmp_path / "train" / "previews"))
  assert previews == [f"{s:08d}.png" for s in range(1, STEPS + 1)]
  assert _has_image(_cell(training, "previews"))

  kernel_env.update(SHEAP_NB_CHECKPOINT=str(tmp_path / "train"),
                    SHEAP_NB_OUT=str(tmp_path / "quickstart"))
  quickstart = _execute("quickstart.ipynb", kernel_env)
  result = tmp_path / "quickstart" / "predictions" / "sample"
  assert {"params.json", "params.npz", "mesh.obj", "mesh.ply", "gaussians.ply",
          "overlay.png"} <= set(os.listdir(result))
  assert _has_image(_cell(quickstart, "predict_command"))
  params = np.load(result / "params.npz")
  printed = _text(_cell(quickstart, "params.npz"))
  for name in ("expression", "jaw_pose", "camera_translation"):
    assert f"{name:20s} {str(params[name].shape):10s} {params[name].ravel()[0]:+.3f}" in printed
  mesh_cell = _cell(quickstart, "read_obj")
  with open(result / "mesh.obj") as f:
    num_vertices = sum(line.startswith("v ") for line in f)
  assert _has_image(mesh_cell) and f"{num_vertices} vertices" in _text(mesh_cell)
  assert "property float opacity" in _text(_cell(quickstart, "gaussians.ply"))
  # Nothing was trained here: the quickstart used the given checkpoint.
  assert not (tmp_path / "quickstart" / "model").exists()
