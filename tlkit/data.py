"""Image-classification data as uint8 arrays: built-in datasets, folders of images, `.npz` files.

Every source gives the same thing (`Splits`): uint8 images `(N, H, W, C)`, int32 labels and
class names for train/val/test, plus an `identity` that cache keys can include. Images stay at
their stored size in host memory; resizing to the model's input and normalisation happen inside
the model graph (see `tlkit.model`). The one exception is a folder of image files, which are
decoded once to a common square storage size (`decode_images`) and cached on disk. The test set
is only touched by the final evaluation. Formats and limits: docs/data.md.

Example:

```python
from tlkit.config import DataConfig
from tlkit.data import load_splits

splits = load_splits(DataConfig(data_dir="../shared/data/fashion-mnist", train_limit=2000))
splits.train.images.shape  # (1800, 28, 28, 1), dtype uint8

photos = load_splits(DataConfig(source="photos/"), seed=42, image_size=224)
photos.class_names         # the sorted subfolder names of photos/
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import math
import os
import pickle
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from tlkit.config import DataConfig, ModelConfig

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# CIFAR-100's fine labels in label order (the dataset's `meta` file lists them alphabetically).
CIFAR100_CLASS_NAMES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split())
BUILTIN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": CLASS_NAMES,
    "mnist": tuple(str(digit) for digit in range(10)),
    "cifar10": CIFAR10_CLASS_NAMES,
    "cifar100": CIFAR100_CLASS_NAMES,
}
assert set(BUILTIN_CLASS_NAMES) == set(DataConfig.BUILTINS) and len(CIFAR100_CLASS_NAMES) == 100
DATASET_TITLES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08

# Image files a folder source reads (compared case-insensitively); other files are ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Bump when decoding changes what it produces: old entries of the decode cache stop matching.
DECODE_FORMAT = 1
# A training set with fewer images per class than this is warned about (it still trains).
FEW_PER_CLASS = 5
# Unreadable files named in the warning before "and N more".
SKIPPED_SHOWN = 5


class DataError(RuntimeError):
    """The data could not be loaded; the message says what to do."""


@dataclasses.dataclass
class Split:
    """Images `(N, H, W, C)` uint8, labels `(N,)` int32 and their positions in the source.

    `indices` are positions in the source's train or test pool: rows of the arrays for
    built-in and `.npz` sources, positions in `Splits.files` (the sorted file list) for folders.
    """

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Splits:
    """The three splits of one dataset and what identifies it.

    Attributes:
        class_names: one name per label, label order.
        identity: JSON-able description of the source for cache keys: `kind` (builtin, folder,
            npz), `source` (name or resolved path), `shape` (stored H, W, C), `channels`, and
            for folders `files` (hash of the file list with sizes and mtimes) and `layout`.
        skipped: `(relative path, reason)` of each unreadable file a folder source skipped.
        files: folder sources: the sorted relative paths that `Split.indices` point into.
        warnings: what makes this data train poorly (classes without training images, a tiny
            training set); printed on stderr when loaded and recorded in the run's data.json.
    """

    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...] = CLASS_NAMES
    identity: dict = dataclasses.field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

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
    expected = header_size + math.prod(shape)  # Python ints: a forged header cannot overflow
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


def _find_idx(data_dir: Path, stem: str, title: str = "Fashion-MNIST") -> Path:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{stem}(.gz) not found in {str(data_dir)!r}; --data-dir needs the four {title} "
        f"IDX files: {', '.join(IDX_FILES.values())}"
    )


def _read_idx_dataset(name: str, data_dir: str | Path):
    data_dir = Path(data_dir).expanduser()
    arrays = {key: read_idx(_find_idx(data_dir, stem, DATASET_TITLES[name])) for key, stem in IDX_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{part} images in {str(data_dir)!r} have shape {images.shape}, not (N, 28, 28)")
        if len(images) != len(labels):
            raise DataError(f"{part}: {len(images)} images but {len(labels)} labels in {str(data_dir)!r}")
        if labels.max(initial=0) >= len(BUILTIN_CLASS_NAMES[name]):
            raise DataError(f"{part} labels in {str(data_dir)!r} go beyond the 10 classes")
    return ((arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]))


def load_fashion_mnist(data_dir: str | Path | None = None):
    """Returns `((x_train, y_train), (x_test, y_test))`, images `(N, 28, 28)` uint8.

    Args:
        data_dir: a directory with the four IDX files; `None` downloads through
            `keras.datasets.fashion_mnist` (cached in `~/.keras/datasets`).
    """
    if data_dir is None:
        return _download("fashion_mnist")
    return _read_idx_dataset("fashion_mnist", data_dir)


# ---- CIFAR's python batches -------------------------------------------------------

# name: (Keras' cache folder, training batches, test batches, label key, archive name)
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "labels", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels", "cifar-100-python.tar.gz"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: dicts of lists and numpy arrays, nothing that can run code."""

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    })

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_batch(raw: bytes, label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    import io

    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        batch = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
        data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key]).reshape(-1)
    except Exception as error:  # a wrong file fails in many ways inside pickle
        raise DataError(f"{where} is not a CIFAR python batch ({type(error).__name__}: {error})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{where}: expected uint8 data (N, 3072) and N labels, got {data.dtype} {data.shape} "
                        f"and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_cifar(name: str, data_dir: str | Path):
    folder, train_files, test_files, label_key, archive_name = _CIFAR[name]
    path = Path(data_dir).expanduser()
    wanted = train_files + test_files
    readers: dict[str, Callable[[], bytes]] | None = None
    archive = path if path.is_file() else path / archive_name
    for candidate in (path, path / folder, path / f"{folder}-target" / folder):
        if candidate.is_dir() and all((candidate / file).is_file() for file in wanted):
            readers = {file: (candidate / file).read_bytes for file in wanted}
            where = str(candidate)
            break
    else:
        if not archive.is_file():
            raise DataError(
                f"no {name} batches ({', '.join(wanted)}) in {str(path)!r}, nor {archive_name}; --data-dir takes "
                f"Keras' cached {folder} folder (~/.keras/datasets/{folder}-target/{folder}) or {archive_name}"
            )
    if readers is None:
        where = str(archive)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                contents = {file: tar.extractfile(f"{folder}/{file}").read() for file in wanted}
        except (OSError, tarfile.TarError, KeyError, EOFError) as error:
            raise DataError(f"cannot read {name} from {where!r} ({type(error).__name__}: {error}); expected "
                            f"{archive_name} holding {folder}/{{{','.join(wanted)}}}") from None
        readers = {file: (lambda raw=contents[file]: raw) for file in wanted}

    def read(files):
        parts = [_read_cifar_batch(readers[file](), label_key, f"{where}/{file}") for file in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return read(train_files), read(test_files)


def _download(name: str):
    import keras

    loaders = {
        "fashion_mnist": keras.datasets.fashion_mnist.load_data,
        "mnist": keras.datasets.mnist.load_data,
        "cifar10": keras.datasets.cifar10.load_data,
        "cifar100": lambda: keras.datasets.cifar100.load_data(label_mode="fine"),
    }
    local = {
        "fashion_mnist": "Download the four IDX files (train/t10k images and labels) elsewhere and pass their "
                         "directory",
        "mnist": "Download the four MNIST IDX files (train/t10k images and labels) elsewhere and pass their directory",
        "cifar10": "Download cifar-10-python.tar.gz elsewhere and pass it (or its extracted cifar-10-batches-py "
                   "folder)",
        "cifar100": "Download cifar-100-python.tar.gz elsewhere and pass it (or its extracted cifar-100-python "
                    "folder)",
    }
    try:
        return loaders[name]()
    except Exception as error:  # network errors come in many types across platforms
        raise DataError(
            f"downloading {DATASET_TITLES[name]} through keras.datasets failed ({type(error).__name__}: "
            f"{error}). {local[name]} with --data-dir"
        ) from None


# A local copy of a built-in dataset: `$TLKIT_DATA_DIR` itself, or one of these folders in it.
DATA_DIR_ENV = "TLKIT_DATA_DIR"
LOCAL_FOLDERS = {
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "mnist": ("mnist",),
    "cifar10": ("cifar10", "cifar-10-batches-py"),
    "cifar100": ("cifar100", "cifar-100-python"),
}
_LOCAL_MARKERS = {  # one file that shows a folder holds the dataset in a form `load_builtin` reads
    "fashion_mnist": ("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"),
    "mnist": ("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"),
    "cifar10": ("test_batch", "cifar-10-python.tar.gz"),
    "cifar100": ("test", "cifar-100-python.tar.gz"),
}


def find_local_copy(name: str, roots: list[str | Path] | None = None) -> Path | None:
    """A local copy of built-in dataset `name`: a folder of `roots` (default `$TLKIT_DATA_DIR`) that
    holds it, or its `fashion-mnist`-style subfolder; None when there is none.

    `load_builtin` (and so `--data NAME` without `--data-dir`) uses it before downloading.

    Example:

    ```python
    find_local_copy("fashion_mnist", ["../shared/data"])   # Path('../shared/data/fashion-mnist')
    ```
    """
    if roots is None:
        roots = [os.environ[DATA_DIR_ENV]] if os.environ.get(DATA_DIR_ENV) else []
    for root in map(lambda r: Path(r).expanduser(), roots):
        for folder in (root, *(root / sub for sub in LOCAL_FOLDERS.get(name, ()))):
            if any((folder / marker).is_file() for marker in _LOCAL_MARKERS.get(name, ())):
                return folder
    return None


def load_builtin(name: str, data_dir: str | Path | None = None):
    """One of the built-in datasets as `((x_train, y_train), (x_test, y_test))`.

    Images are uint8 `(N, H, W, C)`: `(N, 28, 28, 1)` for the MNISTs, `(N, 32, 32, 3)` for
    CIFAR; labels are 1-D (CIFAR-100: the 100 fine labels).

    Args:
        name: `fashion_mnist`, `mnist`, `cifar10` or `cifar100`.
        data_dir: a local copy (the four IDX files; Keras' CIFAR cache folder or `.tar.gz`);
            `None` takes the copy `find_local_copy` finds under `$TLKIT_DATA_DIR`, else downloads
            through `keras.datasets`.
    """
    if name not in BUILTIN_CLASS_NAMES:
        raise DataError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN_CLASS_NAMES)}")
    data_dir = data_dir if data_dir is not None else find_local_copy(name)
    if data_dir is None:
        pools = _download(name)
    elif name in _CIFAR:
        pools = _read_cifar(name, data_dir)
    else:
        pools = _read_idx_dataset(name, data_dir)
    result = []
    for images, labels in pools:
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim == 3:
            images = images[..., None]
        elif images.shape[1] == 3 and images.shape[-1] != 3:  # keras under channels_first
            images = images.transpose(0, 2, 3, 1)
        labels = np.asarray(labels).reshape(-1)
        if labels.max(initial=0) >= len(BUILTIN_CLASS_NAMES[name]):
            raise DataError(f"{name}: labels go beyond its {len(BUILTIN_CLASS_NAMES[name])} classes")
        result.append((images, labels))
    return tuple(result)


