"""Sanity check of the fit's camera and rig (issue 17): a synthetic video's TRUE parameters,
put into the fit's free variables (`sheap_jax/fitting/variables.py`) and rendered through the
objective (`objective.render_target`, SHeaP's camera), against the data's own projection.

Per frame, at the data's image size (render size = image size, so pixels are the same):
- landmarks: the objective's projected FLAME landmarks against the stored `gt_landmarks`;
- vertices: every mesh vertex projected by the objective's camera against the data's camera
  (`gt_camera_K`, `gt_camera_viewmat`, FLAME with `gt_translation`);
- silhouette: the z-buffer mask of the whole head under both cameras (differing pixels, IoU).
Target: below 0.5 px. Prints a table and writes JSON.

    python bench/fit_sanity.py --video synthetic_heads:demo/validation/48 \
        --out bench/results/fit_sanity.json
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import json_out  # noqa: E402
from configs import fit as fit_config  # noqa: E402
from data import datasets  # noqa: E402
from data import pairs  # noqa: E402
from sheap_jax.evaluation import fit_scores  # noqa: E402
from sheap_jax.fitting import clip  # noqa: E402
from sheap_jax.fitting import fitter  # noqa: E402
from sheap_jax.fitting import variables as variables_lib  # noqa: E402
from sheap_jax.geometry import camera as camera_lib  # noqa: E402
from sheap_jax.head import flame  # noqa: E402
from sheap_jax.render import mesh_render  # noqa: E402
from sheap_jax.training import objective  # noqa: E402


def check(video: str, data_dir: str = "") -> dict:
  config = fit_config.get_config()
  config.data.data_dir = data_dir
  config.fit.max_frames = 0
  spec = clip.parse_video_spec(video)
  frames, records = clip.load_clip(spec, config)
  size = frames["target_image"].shape[1]
  config.render.size, config.render.impl, config.render.capacity = size, "tiled", None
  model = objective.load_flame_model(config)
  source = pairs.open_split(datasets.open_named(spec.dataset, spec.variant, config), spec.split)
  truth = fit_scores.GroundTruth(model, source, records, video).initial_params(300, 100)
  frozen = fitter.build_frozen(config, model)
  count = len(records)
  variables = variables_lib.init_variables(count, frozen.splat_faces.shape[0], 1, 300, 100,
                                           initial=truth)
  out = jax.jit(lambda v, f: fitter.reanimate(config, frozen, v, f, jnp.arange(count)))(
      variables, {k: jnp.asarray(v) for k, v in frames.items()})
  rows = [source[int(i)] for i in records]
  data_vertices = flame.flame_forward(model, truth).vertices
  faces = model.faces
  landmark_px, vertex_px, differing, iou = [], [], [], []
  for i, row in enumerate(rows):
    landmark_px.append(np.linalg.norm(np.asarray(out.landmarks[i]) - row["gt_landmarks"],
                                      axis=-1))
    data_cam = camera_lib.Camera(K=jnp.asarray(row["gt_camera_K"]),
                                 viewmat=jnp.asarray(row["gt_camera_viewmat"]), width=size,
                                 height=size)
    fit_cam = camera_lib.Camera(K=out.Ks[i], viewmat=out.viewmats[i], width=size, height=size)
    project = lambda cam, v: camera_lib.project(cam.K, camera_lib.world_to_camera(cam.viewmat, v))
    vertex_px.append(np.linalg.norm(np.asarray(project(fit_cam, out.vertices[i]))
                                    - np.asarray(project(data_cam, data_vertices[i])), axis=-1))
    fit_mask = np.asarray(mesh_render.render_mesh(out.vertices[i], faces, fit_cam).mask) > 0.5
    data_mask = np.asarray(mesh_render.render_mesh(data_vertices[i], faces, data_cam).mask) > 0.5
    differing.append(int(np.sum(fit_mask != data_mask)))
    iou.append(float(np.sum(fit_mask & data_mask) / max(np.sum(fit_mask | data_mask), 1)))
  return dict(video=video, image_size=size, frames=count,
              landmark_max_px=float(np.max(landmark_px)),
              landmark_mean_px=float(np.mean(landmark_px)),
              vertex_max_px=float(np.max(vertex_px)),
              silhouette_differing_pixels=differing, silhouette_iou_min=float(np.min(iou)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--video", required=True, help="synthetic_heads:VARIANT/SPLIT/VIDEO_ID")
  parser.add_argument("--data_dir", default="", help="default ~/tensorflow_datasets")
  parser.add_argument("--out", default="bench/results/fit_sanity.json")
  args = parser.parse_args()
  result = check(args.video, args.data_dir)
  for key, value in result.items():
    print(f"{key:30s} {value}")
  json_out.write_json(args.out, result)


if __name__ == "__main__":
  main()
