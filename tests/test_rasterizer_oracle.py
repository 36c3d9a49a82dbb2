"""An independent NumPy float64 transcription of the official 2DGS forward, for the tests.

It shares no code with `rasterizer/`: its own quaternion formula, projection and a sequential
per-splat loop (vectorised over pixels) written as in `renderCUDA`. Besides the buffers it
reports, per pixel, how close any decision came to its threshold (alpha cut-off, near plane,
early stop, median crossing), which is how the tests tell a discontinuity from a bug. Other
rasterizer tests import it; its own tests check it against closed forms.
"""
import numpy as np

from rasterizer import types


def quat_to_rotmat(q):
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
  return np.stack([
      np.stack([w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], -1),
  ], -2)


def project(means, quats, scales, viewmat, K):
  """Ray transforms M (rows T_u, T_v, T_w), centres, depths, camera-facing normals, and a mask."""
  means, quats, scales, viewmat, K = (np.asarray(a, np.float64)
                                      for a in (means, quats, scales, viewmat, K))
  rot = quat_to_rotmat(quats)
  view_rot, view_t = viewmat[:3, :3], viewmat[:3, 3]
  p_cam = means @ view_rot.T + view_t
  transforms = np.zeros((len(means), 3, 3))
  for i in range(len(means)):
    splat_to_cam = np.column_stack(
        [view_rot @ rot[i, :, 0] * scales[i, 0], view_rot @ rot[i, :, 1] * scales[i, 1],
         p_cam[i]])
    transforms[i] = K @ splat_to_cam
  normals = rot[:, :, 2] @ view_rot.T
  cos = -np.sum(p_cam * normals, axis=-1)
  normals = np.where(cos[:, None] < 0, -normals, normals)
  depths = p_cam[:, 2]
  with np.errstate(divide="ignore", invalid="ignore"):
    means2d = transforms[:, :2, 2] / depths[:, None]
  return transforms, means2d, depths, normals, (depths > types.NEAR_PLANE) & (cos != 0)


def official_filter_centres(transforms, cutoff=3.0):
  """The official low-pass filter centres and which splats survive (`compute_aabb` in
  hbb1/diff-surfel-rasterization forward.cu at e0ed020, cutoff 3 as TIGHTBBOX is 0): with
  t = (c^2, c^2, -1), d = t . (T_w * T_w) (culled where d == 0), f = t / d, the centre is
  (f . (T_u * T_w), f . (T_v * T_w)), the centre of the cut-off ellipse's bounding box."""
  t = np.array([cutoff**2, cutoff**2, -1.0])
  tu, tv, tw = transforms[:, 0], transforms[:, 1], transforms[:, 2]
  d = (tw * tw) @ t
  kept = d != 0
  f = t / np.where(kept, d, 1.0)[:, None]
  return np.stack([np.sum(f * tu * tw, 1), np.sum(f * tv * tw, 1)], 1), kept


def render(means, quats, scales, opacities, features, viewmat, K, width, height, background,
           filter_centre="projected"):
  """The official per-pixel loop for one image; returns (buffers dict, margin (H, W)).

  buffers also holds `stopped`, the pixels the early stop (T < 1e-4) ended, and `filtered`, the
  pixels a filter-dominated splat (2 |c - x|^2 < |s|^2) contributed to.
  margin: the smallest relative distance of any decision this pixel took to its threshold.
  filter_centre: "projected" (the splat centre's projection, the rasterizer's rule) or
  "official" (`official_filter_centres`, the official code's rule).
  """
  transforms, means2d, depths, normals, visible = project(means, quats, scales, viewmat, K)
  if filter_centre == "official":
    means2d, kept = official_filter_centres(transforms)
    visible &= kept
  elif filter_centre != "projected":
    raise ValueError(f"filter_centre must be 'projected' or 'official', got {filter_centre!r}")
  opacities = np.asarray(opacities, np.float64)
  features = np.asarray(features, np.float64)
  visible &= opacities >= types.ALPHA_MIN
  order = np.argsort(np.where(visible, depths, np.inf), kind="stable")
  ys, xs = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                       indexing="ij")
  x, y = xs.ravel(), ys.ravel()
  num_pixels = x.size
  T = np.ones(num_pixels)
  color = np.zeros((num_pixels, features.shape[1]))
  depth_sum, m1, m2, distortion, median = (np.zeros(num_pixels) for _ in range(5))
  normal_sum = np.zeros((num_pixels, 3))
  done = np.zeros(num_pixels, bool)
  filtered = np.zeros(num_pixels, bool)
  margin = np.full(num_pixels, np.inf)
  far, near = types.FAR_PLANE, types.NEAR_PLANE
  for i in order[visible[order]]:
    tu, tv, tw = transforms[i]
    k = x[:, None] * tw - tu
    l = y[:, None] * tw - tv
    p = np.cross(k, l)
    with np.errstate(divide="ignore", invalid="ignore"):
      s = p[:, :2] / p[:, 2:]
      rho3d = np.sum(s * s, axis=1)
      rho2d = types.FILTER_INV_SQUARE * np.sum((means2d[i] - np.stack([x, y], 1)) ** 2, 1)
      rho = np.minimum(rho3d, rho2d)
      depth = s[:, 0] * tw[0] + s[:, 1] * tw[1] + tw[2]
      raw_alpha = opacities[i] * np.exp(-0.5 * rho)
    alpha = np.minimum(types.ALPHA_MAX, raw_alpha)
    live = ~done & (p[:, 2] != 0)
    margin = np.where(live, np.minimum(margin, np.abs(depth - near) / near), margin)
    live &= depth >= near
    margin = np.where(live, np.minimum(margin, np.abs(raw_alpha * 255 - 1)), margin)
    live &= alpha >= types.ALPHA_MIN
    test_T = T * (1 - alpha)
    margin = np.where(live, np.minimum(margin, np.abs(test_T / types.TRANSMITTANCE_MIN - 1)),
                      margin)
    stop = live & (test_T < types.TRANSMITTANCE_MIN)
    done |= stop
    live &= ~stop
    margin = np.where(live, np.minimum(margin, np.abs(T / types.MEDIAN_TRANSMITTANCE - 1)),
                      margin)
    filtered |= live & (rho2d < rho3d)
    w = np.where(live, alpha * T, 0.0)
    z = np.where(live, depth, 1.0)
    m = far / (far - near) * (1 - near / z)
    distortion += (m * m * (1 - T) + m2 - 2 * m * m1) * w
    depth_sum += w * z
    m1 += w * m
    m2 += w * m * m
    median = np.where(live & (T > types.MEDIAN_TRANSMITTANCE), z, median)
    normal_sum += w[:, None] * normals[i]
    color += w[:, None] * features[i]
    T = np.where(live, test_T, T)
  alpha_out = 1 - T
  with np.errstate(divide="ignore", invalid="ignore"):
    expected_depth = np.where(alpha_out > 0, depth_sum / alpha_out, 0.0)
  shape = (height, width)
  buffers = dict(
      color=(color + T[:, None] * np.asarray(background, np.float64)).reshape(shape + (-1,)),
      alpha=alpha_out.reshape(shape), depth=expected_depth.reshape(shape),
      median_depth=median.reshape(shape), normals=normal_sum.reshape(shape + (3,)),
      distortion=distortion.reshape(shape), stopped=done.reshape(shape),
      filtered=filtered.reshape(shape))
  return buffers, margin.reshape(shape)


