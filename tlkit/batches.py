"""Batches for `fit` from in-memory arrays, cast to float32 one batch at a time.

Keras' own array adapter casts a whole non-float32 array to float32 before it
slices batches, and under jax it does so at the start of every epoch. For the
float16 boundary activations of a full Fashion-MNIST run (3.1 GB) that is a
6.2 GB copy per epoch, which is what ran a jax run out of memory. `ArrayBatches`
serves the same shuffled batches while only one batch is ever float32, and
its shuffling is seeded, so a run with caches sees the same batch order as
the same run without them.

Hand Keras `keras_input(batches)` (`fit_input` for training), not the batches themselves: under
TensorFlow, Keras feeds a `PyDataset` through a `tf.data` generator, and a
Python generator anywhere in a `tf.data` pipeline slowed every training step
(by 1.7x for a frozen ResNet50 at 64 px), while its autotuned prefetching
stalled about 4.3 s in half of the iterator shutdowns on our CPUs (Keras
shuts one down after every epoch, validation pass and `predict`).
`keras_input` gathers the same batches inside TensorFlow instead.

Data-parallel training splits each batch across devices, so every batch, the
last one too, must be a multiple of the device count: `multiple_of` pads the
last batch without losing or double-counting an image (see `ArrayBatches`).

Example:

```python
import numpy as np
from tlkit.batches import ArrayBatches, fit_input

x = np.zeros((100, 8), "float16")
y = np.arange(100) % 10
batches = ArrayBatches(x, y, batch_size=32, shuffle=True, seed=0)
len(batches), batches[0][0].dtype, batches[3][0].shape  # 4, float32, (4, 8)
model.fit(**fit_input(batches, epochs=2), epochs=2, shuffle=False)  # given a compiled `model`
```
"""

from __future__ import annotations

import math

import keras
import numpy as np

ALIGNMENT = 64  # bytes: what TensorFlow needs to use a numpy buffer in place (see `aligned_empty`)