# ---- image files -----------------------------------------------------------------

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def default_workers() -> int:
    """Threads for decoding: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _attempt(function: Callable, items: Sequence, workers: int | None) -> list[tuple[object, str | None]]:
    """`function` over `items` on a thread pool; per item `(result, None)` or `(None, reason)`."""

    def one(item):
        try:
            return function(item), None
        except Exception as error:  # Pillow raises many types for bad files
            return None, f"{type(error).__name__}: {error}"

    workers = workers or default_workers()
    if workers <= 1 or len(items) <= 1:
        return [one(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, items))


def _short_reason(reason: str, path) -> str:
    """One line, the file named by its base name (the report already says which file), at most 120 chars."""
    path = os.fspath(path)
    reason = reason.replace(path, os.path.basename(path)).replace("\n", " ")
    return reason if len(reason) <= 120 else reason[:117] + "..."


def _is_gray(image) -> bool:
    """Grayscale by mode (a palette counts when every palette entry is gray)."""
    if image.mode in ("P", "PA"):
        palette = image.getpalette() or []
        return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
    return image.mode in _GRAY_MODES


def _probe_gray(path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        return _is_gray(image)


def _to_mode(image, mode: str):
    """`image` as 8-bit `mode` ('L' or 'RGB'): 16-bit scaled, alpha composited on white, palettes expanded."""
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float32)
        if image.mode != "F":  # 16-bit (PNG) values: 0..65535 → 0..255
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == mode else image.convert(mode)


def _decode_file(path, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, ImageOps

    height, width, channels = shape
    with Image.open(path) as image:
        if image.format == "JPEG":  # let libjpeg shrink big photos while decoding (to >= the target)
            image.draft(image.mode, (width, height))
        image.load()
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except Exception:  # a broken EXIF block: keep the pixels as stored
            pass
        image = _to_mode(image, "L" if channels == 1 else "RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def _decode(paths: Sequence, shape: tuple[int, int, int], workers: int | None):
    """Decodes into one array; returns (images of the readable ones, readable mask, reasons by position)."""
    images = np.empty((len(paths), *shape), dtype=np.uint8)

    def into(position):
        images[position] = _decode_file(paths[position], shape)

    outcomes = _attempt(into, range(len(paths)), workers)
    readable = np.array([reason is None for _, reason in outcomes], dtype=bool)
    if not readable.all():  # compact in place: no second full-size array
        for row, position in enumerate(np.flatnonzero(readable)):
            if row != position:
                images[row] = images[position]
        images = images[: readable.sum()]
    reasons = {position: _short_reason(reason, paths[position])
               for position, (_, reason) in enumerate(outcomes) if reason is not None}
    return images, readable, reasons


def decode_images(paths: Iterable[str | os.PathLike], shape: tuple[int, int, int],
                  workers: int | None = None) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decodes image files into uint8 `(N, H, W, C)` arrays, the way folder sources store them.

    Each file is read with Pillow (PNG, JPEG, BMP, GIF's first frame, WebP, ...), turned upright
    by its EXIF orientation, converted to 8 bits (16-bit images scaled, palettes expanded,
    transparency composited on white) and to grayscale (`C = 1`, ITU-R 601 luma) or RGB
    (`C = 3`), then resized with Pillow's bilinear filter to exactly `H × W`. Like the default
    of `keras.utils.image_dataset_from_directory`, the image is stretched (the aspect ratio is
    not kept, nothing is cropped). Big JPEGs are shrunk by the JPEG decoder first (to at least
    `H × W`), which is faster and anti-aliases.

    Args:
        paths: image files.
        shape: `(height, width, channels)` with channels 1 or 3.
        workers: decoding threads; default: the usable CPUs, at most 8.

    Returns:
        `(images, failures)`: the readable files' images in input order, and
        `(path, reason)` for each file that could not be decoded (missing, truncated, not an image).
    """
    paths = [os.fspath(path) for path in paths]
    height, width, channels = (int(size) for size in shape)
    if channels not in (1, 3) or height < 1 or width < 1:
        raise ValueError(f"shape must be (height, width, 1 or 3), got {tuple(shape)}")
    images, readable, reasons = _decode(paths, (height, width, channels), workers)
    return images, [(paths[position], reasons[position]) for position in sorted(reasons)]


