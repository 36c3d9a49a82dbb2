"""The per-(pixel, splat) math of the official 2DGS rasteriser, shared by every path.

`splat_alpha_depth` evaluates splats through pixels (ray-splat intersection, low-pass filter,
alpha and depth tests); `composite_block` composites a block of depth-ordered splats onto a
block of pixels front to back, exactly the official per-pixel loop written with cumulative
products; `uncomposite_block` inverts it (transmittance recovered as T / (1 - alpha)), which is
what back-to-front backward passes walk. The dense reference, the tiled path and the Pallas
kernel bodies all call these functions, so the paths cannot drift apart.
"""
from typing import Optional, Sequence

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from rasterizer import types

# Sentinel positions: no splat stopped the pixel / set its median / was composited yet. int32
# scalars, not Python ints, so that positions stay int32 under jax_enable_x64.
NO_STOP = np.int32(np.iinfo(np.int32).max)
NO_POSITION = np.int32(-1)


def splat_alpha_depth(
    tu: Sequence[jnp.ndarray],
    tv: Sequence[jnp.ndarray],
    tw: Sequence[jnp.ndarray],
    mean_x: jnp.ndarray,
    mean_y: jnp.ndarray,
    opacity: jnp.ndarray,
    x: jnp.ndarray,
    y: jnp.ndarray,
):
  """Alpha, depth and hit mask of splats seen through pixel centres (x, y).

  tu, tv, tw are the rows of the ray transform as 3-sequences of arrays; every splat array
  broadcasts against x and y (e.g. splats shaped (1, K), pixels (P, 1)). Follows the official
  forward: the two pixel planes k = x T_w - T_u, l = y T_w - T_v meet in the line p = k x l,
  which hits the splat plane at s = p.xy / p.z; rho = min(|s|^2, 2 |c - x|^2) (low-pass
  filter); the depth is that of the ray-splat intersection (the official code uses it for
  filtered pixels too, but differentiates it there only through T_w, holding s fixed). Misses
  (p.z = 0, depth < near, alpha < 1/255) get alpha 0 and depth 1, finite values whose
  gradients vanish.
  """
  kx, ky, kz = (x * tw[i] - tu[i] for i in range(3))
  lx, ly, lz = (y * tw[i] - tv[i] for i in range(3))
  px = ky * lz - kz * ly
  py = kz * lx - kx * lz
  pz = kx * ly - ky * lx
  nonsingular = jnp.abs(pz) >= jnp.finfo(pz.dtype).tiny
  inv_pz = 1.0 / jnp.where(nonsingular, pz, 1.0)
  sx, sy = px * inv_pz, py * inv_pz
  rho3d = sx * sx + sy * sy
  dx, dy = mean_x - x, mean_y - y
  rho2d = types.FILTER_INV_SQUARE * (dx * dx + dy * dy)
  rho = jnp.minimum(rho3d, rho2d)
  # Where the low-pass filter wins (tiny or edge-on splats), s = p.xy / p.z is ill-conditioned
  # (d s / d T grows like 1 / p.z): the official backward then sends the depth's gradient to
  # T_w alone, holding s fixed. stop_gradient gives every implementation that rule.
  filtered = rho2d < rho3d
  sx_depth = jnp.where(filtered, jax.lax.stop_gradient(sx), sx)
  sy_depth = jnp.where(filtered, jax.lax.stop_gradient(sy), sy)
  depth = sx_depth * tw[0] + sy_depth * tw[1] + tw[2]
  alpha = jnp.minimum(types.ALPHA_MAX, opacity * jnp.exp(-0.5 * rho))
  hit = nonsingular & (depth >= types.NEAR_PLANE) & (alpha >= types.ALPHA_MIN)
  return jnp.where(hit, alpha, 0.0), jnp.where(hit, depth, 1.0), hit


def normalized_depth(depth: jnp.ndarray) -> jnp.ndarray:
  """The distortion loss's depth m = f / (f - n) (1 - n / z), in [0, 1] between the planes."""
  far, near = types.FAR_PLANE, types.NEAR_PLANE
  return far / (far - near) * (1.0 - near / depth)


@struct.dataclass
class SplatBlock:
  """K depth-ordered splats (or (splat, tile) pairs) as the compositor reads them."""

  transforms: jnp.ndarray  # (K, 3, 3) rows T_u, T_v, T_w
  means2d: jnp.ndarray  # (K, 2)
  opacities: jnp.ndarray  # (K,)
  normals: jnp.ndarray  # (K, 3)
  features: jnp.ndarray  # (K, C)
  active: jnp.ndarray  # (K,) bool: a real, visible splat (padding slots are inactive)
  positions: jnp.ndarray  # (K,) int32 increasing front-to-back position in the pixel's list