class ArrayBatches(keras.utils.PyDataset):
    """`(x, y)` batches of numpy arrays; floating arrays come out as float32.

    Args:
        x: inputs, first axis the samples (any dtype; floats are cast per batch); a list
            of such arrays for a model with several inputs.
        y: targets, same first-axis length as `x`; None for `predict` (batches are then `(x,)`).
        batch_size: samples per batch (the last batch may be smaller).
        shuffle: draw a new sample order at the start of every epoch.
        seed: seeds the order; equal seeds give equal orders.
        multiple_of: every batch's size is a multiple of this (the device count of a
            data-parallel run). The last batch is padded: when shuffling (training) with
            the first samples of the same epoch's order, so each sample is still seen every
            epoch; otherwise (evaluation) with copies of the last sample weighted 0, so each
            one counts once, and batches are `(x, y, sample_weight)`. For `predict` the
            padded outputs follow the `num_samples` real ones: drop them.
        process: `(index, count)` of this process among the hosts of a multi-host run; it
            gets its share of every batch (Keras' JAX trainer assembles the global batch).
        x_alternative: another version of every sample of `x`, same structure and shapes (e.g.
            the activations of the mirror images); each epoch, each sample comes from `x` or from
            here with equal odds (seeded with the order). Training only (`shuffle`).
    """

    def __init__(self, x, y: np.ndarray | None = None, batch_size: int = 32, shuffle: bool = False,
                 seed: int | None = None, multiple_of: int = 1, process: tuple[int, int] = (0, 1),
                 x_alternative=None):
        super().__init__()
        lengths = {len(array) for array in keras.tree.flatten(x)}
        if len(lengths) != 1 or (y is not None and lengths != {len(y)}):
            raise ValueError(f"x has {sorted(lengths)} samples but y has {None if y is None else len(y)}")
        if x_alternative is not None:
            shapes = [array.shape for array in keras.tree.flatten(x)]
            if [array.shape for array in keras.tree.flatten(x_alternative)] != shapes or not shuffle:
                raise ValueError(f"x_alternative must match x's shapes {shapes} and needs shuffle=True")
        if batch_size % multiple_of or multiple_of % process[1]:
            raise ValueError(f"batch_size {batch_size} must be a multiple of {multiple_of}, and that of the "
                             f"process count {process[1]}")
        self.x, self.y, self.x_alternative = x, y, x_alternative
        self.num_samples = lengths.pop()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.multiple_of = int(multiple_of)
        self.process = process
        # Evaluation batches carry weights once padding exists, so every batch has the same structure.
        self.weighted = y is not None and not shuffle and self.num_samples % self.multiple_of != 0
        self._rng = np.random.default_rng(seed)
        self._order, self._alternative = self._draw_order()

    @property
    def padded_samples(self) -> int:
        """Samples per epoch including the padding: `num_samples` rounded up to `multiple_of`."""
        return math.ceil(self.num_samples / self.multiple_of) * self.multiple_of

    def __len__(self) -> int:
        return math.ceil(self.padded_samples / self.batch_size)

    def __getitem__(self, index: int):
        picked, chosen, weight = self.batch_rows(index)
        if self.x_alternative is None:
            x = keras.tree.map_structure(lambda array: _as_float32(array[picked]), self.x)
        else:
            x = keras.tree.map_structure(lambda array, other: _as_float32(_choose(array, other, picked, chosen)),
                                         self.x, self.x_alternative)
        return _keras_batch(x, None if self.y is None else _as_float32(self.y[picked]), weight)

    def batch_rows(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Batch `index` of this epoch as rows of `x`: the row indices (this process's share), per
        row whether it comes from `x_alternative` (None without one), and the sample weights (None
        unless the batches are weighted)."""
        start = index * self.batch_size
        picked = self._order[start:start + self.batch_size]
        share = slice(None)
        if self.process[1] > 1:
            per_process = len(picked) // self.process[1]
            share = slice(self.process[0] * per_process, (self.process[0] + 1) * per_process)
            picked = picked[share]
        chosen = None if self._alternative is None else self._alternative[start:start + self.batch_size][share]
        weight = None
        if self.weighted:
            real = np.arange(start, min(start + self.batch_size, self.padded_samples)) < self.num_samples
            # Keras averages a loss over all rows of a batch, padding included, so the real rows weigh
            # padded/real: the epoch's loss is then the mean over the real samples, exactly (metrics
            # divide by the weights' sum, which any common factor leaves unchanged).
            weight = (real[share] * (self.padded_samples / self.num_samples)).astype("float32")
        return picked, chosen, weight

    def on_epoch_begin(self) -> None:
        self._order, self._alternative = self._draw_order()

    def skip_epochs(self, count: int) -> None:
        """Advances the shuffling past `count` epochs, so that a fit resumed at epoch `count` sees
        the same batch orders as an uninterrupted one."""
        for _ in range(count):
            self._draw_order()

    def _draw_order(self) -> tuple[np.ndarray, np.ndarray | None]:
        """This epoch's sample order (padded) and, per position, whether it takes `x_alternative`."""
        order = self._rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        padding = self.padded_samples - self.num_samples
        if padding:
            fill = np.resize(order, padding) if self.shuffle else np.full(padding, self.num_samples - 1)
            order = np.concatenate([order, fill])
        alternative = self._rng.random(len(order)) < 0.5 if self.x_alternative is not None else None
        return order, alternative


def _keras_batch(x, y, weight):
    """One batch in the structure Keras expects: `(x,)`, `(x, y)` or `(x, y, sample_weight)`."""
    if isinstance(x, list):  # tf.data takes tuples, and one input needs none
        x = x[0] if len(x) == 1 else tuple(x)
    if y is None:
        return (x,)
    return (x, y) if weight is None else (x, y, weight)


def _choose(array: np.ndarray, other: np.ndarray, picked: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Rows `picked` of `array`, those where `chosen` is set taken from `other` instead."""
    rows = array[picked]
    rows[chosen] = other[picked[chosen]]
    return rows


def _as_float32(array: np.ndarray) -> np.ndarray:
    return array.astype("float32") if np.issubdtype(array.dtype, np.floating) else array


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """`np.empty(shape, dtype)` with its data on a 64-byte boundary.

    TensorFlow reads a numpy array in place only at this alignment (Eigen's), and numpy's own large
    buffers sit 16 bytes past a page boundary; `keras_input` copies any other array once under
    TensorFlow. Allocate large arrays meant for it (e.g. cached activations) with this.

    Args:
        shape: the array's shape.
        dtype: its dtype.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset:offset + size].view(dtype).reshape(shape)


def keras_input(batches: ArrayBatches, epochs: int = 1):
    """What to pass to `fit`, `evaluate` or `predict` for `batches`.

    JAX and torch get `batches` themselves: Keras feeds the `PyDataset` and calls its
    `on_epoch_begin` (a fresh shuffle) every epoch. Under TensorFlow it is a `tf.data.Dataset` that
    gathers the same batches from the arrays inside TensorFlow, in place where they are aligned
    (`aligned_empty`), with two batches prefetched. A Python generator anywhere in a `tf.data`
    pipeline slowed every training step, even one called once per epoch (frozen ResNet50, 64 px,
    batch 32: 0.35 s per step against 0.20 s gathering in TensorFlow). So, for shuffled batches, the
    dataset holds all `epochs` epochs, their orders drawn now as the `PyDataset` would draw them
    epoch by epoch; `fit_input` adds the `steps_per_epoch` that makes `fit` read one epoch at a time.

    Args:
        batches: the batches to feed.
        epochs: how many epochs `fit` runs over shuffled `batches` (one pass is all other uses need).

    Example:

    ```python
    model.predict(keras_input(ArrayBatches(x, batch_size=256)))
    ```
    """
    if keras.backend.backend() != "tensorflow":
        return batches
    return _tensorflow_dataset(batches, epochs if batches.shuffle else 1)


def fit_input(batches: ArrayBatches, epochs: int) -> dict:
    """`fit`'s `x` and `steps_per_epoch` for `epochs` epochs of the training `batches`.

    Under TensorFlow `x` holds all the epochs (`keras_input`), so `fit` must read it `len(batches)`
    steps at a time. Elsewhere `x` is the `PyDataset`, which ends each epoch itself, and
    `steps_per_epoch` stays None: with it, a resumed torch run stopped matching the uninterrupted
    one (the resume tests in tests/test_faults.py and tests/test_caches.py). The cause inside Keras
    is not pinned down: the batch order and torch's global generator came out the same either way.

    Args:
        batches: the shuffled training batches.
        epochs: how many epochs `fit` runs (from `initial_epoch` on, when resuming).

    Example:

    ```python
    batches = ArrayBatches(x, y, batch_size=32, shuffle=True, seed=0)
    model.fit(**fit_input(batches, epochs=3), epochs=3, shuffle=False)
    ```
    """
    data = keras_input(batches, epochs)
    return {"x": data, "steps_per_epoch": None if data is batches else len(batches)}


def _tensorflow_dataset(batches: ArrayBatches, epochs: int):
    import tensorflow as tf

    rows, from_alternative, weights, bounds = [], [], [], [0]
    for _ in range(epochs):
        batches.on_epoch_begin()
        for index in range(len(batches)):
            picked, chosen, weight = batches.batch_rows(index)
            rows.append(picked)
            from_alternative.append(chosen)
            weights.append(weight)
            bounds.append(bounds[-1] + len(picked))
    rows = tf.constant(np.concatenate(rows))
    from_alternative = None if batches.x_alternative is None else tf.constant(np.concatenate(from_alternative))
    weights = None if batches.y is None or not batches.weighted else tf.constant(np.concatenate(weights))
    x = keras.tree.map_structure(_tensor_in_place, batches.x)
    x_alternative = None if from_alternative is None else keras.tree.map_structure(_tensor_in_place,
                                                                                    batches.x_alternative)
    y = None if batches.y is None else _tensor_in_place(batches.y)

    def batch(start, end):
        picked = rows[start:end]

        def take(array):
            return _cast_float32(tf.gather(array, picked))

        if from_alternative is None:
            inputs = keras.tree.map_structure(take, x)
        else:
            chosen = from_alternative[start:end]
            inputs = keras.tree.map_structure(lambda array, other: _where_rows(chosen, take(other), take(array)),
                                              x, x_alternative)
        return _keras_batch(inputs, None if y is None else take(y), None if weights is None else weights[start:end])

    options = tf.data.Options()
    # Autotuned prefetching stalls about 4.3 s in half of the iterator shutdowns on our CPUs, and Keras
    # shuts one down after every epoch, validation pass and predict. The default graph rewrites
    # serialize the dataset, which copies the arrays it gathers from (a 2.5 GB array peaked 2.5 GB higher).
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    dataset = tf.data.Dataset.from_tensor_slices((bounds[:-1], bounds[1:])).map(batch)
    return dataset.prefetch(2).with_options(options)


def _tensor_in_place(array: np.ndarray):
    """`array` as a TensorFlow tensor on the same memory; a 64-byte-aligned copy when it cannot be."""
    import tensorflow as tf

    in_place = array.flags.c_contiguous and array.flags.writeable and array.ctypes.data % ALIGNMENT == 0
    if not in_place or array.size == 0:
        copy = aligned_empty(array.shape, array.dtype)
        copy[...] = array
        array = copy
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _cast_float32(tensor):
    import tensorflow as tf

    return tf.cast(tensor, tf.float32) if tensor.dtype.is_floating else tensor


def _where_rows(chosen, if_chosen, otherwise):
    """Per row, `if_chosen` where `chosen` is set, else `otherwise`."""
    import tensorflow as tf

    chosen = tf.reshape(chosen, [-1] + [1] * (len(otherwise.shape) - 1))
    return tf.where(chosen, if_chosen, otherwise)
