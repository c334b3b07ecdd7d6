"""Helpers shared by the benchmark parent and its children; no Keras import here.

Inputs (the real data and weights), memory and time measurement, and small
helpers the case functions of several sections use. JSON is written with
`tlkit.runs.write_json` (atomic).

Memory is measured two ways, both inside the child process that did the work:

- `peak_rss_mb()`: `resource.getrusage(RUSAGE_SELF).ru_maxrss`, the kernel's
  exact peak resident set of the whole process (imports and model included).
- `RssSampler`: a thread that reads `/proc/self/statm` every few milliseconds
  during one phase and reports the peak *increase* over the RSS at the start
  of that phase, i.e. what the data pipeline and training added on top of the
  already-built model. A sampler can miss a spike shorter than its interval;
  ru_maxrss cannot.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
# Offline copies of the data and weights; the environment variables point elsewhere.
DATA_DIR = Path(os.environ.get("TLKIT_BENCH_DATA", SHARED / "data" / "fashion-mnist"))
WEIGHTS = Path(os.environ.get("TLKIT_BENCH_WEIGHTS", SHARED / "weights" / "resnet50_imagenet_notop.weights.h5"))
MB = 1e6
SEED = 42  # every case's random seed
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def missing_inputs() -> list[str]:
    """What real inputs are missing (empty when the benchmarks can run)."""
    missing = []
    if not (DATA_DIR / "train-images-idx3-ubyte.gz").is_file() and not (DATA_DIR / "train-images-idx3-ubyte").is_file():
        missing.append(f"Fashion-MNIST IDX files in {DATA_DIR} (set TLKIT_BENCH_DATA)")
    if not WEIGHTS.is_file():
        missing.append(f"ResNet50 ImageNet weights {WEIGHTS} (set TLKIT_BENCH_WEIGHTS)")
    return missing


def rss_bytes() -> int:
    """The current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE_SIZE


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float:
    """1-minute load average: how busy the machine was (other processes included)."""
    return round(os.getloadavg()[0], 2)


class RssSampler:
    """Samples RSS in a background thread while the `with` block runs.

    Attributes (after the block): `start_mb`, `peak_mb`, `increase_mb`.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._peak = rss_bytes()
        self.start_mb = self._peak / MB
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss_bytes())
        self.peak_mb = self._peak / MB

    @property
    def increase_mb(self) -> float:
        return self.peak_mb - self.start_mb


@contextlib.contextmanager
def phase(record: dict, name: str):
    """Times a block (wall and CPU) and samples its memory into `record[name]`.

    `cpu_utilisation` is CPU seconds / wall seconds: about the core count when
    the process had the machine to itself, lower when it shared it.
    """
    wall_start, cpu_start, load_start = time.perf_counter(), cpu_seconds(), load_average()
    with RssSampler() as sampler:
        yield
    wall = time.perf_counter() - wall_start
    record[name] = {
        "seconds": round(wall, 3),
        "cpu_utilisation": round((cpu_seconds() - cpu_start) / wall, 2) if wall else None,
        "rss_start_mb": round(sampler.start_mb, 1),
        "rss_peak_mb": round(sampler.peak_mb, 1),
        "rss_increase_mb": round(sampler.increase_mb, 1),
        "load_start": load_start,
        "load_end": load_average(),
    }


def read_json(path: str | os.PathLike):
    """The JSON in `path`, or None when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---- used by the case functions (child side) -----------------------------------------------------


def train_subset(count: int, seed: int = SEED):
    """A stratified subset of the real training set: uint8 (N, 28, 28, 1) images and int32 labels."""
    import numpy as np

    from tlkit.data import load_fashion_mnist, stratified_subset

    (images, labels), _ = load_fashion_mnist(DATA_DIR)
    chosen = stratified_subset(labels, count, seed)
    return np.ascontiguousarray(images[chosen][..., None]), labels[chosen].astype("int32")


def describe_array(array) -> dict:
    """Shape, dtype and size in MB of a numpy array."""
    return {"shape": list(array.shape), "dtype": str(array.dtype), "mb": round(array.nbytes / MB, 2)}


def trainable_count(model) -> int:
    """Number of trainable parameters of a Keras model."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def replace_marked_section(doc: Path, markers: tuple[str, str], text: str) -> None:
    """Replaces what stands between the two marker comments of `doc` with `text` (the rest stays)."""
    content = doc.read_text()
    start, end = content.index(markers[0]) + len(markers[0]), content.index(markers[1])
    doc.write_text(content[:start] + "\n" + text + "\n" + content[end:])
