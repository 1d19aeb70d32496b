"""Transfer sets: natural images from other domains than the victim's, for the strategies that ask such images
(Copycat, Knockoff Nets). Everything exists offline:

  * `photos`: random crops of the photographs that scikit-learn (china, flower) and scikit-image (astronaut,
    coffee, chelsea, rocket, motorcycles, Hubble deep field, coins, camera, moon, brick, grass, gravel, retina)
    ship; needs `pip install scikit-image` (the `transfer` extra);
  * `digits`: scikit-learn's 8x8 handwritten digits (all 1,797), for a victim of another domain (CIFAR-10);
  * `cifar10`: random crops of CIFAR-10 training images (from `--data_dir`), for a victim of another domain.

Every image is resized (bilinear, antialiased) to the victim's input shape, and made grey or RGB to match its
channels. Each image has a kind, the path (source, class) in a two-level hierarchy used by Knockoff Nets' adaptive
policy: the class is the digit or CIFAR-10 label, or which photograph a crop comes from. The draw comes from a
generator of the query stream (the attacker's randomness), never from the victim's or the evaluator's.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

TRANSFER_SETS = ("photos", "digits", "cifar10")
SKIMAGE_PHOTOS = (
  "astronaut.png",
  "coffee.png",
  "chelsea.png",
  "rocket.jpg",
  "motorcycle_left.png",
  "motorcycle_right.png",
  "hubble_deep_field.jpg",
  "coins.png",
  "camera.png",
  "moon.png",
  "brick.png",
  "grass.png",
  "gravel.png",
  "retina.jpg",
)
DOMAIN = {"digits": "digits", "cifar10": "cifar10"}  # transfer set -> the dataset it would duplicate
STREAM = 0x7A5F  # the query stream's sub-stream that draws the transfer set


class TransferSetUnavailable(RuntimeError):
  """A transfer set's source is missing (a package or a data file)."""


@dataclasses.dataclass(frozen=True)
class TransferSet:
  images: np.ndarray  # uint8 (N, H, W, C)
  kinds: np.ndarray  # int (N, 2): (source, class)
  names: tuple  # the sources, in the order of kinds[:, 0]


def _fit(image: np.ndarray, shape: tuple) -> np.ndarray:
  """uint8 (h, w[, c]) -> uint8 shape (H, W, C): bilinear resize, grey (C = 1) or RGB (C = 3)."""
  from PIL import Image

  h, w, c = shape
  img = Image.fromarray(image.squeeze() if image.ndim == 3 and image.shape[-1] == 1 else image)
  img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
  out = np.asarray(img, np.uint8)
  return out[..., None] if c == 1 else out


def _crop(image: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
  """A random square crop whose side is a fraction in [low, high] of the image's shorter side."""
  short = min(image.shape[:2])
  side = max(int(round(short * rng.uniform(low, high))), 2)
  y, x = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
  return image[y : y + side, x : x + side]


def _photos() -> list:
  from sklearn.datasets import load_sample_images

  images = list(load_sample_images().images)
  try:
    import skimage.data
  except ImportError as e:
    raise TransferSetUnavailable(
      "transfer set 'photos' needs scikit-image's sample photographs: pip install "
      "scikit-image (or pip install -e .[transfer])"
    ) from e
  from PIL import Image

  root = pathlib.Path(skimage.data.__file__).parent
  for name in SKIMAGE_PHOTOS:
    images.append(np.asarray(Image.open(root / name).convert("RGB"), np.uint8))
  return images


def photos(n: int, shape: tuple, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """n random crops (1/8 to 1/2 of the shorter side) of the shipped photographs; class: the photograph."""
  sources = _photos()
  which = rng.integers(0, len(sources), n)
  return np.stack([_fit(_crop(sources[i], rng, 1 / 8, 1 / 2), shape) for i in which]), which


def digits(n: int, shape: tuple, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """min(n, 1797) of scikit-learn's digits, resized; class: the digit."""
  from sklearn.datasets import load_digits

  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
  pick = rng.permutation(len(images))[:n]
  return np.stack([_fit(images[i], shape) for i in pick]), d.target[pick]


def cifar10(n: int, shape: tuple, rng: np.random.Generator, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """n random crops (5/8 to all of the side) of distinct CIFAR-10 training images; class: the CIFAR-10 label."""
  path = pathlib.Path(data_dir or ".") / "cifar10" / "train.npz"
  if not data_dir or not path.exists():
    raise TransferSetUnavailable(f"transfer set 'cifar10' reads {path}: give --data_dir=DIR holding cifar10/train.npz")
  with np.load(path) as f:
    images, labels = f["image"], np.asarray(f["label"]).reshape(-1)
  pick = rng.permutation(len(images))[:n]
  return np.stack([_fit(_crop(images[i], rng, 5 / 8, 1.0), shape) for i in pick]), labels[pick]


def draw_rng(query_seed: int) -> np.random.Generator:
  """The generator that draws an attacker's transfer set: a sub-stream of its query stream."""
  from extraction import seeds

  return seeds.rng(query_seed, "query", STREAM)


def load(
  names: list[str], shape: tuple, size: int, rng: np.random.Generator, data_dir: str | None = None
) -> TransferSet:
  """A transfer set of about `size` images (split evenly over the sources; digits gives at most 1,797)."""
  unknown = [n for n in names if n not in TRANSFER_SETS]
  if unknown or not names:
    raise ValueError(f"unknown transfer set {','.join(unknown)!r}; choose from {', '.join(TRANSFER_SETS)}")
  shares = [size // len(names) + (i < size % len(names)) for i in range(len(names))]
  loaders = {
    "photos": lambda n: photos(n, shape, rng),
    "digits": lambda n: digits(n, shape, rng),
    "cifar10": lambda n: cifar10(n, shape, rng, data_dir),
  }
  images, kinds = [], []
  for s, (name, n) in enumerate(zip(names, shares)):
    x, cls = loaders[name](n)
    images.append(x)
    kinds.append(np.stack([np.full(len(x), s), np.asarray(cls, np.int64)], 1))
  return TransferSet(np.concatenate(images), np.concatenate(kinds), tuple(names))
