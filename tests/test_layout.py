"""The package layout: imports run one way (README, "What is here"), and every documented
`python -m` command still starts (answers --help)."""
import ast
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Lowest first: a module may import its own layer and the layers before it, never one after.
LAYERS = (
    ("rasterizer", "sheap_jax.metrics"),
    ("sheap_jax.geometry",),
    ("sheap_jax.face",),
    ("sheap_jax.head",),
    ("sheap_jax.render",),
    ("sheap_jax.models",),
    ("data",),
    ("sheap_jax.training",),
    ("sheap_jax.inference",),
    ("sheap_jax.fitting",),
    ("sheap_jax.evaluation",),
    ("sheap_jax.training.loop",),  # the training loop runs the evaluators of config.evals
    ("configs",),
    ("sheap_jax.train", "sheap_jax.evaluate", "sheap_jax.predict", "sheap_jax.loss_study",
     "sheap_jax.fit"),
)
# Imports nothing of the project outside itself.
STANDALONE = ("rasterizer", "sheap_jax.metrics")
PACKAGES = ("sheap_jax", "data", "rasterizer", "configs")


def _layer(module):
  """(index, prefix) of the layer holding `module`, by its longest matching prefix."""
  matches = [(len(prefix), index, prefix) for index, layer in enumerate(LAYERS)
             for prefix in layer if module == prefix or module.startswith(prefix + ".")]
  return max(matches)[1:] if matches else (None, None)


def _modules():
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(module, path):
  """The project modules `path` imports (at any depth: function-level imports count too)."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      names = [f"{base}.{alias.name}" for alias in node.names]  # a module or a name in `base`
    else:
      continue
    for name in names:
      if name.split(".")[0] in PACKAGES and name != "sheap_jax":
        yield node.lineno, name


def test_every_module_has_a_layer():
  missing = [m for m, _ in _modules() if m != "sheap_jax" and _layer(m)[0] is None]
  assert not missing, f"modules outside every layer of tests/test_layout.py: {missing}"


def test_imports_go_down_the_layers():
  wrong = []
  for module, path in _modules():
    index, prefix = _layer(module)
    for line, name in _imports(module, path):
      target, target_prefix = _layer(name)
      if prefix in STANDALONE and target_prefix != prefix:
        wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} (standalone {prefix})")
      elif target is not None and index is not None and target > index:
        wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} ({target_prefix} is above "
                     f"{prefix})")
  assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def _documented_commands():
  """Every `python -m MODULE` in README.md, docs/*.md and notebooks/*.ipynb (not pytest)."""
  texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
           *sorted((ROOT / "notebooks").glob("*.ipynb"))]
  found = set()
  for path in texts:
    found.update(re.findall(r"python -m ([A-Za-z_][\w.]*[A-Za-z0-9_])", path.read_text()))
  return sorted(found - {"pytest", "pip"})


def test_documented_commands_answer_help():
  """Each command starts and prints its usage without building data or compiling."""
  commands = _documented_commands()
  assert {"sheap_jax.train", "sheap_jax.evaluate", "sheap_jax.predict"} <= set(commands)
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  running = {module: subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for module in commands}
  failed = []
  for module, process in running.items():
    output, _ = process.communicate(timeout=300)
    # absl apps (train, loss_study) print their usage for --help and exit 1 by absl's design.
    absl_usage = process.returncode == 1 and b"Try --helpfull" in output
    if process.returncode != 0 and not absl_usage:
      failed.append(f"python -m {module} --help: exit {process.returncode}\n"
                    f"{output.decode(errors='replace')[-1500:]}")
  assert not failed, "\n".join(failed)
