"""Image similarity measures shared by the losses and the evaluators: SSIM and PSNR.

SSIM follows Wang et al. (2004) as the 3DGS/2DGS training code computes it: an 11 x 11 Gaussian
window (sigma 1.5) applied per channel with zero padding ("same" size output), C1 = (0.01 L)^2,
C2 = (0.03 L)^2 for the data range L. Images are (B, H, W, C), float32.
"""
import jax
import jax.numpy as jnp
import numpy as np


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """(size,) normalised 1-D Gaussian taps centred on the middle tap."""
  if size < 1 or size % 2 == 0:
    raise ValueError("sheap_jax/training/image_metrics.py: "
                     f"window size must be odd and >= 1, got {size}")
  offsets = np.arange(size, dtype=np.float64) - size // 2
  taps = np.exp(-offsets ** 2 / (2.0 * sigma ** 2))
  return (taps / taps.sum()).astype(np.float32)


def _blur(images: jnp.ndarray, taps: np.ndarray) -> jnp.ndarray:
  """Separable zero-padded correlation of every channel of (B, H, W, C) with taps x taps."""
  channels = images.shape[-1]
  size = taps.shape[0]
  pad = size // 2

  def along(x, kernel_shape):
    kernel = jnp.broadcast_to(jnp.asarray(taps).reshape(kernel_shape + (1, 1)),
                              kernel_shape + (1, channels))
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=((pad, pad) if kernel_shape[0] > 1 else (0, 0),
                                                   (pad, pad) if kernel_shape[1] > 1 else (0, 0)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST)

  return along(along(images, (size, 1)), (1, size))


def ssim_map(a: jnp.ndarray, b: jnp.ndarray, window_size: int = 11, sigma: float = 1.5,
             data_range: float = 1.0) -> jnp.ndarray:
  """Per-pixel, per-channel SSIM (B, H, W, C) of two (B, H, W, C) images; 1 where they agree."""
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError("sheap_jax/training/image_metrics.py: "
                     "ssim needs two (B, H, W, C) images of one shape, "
                     f"got {tuple(a.shape)} and {tuple(b.shape)}")
  taps = gaussian_window(window_size, sigma)
  c1 = (0.01 * data_range) ** 2
  c2 = (0.03 * data_range) ** 2
  mu_a, mu_b = _blur(a, taps), _blur(b, taps)
  var_a = _blur(a * a, taps) - mu_a ** 2
  var_b = _blur(b * b, taps) - mu_b ** 2
  cov = _blur(a * b, taps) - mu_a * mu_b
  return ((2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
          / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))


def ssim(a: jnp.ndarray, b: jnp.ndarray, **kwargs) -> jnp.ndarray:
  """(B,) mean SSIM of each image pair (keyword arguments as `ssim_map`)."""
  return jnp.mean(ssim_map(a, b, **kwargs), axis=(1, 2, 3))


def psnr(a: jnp.ndarray, b: jnp.ndarray, data_range: float = 1.0) -> jnp.ndarray:
  """(B,) peak signal-to-noise ratio in dB of each (B, H, W, C) image pair (inf if equal)."""
  mse = jnp.mean((a - b) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range ** 2 / mse)
