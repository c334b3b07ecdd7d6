"""Frozen-stage feature cache: run the frozen backbone once, train the head on its output.

With the backbone frozen (inference mode) and no augmentation, every epoch of
the head stage feeds the backbone the same images and gets the same pooled
features back. Computing them once and training the head on them gives the
same model at a fraction of the cost. Features are cached on disk, keyed by
everything that determines them (backbone, weights, image size, precision,
Keras version and the exact images), so repeated runs and sweeps reuse them.

Example:

```python
from tlkit.features import FeatureCache, head_model, pooled_feature_model

extractor = pooled_feature_model(model)          # uint8 images -> pooled backbone features
head = head_model(model)                          # pooled features -> probabilities (shared weights)
cache = FeatureCache()                            # $TLKIT_CACHE_DIR or ~/.cache/tlkit
```
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

HEAD_LAYERS = ("head_dense", "head_dropout", "head_logits", "probabilities")
POOL_LAYER = "head_pool"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TLKIT_CACHE_DIR") or Path.home() / ".cache" / "tlkit")


def pooled_feature_model(model: keras.Model) -> keras.Model:
    """The classifier up to global average pooling (augmentation is inactive at inference)."""
    return keras.Model(model.input, model.get_layer(POOL_LAYER).output, name="pooled_features")


def head_model(model: keras.Model) -> keras.Model:
    """The classifier's head as a model on pooled features, sharing the classifier's weights."""
    features = keras.Input(model.get_layer(POOL_LAYER).output.shape[1:], name="pooled_features")
    x = features
    for name in HEAD_LAYERS:
        x = model.get_layer(name)(x)
    return keras.Model(features, x, name="head")


def predict_in_chunks(model: keras.Model, images: np.ndarray, batch_size: int, outputs: list[np.ndarray],
                      on_progress: Callable[[float], None] | None = None, chunk: int = 4096) -> list[np.ndarray]:
    """Fills the preallocated `outputs` with `model`'s outputs on `images`, a chunk at a time.

    Chunks bound the float32 temporaries (outputs may be float16) and let long
    extractions report progress.
    """
    for start in range(0, len(images), chunk):
        values = model.predict(images[start:start + chunk], batch_size=batch_size, verbose=0)
        values = values if isinstance(values, (list, tuple)) else [values]
        for target, value in zip(outputs, values):
            target[start:start + len(value)] = value
        if on_progress:
            on_progress(min(start + chunk, len(images)) / len(images))
    return outputs


def extract_features(model: keras.Model, images: np.ndarray, batch_size: int,
                     on_progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Pooled backbone features of `images` as float32, computed in batches."""
    extractor = pooled_feature_model(model)
    (features,) = predict_in_chunks(extractor, images, batch_size,
                                    [np.empty((len(images), *extractor.output.shape[1:]), dtype="float32")],
                                    on_progress)
    return features


class FeatureCache:
    """Pooled features on disk, one `.npy` per (model identity, image set).

    Args:
        directory: cache root; default `$TLKIT_CACHE_DIR` or `~/.cache/tlkit`.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()

    @staticmethod
    def key(identity: dict, images: np.ndarray) -> str:
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
        digest.update(str(images.shape).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
        return digest.hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.directory / "features" / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        try:
            return np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError):
            return None  # missing or corrupt: recompute

    def store(self, key: str, features: np.ndarray) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Straight to a temp file (no in-memory copy: boundary activations can be GBs), then rename.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as handle:
                np.save(handle, features, allow_pickle=False)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def load_arrays(self, key: str, count: int) -> list[np.ndarray] | None:
        """The `count` arrays stored under `key` (boundary activations), or None."""
        arrays = [self.load(f"{key}-{i}") for i in range(count)]
        return None if any(array is None for array in arrays) else arrays

    def store_arrays(self, key: str, arrays: list[np.ndarray]) -> bool:
        """Stores `arrays` under `key`; False when the disk refused (the run goes on without)."""
        try:
            for i, array in enumerate(arrays):
                self.store(f"{key}-{i}", array)
        except OSError:
            return False
        return True

    def features(self, model: keras.Model, identity: dict, images: np.ndarray, batch_size: int,
                 on_progress: Callable[[float], None] | None = None,
                 compute: Callable[[np.ndarray, Callable | None], np.ndarray] | None = None,
                 ) -> tuple[np.ndarray, dict]:
        """Cached features of `images` (computed and stored on a miss) and a record of what happened.

        `compute(images, on_progress)` replaces the full-graph extraction on a miss
        (e.g. deriving features from boundary activations); `identity` must say so.
        """
        key = self.key(identity, images)
        start = time.perf_counter()
        cached = self.load(key)
        if cached is not None and cached.shape[0] == len(images):
            return cached, {"key": key, "hit": True, "seconds": round(time.perf_counter() - start, 3)}
        if compute is not None:
            features = compute(images, on_progress)
        else:
            features = extract_features(model, images, batch_size, on_progress)
        try:
            self.store(key, features)
            stored = True
        except OSError:
            stored = False  # a read-only or full disk only costs the reuse, not the run
        return features, {"key": key, "hit": False, "stored": stored,
                          "seconds": round(time.perf_counter() - start, 3)}