# ---- folders of images -------------------------------------------------------------


@dataclasses.dataclass
class _Folder:
    """A folder source's files: sorted relative paths, their part (train/test/val/all) and label."""

    root: Path
    layout: str  # "classes" (DIR/<class>/*) or "split" (DIR/train|test[|val]/<class>/*)
    files: tuple[str, ...]
    parts: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def stats(self) -> list[list]:
        """`[path, size, mtime_ns]` per file: what the decode cache and the identity key on."""
        stats = []
        for file in self.files:
            stat = (self.root / file).stat()
            stats.append([file, stat.st_size, stat.st_mtime_ns])
        return stats


def _visible_dirs(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _image_files(directory: Path) -> list[str]:
    """Image files under `directory` (recursive, hidden names skipped), relative, sorted."""
    found = []
    for current, dirs, names in os.walk(directory):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in names:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(current, name).relative_to(directory).as_posix())
    return sorted(found)


def _class_files(part_dir: Path, where: str) -> dict[str, list[str]]:
    """`{class: [relative files]}` of one folder holding a subfolder per class."""
    classes = _visible_dirs(part_dir)
    files = {name: _image_files(part_dir / name) for name in classes}
    extensions = ", ".join(ext[1:] for ext in IMAGE_EXTENSIONS)
    if not any(files.values()):
        loose = len(_image_files(part_dir)) if part_dir.is_dir() else 0
        hint = f" ({loose} image files lie directly in it: move each class's images into a subfolder)" if loose else ""
        raise DataError(
            f"{where}: no images found{hint}; expected one subfolder per class with {extensions} files "
            "(DIR/<class>/*), or DIR/train/<class>/* + DIR/test/<class>/* (+ optional DIR/val/<class>/*)"
        )
    if len(classes) < 2:
        raise DataError(f"{where}: only one class folder ({classes[0]!r}); a classifier needs at least 2 classes")
    empty = [name for name in classes if not files[name]]
    if empty:
        raise DataError(f"{where}: class folder(s) {', '.join(map(repr, empty))} hold no image files ({extensions})")
    return files


