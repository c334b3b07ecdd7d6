"""Batches for `fit` from in-memory arrays, cast to float32 one batch at a time.

Keras' own array adapter casts a whole non-float32 array to float32 before it
slices batches, and under jax it does so at the start of every epoch. For the
float16 boundary activations of a full Fashion-MNIST run (3.1 GB) that is a
6.2 GB copy per epoch, which is what ran a jax run out of memory. `ArrayBatches`
serves the same shuffled batches while only one batch is ever float32, and
its shuffling is seeded, so a run with caches sees the same batch order as
the same run without them.

Example:

```python
import numpy as np
from tlkit.batches import ArrayBatches

x = np.zeros((100, 8), "float16")
y = np.arange(100) % 10
batches = ArrayBatches(x, y, batch_size=32, shuffle=True, seed=0)
len(batches), batches[0][0].dtype, batches[3][0].shape  # 4, float32, (4, 8)
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
    """

    def __init__(self, x, y: np.ndarray | None = None, batch_size: int = 32, shuffle: bool = False,
                 seed: int | None = None):
        super().__init__()
        lengths = {len(array) for array in keras.tree.flatten(x)}
        if len(lengths) != 1 or (y is not None and lengths != {len(y)}):
            raise ValueError(f"x has {sorted(lengths)} samples but y has {None if y is None else len(y)}")
        self.x, self.y = x, y
        self.num_samples = lengths.pop()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._draw_order()

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __getitem__(self, index: int):
        picked = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        x = keras.tree.map_structure(lambda array: _as_float32(array[picked]), self.x)
        if isinstance(x, list):  # tf.data's generator signatures take tuples, and one input needs none
            x = x[0] if len(x) == 1 else tuple(x)
        return (x,) if self.y is None else (x, _as_float32(self.y[picked]))

    def on_epoch_begin(self) -> None:
        self._order = self._draw_order()

    def skip_epochs(self, count: int) -> None:
        """Advances the shuffling past `count` epochs, so that a fit resumed at epoch `count` sees
        the same batch orders as an uninterrupted one."""
        for _ in range(count):
            self._draw_order()

    def _draw_order(self) -> np.ndarray:
        if self.shuffle:
            return self._rng.permutation(self.num_samples)
        return np.arange(self.num_samples)


def _as_float32(array: np.ndarray) -> np.ndarray:
    return array.astype("float32") if np.issubdtype(array.dtype, np.floating) else array
