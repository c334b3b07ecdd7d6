"""The two training stages: what to train, with which optimizer and schedule.

Stage `head` trains the new head on a frozen backbone; stage `finetune`
unfreezes the chosen depth of the backbone (BatchNorm excluded) and continues
at a lower learning rate. Everything a stage needs (optimizer, schedule,
callbacks) is chosen from the config here.

Example:

```python
from tlkit.stages import StageSchedule

schedule = StageSchedule(1e-3, steps_per_epoch=100, epochs=10, kind="cosine", warmup_epochs=1)
float(schedule(0)), float(schedule(100)), float(schedule(999))  # 0.0, 0.001, ~0.0
```
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from tlkit.batches import ArrayBatches
from tlkit.boundary import BoundaryActivations
from tlkit.config import StageConfig
from tlkit.features import FeatureCache, head_model
from tlkit.model import freeze_backbone, unfreeze_backbone


class TrainingError(RuntimeError):
    """Training could not go on (NaN loss, …); the message says what to change."""


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


def make_optimizer(config: StageConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    schedule = StageSchedule(config.learning_rate, steps_per_epoch, config.epochs, config.schedule,
                             config.warmup_epochs, config.decay_rate)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(learning_rate=schedule)


def compile_for_stage(model: keras.Model, config: StageConfig, steps_per_epoch: int,
                      label_smoothing: float = 0.0) -> None:
    # Sparse labels keep host memory small; label smoothing needs the dense form.
    if label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=make_optimizer(config, steps_per_epoch), loss=loss, metrics=metrics)


def prepare_stage(model: keras.Model, stage: str, unfreeze: str = "") -> list[str]:
    """Sets which layers train in `stage`; returns the trainable backbone layer names."""
    if stage == "head":
        freeze_backbone(model)
        return []
    return unfreeze_backbone(model, unfreeze)


@dataclasses.dataclass
class EpochReport:
    """What the stage reports after each epoch (for history.csv and status.json)."""

    stage: str
    epoch: int
    epochs: int
    logs: dict
    lr: float
    seconds: float


class StageMonitor(keras.callbacks.Callback):
    """Reports epochs and batch progress, and stops on a non-finite loss.

    Args:
        stage: stage name for the reports.
        epochs: planned epochs of the stage.
        on_epoch: called with an `EpochReport` after each epoch.
        on_progress: called with (epoch, fraction of the epoch done), at most
            every `progress_interval` seconds.
        should_stop: polled after each batch; True ends the stage early (cancellation).
        on_activity: called with (label, fraction done) while caches are computed.
    """

    def __init__(self, stage: str, epochs: int, on_epoch: Callable[[EpochReport], None] | None = None,
                 on_progress: Callable[[int, float], None] | None = None, progress_interval: float = 1.0,
                 should_stop: Callable[[], bool] | None = None,
                 on_activity: Callable[[str, float], None] | None = None):
        super().__init__()
        self.should_stop = should_stop
        self.on_activity = on_activity
        self.stage = stage
        self.epochs = epochs
        self.on_epoch = on_epoch
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.non_finite_at: tuple[int, int] | None = None
        self._epoch = 0
        self._epoch_start = 0.0
        self._last_progress = 0.0

    def activity(self, label: str, verbose) -> Callable[[float], None]:
        """A progress callback for a long step outside `fit` (e.g. computing a cache)."""

        def report(fraction: float) -> None:
            if verbose:
                print(f"{self.stage}: {label} {fraction:.0%}", flush=True)
            if self.on_activity:
                self.on_activity(label, fraction)
            if self.should_stop and self.should_stop():
                raise KeyboardInterrupt  # cancelled while computing a cache

        return report

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.should_stop and self.should_stop():
            self.model.stop_training = True
            return
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.non_finite_at = (self._epoch + 1, batch + 1)
            self.model.stop_training = True
            return
        now = time.perf_counter()
        if self.on_progress and now - self._last_progress >= self.progress_interval:
            self._last_progress = now
            steps = self.params.get("steps") or 0
            self.on_progress(self._epoch + 1, (batch + 1) / steps if steps else 0.0)

    def on_epoch_end(self, epoch, logs=None):
        if self.non_finite_at or not self.on_epoch or (self.should_stop and self.should_stop()):
            return
        lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        seconds = time.perf_counter() - self._epoch_start
        self.on_epoch(EpochReport(self.stage, epoch + 1, self.epochs, dict(logs or {}), lr, seconds))


def run_stage(model: keras.Model, stage: str, config: StageConfig, train, val, *, batch_size: int,
              label_smoothing: float = 0.0, unfreeze: str = "", monitor: StageMonitor | None = None,
              verbose: int | str = "auto", feature_cache: FeatureCache | None = None,
              cache_identity: dict | None = None, boundary: BoundaryActivations | None = None,
              seed: int | None = None) -> dict:
    """Trains `model` for one stage and returns a summary.

    With `feature_cache` (head stage only; the caller checks augmentation is
    off), the frozen backbone's pooled features are computed once (or read
    from the cache) and the head, which shares the model's weights, is trained
    on them: the same training, without running the backbone every epoch.
    With `boundary` (augmentation off), the frozen part's activations are
    computed once (see `tlkit.boundary`): the finetune stage runs only the
    unfrozen layers each epoch, and the head stage derives its features from
    the same activations, so the frozen prefix runs once for both stages.

    Args:
        model: the classifier from `tlkit.model.build_classifier`.
        stage: `"head"` or `"finetune"`.
        config: the stage's config.
        train: `(images, labels)` numpy arrays.
        val: `(images, labels)` or None.
        batch_size: batch size.
        label_smoothing: label smoothing of the loss.
        unfreeze: the finetune stage's layer spec.
        monitor: a `StageMonitor` for reports (one is made if None).
        verbose: Keras progress-bar verbosity.
        feature_cache: where pooled features are cached; None trains the full graph.
        cache_identity: what determines the features besides the images
            (backbone, weights, image size, precision, versions).
        boundary: the run's `BoundaryActivations` (from `tlkit.boundary.plan_boundary`); None: off.
        seed: reseeds all random generators right before fitting, so the batch order is the
            same with and without caches (cache extraction consumes torch's global RNG).

    Raises:
        TrainingError: when the loss becomes NaN/inf.
    """
    trainable_layers = prepare_stage(model, stage, unfreeze)
    monitor = monitor or StageMonitor(stage, config.epochs)
    cache_record = None
    fit_model = model
    if feature_cache is not None and stage == "head":
        fit_model = head_model(model)
        def features_of(name, part):
            features, cache_record[name] = _head_features(model, name, part[0], feature_cache, cache_identity,
                                                          boundary, max(batch_size, 256), monitor, verbose)
            return features, part[1]

        cache_record = {}
        train = features_of("train", train)
        val = features_of("val", val) if val is not None else None
    if boundary is not None and stage == "finetune" and trainable_layers:
        start = time.perf_counter()
        train = (boundary.get("train", train[0], monitor.activity("boundary cache (train)", verbose)), train[1])
        if val is not None:
            val = (boundary.get("val", val[0], monitor.activity("boundary cache (val)", verbose)), val[1])
        fit_model = boundary.split.train_model
        cache_record = {"seconds": round(time.perf_counter() - start, 3), **boundary.records}
    steps_per_epoch = math.ceil(len(train[1]) / batch_size)
    compile_for_stage(fit_model, config, steps_per_epoch, label_smoothing)
    callbacks = [monitor]
    if config.early_stopping and val is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping,
                                                       restore_best_weights=True))
    y_train = _targets(train[1], label_smoothing)
    train_batches = ArrayBatches(train[0], y_train, batch_size, shuffle=True, seed=seed)
    validation = None
    if val is not None and len(val[1]):
        validation = ArrayBatches(val[0], _targets(val[1], label_smoothing), batch_size)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    # The batches shuffle themselves (seeded); Keras' shuffle would only reorder whole batches.
    history = fit_model.fit(train_batches, epochs=config.epochs, validation_data=validation,
                            callbacks=callbacks, verbose=verbose, shuffle=False)
    seconds = time.perf_counter() - start
    if monitor.non_finite_at:
        epoch, batch = monitor.non_finite_at
        raise TrainingError(
            f"the loss became NaN/inf in stage {stage}, epoch {epoch}, batch {batch}; lower the learning "
            f"rate (--{stage}-lr {config.learning_rate:g} now) or use --precision float32"
        )
    epochs_run = len(history.history.get("loss", []))
    return {"stage": stage, "epochs": epochs_run, "seconds": seconds,
            "images_per_second": epochs_run * len(y_train) / seconds if seconds else None,
            "trainable_backbone_layers": trainable_layers, "cache": cache_record,
            "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}


def _head_features(model, name, images, cache, identity, boundary, batch_size, monitor, verbose):
    """Pooled features of one image set from the feature cache; on a miss, derived from the boundary
    activations when the run has them (one prefix pass serves both stages), else the full graph."""
    progress = monitor.activity(f"features ({name})", verbose)
    if boundary is None:
        return cache.features(model, identity, images, batch_size, progress)
    # float16 boundary storage makes these features differ slightly: a key of their own.
    identity = {**identity, "via_boundary": boundary.split.first_unfrozen}
    features, record = cache.features(model, identity, images, batch_size, progress,
                                      compute=lambda x, report: boundary.features(name, x, report))
    return features, {**record, "via_boundary": boundary.split.first_unfrozen}


def _targets(labels: np.ndarray, label_smoothing: float) -> np.ndarray:
    if label_smoothing:
        return keras.utils.to_categorical(labels, 10).astype("float32")
    return labels
