"""Fixtures for the sweep tests: tiny .npz datasets a trial learns in two epochs (or cannot learn, or
cannot read), and the environment the sweeps run in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def write_npz(path: Path, seed: int = 0, shuffled_labels: bool = False, train: int = 200, test: int = 60) -> Path:
    """Two classes of 28×28 images, dark or with a bright square: learnable in two head epochs. With
    `shuffled_labels` the labels no longer follow the images, so nothing generalises (chance, 0.5)."""
    rng = np.random.default_rng(seed)

    def images(labels):
        pixels = rng.integers(0, 50, (len(labels), 28, 28))
        pixels[labels == 1, 6:22, 6:22] += 160
        return pixels.astype("uint8")

    y_train, y_test = np.arange(train) % 2, np.arange(test) % 2
    x_train, x_test = images(y_train), images(y_test)
    if shuffled_labels:
        y_train, y_test = rng.permutation(y_train), rng.permutation(y_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(["dark", "bright"]))
    return path


@pytest.fixture(scope="session")
def sweep_data(tmp_path_factory) -> dict[str, Path]:
    """`easy`, `easy_copy` (the same images under another name), `noise` (shuffled labels; 7.5 times the
    images, so that its epochs take most of a second and a stop lands mid-run) and `broken` (an .npz name
    over text: passes validation, fails when the trainer reads it)."""
    root = tmp_path_factory.mktemp("sweep-data")
    broken = root / "broken.npz"
    broken.write_text("not an npz archive\n")
    easy = write_npz(root / "easy.npz")
    copy = root / "easy_copy.npz"
    copy.write_bytes(easy.read_bytes())
    return {"easy": easy, "easy_copy": copy, "noise": write_npz(root / "noise.npz", shuffled_labels=True, train=1500),
            "broken": broken}


@pytest.fixture(scope="session")
def sweep_env(tmp_path_factory) -> dict[str, str]:
    """The environment of the sweep CLI (and so of its trainers): JAX keeps compiled programs on disk,
    so every trainer after the first skips XLA compilation (about 10 s each on 2 cores)."""
    cache = tmp_path_factory.mktemp("jax-compilation-cache")
    return {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"),
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "PYTHONUNBUFFERED": "1"}


# No feature cache: every epoch runs the backbone, so epochs take time in proportion to the images.
SMOKE_BASE = """
[base]
preset = "smoke"
feature_cache = false
head.learning_rate = 0.03
head.epochs = {head_epochs}
finetune.epochs = 0
data.train_limit = "none"
data.test_limit = "none"
"""


def write_spec(path: Path, text: str, head_epochs: int = 4) -> Path:
    """A spec file: `text` (top-level keys and tables) plus the smoke base config."""
    path.write_text(text.strip() + "\n" + SMOKE_BASE.format(head_epochs=head_epochs))
    return path
