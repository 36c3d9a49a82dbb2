"""Speed of the z-buffer mesh renderer on CPU/GPU: a head-sized 10k-triangle mesh at 224^2.

python bench/mesh_render.py [--size 224] [--repeats 20] [--out runs/bench/mesh_render.json]
Prints a table of median milliseconds per frame and writes the same figures as JSON.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from sheap_jax.geometry import camera as camera_lib  # noqa: E402
from sheap_jax.render import mesh_render  # noqa: E402
from sheap_jax.geometry import shading  # noqa: E402


def head_sized_ellipsoid(rings=51, segments=100, radii=(0.076, 0.11, 0.095)):
  """Latitude-longitude ellipsoid (2 * segments * (rings - 1) triangles) with spherical UVs."""
  polar = np.linspace(0.0, np.pi, rings + 1)[1:-1]
  azimuth = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
  p, a = np.meshgrid(polar, azimuth, indexing="ij")
  ring = np.stack([np.sin(p) * np.sin(a), np.cos(p), np.sin(p) * np.cos(a)], -1).reshape(-1, 3)
  vertices = np.concatenate([[[0.0, 1.0, 0.0]], ring, [[0.0, -1.0, 0.0]]]) * radii
  uvs = np.concatenate([[[0.5, 1.0]], np.stack([a / (2 * np.pi), 1 - p / np.pi], -1)
                        .reshape(-1, 2), [[0.5, 0.0]]])
  index = lambda r, s: 1 + r * segments + s % segments
  south = len(vertices) - 1
  faces = []
  for s in range(segments):
    faces += [[0, index(0, s), index(0, s + 1)],
              [south, index(rings - 2, s + 1), index(rings - 2, s)]]
    for r in range(rings - 2):
      faces += [[index(r, s), index(r + 1, s), index(r + 1, s + 1)],
                [index(r, s), index(r + 1, s + 1), index(r, s + 1)]]
  return (vertices.astype(np.float32), np.array(faces, np.int32), uvs.astype(np.float32))


def median_ms(fn, repeats):
  jax.block_until_ready(fn())  # compile
  wall, cpu = [], []
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall.append(time.perf_counter() - w)
    cpu.append(time.process_time() - c)
  return 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--out", default="runs/bench/mesh_render.json")
  args = parser.parse_args()

  vertices, faces, uvs = head_sized_ellipsoid()
  vertices, faces, uvs = jnp.asarray(vertices), jnp.asarray(faces), jnp.asarray(uvs)
  camera = camera_lib.default_camera(args.size, args.size)
  texture = jax.random.uniform(jax.random.PRNGKey(0), (256, 256, 3))
  light = shading.ambient_directional_sh(0.4, 0.7, (0.3, -0.4, -1.0))
  batch_vertices = vertices[None] + jnp.linspace(-0.01, 0.01, args.batch)[:, None, None]

  render_one = lambda v: mesh_render.render_mesh(
      v, faces, camera, texture=texture, uvs=uvs, uv_faces=faces, sh_coeffs=light,
      cull_backfaces=True).color
  render_vmap = jax.jit(jax.vmap(render_one))
  render_map = jax.jit(lambda batch: jax.lax.map(render_one, batch))
  cases = {
      "rasterize, all faces": lambda: mesh_render.rasterize(vertices, faces, camera).face_ids,
      "rasterize, back faces culled": lambda: mesh_render.rasterize(
          vertices, faces, camera, cull_backfaces=True).face_ids,
      "render textured + SH, culled": lambda: mesh_render.render_mesh(
          vertices, faces, camera, texture=texture, uvs=uvs, uv_faces=faces, sh_coeffs=light,
          cull_backfaces=True).color,
      f"same, vmap over {args.batch} (per frame)": lambda: render_vmap(batch_vertices),
      f"same, lax.map over {args.batch} (per frame)": lambda: render_map(batch_vertices),
  }
  fragments = mesh_render.rasterize(vertices, faces, camera)
  culled = mesh_render.rasterize(vertices, faces, camera, cull_backfaces=True)
  results = {
      "backend": jax.default_backend(), "device": str(jax.devices()[0]),
      "image_size": args.size, "triangles": int(faces.shape[0]),
      "chunk_size": mesh_render.DEFAULT_CHUNK_SIZE,
      "fragments_all_faces": int(fragments.fragments),
      "fragments_culled": int(culled.fragments),
      "covered_pixels": int(fragments.mask.sum()), "cases": {},
  }
  print(f"{results['device']}: {results['triangles']} triangles at {args.size}^2, "
        f"fragments {results['fragments_all_faces']} (culled {results['fragments_culled']}), "
        f"chunks of {results['chunk_size']}")
  print(f"{'case':44s} {'wall ms/frame':>14s} {'cpu ms/frame':>13s}")
  for name, fn in cases.items():
    wall, cpu = median_ms(fn, args.repeats)
    per_frame = args.batch if name.startswith("same,") else 1
    results["cases"][name] = {"wall_ms_per_frame": wall / per_frame,
                              "cpu_ms_per_frame": cpu / per_frame}
    print(f"{name:44s} {wall / per_frame:14.2f} {cpu / per_frame:13.2f}")
  json_out.write_json(args.out, results)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
