"""One synthetic person: head shape, skin, eyes, hair, clothes. Drawn once per video.

Everything is drawn with NumPy from the identity's own generator, so an identity is the same
whichever order or process builds it. Arrays keep fixed shapes (unused freckles have zero
amplitude) so that painting and rendering compile once.
"""
from flax import struct
import numpy as np

NUM_SHAPE = 300
MAX_FRECKLES = 192
FRECKLE_RADII = (0.0008, 0.0013, 0.0025)  # metres: small, large freckles, moles
NOISE_WAVES = 16  # random plane waves per procedural noise field

# Albedo palettes (display values in [0, 1]); identities interpolate between neighbours.
SKIN_TONES = np.array([(0.86, 0.68, 0.58), (0.76, 0.56, 0.44), (0.62, 0.44, 0.32),
                       (0.45, 0.30, 0.21), (0.30, 0.19, 0.13)], np.float32)
HAIR_COLOURS = np.array([(0.05, 0.04, 0.035), (0.16, 0.10, 0.07), (0.32, 0.20, 0.12),
                         (0.70, 0.55, 0.33), (0.50, 0.20, 0.08), (0.55, 0.55, 0.55)], np.float32)
HAIR_COLOUR_WEIGHTS = np.array([0.3, 0.3, 0.18, 0.1, 0.05, 0.07])
IRIS_COLOURS = np.array([(0.30, 0.16, 0.07), (0.45, 0.35, 0.15), (0.30, 0.42, 0.25),
                         (0.30, 0.45, 0.65), (0.45, 0.50, 0.55)], np.float32)
# Hair styles: probability, thickness range (m), back hairline height range (m).
HAIR_STYLES = {"bald": (0.1, (0.0, 0.0), (0.02, 0.04)),
               "short": (0.5, (0.004, 0.010), (-0.04, 0.0)),
               "long": (0.4, (0.010, 0.025), (-0.14, -0.08))}


@struct.dataclass
class Appearance:
  """Albedo and gloss parameters of one identity (all float32 arrays)."""

  skin: np.ndarray  # (3,) base skin albedo
  blush: np.ndarray  # (3,) cheek / nose / ear tint
  blush_strength: np.ndarray  # ()
  lips: np.ndarray  # (3,) vermilion albedo
  hair: np.ndarray  # (3,) scalp hair (brows, stubble darker)
  iris: np.ndarray  # (3,)
  brow_thickness: np.ndarray  # () metres
  beard_density: np.ndarray  # () 0: none .. 1: full stubble
  freckle_texels: np.ndarray  # (MAX_FRECKLES, 2) (row, column) / texture size, on the face
  freckle_class: np.ndarray  # (MAX_FRECKLES,) int32 index into FRECKLE_RADII
  freckle_strength: np.ndarray  # (MAX_FRECKLES,) 0 for unused slots
  coarse_waves: np.ndarray  # (NOISE_WAVES, 4) plane waves (frequency vector, phase), ~3 cm
  fine_waves: np.ndarray  # (NOISE_WAVES, 4) ~3 mm: pores, skin grain
  strand_waves: np.ndarray  # (NOISE_WAVES, 4) hair strands, fine across, long along y
  gloss: np.ndarray  # () specular strength of skin
  shininess: np.ndarray  # () Blinn-Phong exponent


@struct.dataclass
class Hairstyle:
  """Where hair grows (template frame) and how far the shell stands off the scalp."""

  front: np.ndarray  # () hairline height above the forehead (m)
  side: np.ndarray  # () above the ears
  back: np.ndarray  # () at the nape (long hair reaches down the neck)
  fade: np.ndarray  # () width of the hairline's soft edge (m)
  thickness: np.ndarray  # () shell offset at full coverage (m); 0 for bald
  volume: np.ndarray  # (Vh,) per-shell-vertex thickness factor (messiness)


@struct.dataclass
class Clothes:
  """Torso colours and pattern."""

  base: np.ndarray  # (3,)
  accent: np.ndarray  # (3,)
  pattern: np.ndarray  # () int32: 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks
  period: np.ndarray  # () pattern period (m)
  width_scale: np.ndarray  # () shoulder width factor


@struct.dataclass
class Identity:
  shape: np.ndarray  # (NUM_SHAPE,) FLAME shape coefficients
  appearance: Appearance
  hairstyle: Hairstyle
  clothes: Clothes


def _waves(rng, wavelength, count=NOISE_WAVES, stretch=(1.0, 1.0, 1.0)):
  """Random plane waves of a given wavelength (m): rows (kx, ky, kz, phase)."""
  direction = rng.normal(size=(count, 3)) * np.asarray(stretch)
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  wavelengths = wavelength * rng.uniform(0.7, 1.4, size=(count, 1))
  frequency = 2.0 * np.pi * direction / wavelengths
  return np.concatenate([frequency, rng.uniform(0, 2 * np.pi, (count, 1))], 1).astype(np.float32)


