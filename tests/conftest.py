"""Shared fixtures: tiny synthetic Fashion-MNIST-shaped data and the real data in ../shared."""

import os
from pathlib import Path

import numpy as np
import pytest

from tlkit.data import IDX_FILES, write_idx

from .helpers import REPO

SHARED = Path(os.environ.get("TLKIT_SHARED_DIR", REPO.parent / "shared"))
REAL_DATA_DIR = SHARED / "data" / "fashion-mnist"
REAL_WEIGHTS = SHARED / "weights" / "resnet50_imagenet_notop.weights.h5"


def make_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """28×28 uint8 images whose class sets the brightness of a central square (learnable in seconds)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 6:22, 6:22] += np.uint8(40 + 20 * int(label))
    return images


def write_synthetic_dataset(directory: Path, n_train: int = 300, n_test: int = 100, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    y_train = np.arange(n_train) % 10
    y_test = np.arange(n_test) % 10
    write_idx(directory / f"{IDX_FILES['train_images']}{suffix}", make_images(y_train, 1))
    write_idx(directory / f"{IDX_FILES['train_labels']}{suffix}", y_train)
    write_idx(directory / f"{IDX_FILES['test_images']}{suffix}", make_images(y_test, 2))
    write_idx(directory / f"{IDX_FILES['test_labels']}{suffix}", y_test)
    return directory


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("fashion"))


def _require(path: Path) -> Path:
    if path.exists():
        return path
    reason = f"real data/weights not found at {path} (set TLKIT_SHARED_DIR or put ../shared beside the repo)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the real-data tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    return _require(REAL_DATA_DIR)


@pytest.fixture(scope="session")
def real_weights() -> Path:
    return _require(REAL_WEIGHTS)
