"""Boundary cache for fine-tuning: run the frozen part of the backbone once.

When the finetune stage unfreezes a suffix of the backbone and nothing random
sits in front of it (no augmentation), the frozen part maps each image to the
same activations every epoch. We compute those activations at the freeze
boundary once, keep them in host memory as float16 (half the bytes of
float32), and train a model made of only the unfrozen layers plus the head,
which share their weights with the full classifier. The boundary can be more
than one tensor: unfreezing mid-block also needs the block's shortcut input.

The activations are computed once per run and shared by both stages: the head
stage derives its pooled features from them (running only the suffix, which
is still frozen then) and the finetune stage trains on them, so the expensive
frozen prefix runs once per image. With a store (the feature cache directory)
they are also kept on disk, so runs that differ only after the boundary
(learning rates, dropout, epochs) skip the prefix entirely.

Example:

```python
from tlkit.boundary import split_at_boundary

split = split_at_boundary(model, first_unfrozen="conv5_block1_1_conv")
split.estimate_bytes(54000)                        # host memory the cache would take
inputs = split.compute(images, batch_size=256)     # list of float16 arrays
split.train_model.fit(inputs, labels)              # trains the classifier's own layers
```
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import keras
import numpy as np

from tlkit.backbones import select_layers
from tlkit.batches import ArrayBatches
from tlkit.features import HEAD_LAYERS, POOL_LAYER, FeatureCache, predict_in_chunks
from tlkit.model import INPUT_SHAPE, NORMALIZATION_LAYER, PREPARE_LAYER, backbone_of

CACHE_DTYPE = "float16"


class BoundaryCacheError(RuntimeError):
    """The boundary cache cannot be used (e.g. it would not fit the memory budget)."""


@dataclasses.dataclass
class BoundarySplit:
    """The frozen part (images → boundary tensors) and the trainable rest (→ probabilities)."""

    frozen_model: keras.Model
    train_model: keras.Model
    features_model: keras.Model  # boundary tensors → pooled features (for the head stage)
    first_unfrozen: str  # the backbone layer the split is in front of

    def estimate_bytes(self, num_images: int) -> int:
        per_image = sum(int(np.prod(t.shape[1:])) for t in self.frozen_model.outputs)
        return per_image * np.dtype(CACHE_DTYPE).itemsize * num_images

    def compute(self, images: np.ndarray, batch_size: int,
                on_progress: Callable[[float], None] | None = None) -> list[np.ndarray]:
        """Boundary activations of `images` as float16 arrays, computed in chunks."""
        outputs = [np.empty((len(images), *t.shape[1:]), dtype=CACHE_DTYPE) for t in self.frozen_model.outputs]
        predict_in_chunks(self.frozen_model, images, batch_size, outputs, on_progress)
        for array in outputs:
            if not np.isfinite(array).all():
                raise BoundaryCacheError("boundary activations overflow float16; use --no-boundary-cache")
        return outputs


class BoundaryActivations:
    """The frozen part's output for each image set of a run, computed (or read) once.

    Args:
        split: from `split_at_boundary`.
        batch_size: batch size for computing activations.
        store: a `tlkit.features.FeatureCache` that keeps activations on disk, or None.
        identity: what determines the activations besides the images (backbone,
            weights, image size, precision, versions).
    """

    def __init__(self, split: BoundarySplit, batch_size: int, store: FeatureCache | None = None,
                 identity: dict | None = None):
        self.split = split
        self.batch_size = batch_size
        self.store = store
        self.identity = {**(identity or {}), "boundary": split.first_unfrozen}
        self.records: dict[str, dict] = {}
        self._arrays: dict[str, list[np.ndarray]] = {}

    def get(self, name: str, images: np.ndarray, on_progress: Callable[[float], None] | None = None
            ) -> list[np.ndarray]:
        """Boundary activations of image set `name` (e.g. "train"), computed on first use."""
        if name in self._arrays:
            return self._arrays[name]
        start = time.perf_counter()
        key = FeatureCache.key(self.identity, images)
        arrays = self.store.load_arrays(key, len(self.split.frozen_model.outputs)) if self.store else None
        record = {"key": key, "hit": arrays is not None and all(len(a) == len(images) for a in arrays)}
        if not record["hit"]:
            arrays = self.split.compute(images, self.batch_size, on_progress)
            record["stored"] = self.store.store_arrays(key, arrays) if self.store else False
        record["seconds"] = round(time.perf_counter() - start, 3)
        self._arrays[name], self.records[name] = arrays, record
        return arrays

    def features(self, name: str, images: np.ndarray, on_progress: Callable[[float], None] | None = None
                 ) -> np.ndarray:
        """Pooled backbone features of `images` via their boundary activations (backbone frozen)."""
        arrays = self.get(name, images, on_progress)
        # Batch by batch: Keras would cast all of the float16 activations to float32 at once.
        features = self.split.features_model.predict(ArrayBatches(arrays, batch_size=self.batch_size), verbose=0)
        return np.asarray(features, dtype="float32")


def plan_boundary(model: keras.Model, unfreeze: str, num_images: int, budget_bytes: int, batch_size: int,
                  store: FeatureCache | None = None, identity: dict | None = None
                  ) -> tuple[BoundaryActivations | None, dict]:
    """Boundary activations for fine-tuning `unfreeze`, if they fit `budget_bytes` for `num_images`.

    Returns the activations (None when refused or nothing is unfrozen) and a
    record for metrics.json; a refusal's record says why and what to change.
    """
    selected = select_layers(backbone_of(model), unfreeze)
    if not selected:
        return None, {"used": False, "reason": "nothing is unfrozen"}
    split = split_at_boundary(model, selected[0].name)
    needed = split.estimate_bytes(num_images)
    record = {"boundary": split.first_unfrozen, "bytes": needed,
              "shapes": [list(t.shape[1:]) for t in split.frozen_model.outputs]}
    if needed > budget_bytes:
        reason = (f"the boundary cache needs {needed / 1e9:.3g} GB for {num_images} images, over the "
                  f"{budget_bytes / 1e9:.3g} GB budget; running the full graph instead (raise --cache-memory-gb, "
                  "lower --image-size or unfreeze less to use it)")
        return None, {**record, "used": False, "reason": reason}
    return BoundaryActivations(split, batch_size, store, identity), {**record, "used": True}


def split_at_boundary(model: keras.Model, first_unfrozen: str) -> BoundarySplit:
    """Splits the classifier before backbone layer `first_unfrozen` (the unfrozen suffix starts there)."""
    backbone = backbone_of(model)
    names = [layer.name for layer in backbone.layers]
    suffix = backbone.layers[names.index(first_unfrozen):]
    suffix_ids = {id(layer) for layer in suffix}

    # Tensors made by frozen layers and read by the suffix: the boundary.
    boundary: dict[int, keras.KerasTensor] = {}
    for layer in suffix:
        for tensor in _construction_node(layer).input_tensors:
            if id(tensor._keras_history.operation) not in suffix_ids:
                boundary.setdefault(id(tensor), tensor)
    prefix = keras.Model(backbone.input, list(boundary.values()), name="frozen_backbone_part")
    images = keras.Input(INPUT_SHAPE, dtype="uint8", name="image")
    # Same path as the classifier in inference mode: augmentation is off by precondition.
    normalized = model.get_layer(NORMALIZATION_LAYER)(model.get_layer(PREPARE_LAYER)(images))
    frozen_model = keras.Model(images, prefix(normalized), name="frozen_part")

    # Re-run the suffix layers on new inputs, in the backbone's (topological) order.
    inputs = [keras.Input(t.shape[1:], name=f"boundary_{i}") for i, t in enumerate(boundary.values())]
    produced = {key: new for key, new in zip(boundary, inputs)}
    for layer in suffix:
        node = _construction_node(layer)
        args, kwargs = node.arguments.fill_in(produced)
        outputs = layer(*args, **kwargs)
        for old, new in zip(node.output_tensors, keras.tree.flatten(outputs)):
            produced[id(old)] = new
    pooled = model.get_layer(POOL_LAYER)(produced[id(backbone.output)])
    x = pooled
    for name in HEAD_LAYERS:
        x = model.get_layer(name)(x)
    return BoundarySplit(frozen_model, keras.Model(inputs, x, name="unfrozen_part"),
                         keras.Model(inputs, pooled, name="unfrozen_part_features"), first_unfrozen)


def _construction_node(layer):
    # A layer's first inbound node is the call that built the backbone; later nodes come from
    # earlier splits and would point at their inputs.
    return layer._inbound_nodes[0]