def _list_folder(root: Path) -> _Folder:
    subdirs = set(_visible_dirs(root))
    if {"train", "test"} <= subdirs:
        extra = subdirs - {"train", "test", "val"}
        if extra:
            raise DataError(
                f"{root}: has train/ and test/ (the split layout) but also {', '.join(sorted(extra))}/; that layout "
                "holds only train/, test/ and optionally val/, each with one subfolder per class"
            )
        parts = ["train", "test"] + (["val"] if "val" in subdirs else [])
        class_names = tuple(_visible_dirs(root / "train"))
        for part in parts[1:]:
            names = _visible_dirs(root / part)
            if class_names and tuple(names) != class_names:
                missing = sorted(set(class_names) - set(names))
                extra = sorted(set(names) - set(class_names))
                detail = "; ".join(text for text in (
                    f"missing {', '.join(missing)}" if missing else "", f"extra {', '.join(extra)}" if extra else "",
                ) if text)
                raise DataError(f"{root / part}: its class folders differ from train/'s ({detail})")
        per_part = {part: _class_files(root / part, f"{root / part}") for part in parts}
        class_names = tuple(per_part["train"])
        layout = "split"
    else:
        per_part = {"all": _class_files(root, str(root))}
        class_names = tuple(per_part["all"])
        layout = "classes"
    entries = []
    for part, classes in per_part.items():
        prefix = "" if part == "all" else f"{part}/"
        for label, name in enumerate(class_names):
            entries += [(f"{prefix}{name}/{file}", part, label) for file in classes[name]]
    entries.sort()
    files, parts, labels = zip(*entries)
    return _Folder(root, layout, tuple(files), np.array(parts), np.array(labels, dtype=np.int32), class_names)


