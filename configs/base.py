"""SHeaP training configs: `get_config(arg)` with named arguments, big_vision style.

    python -m sheap_jax.train --config configs/base.py --workdir runs/paper       # paper scale
    python -m sheap_jax.train --config configs/base.py:cpu --workdir runs/cpu     # laptop CPU
    python -m sheap_jax.train --config configs/base.py:cpu,renderer=mesh,losses=landmarks_only \
        --workdir runs/cpu_mesh

`arg` is comma-separated: `cpu` (the tiny preset; without it, paper scale) and `name=value`
arguments (`ARGUMENTS`). Any field can also be overridden on the command line, e.g.
`--config.losses.ssim.weight=0` or `--config.flame_path=/path/to/FLAME2020`.
"""
import ml_collections

_FILE = "configs/base.py"
PRESETS = ("cpu",)
# Loss presets (`losses=`, also the seed study's variants): which terms keep their weight; the
# others get 0. The FLAME priors keep the parameters plausible and stay in every preset.
PRIORS = ("shape_prior", "expression_prior", "jaw_prior", "eyelid_prior")
LOSS_PRESETS = {
    "full": lambda term: True,
    "landmarks_only": lambda term: term in PRIORS + ("landmarks",),
    "no_landmarks": lambda term: term != "landmarks",
}
ARGUMENTS = {"renderer": "gaussians|mesh", "losses": "|".join(LOSS_PRESETS)}


def loss_weights() -> dict:
  """`config.losses`: every term of `sheap_jax/training/losses.py` with its weight and options.
  SHeaP's own weights are not public; these follow its peers:

  - l1 0.8 / ssim 0.2: 3DGS's photometric mix (lambda_dssim = 0.2), which 2DGS keeps.
  - perceptual 0.1 on DINOv2 block outputs (no VGG weights here): a guess, LPIPS-like scale.
  - landmarks 0.1: a small weight, as SHeaP describes; distances in units of the image size.
  - depth 10 (metres, so 1 mm costs 0.01) and normal 0.05 against the mesh: guesses scaled
    like the photometric terms; depth_normal 0.05 and distortion 100 are 2DGS's lambda_n and
    its unbounded-scene lambda_d.
  - shape/expression priors 1e-4 (DECA's shape_reg / exp_reg); jaw and eyelid priors 1e-3
    (guesses).
  - gaussian_offset 0.01 (threshold 1) and gaussian_scale 1.0 (threshold 0.6): GaussianAvatars'
    lambda_position and lambda_scaling; gaussian_opacity off.
  - silhouette off (weight 0; not measured yet): the render's alpha against real footage's
    person matte, for the fitting work to switch on (docs/losses.md).
  """
  return dict(
      l1=dict(weight=0.8),
      ssim=dict(weight=0.2, window_size=11, sigma=1.5),
      perceptual=dict(weight=0.1),
      landmarks=dict(weight=0.1, epsilon=1e-3),
      depth=dict(weight=10.0, buffer="depth", min_alpha=0.5),
      normal=dict(weight=0.05, min_alpha=0.5),
      depth_normal=dict(weight=0.05, buffer="median_depth", min_alpha=0.5),
      distortion=dict(weight=100.0),
      shape_prior=dict(weight=1e-4),
      expression_prior=dict(weight=1e-4),
      jaw_prior=dict(weight=1e-3),
      eyelid_prior=dict(weight=1e-3),
      gaussian_offset=dict(weight=0.01, threshold=1.0),
      gaussian_scale=dict(weight=1.0, threshold=0.6),
      gaussian_opacity=dict(weight=0.0),
      silhouette=dict(weight=0.0, mode="outside"))


def parse_arguments(arg: str):
  """(presets, {name: value}) of `arg`, or one ValueError line naming what is accepted."""
  presets, named = [], {}
  for token in [t.strip() for t in arg.split(",") if t.strip()]:
    name, sep, value = token.partition("=")
    if not sep and token in PRESETS:
      presets.append(token)
    elif sep and name in ARGUMENTS and value:
      named[name] = value
    else:
      raise ValueError(f"{_FILE}: unknown argument {token!r} in {arg!r}; accepted: "
                       f"{', '.join(PRESETS)}, " +
                       ", ".join(f"{k}=<{v}>" for k, v in ARGUMENTS.items()))
  return presets, named


def apply_arguments(c: ml_collections.ConfigDict, named: dict) -> ml_collections.ConfigDict:
  """Edits `c` by named arguments ({"renderer": ..., "losses": ...}); the seed study
  (`sheap_jax/loss_study.py`) applies its variants with it. Renderer names are checked where
  they are used (`sheap_jax/training/renderers.py`)."""
  for name, value in named.items():
    if name == "renderer":
      c.renderer = value
    elif name == "losses":
      if value not in LOSS_PRESETS:
        raise ValueError(f"{_FILE}: losses={value!r}; accepted: {', '.join(LOSS_PRESETS)}")
      for term in c.losses:
        if not LOSS_PRESETS[value](term):
          c.losses[term].weight = 0.0
    else:
      raise ValueError(f"{_FILE}: unknown argument {name!r}; accepted: {', '.join(ARGUMENTS)}")
  return c