def _palette(rng, palette, position=None):
  """A colour between two neighbouring palette entries, with a little jitter."""
  if position is None:
    position = rng.uniform(0, len(palette) - 1)
  low = int(min(np.floor(position), len(palette) - 2))
  t = position - low
  colour = (1 - t) * palette[low] + t * palette[low + 1]
  return np.clip(colour + rng.normal(0, 0.02, 3), 0.02, 0.98).astype(np.float32)


def _freckles(rng, face_texels):
  count = int(rng.choice([0, 0, 20, 60, MAX_FRECKLES]))
  texels = face_texels[rng.choice(len(face_texels), size=MAX_FRECKLES)].astype(np.float32)
  size_class = rng.integers(0, 2, MAX_FRECKLES).astype(np.int32)
  strength = np.zeros((MAX_FRECKLES,), np.float32)
  strength[:count] = rng.uniform(0.15, 0.45, count)
  moles = rng.integers(0, 4)
  if moles:  # a few larger, darker spots in the last slots
    size_class[-moles:] = 2
    strength[-moles:] = rng.uniform(0.5, 0.8, moles)
  return texels, size_class, strength


def sample_identity(rng: np.random.Generator, face_texels: np.ndarray,
                    num_shell_vertices: int) -> Identity:
  """Draws an identity. face_texels (N, 2): (row, column) / texture size of face texels, where
  freckles may sit (`assets.face_texels`)."""
  skin = _palette(rng, SKIN_TONES)
  darkness = float(np.mean(SKIN_TONES[0]) - np.mean(skin))
  hair_index = rng.choice(len(HAIR_COLOURS), p=HAIR_COLOUR_WEIGHTS)
  hair = np.clip(HAIR_COLOURS[hair_index] * rng.uniform(0.85, 1.15), 0.02, 0.95)
  texels, size_class, strength = _freckles(rng, face_texels)
  if darkness > 0.25:  # freckles are rare and faint on dark skin
    strength *= 0.3
  appearance = Appearance(
      skin=skin,
      blush=np.array([0.75, 0.30, 0.30], np.float32) * skin / skin.max(),
      blush_strength=np.float32(rng.uniform(0.05, 0.3)),
      lips=np.clip(skin * np.array([0.95, 0.62, 0.62]) + rng.normal(0, 0.03, 3),
                   0.05, 0.9).astype(np.float32),
      hair=hair.astype(np.float32),
      iris=_palette(rng, IRIS_COLOURS, rng.uniform(0, 1) if darkness > 0.2 else None),
      brow_thickness=np.float32(rng.uniform(0.0025, 0.0055)),
      beard_density=np.float32(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.2, 1.0)])),
      freckle_texels=texels, freckle_class=size_class, freckle_strength=strength,
      coarse_waves=_waves(rng, 0.03), fine_waves=_waves(rng, 0.003),
      strand_waves=_waves(rng, 0.0012, stretch=(1.0, 0.08, 1.0)),
      gloss=np.float32(rng.uniform(0.08, 0.3)),
      shininess=np.float32(rng.uniform(15.0, 60.0)))
  names = list(HAIR_STYLES)
  style = names[rng.choice(len(names), p=[HAIR_STYLES[n][0] for n in names])]
  _, thickness_range, back_range = HAIR_STYLES[style]
  fringe = rng.uniform() < 0.15
  hairstyle = Hairstyle(
      front=np.float32(rng.uniform(0.05, 0.065) if fringe else rng.uniform(0.075, 0.1)),
      side=np.float32(rng.uniform(0.03, 0.05)),
      back=np.float32(rng.uniform(*back_range)),
      fade=np.float32(rng.uniform(0.004, 0.012)),
      thickness=np.float32(rng.uniform(*thickness_range)),
      volume=rng.uniform(0.75, 1.25, num_shell_vertices).astype(np.float32))
  clothes = Clothes(
      base=rng.uniform(0.05, 0.9, 3).astype(np.float32),
      accent=rng.uniform(0.05, 0.9, 3).astype(np.float32),
      pattern=np.int32(rng.integers(0, 4)),
      period=np.float32(rng.uniform(0.01, 0.05)),
      width_scale=np.float32(rng.uniform(0.88, 1.1)))
  return Identity(shape=rng.normal(size=NUM_SHAPE).astype(np.float32),
                  appearance=appearance, hairstyle=hairstyle, clothes=clothes)