def _split_counts(count: int, test_split: float | None, validation_split: float) -> tuple[int, int, int]:
    """(train, val, test) images of one class of `count` (mirrors `stratified_split`'s rounding)."""
    test = int(round(test_split * count)) if test_split is not None else 0
    val = int(round(validation_split * (count - test)))
    return count - test - val, val, test


def _enough(count: int, test_split: float | None, validation_split: float) -> bool:
    train, val, test = _split_counts(count, test_split, validation_split)
    return train >= 1 and (val >= 1 or not validation_split) and (test >= 1 or test_split is None)


def _check_class_sizes(folder: _Folder, config: DataConfig, readable: np.ndarray | None = None) -> None:
    """Every class gets at least one image in each split that tlkit makes from its folder."""
    what = "images" if readable is None else "readable images"
    mask = np.ones(len(folder.files), dtype=bool) if readable is None else readable
    has_val = "val" in folder.parts
    if folder.layout == "classes":
        pools = [("all", folder.root, config.test_split, config.validation_split)]
    else:
        pools = [("train", folder.root / "train", None, 0.0 if has_val else config.validation_split),
                 ("test", folder.root / "test", None, 0.0)] + ([("val", folder.root / "val", None, 0.0)] * has_val)
    for part, where, test_split, validation_split in pools:
        counts = np.bincount(folder.labels[mask & (folder.parts == part)], minlength=len(folder.class_names))
        for label, count in enumerate(counts):
            if _enough(int(count), test_split, validation_split):
                continue
            where_class = where / folder.class_names[label]
            splits = " and ".join(text for text in (
                f"test_split {test_split:g}" if test_split is not None else "",
                f"validation_split {validation_split:g}" if validation_split else "") if text)
            if not splits:
                raise DataError(f"{where_class}: no {what}")
            needed = next(n for n in range(1, 10_000) if _enough(n, test_split, validation_split))
            raise DataError(f"{where_class}: {count} {what} are too few to split with {splits}; each class needs "
                            f"at least {needed} (lower the splits or add images)")


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir else Path(
        os.environ.get("TLKIT_CACHE_DIR") or Path.home() / ".cache" / "tlkit")
    return base / "decoded"


def _read_decoded(paths: tuple[Path, Path], count: int, side: int):
    """`(images, skipped)` from the decode cache (images memory-mapped), or None on any mismatch."""
    images_path, meta_path = paths
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    skipped = {int(position): reason for position, reason in meta.get("skipped", {}).items()}
    if (meta.get("format") != DECODE_FORMAT or meta.get("files") != count or images.ndim != 4
            or images.shape[:3] != (count - len(skipped), side, side) or images.shape[3] not in (1, 3)):
        return None
    return images, skipped


