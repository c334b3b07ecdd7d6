"""Fashion-MNIST as uint8 arrays: loading, stratified splits and subsets.

Images stay `uint8` with shape `(N, 28, 28, 1)` in host memory; resizing and
normalisation happen inside the model graph (see `tlkit.model`). The test set
is only touched by the final evaluation.

Example:

```python
from tlkit.config import DataConfig
from tlkit.data import load_splits

splits = load_splits(DataConfig(data_dir="../shared/data/fashion-mnist", train_limit=2000))
splits.train.images.shape  # (1800, 28, 28, 1), dtype uint8
```
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np

from tlkit.config import DataConfig

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08


class DataError(RuntimeError):
    """The data could not be loaded; the message says what to do."""


@dataclasses.dataclass
class Split:
    """Images `(N, 28, 28, 1)` uint8, labels `(N,)` int32 and their source indices."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...] = CLASS_NAMES

    @property
    def input_shape(self) -> tuple[int, ...]:
        """`(height, width, channels)` of the images."""
        return tuple(self.train.images.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def fingerprint(self) -> str:
        """A short hash of every image and label (keys on-disk caches)."""
        digest = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            digest.update(np.ascontiguousarray(split.images).tobytes())
            digest.update(np.ascontiguousarray(split.labels).tobytes())
        return digest.hexdigest()[:16]


# ---- IDX files ------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file of unsigned bytes (`.gz` or raw) into a numpy array.

    Raises:
        DataError: if the file is missing, truncated or not an unsigned-byte IDX file.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read IDX file {str(path)!r}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise DataError(f"{str(path)!r} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{str(path)!r} is truncated or corrupt: header says shape {shape} "
            f"({expected} bytes) but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file (gzipped when `path` ends in `.gz`)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    payload = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{stem}(.gz) not found in {str(data_dir)!r}; --data-dir needs the four Fashion-MNIST "
        f"IDX files: {', '.join(IDX_FILES.values())}"
    )


def load_fashion_mnist(data_dir: str | Path | None = None):
    """Returns `((x_train, y_train), (x_test, y_test))`, images `(N, 28, 28)` uint8.

    Args:
        data_dir: a directory with the four IDX files; `None` downloads through
            `keras.datasets.fashion_mnist` (cached in `~/.keras/datasets`).
    """
    if data_dir is None:
        return _download()
    data_dir = Path(data_dir).expanduser()
    arrays = {key: read_idx(_find_idx(data_dir, stem)) for key, stem in IDX_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{part} images in {str(data_dir)!r} have shape {images.shape}, not (N, 28, 28)")
        if len(images) != len(labels):
            raise DataError(f"{part}: {len(images)} images but {len(labels)} labels in {str(data_dir)!r}")
        if labels.max(initial=0) >= len(CLASS_NAMES):
            raise DataError(f"{part} labels in {str(data_dir)!r} go beyond the 10 classes")
    return ((arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]))


def _download():
    import keras

    try:
        return keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # network errors come in many types across platforms
        raise DataError(
            f"downloading Fashion-MNIST through keras.datasets failed ({type(error).__name__}: "
            f"{error}). Download the four IDX files (train/t10k images and labels) elsewhere and "
            "pass their directory with --data-dir"
        ) from None


# ---- splits ---------------------------------------------------------------------


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (keep, held_out) with `fraction` of each class held out."""
    rng = np.random.default_rng(seed)
    keep, held_out = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(fraction * len(members)))
        held_out.append(members[:count])
        keep.append(members[count:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held_out))


def stratified_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of `limit` items (all when `limit` is None)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * limit / len(labels)
    take = np.floor(quota).astype(int)
    # Hand the leftover slots to the classes with the largest remainders.
    for position in np.argsort(-(quota - take))[: limit - take.sum()]:
        take[position] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:n] for label, n in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def load_splits(config: DataConfig, seed: int = 42) -> Splits:
    """Loads Fashion-MNIST and returns seeded, stratified train/val/test splits."""
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(config.data_dir)
    train_pool = stratified_subset(y_train, config.train_limit, seed)
    keep, held_out = stratified_split(y_train[train_pool], config.validation_split, seed + 1)
    train_idx, val_idx = train_pool[keep], train_pool[held_out]
    test_idx = stratified_subset(y_test, config.test_limit, seed + 2)

    def split(images, labels, indices):
        return Split(images[indices][..., None], labels[indices].astype("int32"), indices)

    return Splits(
        train=split(x_train, y_train, train_idx),
        val=split(x_train, y_train, val_idx),
        test=split(x_test, y_test, test_idx),
    )
