"""The two training stages, as in the Keras transfer-learning guide: freeze → compile → fit,
then unfreeze → recompile → fit.

Stage `head` trains the new head on a frozen backbone; stage `finetune`
unfreezes the chosen depth of the backbone (BatchNorm excluded) and continues
at a lower learning rate. `prepare_stage` freezes or unfreezes, `run_stage`
compiles and fits; everything a stage needs (optimizer, schedule, callbacks,
progress, NaN and cancel handling) is chosen from the config here. What the
stage fits on (images, or cached activations) is `tlkit.caches`' decision.

Example:

```python
from tlkit.schedules import StageSchedule
from tlkit.stages import prepare_stage, run_stage

prepare_stage(classifier, "head")                                   # freeze
run_stage(classifier.model, config.head, (images, labels), stage="head", batch_size=64)  # compile, fit
schedule = StageSchedule(1e-3, steps_per_epoch=100, epochs=10, kind="cosine", warmup_epochs=1)
float(schedule(0)), float(schedule(100)), float(schedule(999))  # 0.0, 0.001, ~0.0
```
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import ops

from tlkit.batches import ArrayBatches, fit_input, keras_input
from tlkit.config import StageConfig
from tlkit.distribution import batch_multiple, evaluation_multiple, process_share
from tlkit.model import Classifier
from tlkit.runs import fsync_path
from tlkit.schedules import StageSchedule


class TrainingError(RuntimeError):
    """Training could not go on (NaN loss, …); the message says what to change."""


class RunCancelled(BaseException):
    """The run was cancelled (SIGTERM, Ctrl-C or the explorer's Cancel); what was done is kept.

    A `BaseException`, like `KeyboardInterrupt`: library code that catches `Exception` (weight
    downloads, data loading) must not turn a cancel into a failure.
    """


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
    # Weighted: the padding of a data-parallel evaluation batch has weight 0 (tlkit.batches).
    model.compile(optimizer=make_optimizer(config, steps_per_epoch), loss=loss, weighted_metrics=metrics)


def prepare_stage(classifier: Classifier, stage: str, unfreeze: str = "") -> list[str]:
    """Freezes (`head`) or unfreezes (`finetune`, BatchNorm excluded) the backbone for `stage`.

    Returns:
        The backbone layers with weights that train in this stage.
    """
    if stage == "head":
        return classifier.freeze_backbone()
    return classifier.unfreeze(unfreeze)


@dataclasses.dataclass
class EpochReport:
    """What the stage reports after each epoch (for history.csv and status.json)."""

    stage: str
    epoch: int
    epochs: int
    logs: dict
    lr: float  # the mean of the rates of the epoch's first and last step
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
        self._fit_started = False
        self._epoch_start = 0.0
        self._lr_at_start = 0.0
        self._last_progress = 0.0

    def activity(self, label: str, verbose) -> Callable[[float], None]:
        """A progress callback for a long step outside `fit` (e.g. computing a cache)."""

        def report(fraction: float) -> None:
            if verbose:
                print(f"{self.stage}: {label} {fraction:.0%}", flush=True)
            if self.on_activity:
                self.on_activity(label, fraction)
            if self.should_stop and self.should_stop():
                raise RunCancelled("cancelled while computing a cache")

        return report

    def on_epoch_begin(self, epoch, logs=None):
        if not self._fit_started and self.on_progress:
            # Where fitting starts: the ETA's rate is measured from here, so the first epoch's
            # report already has one (epochs shorter than `progress_interval` report nothing else).
            self.on_progress(epoch + 1, 0.0)
        self._fit_started = True
        self._epoch = epoch
        self._epoch_start = time.perf_counter()
        self._lr_at_start = self._current_lr()

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

    def _current_lr(self) -> float:
        return float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        # An epoch cut short (cancel, NaN) set stop_training at a batch: no row, and no checkpoint either
        # (EpochCheckpoint). A cancel that arrives during validation finds the epoch whole: it gets its
        # row, as its checkpoint is written, and the next batch stops the fit.
        if self.non_finite_at or not self.on_epoch or self.model.stop_training:
            return
        # The epoch's rate: the mean of its first and last step's (a schedule's last epoch ends at 0,
        # a warm-up's first starts there; either alone would misstate what the epoch trained at).
        lr = (self._lr_at_start + self._current_lr()) / 2
        seconds = time.perf_counter() - self._epoch_start
        self.on_epoch(EpochReport(self.stage, epoch + 1, self.epochs, dict(logs or {}), lr, seconds))


class EpochCheckpoint(keras.callbacks.Callback):
    """After every whole epoch, saves what a resumed fit needs to go on exactly where this one
    stopped: the fit model's weights, its optimizer state (the step count included, so the LR
    schedule continues) and the random-generator states that dropout and augmentation draw from.

    Each epoch is written to a temp directory that is renamed to `epoch-NNNN` as a whole, so a kill
    at any moment leaves the previous epoch or this one, never the weights of one with the
    generator states of another. A fit started on a directory holding a checkpoint restores it;
    pass `initial_epoch=EpochCheckpoint.saved_epoch(directory)` to `fit` to skip the finished epochs.

    The state is one `.npz` (Python file I/O) rather than Keras' `save_weights` (HDF5): an HDF5
    write that fails on a full disk leaves a file h5py crashes on (SIGSEGV) when it is closed.

    Args:
        directory: the stage's checkpoint directory.
    """

    STATE_FILE = "state.npz"

    def __init__(self, directory):
        super().__init__()
        self.directory = Path(directory)

    def on_train_begin(self, logs=None):
        latest = self.latest(self.directory)
        if latest is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        with np.load(latest / self.STATE_FILE, allow_pickle=False) as saved:
            for group, variables in self._groups().items():
                values = [saved[f"{group}_{index}"] for index in range(_count(saved.files, group))]
                if [value.shape for value in values] != [tuple(variable.shape) for variable in variables]:
                    raise TrainingError(f"the checkpoint in {latest} does not match this model ({group}); "
                                        "start a new run instead of resuming this one")
                for variable, value in zip(variables, values):
                    variable.assign(value)
            if "torch" in saved.files:
                _set_torch_rng_state(saved["torch"])

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:  # cut short (cancel, NaN) or ended: the last whole epoch stays saved
            return
        self._save(epochs_done=epoch + 1)

    def _save(self, epochs_done: int) -> None:
        final = self.directory / f"epoch-{epochs_done:04d}"
        temp = self.directory / f".{final.name}.tmp"
        shutil.rmtree(temp, ignore_errors=True)  # a kill during an earlier write of this epoch
        temp.mkdir(parents=True)
        state = {f"{group}_{index}": ops.convert_to_numpy(variable)
                 for group, variables in self._groups().items() for index, variable in enumerate(variables)}
        torch_state = _torch_rng_state()
        if torch_state is not None:
            state["torch"] = torch_state
        try:
            np.savez(temp / self.STATE_FILE, **state)
            fsync_path(temp / self.STATE_FILE)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temp, final)  # the commit
            fsync_path(self.directory)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        for older in self.directory.glob("epoch-*"):
            if older != final:
                shutil.rmtree(older, ignore_errors=True)

    def _groups(self) -> dict[str, list]:
        """The variables a checkpoint holds, by group, in a fixed order."""
        optimizer = self.model.optimizer
        return {"weights": list(self.model.weights),
                "optimizer": list(optimizer.variables) if optimizer is not None else [],
                "rng": self._rng_variables()}

    def _rng_variables(self) -> list:
        saved = {id(variable) for variable in self.model.weights}
        return [variable for variable in self.model.variables if id(variable) not in saved]

    @classmethod
    def latest(cls, directory) -> Path | None:
        """The newest whole checkpoint in `directory`, or None."""
        saved = sorted(Path(directory).glob("epoch-[0-9][0-9][0-9][0-9]"))
        return saved[-1] if saved else None

    @classmethod
    def saved_epoch(cls, directory) -> int:
        """Epochs finished according to the checkpoint in `directory` (0 when there is none)."""
        latest = cls.latest(directory)
        return int(latest.name.split("-")[1]) if latest else 0


# Backend-specific helpers: under torch, Keras' Dropout without an explicit seed draws from torch's
# global generator (its fast path), whose state a checkpoint must carry as well.
def _torch_rng_state() -> np.ndarray | None:
    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.get_rng_state().numpy()


def _count(names, group: str) -> int:
    return sum(name.startswith(f"{group}_") for name in names)


def _set_torch_rng_state(state: np.ndarray) -> None:
    if keras.backend.backend() == "torch":
        import torch

        torch.set_rng_state(torch.from_numpy(np.asarray(state, dtype=np.uint8)))


def run_stage(model: keras.Model, config: StageConfig, train, val=None, *, stage: str, batch_size: int,
              label_smoothing: float = 0.0, monitor: StageMonitor | None = None, verbose: int | str = "auto",
              seed: int | None = None, checkpoint_dir: str | Path | None = None, train_mirrored=None) -> dict:
    """Compiles `model` for one stage and fits it; returns a summary.

    The caller has frozen or unfrozen the backbone (`prepare_stage`) and chosen
    what the stage fits on (`tlkit.caches.RunCaches.stage_data`): the classifier on
    images, or its head / unfrozen part on cached activations. Either way the
    weights trained are the classifier's own.

    Args:
        model: the model to fit.
        config: the stage's config (optimizer, schedule, epochs, early stopping).
        train: `(inputs, labels)` arrays; inputs may be a list (several boundary tensors).
        val: `(inputs, labels)` or None.
        stage: the stage's name, for reports and errors.
        batch_size: batch size.
        label_smoothing: label smoothing of the loss.
        monitor: a `StageMonitor` for reports (one is made if None).
        verbose: Keras progress-bar verbosity.
        seed: reseeds all random generators right before fitting, so the batch order is the
            same with and without caches (cache extraction consumes torch's global RNG).
        checkpoint_dir: keep an `EpochCheckpoint` there; a checkpoint already there (an
            interrupted run) is restored and the stage goes on after its last finished epoch.
        train_mirrored: the inputs of the training images' mirror images (cached activations
            of a run with a random flip); each epoch every sample is drawn from `train` or from
            these with equal odds.

    Raises:
        TrainingError: when the loss becomes NaN/inf.
    """
    monitor = monitor or StageMonitor(stage, config.epochs)
    num_classes = int(model.output.shape[-1])
    steps_per_epoch = math.ceil(len(train[1]) / batch_size)
    compile_for_stage(model, config, steps_per_epoch, label_smoothing)
    callbacks = [monitor]
    early_stopping = None
    if config.early_stopping and val is not None and len(val[1]):
        # Keras restores the best epoch's weights at the end of fit, whether it stopped early or not.
        # Patience counts from the end of warm-up: a rising rate may lift the loss before it helps.
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=config.early_stopping_metric, patience=config.early_stopping, restore_best_weights=True,
            start_from_epoch=math.ceil(config.warmup_epochs))
        callbacks.append(early_stopping)
    # Data parallel: every batch, the last too, splits evenly across the devices (and hosts).
    process = process_share()
    train_batches = ArrayBatches(train[0], _targets(train[1], label_smoothing, num_classes), batch_size,
                                 shuffle=True, seed=seed, x_alternative=train_mirrored, multiple_of=batch_multiple(),
                                 process=process)
    resumed_at = 0
    if checkpoint_dir is not None:
        resumed_at = EpochCheckpoint.saved_epoch(checkpoint_dir)
        train_batches.skip_epochs(resumed_at)  # the interrupted fit's batch orders, epoch by epoch
        callbacks.append(EpochCheckpoint(checkpoint_dir))
    validation = None
    if val is not None and len(val[1]):
        val_batches = ArrayBatches(val[0], _targets(val[1], label_smoothing, num_classes), batch_size,
                                   multiple_of=evaluation_multiple(len(val[1]), batch_size), process=process)
        validation = keras_input(val_batches)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    # The batches shuffle themselves (seeded); Keras' shuffle would only reorder whole batches.
    history = model.fit(**fit_input(train_batches, config.epochs - resumed_at), epochs=config.epochs,
                        validation_data=validation, callbacks=callbacks, verbose=verbose, shuffle=False,
                        initial_epoch=resumed_at)
    seconds = time.perf_counter() - start
    if monitor.non_finite_at:
        epoch, batch = monitor.non_finite_at
        raise TrainingError(
            f"the loss became NaN/inf in stage {stage}, epoch {epoch}, batch {batch}; lower the learning "
            f"rate (--{stage}-lr {config.learning_rate:g} now) or use --precision float32"
        )
    epochs_run = len(history.history.get("loss", []))
    best_epoch = None  # the epoch whose weights the stage ends with, when early stopping chose them
    if early_stopping is not None and early_stopping.best_weights is not None:
        best_epoch = early_stopping.best_epoch + 1
    return {"stage": stage, "epochs": resumed_at + epochs_run, "planned_epochs": config.epochs,
            "min_steps": config.min_steps,
            "steps_per_epoch": steps_per_epoch, "warmup_steps": round(config.warmup_epochs * steps_per_epoch),
            "best_epoch": best_epoch, "resumed_at_epoch": resumed_at, "seconds": seconds,
            "images_per_second": epochs_run * len(train[1]) / seconds if seconds and epochs_run else None}


def _targets(labels: np.ndarray, label_smoothing: float, num_classes: int) -> np.ndarray:
    # Sparse labels keep host memory small; label smoothing needs the dense form.
    if label_smoothing:
        return keras.utils.to_categorical(labels, num_classes).astype("float32")
    return labels