def random_scene(rng, num_splats, num_channels=3, depth_range=(1.0, 3.0), extent=0.6,
                 scale_range=(0.03, 0.25), opacity_range=(0.05, 1.0)):
  """Random splats in front of an identity camera (float32 numpy arrays); orientations are
  uniform, grazing ones included."""
  lo = np.array([-extent, -extent, depth_range[0]])
  hi = np.array([extent, extent, depth_range[1]])
  f32 = lambda a: np.asarray(a, np.float32)
  return dict(
      means=f32(rng.uniform(lo, hi, (num_splats, 3))),
      quats=f32(rng.normal(size=(num_splats, 4))),
      scales=f32(rng.uniform(*scale_range, (num_splats, 2))),
      opacities=f32(rng.uniform(*opacity_range, num_splats)),
      features=f32(rng.uniform(0, 1, (num_splats, num_channels))),
  )


def pinhole(width, height, focal):
  return np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]],
                  np.float32)


def test_face_on_splat_is_the_analytic_disc():
  width, height, focal = 24, 20, 30.0
  sigma_u, sigma_v, depth, opacity = 0.3, 0.2, 2.0, 0.7
  buffers, _ = render(
      means=[[0.0, 0.0, depth]], quats=[[1.0, 0, 0, 0]], scales=[[sigma_u, sigma_v]],
      opacities=[opacity], features=[[1.0, 0.5, 0.25]], viewmat=np.eye(4),
      K=pinhole(width, height, focal), width=width, height=height, background=[0, 0, 0])
  ys, xs = np.mgrid[:height, :width]
  cx, cy = (width - 1) / 2, (height - 1) / 2
  rho3d = ((xs - cx) * depth / focal / sigma_u) ** 2 + ((ys - cy) * depth / focal / sigma_v) ** 2
  rho2d = 2 * ((xs - cx) ** 2 + (ys - cy) ** 2)
  alpha = np.minimum(0.99, opacity * np.exp(-0.5 * np.minimum(rho3d, rho2d)))
  alpha[alpha < 1 / 255] = 0
  np.testing.assert_allclose(buffers["alpha"], alpha, atol=1e-12)
  np.testing.assert_allclose(buffers["color"][..., 1], 0.5 * alpha, atol=1e-12)
  np.testing.assert_allclose(buffers["depth"][alpha > 0], depth, atol=1e-12)
  np.testing.assert_allclose(buffers["normals"][..., 2], -alpha, atol=1e-12)


def test_official_filter_centre_is_the_centre_of_the_3_sigma_ellipse_box(rng):
  """The rim u^2 + v^2 = 9 mapped through M and divided by w, sampled finely: its bounding box's
  centre is the official filter centre; it is the projected centre only for splats seen
  face-on on the optical axis, and moves away for oblique ones."""
  scene = random_scene(rng, 20, depth_range=(1.0, 2.0), extent=0.3, scale_range=(0.02, 0.1))
  transforms, means2d, *_ = project(scene["means"], scene["quats"], scene["scales"], np.eye(4),
                                    pinhole(64, 64, 80.0))
  centres, kept = official_filter_centres(transforms)
  angle = np.linspace(0, 2 * np.pi, 200001)
  rim = np.stack([3 * np.cos(angle), 3 * np.sin(angle), np.ones_like(angle)])  # (3, A)
  pixels = transforms @ rim  # (N, 3, A)
  xy = pixels[:, :2] / pixels[:, 2:]
  box_centres = (xy.max(-1) + xy.min(-1)) / 2
  assert np.all(kept)
  np.testing.assert_allclose(centres, box_centres, atol=1e-6)
  assert np.abs(centres - means2d).max() > 1e-3
  face_on, _ = official_filter_centres(
      project([[0, 0, 2.0]], [[1.0, 0, 0, 0]], [[0.3, 0.2]], np.eye(4), pinhole(65, 65, 80.0))[0])
  np.testing.assert_allclose(face_on, [[32.0, 32.0]], atol=1e-12)