CPU_SPLAT_REGIONS = ("face", "forehead", "left_ear", "right_ear", "eye_region", "left_eyeball",
                     "right_eyeball")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """`arg`: "" (paper scale, ViT-B/16 at 224) or "cpu" (tiny, runs anywhere), then named
  arguments, e.g. "cpu,renderer=mesh,losses=landmarks_only"."""
  presets, named = parse_arguments(arg)
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
  # `regions`: names of the head's vertex masks whose triangles carry Gaussians (the faces
  # with a vertex in one of them); empty: every triangle (objective.splat_faces).
  c.regressor = dict(width=256, depth=4, num_heads=4, gaussians_per_face=2, regions=())
  # A fresh run (no checkpoint to resume) starts the predictor's encoders (`branches`: "vit",
  # and "identity_vit" with shape_source="identity") from converted DINOv2 weights
  # (`python -m sheap_jax.models.dinov2 convert`); empty: from scratch.
  c.model_init = dict(dinov2_path="", branches=("vit",))
  # Frozen DINOv2 for the regressor's tokens and the perceptual loss; `path` = converted weights
  # (`python -m sheap_jax.models.dinov2 convert`), empty: a seeded random encoder.
  c.dinov2 = dict(variant="vitb14", path="", image_size=224, feature_blocks=(3, 7, 11),
                  arch=None)
  # 2DGS render of the target view: size (square), rasteriser implementation, its pair buffer
  # (`capacity`, None: 8 per splat) and tile side (`tile_size`, a power of two; 16 as in the
  # official rasteriser), background, and where the depth/normal/distortion buffers' gradients
  # go: "gaussians" (the Gaussians Regressor only; the mesh is what those terms measure against)
  # or "all" (also the predictor, through the rig). See docs/training.md. On GPUs set
  # impl="pallas" (the Triton kernels); "tiled" is the portable pure-JAX path, 60-200x slower
  # there (README, Performance).
  c.render = dict(size=224, impl="tiled", capacity=None, tile_size=16,
                  background=(0.0, 0.0, 0.0), geometry_gradients="gaussians")
  c.losses = loss_weights()

  # Pairs of frames of one video (data/pairs.py); data_dir empty: ~/tensorflow_datasets. name:
  # synthetic_heads or video_folder; mix_with "name/variant" takes mix_weight of each epoch;
  # synthetic_eval "synthetic_heads/variant" is the data of the synthetic evaluators
  # (`config.evals`) when training on videos (data/datasets.py). A video_folder run's held-out
  # validation reanimates eval_pairs pairs of its eval_split clips (evaluation/heldout.py).
  c.data = dict(name="synthetic_heads", variant="small", data_dir="", split="train",
                eval_split="validation", eval_pairs=64, build_if_missing=False, max_gap=8,
                augment=True, num_workers=4, mix_with="", mix_weight=0.5, synthetic_eval="")
  c.batch_size = 64  # global, over all devices of all hosts
  c.total_steps = 200_000
  c.optimizer = dict(name="adamw", learning_rate=1e-4, warmup_steps=2_000, end_factor=0.01,
                     weight_decay=1e-4, b1=0.9, b2=0.999, clip_norm=1.0)

  c.log_every = 50
  c.checkpoint_every = 2_000
  c.keep_checkpoints = 3
  c.eval_every = 5_000
  # Validation: evaluator name -> options (sheap_jax/evaluation/validation.py), the evaluators
  # `python -m sheap_jax.evaluate` runs; here the NoW metric on the first frame of 64 held-out
  # identities (split="train" scores identities trained on: fitting).
  c.evals = dict(synthetic_neutral=dict(images=64, split="validation"))
  c.preview_every = 1_000

  if "cpu" in presets:
    c.flame.n_shape, c.flame.n_expression = 50, 20
    c.model = dict(size="tiny", image_size=64, identity_dim=32, shape_source="vit",
                   output_tokens=True, remat=False)
    # Splats on the triangles a frontal camera sees and the losses read: face (eyes, nose, lips
    # included), forehead, ears and eyeballs, 6,350 of the built-in head's 11,282 triangles
    # (FLAME_masks.pkl has the same region names).
    c.regressor = dict(width=32, depth=1, num_heads=2, gaussians_per_face=1,
                       regions=CPU_SPLAT_REGIONS)
    c.dinov2 = dict(variant="vits14", path="", image_size=56, feature_blocks=(1,),
                    arch=dict(width=32, depth=2, num_heads=2, mlp_dim=64, pos_embed_grid=(4, 4)))
    # Pallas kernels in interpret mode on 8x8 tiles (splats are sub-pixel at 64², and every
    # (splat, tile) pair composites a whole tile: 1.3x faster steps than 16x16, 4x4 2x slower);
    # the capacity is 1.4x the pairs the scene needs at initialisation (~13,000; the default
    # would be 8 per splat, 50,800), and `render/pairs_dropped_per_pair` is logged. Before
    # 2026-12-08: --config.regressor.regions="()" --config.render.capacity=90256 (the default
    # for 11,282 splats at 64²) --config.render.impl=tiled --config.render.tile_size=16
    # (docs/training.md, "Speed of the CPU step").
    c.render.size = 64
    c.render.impl = "pallas"
    c.render.tile_size = 8
    c.render.capacity = 18_432
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
    c.evals.synthetic_neutral.images = 16  # every validation identity of the `demo` data
    c.data.eval_pairs = 16
    c.preview_every = 50
  return apply_arguments(c, named)
