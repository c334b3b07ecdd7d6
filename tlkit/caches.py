"""Caches: what each stage fits on, and the frozen activations behind it.

With augmentation off, the frozen part of the classifier maps each image to the
same activations every epoch. Two caches use that without changing the model
that is trained:

- **Feature cache** (head stage): the frozen backbone's pooled features are
  computed once (and kept on disk), and the head trains on them.
- **Boundary activations** (finetune stage): the frozen prefix's output at the
  freeze boundary is computed once (float16, in host memory within a budget,
  and on disk); the finetune stage trains only the unfrozen suffix on it. The
  head stage then derives its features from the same activations, so the
  prefix runs once per image per run, and later runs that differ only after the
  boundary (learning rates, dropout, epochs) skip it entirely.

A random flip is the one augmentation they keep: it shows each training image
as itself or as its mirror image, so both caches hold the activations of both,
and every epoch each sample is drawn from one of the two with equal odds, as
the flip layer would.

`RunCaches` plans both for one run and hands each stage a `StageData`: the
model to fit (the classifier, its head, or its unfrozen part, all sharing the
classifier's weights) and the arrays to fit it on. It owns the cache key:
`cache_identity` names everything that determines the activations.

Example:

```python
from tlkit.caches import RunCaches

caches = RunCaches(config, classifier, splits, precision="float32")
data = caches.stage_data("head", trainable_layers=[])   # the head model on pooled features
data.model.fit(data.train[0], data.train[1])
```
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from tlkit import environment
from tlkit.batches import ArrayBatches, aligned_empty, keras_input
from tlkit.config import Config
from tlkit.data import Splits
from tlkit.distribution import batch_multiple, evaluation_multiple, predict_across_hosts, process_share, round_up
from tlkit.model import BoundarySplit, Classifier, GraphSplitError
from tlkit.runs import pid_alive

CACHE_DTYPE = "float16"
Progress = Callable[[float], None]


class BoundaryCacheError(RuntimeError):
    """The boundary activations cannot be used (e.g. they overflow float16)."""


@dataclasses.dataclass
class StageData:
    """What one stage fits: `model` on `train` (and `val`), each `(inputs, labels)`.

    `cache` records where the inputs came from (for metrics.json), None when they are images.
    `train_mirrored` holds the inputs of the training images' mirror images when a random flip
    is on and `train` holds cached activations (the model has no flip layer then).
    """

    model: keras.Model
    train: tuple
    val: tuple | None
    cache: dict | None = None
    train_mirrored: np.ndarray | list[np.ndarray] | None = None


def cache_identity(config: Config, classifier: Classifier, precision: str) -> dict | None:
    """Everything besides the images that determines the frozen activations; None when unknown.

    A random-init backbone (`weights = none`) is identified by the seed that drew it. The
    images themselves enter each key through `CacheStore.key`.
    """
    if classifier.weights_id is None:  # e.g. a reloaded model: nothing says which weights it holds
        return None
    backend = keras.backend.backend()
    packages = ("tlkit", "keras", environment.BACKEND_PACKAGES.get(backend, backend))
    identity = {"backbone": config.model.backbone, "weights": classifier.weights_id,
                "image_size": config.model.image_size, "precision": precision, "backend": backend,
                "versions": environment.versions(packages)}
    if classifier.weights_id == "none":
        identity["init_seed"] = config.seed
    return identity


# ---- on disk --------------------------------------------------------------------------


class CacheStore:
    """Arrays on disk, one `.npy` per key; a missing or corrupt file reads as a miss.

    Args:
        directory: cache root; default `$TLKIT_CACHE_DIR` or `~/.cache/tlkit`.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory else environment.default_cache_dir()

    @staticmethod
    def key(identity: dict | None, images: np.ndarray) -> str:
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
        digest.update(str(images.shape).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
        return digest.hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.directory / "features" / f"{key}.npy"

    def load(self, key: str, count: int) -> np.ndarray | None:
        """The array stored under `key` if it holds `count` rows, else None."""
        try:
            array = _load_aligned(self.path(key))
        except (OSError, ValueError):
            return None
        return array if len(array) == count else None

    def store(self, key: str, array: np.ndarray) -> bool:
        """Stores `array`; False when the disk refused (a read-only or full disk costs only the reuse)."""
        path = self.path(key)
        # Straight to a temp file (no in-memory copy: activations can be GBs), then rename.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._remove_abandoned_temp_files(path.parent)
            with open(temp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(temp, path)
        except OSError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        return True

    @staticmethod
    def _remove_abandoned_temp_files(directory: Path) -> None:
        """Temp files of writers that died mid-write (kill -9); a live writer's stay."""
        for temp in directory.glob(".*.tmp"):
            pid = temp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not pid_alive(int(pid)):
                temp.unlink(missing_ok=True)

    def load_arrays(self, key: str, parts: int, count: int) -> list[np.ndarray] | None:
        arrays = [self.load(f"{key}-{i}", count) for i in range(parts)]
        return None if any(array is None for array in arrays) else arrays

    def store_arrays(self, key: str, arrays: list[np.ndarray]) -> bool:
        return all(self.store(f"{key}-{i}", array) for i, array in enumerate(arrays))


def _load_aligned(path: Path) -> np.ndarray:
    """`np.load(path)` into a 64-byte-aligned array, which TensorFlow feeds from without a copy."""
    with open(path, "rb") as handle:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(handle))
        if read_header is None:
            raise ValueError(f"{path} is not an .npy file that np.save writes for a plain array")
        shape, fortran_order, dtype = read_header(handle)
        if fortran_order or dtype.hasobject:
            raise ValueError(f"{path} is not a C-ordered plain array")
        array = aligned_empty(shape, dtype)
        if handle.readinto(memoryview(array.reshape(-1).view(np.uint8))) != array.nbytes:
            raise ValueError(f"{path} is truncated")
    return array


# ---- computing activations ------------------------------------------------------------


def predict_in_chunks(model: keras.Model, images: np.ndarray, batch_size: int, outputs: list[np.ndarray],
                      on_progress: Progress | None = None, chunk: int = 4096) -> list[np.ndarray]:
    """Fills the preallocated `outputs` with `model`'s outputs on `images`, a chunk at a time.

    Chunks bound the float32 temporaries (outputs may be float16); `on_progress` hears the
    fraction done every `PredictProgress.INTERVAL` seconds or so (batch by batch), so a long
    extraction or evaluation never goes quiet.
    """
    multiple = batch_multiple()  # data parallel: each batch splits evenly across the devices
    batch_size = round_up(batch_size, multiple)
    pad_to = evaluation_multiple(len(images), batch_size)
    chunk = max(batch_size, chunk - chunk % batch_size)  # whole batches: only the last chunk ends in a partial one
    for start in range(0, len(images), chunk):
        callbacks = [PredictProgress(on_progress, start, len(images), batch_size)] if on_progress else []
        part = images[start:start + chunk]
        if process_share()[1] > 1:
            values = predict_across_hosts(model, _padded(part, multiple), batch_size)
        else:
            batches = ArrayBatches(part, batch_size=batch_size, multiple_of=pad_to)
            values = model.predict(keras_input(batches), verbose=0, callbacks=callbacks)
        values = values if isinstance(values, (list, tuple)) else [values]
        count = min(chunk, len(images) - start)
        for target, value in zip(outputs, values):
            target[start:start + count] = value[:count]
    if on_progress:
        on_progress(1.0)
    return outputs


def _padded(array: np.ndarray, multiple: int) -> np.ndarray:
    """`array` with copies of its last row appended up to a multiple of `multiple` rows."""
    padding = -len(array) % multiple
    return np.concatenate([array, np.repeat(array[-1:], padding, axis=0)]) if padding else array


class PredictProgress(keras.callbacks.Callback):
    """Reports the fraction of `total` images predicted, from within `model.predict`, at most every
    `INTERVAL` seconds.

    Args:
        on_progress: called with the fraction done (0..1).
        offset: images done before this `predict` call.
        total: images of the whole job.
        batch_size: the `predict` batch size.
    """

    INTERVAL = 2.0

    def __init__(self, on_progress: Progress, offset: int, total: int, batch_size: int):
        super().__init__()
        self.report, self.offset, self.total, self.batch_size = on_progress, offset, total, batch_size
        self._last = time.perf_counter()

    def on_predict_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self._last >= self.INTERVAL:
            self._last = now
            self.report(min(self.offset + (batch + 1) * self.batch_size, self.total) / self.total)


def mirror(images: np.ndarray) -> np.ndarray:
    """The mirror images of a batch of (N, H, W[, C]) images (a view)."""
    return images[:, :, ::-1]


def all_finite(array: np.ndarray, chunk_bytes: int = 1 << 22) -> bool:
    """`np.isfinite(array).all()` without a mask over the whole array (GBs for a full run's cache)."""
    rows = max(1, chunk_bytes // max(1, array[:1].nbytes))
    return all(np.isfinite(array[start:start + rows]).all() for start in range(0, len(array), rows))


class BoundaryActivations:
    """The frozen prefix's output for each image set of a run, computed (or read from disk) once.

    Args:
        split: the classifier's `BoundarySplit`.
        batch_size: batch size for computing activations.
        store: keeps activations on disk; None keeps them in memory only.
        identity: `cache_identity` of the run (None: not identifiable, not stored).
    """

    def __init__(self, split: BoundarySplit, batch_size: int, store: CacheStore | None = None,
                 identity: dict | None = None):
        self.split = split
        self.batch_size = batch_size
        self.store = store if identity is not None else None
        self.identity = {**(identity or {}), "boundary": split.first_unfrozen}
        self.records: dict[str, dict] = {}
        self._arrays: dict[str, list[np.ndarray]] = {}

    def estimate_bytes(self, num_images: int) -> int:
        per_image = sum(int(np.prod(shape)) for shape in self.split.boundary_shapes)
        return per_image * np.dtype(CACHE_DTYPE).itemsize * num_images

    def get(self, name: str, images: np.ndarray, on_progress: Progress | None = None) -> list[np.ndarray]:
        """Boundary activations of image set `name` (e.g. "train"), computed on first use."""
        if name in self._arrays:
            return self._arrays[name]
        start = time.perf_counter()
        key = CacheStore.key(self.identity, images)
        parts = len(self.split.boundary_shapes)
        arrays = self.store.load_arrays(key, parts, len(images)) if self.store else None
        record = {"key": key, "hit": arrays is not None}
        if arrays is None:
            arrays = self._compute(images, on_progress)
            record["stored"] = self.store.store_arrays(key, arrays) if self.store else False
        record["seconds"] = round(time.perf_counter() - start, 3)
        self._arrays[name], self.records[name] = arrays, record
        return arrays

    def features(self, name: str, images: np.ndarray, on_progress: Progress | None = None) -> np.ndarray:
        """Pooled backbone features of `images` via their boundary activations (backbone frozen)."""
        arrays = self.get(name, images, on_progress)
        # Batch by batch: Keras would cast all of the float16 activations to float32 at once.
        multiple = batch_multiple()
        batch_size = round_up(self.batch_size, multiple)
        if process_share()[1] > 1:
            padded = [_padded(array, multiple) for array in arrays]
            (features,) = predict_across_hosts(self.split.features_model, padded, batch_size)
        else:
            pad_to = evaluation_multiple(len(images), batch_size)
            batches = ArrayBatches(arrays, batch_size=batch_size, multiple_of=pad_to)
            features = self.split.features_model.predict(keras_input(batches), verbose=0)
        aligned = aligned_empty((len(images), *features.shape[1:]), "float32")  # fed in place under TensorFlow
        aligned[...] = features[:len(images)]
        return aligned

    def _compute(self, images: np.ndarray, on_progress: Progress | None) -> list[np.ndarray]:
        outputs = [aligned_empty((len(images), *shape), CACHE_DTYPE) for shape in self.split.boundary_shapes]
        predict_in_chunks(self.split.frozen_model, images, self.batch_size, outputs, on_progress)
        if not all(all_finite(array) for array in outputs):
            raise BoundaryCacheError("boundary activations overflow float16; use --no-boundary-cache")
        return outputs


# ---- one run's plan ---------------------------------------------------------------------


# Images per batch when computing cached activations. Per image (ResNet50, 72 px, 2 cores, one
# process alternating the sizes), 128 ran as fast as 64 and faster than 256 on tensorflow (110 vs
# 99 img/s) and jax (103 vs 97), and torch nearly as fast (78 vs 81); a training step ran 108-112,
# 98 and 68 img/s. Smaller batches also halve the activations' peak memory against 256.
EXTRACTION_BATCH = 128


class RunCaches:
    """Decides, per stage of one run, whether it trains on images or on cached activations.

    Args:
        config: the run's config.
        classifier: the run's classifier (built, or reloaded on resume).
        splits: the run's data.
        precision: the resolved dtype policy (part of the cache key).
        skip_stages: stages already finished (resume): nothing is planned for them.
    """

    def __init__(self, config: Config, classifier: Classifier, splits: Splits, precision: str,
                 skip_stages: tuple[str, ...] = ()):
        self.config = config
        self.classifier = classifier
        self.splits = splits
        self.batch_size = max(config.batch_size, EXTRACTION_BATCH)
        self.identity = cache_identity(config, classifier, precision)
        # Features of the frozen backbone are reusable when nothing random but a flip sits in front of it.
        usable = config.feature_cache and not config.augment.beyond_flip and self.identity is not None
        self.store = CacheStore(config.cache_dir or None) if usable else None
        self.records: dict[str, dict | None] = {}
        self.boundary, self.boundary_plan = self._plan_boundary(skip_stages)

    def stage_data(self, stage: str, trainable_layers: list[str],
                   activity: Callable[[str], Progress | None] = lambda label: None) -> StageData:
        """What `stage` fits on; `activity(label)` gives a progress callback for computing a cache."""
        splits = self.splits
        train = (splits.train.images, splits.train.labels)
        val = (splits.val.images, splits.val.labels) if len(splits.val) else None
        mirrored = None
        if stage == "head" and self.store is not None:
            record = {}
            features = self._features("train", train[0], activity("features (train)"), record)
            if self.config.augment.flip:
                mirrored = self._features("train_mirrored", mirror(train[0]),
                                          activity("features (mirrored train)"), record)
            train = (features, train[1])
            if val is not None:
                val = (self._features("val", val[0], activity("features (val)"), record), val[1])
            return self._record(stage, StageData(self.classifier.head_model(), train, val, record, mirrored))
        if stage == "finetune" and self.boundary is not None and trainable_layers:
            start = time.perf_counter()
            activations = self.boundary.get("train", train[0], activity("boundary cache (train)"))
            if self.config.augment.flip:
                mirrored = self.boundary.get("train_mirrored", mirror(train[0]),
                                             activity("boundary cache (mirrored train)"))
            train = (activations, train[1])
            if val is not None:
                val = (self.boundary.get("val", val[0], activity("boundary cache (val)")), val[1])
            record = {"seconds": round(time.perf_counter() - start, 3), **self.boundary.records}
            return self._record(stage, StageData(self.boundary.split.train_model, train, val, record, mirrored))
        return self._record(stage, StageData(self.classifier.model, train, val, None))

    def predict_from_features(self, images: np.ndarray, batch_size: int,
                              on_progress: Progress | None = None) -> np.ndarray | None:
        """Probabilities from cached features, valid while only the head has trained; None without a store."""
        if self.store is None:
            return None
        record = self.records.setdefault("test", {})
        features = self._features("test", images, on_progress, record, key_name=f"test{len(record)}")
        head = self.classifier.head_model()
        (probabilities,) = predict_in_chunks(head, features, batch_size,
                                             [np.empty((len(features), int(head.output.shape[-1])), np.float32)])
        return probabilities.astype(np.float64)

    def metrics(self, stages_run: list[str]) -> dict:
        """The `feature_cache` and `boundary_cache` entries of metrics.json."""
        feature_cache = {"used": self.store is not None and "head" in stages_run}
        if "head" in stages_run:
            feature_cache["head"] = self.records.get("head")
        if self.records.get("test"):
            feature_cache["test"] = self.records["test"]["test0"]
        if "finetune" not in stages_run:
            return {"feature_cache": feature_cache, "boundary_cache": {"used": False}}
        finetune = self.records.get("finetune")
        used = self.boundary_plan.get("used", False) and finetune is not None
        return {"feature_cache": feature_cache,
                "boundary_cache": {**self.boundary_plan, "used": used, **(finetune or {})}}

    # ---- internals ----

    def _record(self, stage: str, data: StageData) -> StageData:
        self.records[stage] = data.cache
        return data

    @functools.cached_property
    def _extractor(self) -> keras.Model:
        # One model for every image set: each new one traces (tensorflow) or compiles (jax) again.
        return self.classifier.feature_model()

    def _features(self, name: str, images: np.ndarray, progress: Progress | None, record: dict,
                  key_name: str | None = None) -> np.ndarray:
        """Pooled features of one image set: from disk, else derived from the boundary activations
        (train/val, when the run has them: one prefix pass for both stages), else the full graph."""
        via_boundary = self.boundary is not None and name in ("train", "train_mirrored", "val")
        identity = self.identity
        if via_boundary:  # float16 storage of the activations makes these features differ slightly
            identity = {**identity, "via_boundary": self.boundary.split.first_unfrozen}
        start = time.perf_counter()
        key = CacheStore.key(identity, images)
        features = self.store.load(key, len(images))
        entry = {"key": key, "hit": features is not None}
        if features is None:
            if via_boundary:
                features = self.boundary.features(name, images, progress)
            else:
                extractor = self._extractor
                (features,) = predict_in_chunks(
                    extractor, images, self.batch_size,
                    [aligned_empty((len(images), *extractor.output.shape[1:]), "float32")], progress)
            entry["stored"] = self.store.store(key, features)
        entry["seconds"] = round(time.perf_counter() - start, 3)
        if via_boundary:
            entry["via_boundary"] = self.boundary.split.first_unfrozen
        record[key_name or name] = entry
        return features

    def _plan_boundary(self, skip_stages: tuple[str, ...]) -> tuple[BoundaryActivations | None, dict]:
        """The run's boundary activations when the finetune stage can use them (no augmentation, a
        trainable suffix, within the memory budget); else None and a record saying why."""
        config = self.config
        if not config.boundary_cache:
            return None, {"used": False, "reason": "off"}
        if config.augment.beyond_flip:
            return None, {"used": False, "reason": "augmentation beyond a flip is on"}
        if config.finetune.epochs == 0 or "finetune" in skip_stages:
            return None, {"used": False}
        first_unfrozen = self.classifier.first_unfrozen(config.finetune.unfreeze)
        if first_unfrozen is None:
            return None, {"used": False, "reason": "nothing is unfrozen"}
        try:
            split = self.classifier.split_at(first_unfrozen)
        except GraphSplitError as error:
            return None, {"used": False, "reason": str(error)}
        boundary = BoundaryActivations(split, self.batch_size, self.store, self.identity)
        count = len(self.splits.train) * (2 if config.augment.flip else 1) + len(self.splits.val)
        needed, budget = boundary.estimate_bytes(count), int(config.cache_memory_gb * 1e9)
        record = {"boundary": first_unfrozen, "bytes": needed, "shapes": [list(s) for s in split.boundary_shapes]}
        if needed > budget:
            reason = (f"the boundary cache needs {needed / 1e9:.3g} GB for {count} images, over the "
                      f"{budget / 1e9:.3g} GB budget; running the full graph instead (raise --cache-memory-gb, "
                      "lower --image-size or unfreeze less to use it)")
            print(f"note: {reason}", flush=True)
            return None, {**record, "used": False, "reason": reason}
        return boundary, {**record, "used": True}
