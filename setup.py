"""Model extraction in JAX/Flax: learning-based (FS, MixMatch) and functionally-equivalent extraction."""

from setuptools import find_packages, setup

setup(
  name="model-extraction",
  version="0.1.0",
  description="High-accuracy and high-fidelity extraction of neural networks (Jagielski et al. 2020) in JAX/Flax",
  packages=find_packages(
    include=["extraction*", "semisup*", "functional_equivalence*", "service*", "launch*", "benchmarks*"]
  ),
  python_requires=">=3.10",
  install_requires=[
    "jax>=0.4.30",
    "flax>=0.10",
    "optax>=0.2",
    "orbax-checkpoint>=0.6",
    "numpy>=1.26",
    "absl-py>=2.0",
    "scikit-learn>=1.3",
    "matplotlib>=3.7",
    "dm-pix>=0.4",  # jittable image ops: augmentation, RandAugment, rotations
    "httpx>=0.27",  # the RemoteOracle client (light); the server's packages are in [serve]
  ],
  extras_require={
    # ruff and mypy: the static checks of .ci/check (exact versions in requirements/lock.txt)
    "test": [
      "pytest>=8",
      "pytest-xdist>=3.5",  # README's test command runs the suite on 2 workers (-n 2)
      "tensorflow-datasets>=4.9",
      "importlib_resources",
      "fastapi>=0.110",
      "uvicorn>=0.30",
      "ruff>=0.17",
      "mypy>=2.4",
      "scikit-image>=0.21",  # the photographs of --transfer_set=photos, tested in tests/test_transfer.py
    ],
    "serve": ["fastapi>=0.110", "uvicorn>=0.30"],
    "transfer": ["scikit-image>=0.21"],  # --transfer_set=photos: the photographs scikit-image ships
    # tfds 4.9.10 needs importlib_resources but does not declare it; preparing svhn_cropped/cifar10 needs TF.
    "tfds": ["tensorflow-datasets>=4.9", "importlib_resources", "tensorflow-cpu"],
  },
)