def _write_decoded(paths: tuple[Path, Path], images: np.ndarray, skipped: dict[int, str], count: int) -> None:
    """Images first, then the metadata that marks the entry complete; each written to a temp file and renamed."""
    images_path, meta_path = paths
    meta = {"format": DECODE_FORMAT, "files": count, "shape": list(images.shape),
            "skipped": {str(position): reason for position, reason in skipped.items()}}
    try:
        images_path.parent.mkdir(parents=True, exist_ok=True)
        for path, write in ((images_path, lambda f: np.save(f, images, allow_pickle=False)),
                            (meta_path, lambda f: f.write(json.dumps(meta).encode()))):
            temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with open(temp, "wb") as handle:
                    write(handle)
                os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
    except OSError as error:  # a read-only or full disk only costs decoding again next time
        print(f"tlkit: could not cache the decoded images in {images_path.parent} ({error})", file=sys.stderr)


def _decode_folder(folder: _Folder, side: int, cache_dir, workers: int | None = None):
    """`(images, readable, skipped, files_hash)`: the readable files' images (decoded once, then cached)."""
    from PIL import __version__ as pillow_version

    stats = folder.stats()
    files_hash = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:24]
    key = hashlib.sha256(json.dumps(
        {"format": DECODE_FORMAT, "pillow": pillow_version, "side": side, "files": files_hash}).encode()
    ).hexdigest()[:24]
    root = _cache_root(cache_dir)
    paths = (root / f"{key}.npy", root / f"{key}.json")
    count = len(folder.files)
    cached = _read_decoded(paths, count, side)
    if cached is not None:
        images, skipped = cached
    else:
        files = [folder.root / file for file in folder.files]
        print(f"tlkit: decoding {count} images from {folder.root} to {side}x{side} px once "
              f"(cached in {root})", file=sys.stderr)
        probes = _attempt(_probe_gray, files, workers)
        skipped = {position: _short_reason(reason, files[position])
                   for position, (_, reason) in enumerate(probes) if reason is not None}
        openable = [position for position in range(count) if position not in skipped]
        gray = np.array([probes[position][0] for position in openable], dtype=bool)
        channels = 1 if gray.all() else 3
        images, decoded, reasons = _decode([files[position] for position in openable], (side, side, channels),
                                           workers)
        skipped.update({openable[position]: reason for position, reason in reasons.items()})
        skipped = dict(sorted(skipped.items()))
        if channels == 3 and len(images) and gray[decoded].all():  # only the colour images were broken
            images = np.ascontiguousarray(images[..., :1])
        _write_decoded(paths, images, skipped, count)
        stored = _read_decoded(paths, count, side)  # memory-mapped: the splits below copy from the file
        images = images if stored is None else stored[0]
    readable = np.ones(count, dtype=bool)
    readable[list(skipped)] = False
    return images, readable, skipped, files_hash


def _report_skipped(root: Path, skipped: list[tuple[str, str]], strict: bool) -> None:
    if not skipped:
        return
    shown = ", ".join(f"{path} ({reason})" for path, reason in skipped[:SKIPPED_SHOWN])
    more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    if strict:
        raise DataError(f"{root}: {len(skipped)} unreadable image file(s): {shown}{more}; fix or remove them, "
                        "or drop --strict-data (data.strict) to skip them")
    print(f"tlkit: skipping {len(skipped)} unreadable image file(s) in {root}: {shown}{more} "
          "(--strict-data makes this an error)", file=sys.stderr)