@struct.dataclass
class CompositeState:
  """Per-pixel running sums of the official loop ((P,) or (H, W) leading dims)."""

  transmittance: jnp.ndarray  # T
  color: jnp.ndarray  # (..., C) sum w f
  depth_sum: jnp.ndarray  # sum w z
  normal_sum: jnp.ndarray  # (..., 3) sum w n
  median_depth: jnp.ndarray  # z of the last splat composited while T > 0.5
  m1: jnp.ndarray  # sum w m
  m2: jnp.ndarray  # sum w m^2
  distortion: jnp.ndarray  # sum_ij w_i w_j (m_i - m_j)^2
  stop_pos: jnp.ndarray  # int32 position of the splat that ended the pixel (NO_STOP if none)
  median_pos: jnp.ndarray  # int32 position of the median splat (NO_POSITION if none)
  last_pos: jnp.ndarray  # int32 position of the last composited splat (NO_POSITION if none)


def initial_state(pixels, num_channels: int, dtype=jnp.float32) -> CompositeState:
  """The state before any splat: `pixels` is a count (P,) or an image shape (H, W)."""
  shape = (int(pixels),) if np.ndim(pixels) == 0 else tuple(pixels)
  zeros = jnp.zeros(shape, dtype)
  return CompositeState(
      transmittance=jnp.ones(shape, dtype),
      color=jnp.zeros(shape + (num_channels,), dtype),
      depth_sum=zeros,
      normal_sum=jnp.zeros(shape + (3,), dtype),
      median_depth=zeros,
      m1=zeros,
      m2=zeros,
      distortion=zeros,
      stop_pos=jnp.full(shape, NO_STOP, jnp.int32),
      median_pos=jnp.full(shape, NO_POSITION, jnp.int32),
      last_pos=jnp.full(shape, NO_POSITION, jnp.int32),
  )


@struct.dataclass
class BlockTerms:
  """What one block contributes to each pixel, (P, K) per (pixel, splat)."""

  weights: jnp.ndarray  # w = alpha T_before (0 where not composited)
  one_minus_alpha: jnp.ndarray  # 1 - alpha (1 where not composited)
  t_before: jnp.ndarray  # incoming transmittance
  m: jnp.ndarray  # normalized depth


def _weighted_sum(w, values):
  """(P, K) weights times (K, D) values, in full float32 (GPUs default to TF32 for matmuls)."""
  return jnp.matmul(w, values, precision=jax.lax.Precision.HIGHEST)


def _exclusive_cumprod(x):
  return jnp.cumprod(jnp.concatenate([jnp.ones_like(x[:, :1]), x[:, :-1]], axis=1), axis=1)


def _exclusive_cumsum(x):
  return jnp.cumsum(x, axis=1) - x


def _evaluate(block: SplatBlock, x, y):
  t = block.transforms
  rows = [tuple(t[None, :, r, i] for i in range(3)) for r in range(3)]
  alpha, depth, hit = splat_alpha_depth(
      *rows, block.means2d[None, :, 0], block.means2d[None, :, 1], block.opacities[None],
      x[:, None], y[:, None])
  hit = hit & block.active[None]
  return jnp.where(hit, alpha, 0.0), depth, hit


