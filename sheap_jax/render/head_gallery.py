"""A labelled PNG grid of a FLAME-format head under varied shape, expression, eyelids, jaw,
eye and head poses: the quickest way to see what a head model (built-in or real FLAME) can do.

  python -m sheap_jax.render.head_gallery --out head_gallery.png [--flame PATH] [--size 160]
"""
import argparse
import dataclasses
import os
from typing import Callable, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from sheap_jax.geometry import camera as camera_lib
from sheap_jax.head import flame as flame_lib
from sheap_jax.head import head_model
from sheap_jax.render import mesh_render
from sheap_jax.geometry import shading

SKIN = (0.80, 0.62, 0.52)
LIPS = (0.72, 0.38, 0.38)
SCLERA = (0.93, 0.93, 0.90)
IRIS = (0.20, 0.30, 0.45)
BACKGROUND = (1.0, 1.0, 1.0)
LABEL_HEIGHT = 16

Edit = Callable[[flame_lib.FlameParams], flame_lib.FlameParams]


def _set(field: str, index: int, value: float) -> Edit:
  """An edit setting one coefficient of one FlameParams field."""
  def edit(params):
    return dataclasses.replace(params, **{field: getattr(params, field).at[0, index].set(value)})
  return edit


def gallery_rows() -> List[Tuple[str, List[Tuple[str, List[Edit]]]]]:
  """Rows of (row title, [(cell label, edits)]): what the grid shows."""
  deg = np.pi / 180
  shape_names = [name for name, _ in head_model.SHAPE_MODES]
  expr_names = [name for name, _ in head_model.EXPRESSION_MODES]
  return [
      ("shape", [("mean", [])] + [(f"{shape_names[i]} {s:+d}sd", [_set("shape", i, float(s))])
                                  for i in (0, 2, 4) for s in (-2, 2)][:5]),
      ("expression", [(expr_names[i], [_set("expression", i, 2.0)]) for i in range(6)]),
      ("eyelids & jaw", [("left lid", [_set("eyelids", 0, 1.0)]),
                         ("both lids", [_set("eyelids", 0, 1.0), _set("eyelids", 1, 1.0)]),
                         ("jaw 0.1 rad", [_set("jaw_pose", 0, 0.1)]),
                         ("jaw 0.25 rad", [_set("jaw_pose", 0, 0.25)]),
                         ("jaw sideways", [_set("jaw_pose", 1, 0.1)]),
                         ("jaw+smile", [_set("jaw_pose", 0, 0.15), _set("expression", 1, 2.0)])]),
      ("eyes & head", [("look left", [_set("eye_pose", 1, 25 * deg), _set("eye_pose", 4, 25 * deg)]),
                       ("look up", [_set("eye_pose", 0, -20 * deg), _set("eye_pose", 3, -20 * deg)]),
                       ("yaw 30", [_set("global_pose", 1, 30 * deg)]),
                       ("yaw -60", [_set("global_pose", 1, -60 * deg)]),
                       ("pitch 20", [_set("global_pose", 0, 20 * deg)]),
                       ("neck roll 15", [_set("neck_pose", 2, 15 * deg)])]),
  ]


def vertex_colors(assets: dict, template: np.ndarray) -> np.ndarray:
  """Skin, lips and eyeballs (white with a dark iris facing forward) from the region masks."""
  colors = np.tile(np.asarray(SKIN, np.float32), (len(template), 1))
  masks = assets.get("masks", {})
  if "lips" in masks:
    colors[masks["lips"]] = LIPS
  for side in ("left_eyeball", "right_eyeball"):
    if side not in masks:
      continue
    idx = np.asarray(masks[side])
    points = template[idx]
    centre = points.mean(0)
    radius = np.linalg.norm(points - centre, axis=1).max()
    forward = (points[:, 2] - centre[2]) / radius  # cosine to FLAME's +z (out of the face)
    colors[idx] = np.where(forward[:, None] > 0.8, IRIS, SCLERA)
  return colors


def render_gallery(assets: dict, size: int = 160) -> np.ndarray:
  """(H, W, 3) uint8 grid with one labelled cell per entry of `gallery_rows()`."""
  model = flame_lib.FlameModel.from_assets(assets)
  camera = camera_lib.default_camera(size, size)
  light = shading.ambient_directional_sh(0.45, 0.7, (0.4, -0.5, -1.0))
  faces = jnp.asarray(assets["f"], jnp.int32)
  colors = jnp.asarray(vertex_colors(assets, np.asarray(assets["v_template"])))

  @jax.jit
  def render(params):
    vertices = flame_lib.flame_forward(model, params).vertices[0]
    return mesh_render.render_mesh(vertices, faces, camera, vertex_colors=colors,
                                   sh_coeffs=light, background=jnp.asarray(BACKGROUND),
                                   cull_backfaces=True).color

  rows = gallery_rows()
  columns = max(len(cells) for _, cells in rows)
  cell_h = size + LABEL_HEIGHT
  canvas = Image.new("RGB", (columns * size, len(rows) * cell_h), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  n_shape, n_expr = model.shapedirs.shape[-1], model.exprdirs.shape[-1]
  for r, (title, cells) in enumerate(rows):
    for c, (label, edits) in enumerate(cells):
      params = flame_lib.FlameParams.zeros(1, n_shape, n_expr)
      for edit in edits:
        params = edit(params)
      image = np.asarray(jnp.clip(render(params), 0.0, 1.0) * 255).astype(np.uint8)
      canvas.paste(Image.fromarray(image), (c * size, r * cell_h + LABEL_HEIGHT))
      draw.text((c * size + 3, r * cell_h + 2), f"{title}: {label}" if c == 0 else label,
                fill=(0, 0, 0))
  return np.asarray(canvas)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="PNG file to write")
  parser.add_argument("--flame", default=None,
                      help="a FLAME model (directory, .pkl or .npz); default: the built-in head")
  parser.add_argument("--size", type=int, default=160, help="pixels per cell")
  args = parser.parse_args(argv)
  if args.flame:
    from sheap_jax.head import flame_io  # pylint: disable=g-import-not-at-top
    assets = flame_io.load_flame_assets(args.flame)
  else:
    assets = head_model.build_head_assets()
  grid = render_gallery(assets, args.size)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  Image.fromarray(grid).save(args.out)
  print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
  main()
