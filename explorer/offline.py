"""Local copies of what a run would otherwise download: built-in datasets and ImageNet weights.

The explorer fills the form with what this machine already has, so the first
launch works offline, and warns before Launch when a download will be needed.
Only paths are checked (`tlkit.data` imports no Keras at module level): a copy next to the project
(`../shared/data/<dataset>`, `../shared/weights/...`), one under
`$TLKIT_DATA_DIR`, or Keras' own cache (`$KERAS_HOME` or `~/.keras`).

Example:

```python
from explorer import offline

offline.find_data_dir("fashion_mnist")  # Path('.../shared/data/fashion-mnist') or None
offline.download_warnings({"data.source": "fashion_mnist", "data.data_dir": None, ...})
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tlkit.data import DATA_DIR_ENV, DATASET_TITLES, LOCAL_FOLDERS, find_local_copy  # Keras-free at import

REPO = Path(__file__).resolve().parents[1]
# What keras.datasets leaves in its cache after a download (no download needed then).
KERAS_CACHED_DATASETS = {
    "fashion_mnist": "datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
    "mnist": "datasets/mnist.npz",
    "cifar10": "datasets/cifar-10-batches-py-target/cifar-10-batches-py/test_batch",
    "cifar100": "datasets/cifar-100-python-target/cifar-100-python/test",
}
RESNET50_WEIGHTS = "resnet50_imagenet_notop.weights.h5"
KERAS_CACHED_RESNET50 = "models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def shared_dir() -> Path:
    """The project's shared folder next to the repository (`../shared`)."""
    return Path(os.environ.get("TLKIT_SHARED_DIR") or REPO.parent / "shared")


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def find_data_dir(dataset: str) -> Path | None:
    """A local copy of a built-in dataset (`$TLKIT_DATA_DIR`, then `../shared/data`), or None.

    `tlkit.data.find_local_copy` decides what counts as a copy, so the form offers the folder
    the trainer would read.
    """
    if dataset not in LOCAL_FOLDERS:
        return None
    roots = [os.environ[DATA_DIR_ENV]] if os.environ.get(DATA_DIR_ENV) else []
    roots.append(shared_dir() / "data")
    local = find_local_copy(dataset, roots)
    return local.resolve() if local else None


def find_imagenet_weights(backbone: str) -> Path | None:
    """A local ImageNet `.weights.h5` for a built-in backbone (only ResNet50 has one), or None."""
    if backbone != "resnet50":
        return None
    path = shared_dir() / "weights" / RESNET50_WEIGHTS
    return path.resolve() if path.is_file() else None


def machine_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The form values with this machine's local copies filled in where the run would download.

    Only empty data dirs and `imagenet` weights are replaced; a value the user set is kept.
    """
    values = dict(values)
    source = values.get("data.source")
    if not values.get("data.data_dir") and (local := find_data_dir(source)):
        values["data.data_dir"] = str(local)
    if values.get("model.weights") == "imagenet" and (weights := find_imagenet_weights(values.get("model.backbone"))):
        values["model.weights"] = str(weights)
    return values


def download_warnings(values: dict[str, Any]) -> list[str]:
    """One sentence per download the run would need, naming the form field that avoids it."""
    warnings = []
    source = values.get("data.source")
    cached = source in DATASET_TITLES and (keras_home() / KERAS_CACHED_DATASETS[source]).exists()
    if source in DATASET_TITLES and not values.get("data.data_dir") and not cached:
        warnings.append(f"{DATASET_TITLES[source]} will be downloaded through keras.datasets (no local copy found). "
                        "Offline, set **Data › Data dir** to a folder holding its files.")
    backbone = values.get("model.backbone")
    if values.get("model.weights") == "imagenet" and backbone == "resnet50" and not (
            keras_home() / KERAS_CACHED_RESNET50).exists():
        warnings.append("The ImageNet ResNet50 weights will be downloaded by Keras (no local copy found). "
                        "Offline, pick **Model › Weights** → weights file, or `none`.")
    return warnings