def composite_block(
    state: CompositeState,
    block: SplatBlock,
    x: jnp.ndarray,
    y: jnp.ndarray,
    decided: Optional[CompositeState] = None,
) -> CompositeState:
  """Composites `block` (front to back) behind `state` on pixels with centres (x, y), (P,).

  The official loop stops a pixel at the first splat whose test_T = T (1 - alpha) falls below
  1e-4 (that splat and all later ones are not composited) and takes the median depth from the
  last splat composited while T > 0.5. Because T only decreases, both are found from
  cumulative products. `decided` (a final state from a forward pass) replays its recorded
  stop and median positions instead of re-deciding them, so that a backward pass working
  from reconstructed transmittances differentiates exactly the forward's choices.
  """
  alpha, depth, hit = _evaluate(block, x, y)
  pos = block.positions[None]
  if decided is None:
    t_after = state.transmittance[:, None] * jnp.cumprod(1.0 - alpha, axis=1)
    stops = hit & (t_after < types.TRANSMITTANCE_MIN)
    stop_pos = jnp.minimum(
        state.stop_pos, jnp.min(jnp.where(stops, pos, NO_STOP), axis=1, initial=NO_STOP))
  else:
    stop_pos = decided.stop_pos
  composited = hit & (pos < stop_pos[:, None])
  terms = _block_terms(state.transmittance, alpha, depth, composited)
  if decided is None:
    median_hits = composited & (terms.t_before > types.MEDIAN_TRANSMITTANCE)
    median_pos = jnp.maximum(
        state.median_pos,
        jnp.max(jnp.where(median_hits, pos, NO_POSITION), axis=1, initial=NO_POSITION))
  else:
    median_pos = decided.median_pos
  is_median = pos == median_pos[:, None]
  median_depth = jnp.where(
      jnp.any(is_median, axis=1), jnp.sum(jnp.where(is_median, depth, 0.0), axis=1),
      state.median_depth)
  w, m = terms.weights, terms.m
  wm = w * m
  m1_before = state.m1[:, None] + _exclusive_cumsum(wm)
  m2_before = state.m2[:, None] + _exclusive_cumsum(wm * m)
  distortion_terms = w * (m * m * (1.0 - terms.t_before) + m2_before - 2.0 * m * m1_before)
  return CompositeState(
      transmittance=state.transmittance * jnp.prod(terms.one_minus_alpha, axis=1),
      color=state.color + _weighted_sum(w, block.features),
      depth_sum=state.depth_sum + jnp.sum(w * depth, axis=1),
      normal_sum=state.normal_sum + _weighted_sum(w, block.normals),
      median_depth=median_depth,
      m1=state.m1 + jnp.sum(wm, axis=1),
      m2=state.m2 + jnp.sum(wm * m, axis=1),
      distortion=state.distortion + jnp.sum(distortion_terms, axis=1),
      stop_pos=stop_pos,
      median_pos=median_pos,
      last_pos=jnp.maximum(
          state.last_pos,
          jnp.max(jnp.where(composited, pos, NO_POSITION), axis=1, initial=NO_POSITION)),
  )


def _block_terms(t_in, alpha, depth, composited) -> BlockTerms:
  a = jnp.where(composited, alpha, 0.0)
  one_minus_alpha = 1.0 - a
  t_before = t_in[:, None] * _exclusive_cumprod(one_minus_alpha)
  return BlockTerms(
      weights=a * t_before, one_minus_alpha=one_minus_alpha, t_before=t_before,
      m=normalized_depth(depth))


def uncomposite_block(
    state_out: CompositeState,
    block: SplatBlock,
    x: jnp.ndarray,
    y: jnp.ndarray,
    decided: CompositeState,
) -> CompositeState:
  """The state before `block`, recovered from the state after it (inverse of composite_block).

  Transmittance is recovered as T / prod(1 - alpha) and the sums by subtracting the block's
  contributions, so a backward pass needs no per-block checkpoints. Only the differentiable
  sums are recovered; the decision fields are copied from `decided`, and the median depth is
  left as it was after the block (its incoming value never receives a gradient that matters
  when the median was set inside the block, and is unchanged otherwise).
  """
  alpha, depth, hit = _evaluate(block, x, y)
  composited = hit & (block.positions[None] < decided.stop_pos[:, None])
  a = jnp.where(composited, alpha, 0.0)
  t_in = state_out.transmittance / jnp.prod(1.0 - a, axis=1)
  terms = _block_terms(t_in, alpha, depth, composited)
  w, m = terms.weights, terms.m
  wm = w * m
  m1_in = state_out.m1 - jnp.sum(wm, axis=1)
  m2_in = state_out.m2 - jnp.sum(wm * m, axis=1)
  m1_before = m1_in[:, None] + _exclusive_cumsum(wm)
  m2_before = m2_in[:, None] + _exclusive_cumsum(wm * m)
  distortion_terms = w * (m * m * (1.0 - terms.t_before) + m2_before - 2.0 * m * m1_before)
  return state_out.replace(
      transmittance=t_in,
      color=state_out.color - _weighted_sum(w, block.features),
      depth_sum=state_out.depth_sum - jnp.sum(w * depth, axis=1),
      normal_sum=state_out.normal_sum - _weighted_sum(w, block.normals),
      m1=m1_in,
      m2=m2_in,
      distortion=state_out.distortion - jnp.sum(distortion_terms, axis=1),
  )


def pixel_outputs(state: CompositeState, background: jnp.ndarray):
  """Final buffers from the running sums: colour over the background, alpha, expected and
  median depth, normals, distortion (the official outputs; expected depth normalised by
  alpha, 0 where nothing was composited)."""
  alpha = 1.0 - state.transmittance
  covered = alpha > 0
  depth = jnp.where(covered, state.depth_sum / jnp.where(covered, alpha, 1.0), 0.0)
  return dict(
      color=state.color + state.transmittance[..., None] * background,
      alpha=alpha,
      depth=depth,
      median_depth=state.median_depth,
      normals=state.normal_sum,
      distortion=state.distortion,
  )
