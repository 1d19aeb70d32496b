"""Pack an image dataset's npz splits into a smaller lossless file for the device tool, and unpack it there.

The device tool carries at most 64 MiB of working tree; CIFAR-10's npz files hold 163 MiB. Each image is stored
as lossless WebP (about 1.6 kB for a 32x32x3 CIFAR-10 image against 3 kB raw), so the unpacked pixels are
bit-identical to the chosen subset of the source; unpacking checks a sha256 over the pixels and labels.

  python -m benchmarks.pack_images pack --data_dir=../shared/data --dataset=cifar10 --train=30000 --test=5000 \
      --out=.device_data/cifar10.pack.npz
  python -m benchmarks.pack_images unpack --src=.device_data/cifar10.pack.npz --data_dir=/tmp/data

The subset is a seeded uniform draw without replacement from each split (--seed), kept in its original order.
"""

from __future__ import annotations

import hashlib
import io
import pathlib

import numpy as np
from absl import app, flags
from PIL import Image  # Pillow: installed with matplotlib

FLAGS = flags.FLAGS

SPLITS = ("train", "test")


def content_hash(image: np.ndarray, label: np.ndarray) -> str:
  """sha256 over the pixels then the labels as little-endian int64 (as ../shared/data/README.md hashes them)."""
  return hashlib.sha256(image.tobytes() + label.astype("<i8").tobytes()).hexdigest()


def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """uint8 NxHxWxC (C = 3) images as concatenated lossless WebP bytes and their N+1 offsets."""
  blobs = []
  for im in images:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "WEBP", lossless=True, quality=100, method=4)
    blobs.append(buf.getvalue())
  offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
  return np.frombuffer(b"".join(blobs), np.uint8), offsets


def decode(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Inverse of `encode`."""
  raw = data.tobytes()
  return np.stack(
    [np.asarray(Image.open(io.BytesIO(raw[a:b])).convert("RGB")) for a, b in zip(offsets[:-1], offsets[1:])]
  )


def pack(data_dir: pathlib.Path, dataset: str, sizes: dict, seed: int, out: pathlib.Path) -> dict:
  """Writes the packed subset to `out`; returns {split: (n, hash)}."""
  rng, arrays, summary = np.random.default_rng(seed), {}, {}
  for split in SPLITS:
    d = np.load(data_dir / dataset / f"{split}.npz")
    image, label = d["image"], d["label"]
    if image.ndim != 4 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"{split}: expected uint8 NxHxWx3 images, got {image.dtype} {image.shape}")
    n = min(sizes[split], len(image))
    keep = np.sort(rng.choice(len(image), n, replace=False))
    image, label = image[keep], label[keep].astype(np.int64)
    arrays[f"{split}_data"], arrays[f"{split}_offsets"] = encode(image)
    arrays[f"{split}_label"] = label
    summary[split] = (n, content_hash(image, label))
    arrays[f"{split}_hash"] = np.array(summary[split][1])
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez(out, **arrays)
  return summary


def unpack(src: pathlib.Path, data_dir: pathlib.Path, dataset: str) -> dict:
  """Writes <data_dir>/<dataset>/{train,test}.npz from a packed file, checking each split's content hash."""
  packed, summary = np.load(src), {}
  (data_dir / dataset).mkdir(parents=True, exist_ok=True)
  for split in SPLITS:
    image = decode(packed[f"{split}_data"], packed[f"{split}_offsets"])
    label = packed[f"{split}_label"]
    got, want = content_hash(image, label), str(packed[f"{split}_hash"])
    if got != want:
      raise ValueError(f"{src}: {split} decodes to content hash {got}, packed as {want}")
    np.savez(data_dir / dataset / f"{split}.npz", image=image, label=label)
    summary[split] = (len(image), got)
  return summary


def define_flags() -> None:
  """The CLI's flags, defined only when run as a script (their names are common: importing must not clash)."""
  flags.DEFINE_string("data_dir", None, "pack: holds <dataset>/{train,test}.npz; unpack: where to write them.")
  flags.DEFINE_string("dataset", "cifar10", "Dataset name (the folder under --data_dir).")
  flags.DEFINE_integer("train", 30000, "pack: training images kept (all if larger than the split).")
  flags.DEFINE_integer("test", 5000, "pack: test images kept (all if larger than the split).")
  flags.DEFINE_integer("seed", 0, "pack: seed of the subset draw.")
  flags.DEFINE_string("out", None, "pack: the packed file.")
  flags.DEFINE_string("src", None, "unpack: the packed file.")


def main(argv):
  if len(argv) != 2 or argv[1] not in ("pack", "unpack"):
    raise app.UsageError("usage: python -m benchmarks.pack_images pack|unpack [flags]")
  if argv[1] == "pack":
    if not (FLAGS.data_dir and FLAGS.out):
      raise app.UsageError("pack needs --data_dir and --out")
    summary = pack(
      pathlib.Path(FLAGS.data_dir),
      FLAGS.dataset,
      {"train": FLAGS.train, "test": FLAGS.test},
      FLAGS.seed,
      pathlib.Path(FLAGS.out),
    )
  else:
    if not (FLAGS.src and FLAGS.data_dir):
      raise app.UsageError("unpack needs --src and --data_dir")
    summary = unpack(pathlib.Path(FLAGS.src), pathlib.Path(FLAGS.data_dir), FLAGS.dataset)
  for split, (n, h) in summary.items():
    print(f"{split}: {n} images, content sha256 {h}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
