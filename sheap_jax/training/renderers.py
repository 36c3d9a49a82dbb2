"""The renderers the objective trains through, chosen by name (`config.renderer`).

A renderer is what the objective needs to draw the target view: the appearance network trained
beside the predictor (its parameters live under `param_key`), the frozen topology it draws
(`objective.Frozen.layout` / `.mesh`), the draw itself, and the loss terms it cannot evaluate.
`objective.py` registers "gaussians" (2DGS splats from the Gaussians Regressor, SHeaP) and
"mesh" (the paper's textured-mesh baseline); a new renderer is one more `register` call.
"""
import dataclasses
from typing import Any, Callable, Dict, Tuple

_FILE = "sheap_jax/training/renderers.py"


@dataclasses.dataclass(frozen=True)
class Renderer:
  """One renderer's hooks, each called by the `objective` function of the same role."""

  param_key: str  # the trainable appearance parameters: params[param_key]
  # (config, dtype) -> (Networks field name, flax module)
  build_network: Callable[[Any, Any], Tuple[str, Any]]
  # (config, flame_model) -> objective.Frozen's topology fields ("layout" (None when unused),
  # "mesh", "splat_faces"): what the draw reads
  build_topology: Callable[[Any, Any], Dict[str, Any]]
  # (module, rng, identity, tokens, layout) -> the appearance network's params
  init: Callable[..., Any]
  # (networks, params, frozen, config, source, tokens, vertices, Ks, viewmats, lighting,
  #  background) -> (render, (depth, normals, mask) of the mesh, local Gaussians, texture)
  draw: Callable[..., Tuple[Any, Tuple[Any, Any, Any], Any, Any]]
  skipped_losses: Tuple[str, ...] = ()  # terms this renderer cannot evaluate (as if weight 0)


_REGISTRY: Dict[str, Renderer] = {}


def register(name: str, renderer: Renderer) -> None:
  if name in _REGISTRY:
    raise ValueError(f"{_FILE}: renderer {name!r} is registered twice")
  _REGISTRY[name] = renderer


def registered_renderers() -> Tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Renderer:
  """The renderer `config.renderer` names, or one line naming the accepted ones."""
  if name not in _REGISTRY:
    raise ValueError(f"{_FILE}: config.renderer={name!r}; registered renderers: "
                     f"{list(_REGISTRY)}")
  return _REGISTRY[name]