# ---- .npz files --------------------------------------------------------------------

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_images(images: np.ndarray, key: str, where: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape:
        raise DataError(f"{where}: {key} has shape {images.shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3, "
                        "N, H, W > 0")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu" and images.min() >= 0 and images.max() <= 255:
        return images.astype(np.uint8)  # integer pixels 0..255: exact
    raise DataError(
        f"{where}: {key} is {images.dtype}" + (f" with values {images.min()}..{images.max()}" if images.size else "")
        + "; store uint8 pixels 0..255 (floats in 0..1: x = np.rint(x * 255).astype('uint8'))"
    )


def _npz_labels(labels: np.ndarray, key: str, count: int, where: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{where}: {key} must be integer class labels 0..K-1 of shape (N,), got {labels.dtype} "
                        f"{labels.shape}")
    if len(labels) != count:
        raise DataError(f"{where}: {count} images but {len(labels)} labels in {key}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{where}: {key} holds negative label {labels.min()}; labels must be 0..K-1")
    return labels.astype(np.int64)


def load_npz(path: str | Path):
    """An `.npz` source as `((x_train, y_train), (x_test, y_test)), class_names` (checked; see docs/data.md)."""
    path = Path(path).expanduser()
    where = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{where}: cannot read it as an .npz file ({type(error).__name__}: {error})") from None
    with archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}; an .npz source holds x_train, y_train, x_test, "
                            f"y_test (Keras naming) and optionally class_names (it has: {', '.join(archive.files)})")
        arrays = {}
        for key in (*_NPZ_KEYS, "class_names"):
            if key not in archive.files:
                continue
            try:
                arrays[key] = archive[key]
            except ValueError as error:  # object arrays need pickle, which is off
                raise DataError(f"{where}: cannot read {key} without pickle ({error}); save plain arrays "
                                "(class_names as strings: np.array(['cat', 'dog']))") from None
    x_train = _npz_images(arrays["x_train"], "x_train", where)
    x_test = _npz_images(arrays["x_test"], "x_test", where)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{where}: x_train images are {x_train.shape[1:]} but x_test images {x_test.shape[1:]}")
    y_train = _npz_labels(arrays["y_train"], "y_train", len(x_train), where)
    y_test = _npz_labels(arrays["y_test"], "y_test", len(x_test), where)
    top = int(max(y_train.max(), y_test.max(initial=0)))
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{where}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}")
        class_names = tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names.tolist())
        if len(set(class_names)) != len(class_names):
            raise DataError(f"{where}: class_names has duplicates: {', '.join(class_names)}")
        if top >= len(class_names):
            raise DataError(f"{where}: class_names has {len(class_names)} names but the labels go up to {top}; "
                            "give one name per class 0..K-1")
    else:
        class_names = tuple(str(label) for label in range(top + 1))
    if len(class_names) < 2:
        raise DataError(f"{where}: labels hold only one class ({class_names[0]!r}); a classifier needs at least 2")
    absent = sorted(set(range(len(class_names))) - set(np.unique(y_train).tolist()))
    if absent:
        raise DataError(f"{where}: class(es) {', '.join(map(str, absent))} have no images in y_train; labels must "
                        f"use every class 0..{len(class_names) - 1}")
    return ((x_train, y_train), (x_test, y_test)), class_names


# ---- splits ---------------------------------------------------------------------


def describe_source(config: DataConfig) -> dict:
    """What a source holds, without decoding images or downloading anything (for previews).

    Returns:
        `{"kind", "class_names", "counts"}`: counts are images per class (train + val + test),
        None where only loading tells (built-ins are known by name); `{"error": message}` when
        the source cannot be used.
    """
    kind = config.source_kind()
    try:
        if kind == "builtin":
            return {"kind": kind, "class_names": list(BUILTIN_CLASS_NAMES[config.source]), "counts": None}
        if kind == "folder":
            folder = _list_folder(Path(config.source).expanduser())
            counts = np.bincount(folder.labels, minlength=len(folder.class_names))
            return {"kind": kind, "layout": folder.layout, "class_names": list(folder.class_names),
                    "counts": [int(count) for count in counts]}
        if kind == "npz":
            (_, y_train), (_, y_test), class_names = load_npz(config.source)
            counts = np.bincount(np.concatenate([y_train, y_test]), minlength=len(class_names))
            return {"kind": kind, "class_names": list(class_names), "counts": [int(count) for count in counts]}
    except DataError as error:
        return {"error": str(error)}
    return {"error": f"data.source: {config.source!r} is neither a built-in name nor an existing folder or .npz file"}


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


@dataclasses.dataclass
class _Pool:
    """Some rows of an image array (shared, not copied) with their labels and source positions."""

    images: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    positions: np.ndarray

    @classmethod
    def of(cls, images, labels, positions=None) -> _Pool:
        rows = np.arange(len(labels))
        return cls(images, np.asarray(labels), rows, rows if positions is None else np.asarray(positions))

    def take(self, indices: np.ndarray) -> _Pool:
        return _Pool(self.images, self.labels[indices], self.rows[indices], self.positions[indices])

    def split(self) -> Split:
        return Split(np.asarray(self.images[self.rows]), self.labels.astype("int32"), self.positions)


