"""The learning-rate schedule of a stage: linear warm-up, then constant, exponential or cosine.

Registered for `.keras` saving: a saved, compiled classifier names it in its optimizer's
config, so `tlkit.load_model` imports this module before loading.

Example:

```python
from tlkit.schedules import StageSchedule

schedule = StageSchedule(1e-3, steps_per_epoch=100, epochs=10, kind="cosine", warmup_epochs=1)
float(schedule(0)), float(schedule(100)), float(schedule(999))  # 0.0, 0.001, ~0.0
```
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tlkit")
class StageSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then constant, per-epoch exponential or cosine decay.

    Args:
        learning_rate: peak learning rate (reached after warm-up).
        steps_per_epoch: optimizer steps per epoch.
        epochs: length of the stage in epochs.
        kind: `"constant"`, `"exponential"` or `"cosine"`.
        warmup_epochs: warm-up length in epochs (may be fractional).
        decay_rate: the exponential schedule's LR multiplier per epoch.
    """

    def __init__(self, learning_rate, steps_per_epoch, epochs, kind="constant", warmup_epochs=0.0,
                 decay_rate=0.9):
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.kind = kind
        self.warmup_epochs = float(warmup_epochs)
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        total_steps = max(self.epochs * self.steps_per_epoch, 1)
        after_warmup = ops.maximum(step - warmup_steps, 0.0)
        if self.kind == "exponential":
            decayed = self.learning_rate * ops.power(self.decay_rate, after_warmup / self.steps_per_epoch)
        elif self.kind == "cosine":
            fraction = ops.minimum(after_warmup / max(total_steps - warmup_steps, 1.0), 1.0)
            decayed = self.learning_rate * 0.5 * (1.0 + ops.cos(math.pi * fraction))
        else:
            decayed = ops.convert_to_tensor(self.learning_rate, "float32")
        if warmup_steps <= 0:
            return decayed
        warming = self.learning_rate * step / warmup_steps
        return ops.where(step < warmup_steps, warming, decayed)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs, "kind": self.kind, "warmup_epochs": self.warmup_epochs,
                "decay_rate": self.decay_rate}
