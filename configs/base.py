"""SHeaP training configs: `get_config(arg)` with variants, big_vision style.

    python -m sheap_jax.train --config configs/base.py --workdir runs/paper       # paper scale
    python -m sheap_jax.train --config configs/base.py:cpu --workdir runs/cpu     # laptop CPU

Any field can be overridden on the command line, e.g. `--config.losses.ssim.weight=0` or
`--config.flame_path=/path/to/FLAME2020`.
"""
import ml_collections

from sheap_jax import losses


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg` picks a variant: "" (paper scale, ViT-B/16 at 224) or "cpu" (tiny, runs anywhere)."""
  if arg not in ("", "cpu"):
    raise ValueError(f"configs/base.py: unknown variant {arg!r}; expected '' or 'cpu'")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.flame_path = ""  # real FLAME (file or directory); empty: the built-in procedural head
  c.flame = dict(n_shape=300, n_expression=100)
  # Renderer the objective trains through: "gaussians" (2DGS splats from the Gaussians
  # Regressor) or "mesh" (the paper's baseline: the FLAME mesh with a UV albedo texture from
  # mesh_baseline.AlbedoHead; needs UVs in the head assets; trains {"predictor", "albedo"}).
  c.renderer = "gaussians"
  c.bfloat16 = False  # matmuls in bfloat16 (parameters stay float32)

  # Shared predictor ViT; shape on the ViT or on its own identity branch (DESIGN 4.2).
  c.model = dict(size="B/16", image_size=224, identity_dim=256, shape_source="vit",
                 output_tokens=True, remat=False)
  c.regressor = dict(width=256, depth=4, num_heads=4, gaussians_per_face=2)
  # Frozen DINOv2 for the regressor's tokens and the perceptual loss; `path` = converted weights
  # (`python -m sheap_jax.models.dinov2 convert`), empty: a seeded random encoder.
  c.dinov2 = dict(variant="vitb14", path="", image_size=224, feature_blocks=(3, 7, 11),
                  arch=None)
  # 2DGS render of the target view: size (square), rasteriser implementation, background, and
  # where the depth/normal/distortion buffers' gradients go: "gaussians" (the Gaussians
  # Regressor only; the mesh is what those terms measure against) or "all" (also the predictor,
  # through the rig). See docs/training.md. On GPUs set impl="pallas" (the Triton kernels);
  # "tiled" is the portable pure-JAX path, 60-200x slower there (README, Performance).
  c.render = dict(size=224, impl="tiled", capacity=None, background=(0.0, 0.0, 0.0),
                  geometry_gradients="gaussians")
  c.losses = losses.default_losses_config()

  # Pairs of frames of one video (data/pairs.py); data_dir empty: ~/tensorflow_datasets. name:
  # synthetic_heads or video_folder; mix_with "name/variant" takes mix_weight of each epoch;
  # synthetic_eval "synthetic_heads/variant" scores synthetic_neutral when training on videos
  # (sheap_jax/training_data.py).
  c.data = dict(name="synthetic_heads", variant="small", data_dir="", split="train",
                eval_split="validation", build_if_missing=False, max_gap=8, augment=True,
                num_workers=4, mix_with="", mix_weight=0.5, synthetic_eval="")
  c.batch_size = 64  # global, over all devices of all hosts
  c.total_steps = 200_000
  c.optimizer = dict(name="adamw", learning_rate=1e-4, warmup_steps=2_000, end_factor=0.01,
                     weight_decay=1e-4, b1=0.9, b2=0.999, clip_norm=1.0)

  c.log_every = 50
  c.checkpoint_every = 2_000
  c.keep_checkpoints = 3
  c.eval_every = 5_000
  c.eval_images = 64  # held-out identities scored by the NoW metric (synthetic_neutral)
  c.preview_every = 1_000

  if arg == "cpu":
    c.flame.n_shape, c.flame.n_expression = 50, 20
    c.model = dict(size="tiny", image_size=64, identity_dim=32, shape_source="vit",
                   output_tokens=True, remat=False)
    c.regressor = dict(width=32, depth=1, num_heads=2, gaussians_per_face=1)
    c.dinov2 = dict(variant="vits14", path="", image_size=56, feature_blocks=(1,),
                    arch=dict(width=32, depth=2, num_heads=2, mlp_dim=64, pos_embed_grid=(4, 4)))
    c.render.size = 64
    c.data.variant = "demo"
    c.data.build_if_missing = True
    c.data.num_workers = 0
    c.batch_size = 4
    c.total_steps = 100  # ~400 pairs: the README's main command fits 15 min on 2 CPU cores
    c.optimizer.warmup_steps = 5
    c.optimizer.learning_rate = 3e-4
    c.log_every = 5
    c.checkpoint_every = 25
    c.eval_every = 50
    c.eval_images = 16  # every validation identity of the `demo` data
    c.preview_every = 50
  return c
