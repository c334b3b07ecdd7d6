"""Batches for `fit` from in-memory arrays, cast to float32 one batch at a time.

Keras' own array adapter casts a whole non-float32 array to float32 before it
slices batches, and under jax it does so at the start of every epoch. For the
float16 boundary activations of a full Fashion-MNIST run (3.1 GB) that is a
6.2 GB copy per epoch, which is what ran a jax run out of memory. `ArrayBatches`
serves the same shuffled batches while only one batch is ever float32, and
its shuffling is seeded, so a run with caches sees the same batch order as
the same run without them.

Hand Keras `keras_input(batches)`, not the batches themselves: under
TensorFlow, Keras feeds a `PyDataset` (and numpy arrays) through `tf.data`
with autotuned prefetching, and shutting such an iterator down stalls for
about 4.3 s in about half of the calls on our CPUs (measured on Keras' own
array-adapter pipeline iterated by hand: 5 of 9 shutdowns with autotuning
on, 0 of 5 with it off). Keras shuts one down after
every epoch, every validation pass and every `predict`, which is what made
short epochs and feature extraction under TensorFlow slow.

Data-parallel training splits each batch across devices, so every batch, the
last one too, must be a multiple of the device count: `multiple_of` pads the
last batch without losing or double-counting an image (see `ArrayBatches`).

Example:

```python
import numpy as np
from tlkit.batches import ArrayBatches, keras_input

x = np.zeros((100, 8), "float16")
y = np.arange(100) % 10
batches = ArrayBatches(x, y, batch_size=32, shuffle=True, seed=0)
len(batches), batches[0][0].dtype, batches[3][0].shape  # 4, float32, (4, 8)
model.fit(keras_input(batches), epochs=2, shuffle=False)  # given a compiled `model`
```
"""

from __future__ import annotations

import math

import keras
import numpy as np


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
        start = index * self.batch_size
        picked = self._order[start:start + self.batch_size]
        share = slice(None)
        if self.process[1] > 1:
            per_process = len(picked) // self.process[1]
            share = slice(self.process[0] * per_process, (self.process[0] + 1) * per_process)
            picked = picked[share]
        if self.x_alternative is None:
            x = keras.tree.map_structure(lambda array: _as_float32(array[picked]), self.x)
        else:
            chosen = self._alternative[start:start + self.batch_size][share]
            x = keras.tree.map_structure(lambda array, other: _as_float32(_choose(array, other, picked, chosen)),
                                         self.x, self.x_alternative)
        if isinstance(x, list):  # tf.data's generator signatures take tuples, and one input needs none
            x = x[0] if len(x) == 1 else tuple(x)
        if self.y is None:
            return (x,)
        if self.weighted:
            real = np.arange(start, min(start + self.batch_size, self.padded_samples)) < self.num_samples
            # Keras averages a loss over all rows of a batch, padding included, so the real rows weigh
            # padded/real: the epoch's loss is then the mean over the real samples, exactly (metrics
            # divide by the weights' sum, which any common factor leaves unchanged).
            weight = self.padded_samples / self.num_samples
            return x, _as_float32(self.y[picked]), (real[share] * weight).astype("float32")
        return x, _as_float32(self.y[picked])

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


def _choose(array: np.ndarray, other: np.ndarray, picked: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Rows `picked` of `array`, those where `chosen` is set taken from `other` instead."""
    rows = array[picked]
    rows[chosen] = other[picked[chosen]]
    return rows


def _as_float32(array: np.ndarray) -> np.ndarray:
    return array.astype("float32") if np.issubdtype(array.dtype, np.floating) else array


def keras_input(batches: ArrayBatches):
    """What to pass to `fit`, `evaluate` or `predict` for `batches`.

    Under TensorFlow, a `tf.data.Dataset` over the same batches with tf.data's autotuning
    off (see the module docstring) and two batches prefetched, so that slicing and casting
    the next batch overlaps the current step. Each pass over it starts a new epoch of
    `batches` (`on_epoch_begin`: a fresh shuffle), as Keras does for a `PyDataset`. Other
    backends get `batches` unchanged.

    Args:
        batches: the batches to feed.
    """
    if keras.backend.backend() != "tensorflow":
        return batches
    import tensorflow as tf

    def one_epoch():
        batches.on_epoch_begin()
        for index in range(len(batches)):
            yield batches[index]

    signature = tf.nest.map_structure(
        lambda array: tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype)), batches[0])
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_generator(one_epoch, output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(batches)))
    return dataset.prefetch(2).with_options(options)