def _stat_hash(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def load_splits(config: DataConfig, seed: int = 42, image_size: int | None = None, *,
                cache_dir: str | os.PathLike | None = None) -> Splits:
    """Loads `config.source` and returns seeded, stratified train/val/test splits.

    Args:
        config: the data config (source, splits, limits, storage size, strictness).
        seed: seeds every split and subset.
        image_size: the model's input side: the storage side of folder sources unless
            `config.image_size` is set (default `ModelConfig().image_size`). Other sources keep
            their own size.
        cache_dir: root of the decode cache (`<cache_dir>/decoded/`); default
            `$TLKIT_CACHE_DIR` or `~/.cache/tlkit`.

    Raises:
        DataError: a clear one-line reason (missing or malformed data, too few images, failed download).
    """
    kind = config.source_kind()
    skipped: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()
    val = whole = None
    if kind == "builtin":
        (x_train, y_train), (x_test, y_test) = load_builtin(config.source, config.data_dir)
        train, test = _Pool.of(x_train, y_train), _Pool.of(x_test, y_test)
        class_names = BUILTIN_CLASS_NAMES[config.source]
        identity = {"kind": "builtin", "source": config.source}
    elif kind == "npz":
        path = Path(config.source).expanduser().resolve()
        ((x_train, y_train), (x_test, y_test)), class_names = load_npz(path)
        train, test = _Pool.of(x_train, y_train), _Pool.of(x_test, y_test)
        identity = {"kind": "npz", "source": str(path), "file": _stat_hash(path)}
    elif kind == "folder":
        root = Path(config.source).expanduser().resolve()
        folder = _list_folder(root)
        _check_class_sizes(folder, config)
        side = config.image_size or image_size or ModelConfig().image_size
        images, readable, skipped_at, files_hash = _decode_folder(folder, side, cache_dir)
        skipped = tuple((folder.files[position], reason) for position, reason in skipped_at.items())
        _report_skipped(root, list(skipped), config.strict)
        _check_class_sizes(folder, config, readable)
        files, class_names = folder.files, folder.class_names
        positions = np.flatnonzero(readable)
        parts = folder.parts[positions]
        pool = _Pool.of(images, folder.labels[positions], positions)
        if folder.layout == "classes":
            whole = pool
        else:
            train, test = pool.take(np.flatnonzero(parts == "train")), pool.take(np.flatnonzero(parts == "test"))
            val = pool.take(np.flatnonzero(parts == "val")) if "val" in folder.parts else None
        identity = {"kind": "folder", "source": str(root), "layout": folder.layout, "files": files_hash}
    else:
        raise DataError(f"data source {config.source!r} is neither a built-in name nor an existing folder or .npz "
                        f"file; use {DataConfig.SOURCE_FORMS}")

    if whole is not None:  # one folder per class: tlkit makes the test split
        keep, held_out = stratified_split(whole.labels, config.test_split, seed + 3)
        train, test = whole.take(keep), whole.take(held_out)
    train = train.take(stratified_subset(train.labels, config.train_limit, seed))
    if val is None:
        keep, held_out = stratified_split(train.labels, config.validation_split, seed + 1)
        train, val = train.take(keep), train.take(held_out)
    test = test.take(stratified_subset(test.labels, config.test_limit, seed + 2))

    where = f"{config.source} in {config.data_dir}" if kind == "builtin" and config.data_dir else config.source
    warnings = _check_usable(train, test, where, class_names)
    for warning in warnings:
        print(f"tlkit: warning: {warning}", file=sys.stderr)
    shape = [int(size) for size in train.images.shape[1:]]
    identity.update(shape=shape, channels=shape[-1])
    return Splits(train=train.split(), val=val.split(), test=test.split(), class_names=tuple(class_names),
                  identity=identity, skipped=skipped, files=files, warnings=warnings)


def _check_usable(train: _Pool, test: _Pool, source: str, class_names) -> tuple[str, ...]:
    """Refuses data that would train for nothing (no test images, a single training class) and
    returns warnings about data that trains poorly (classes without images, a tiny training set)."""
    if not len(test.labels):
        raise DataError(f"{source}: the test set holds no images (after --test-limit); add test images")
    classes = np.unique(train.labels)
    if len(classes) < 2:
        raise DataError(f"{source}: the training set holds only class {int(classes[0]) if len(classes) else '-'}; "
                        "a classifier needs images of at least 2 classes")
    warnings = []
    missing = [str(name) for label, name in enumerate(class_names) if label not in set(classes.tolist())]
    if missing:
        warnings.append(f"{source}: no training images for {len(missing)} of {len(class_names)} classes "
                        f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): the model can never "
                        "predict them; add images or raise --train-limit")
    if len(train.labels) < FEW_PER_CLASS * len(class_names):
        warnings.append(f"{source}: only {len(train.labels)} training images for {len(class_names)} classes "
                        f"(fewer than {FEW_PER_CLASS} per class): expect a noisy, unreliable model; add images "
                        "or raise --train-limit")
    return tuple(warnings)
