"""One training run, top to bottom: data → classifier → stages → evaluation → run directory.

`tlkit.fit(config)` (this module's `fit`) is the Python API behind
`python -m tlkit.train`. Each stage reads like the Keras transfer-learning
guide: freeze (or unfreeze) the backbone, compile, fit; the caches only decide
what the stage fits on.

Example:

```python
import tlkit

config = tlkit.Config.from_preset("smoke", overrides={"data": {"data_dir": "fashion-mnist/"}})
run = tlkit.fit(config)
run.metrics()["test_accuracy"]
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import shutil
import signal
import socket
import sys
import threading
import time
from typing import NoReturn

import keras
import numpy as np

from tlkit import distribution, environment, runs, tracking
from tlkit.caches import RunCaches, mirror, predict_in_chunks
from tlkit.config import STAGES, Config, ConfigError, field_named_in, flatten_dict
from tlkit.data import Splits, load_splits
from tlkit.distribution import Placement
from tlkit.evaluate import classification_report, misclassified
from tlkit.model import Classifier, build_classifier
from tlkit.stages import (
    EpochCheckpoint,
    EpochReport,
    RunCancelled,
    StageMonitor,
    TrainingError,
    prepare_stage,
    run_stage,
)

__all__ = ["RunCancelled", "describe_error", "fit", "save_model"]

# Set by SIGTERM. The handler also raises, but a raise can land inside library code that
# swallows it, so stages poll this flag after every batch as well.
_cancel_requested = threading.Event()


def fit(config: Config, run: runs.Run | None = None, resume: bool = False, verbose="auto") -> runs.Run:
    """Trains and evaluates one model; everything lands in a run directory.

    Args:
        config: the run's config (validated here, before any compute).
        run: an existing (e.g. queued) run directory to use; a new one is made if None.
        resume: continue `run` after its last completed stage (reuses its `model.keras`).
        verbose: Keras progress-bar verbosity (`"auto"`, 0, 1, 2).

    Returns:
        The `tlkit.runs.Run`; its `status()["state"]` is `"completed"`.

    Raises:
        tlkit.config.ConfigError: invalid config (no run directory is written).
        RunCancelled: on SIGTERM/Ctrl-C (status `cancelled`, history kept).
        tlkit.runs.RunLocked: another trainer holds `run` (nothing is written).
        Exception: any other failure, after status.json records it as `failed`.
    """
    config.validate()
    if config.tensorboard and (missing := tracking.tensorboard_missing()):
        raise ConfigError(missing)
    if config.mlflow_uri:
        _check_mlflow(config.mlflow_uri)  # within seconds, before a run directory exists
    distribution.initialize(config)  # several hosts: join them before any computation
    placement = Placement.plan(config)
    run = run or runs.create_run(config.runs_dir, config.name)
    with run.claim():  # one trainer per run directory (RunLocked otherwise), with a heartbeat
        if resume:
            check_resumable(run.config(), config)
        run.write_config(config.to_dict())
        previous = run.status(raw=True)
        completed = list(previous.get("completed_stages", [])) if resume else []
        run.update_status(state="running", pid=os.getpid(), host=socket.gethostname(), error=None,
                          backend=keras.backend.backend(), started_at=runs.now(), completed_stages=completed,
                          stage="setup", progress=0.0)
        # The outcome is recorded inside the trackers (their close logs it) and again outside them
        # (a tracker that could not start fails the run too).
        with _cancel_on_sigterm(), _precision(config.precision) as precision, _recording_outcome(run):
            with _trackers(config, run) as trackers, placement.scope(), _recording_outcome(run):
                _execute(config, run, completed, precision, verbose, resume, placement, trackers)
    return run


@contextlib.contextmanager
def _recording_outcome(run: runs.Run):
    """Records `cancelled` or `failed` (with the reason) in status.json for an exception in the block."""
    try:
        yield
    except (KeyboardInterrupt, RunCancelled):
        _cancelled(run)
    except BaseException as error:
        if _cancel_requested.is_set():  # SIGTERM's raise landed in library code that re-raised it as its own error
            _cancelled(run)
        message = describe_error(error, run)
        _record_outcome(run, state="failed", error=message, error_field=field_named_in(message))
        raise


def _cancelled(run: runs.Run) -> NoReturn:
    _record_outcome(run, state="cancelled", error="cancelled by the user")
    raise RunCancelled(f"run {run.run_id} cancelled; finished stages are kept in {run.path}") from None


def _record_outcome(run: runs.Run, **fields) -> None:
    if not run.record_outcome(**fields):
        print(f"tlkit: could not record {fields} in {run.file(runs.STATUS_FILE)} either", file=sys.stderr)


# What may differ when a run is resumed: where things go, the evaluation, and stage lengths (a
# changed length re-plans that stage's LR schedule from the restored step). Anything else would
# continue a different model or data than the checkpoints hold.
RESUMABLE_CHANGES = ("name", "preset", "runs_dir", "cache_dir", "tta_flip", "tensorboard", "mlflow_uri",
                     "mlflow_experiment", "head.epochs", "finetune.epochs", "head.min_steps", "finetune.min_steps",
                     "distribution.mode",
                     "distribution.coordinator_address", "distribution.num_processes", "distribution.process_id")


def check_resumable(stored: dict | None, config: Config) -> None:
    """Raises ConfigError when `config` would change the model or data of the run being resumed."""
    if stored is None:
        raise ConfigError("--resume: the run has no readable config.json; start a new run")
    before, after = flatten_dict(Config.from_dict(stored).to_dict()), flatten_dict(config.to_dict())
    changed = [f"{key} {before[key]!r} → {after[key]!r}" for key in after
               if key not in RESUMABLE_CHANGES and before.get(key) != after[key]]
    if changed:
        raise ConfigError(f"--resume would continue a different model or data than this run started with "
                          f"({'; '.join(changed)}); drop those flags, or start a new run")


def describe_error(error: BaseException, run: runs.Run | None = None) -> str:
    """One line for status.json and the CLI."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        resume = f"--existing-run {run.path} --resume" if run else "--existing-run DIR --resume"
        return (f"no space left on the device{where}; free some space, then continue with {resume} "
                "(finished epochs are kept)")
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if type(error).__name__ in ("ConfigError", "DataError", "BackboneError", "TrainingError"):
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _execute(config: Config, run: runs.Run, completed: list[str], precision: str, verbose, resume: bool,
             placement: Placement, trackers: list | None = None) -> None:
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    run.update_status(stage="data")
    splits = load_splits(config.data, config.seed, image_size=config.model.image_size)
    run.write_data_info(_data_info(config, splits))
    # Stage lengths in optimizer steps (min_steps, warmup_steps) become epochs for this data's size.
    config = config.sized_for(len(splits.train.labels))
    run.update_status(stage="model", data_sizes=splits.sizes())
    # Built the same way on resume too (same seed, known weights, so the disk caches still apply);
    # a resumed run then takes the weights of its finished stages and its last epoch checkpoint.
    classifier = build_classifier(config.model, config.augment, config.seed,
                                  num_classes=len(splits.class_names), input_shape=splits.input_shape)
    if completed and run.model_path.exists():
        _restore_finished_stages(classifier, run)
    else:
        completed.clear()
    _keep_finished_epochs(config, run, completed, resume)
    caches = RunCaches(config, classifier, splits, precision, skip_stages=tuple(completed))

    total_epochs = sum(getattr(config, stage).epochs for stage in STAGES)
    summaries: dict[str, dict] = {}
    learning_rates = {}
    for index, stage in enumerate(STAGES):
        stage_config = getattr(config, stage)
        if stage_config.epochs == 0 or stage in completed:
            continue
        stage_config = dataclasses.replace(
            stage_config, learning_rate=placement.learning_rate(config, stage_config.learning_rate))
        learning_rates[stage] = stage_config.learning_rate
        epochs_before = sum(getattr(config, s).epochs for s in STAGES[:index])
        monitor = _monitor_for(run, stage, stage_config.epochs, epochs_before, total_epochs, trackers)
        run.update_status(stage=stage, epoch=0, epochs=stage_config.epochs, elapsed_s=0.0, eta_s=None)
        # The Keras transfer-learning recipe: freeze or unfreeze, then compile and fit.
        trainable_layers = prepare_stage(classifier, stage, getattr(stage_config, "unfreeze", ""))
        data = caches.stage_data(stage, trainable_layers, functools.partial(monitor.activity, verbose=verbose))
        summary = run_stage(data.model, stage_config, data.train, data.val, stage=stage,
                            batch_size=config.batch_size, label_smoothing=config.model.label_smoothing,
                            monitor=monitor, verbose=verbose, seed=config.seed + index,
                            checkpoint_dir=_checkpoint_dir(run, stage), train_mirrored=data.train_mirrored)
        summaries[stage] = {**summary, "trainable_backbone_layers": trainable_layers,
                            "trainable_params": _count(classifier.model.trainable_weights)}
        if _cancel_requested.is_set():
            raise RunCancelled("SIGTERM")
        save_model(classifier.model, run)
        completed.append(stage)
        run.update_status(completed_stages=list(completed))
        shutil.rmtree(_checkpoint_dir(run, stage), ignore_errors=True)  # the stage is in model.keras now
    shutil.rmtree(run.file("checkpoints"), ignore_errors=True)

    run.update_status(stage="evaluate", progress=0.98, elapsed_s=0.0, eta_s=None)
    # Cached test features are valid while the backbone is as cached: only the head has trained.
    predict = _predictor(classifier, caches if completed == ["head"] else None, config.batch_size)
    metrics = _evaluate(predict, splits, run, config.tta_flip)
    metrics.update(
        backend=keras.backend.backend(), precision=precision, versions=environment.versions(),
        device=environment.device_info(),
        seconds={**{s: round(v["seconds"], 2) for s, v in summaries.items()},
                 "evaluate": metrics.pop("evaluate_seconds"), "total": round(time.perf_counter() - started, 2)},
        images_per_second={**{s: v["images_per_second"] for s, v in summaries.items()},
                           "evaluate": metrics.pop("evaluate_images_per_second")},
        stages={s: {k: v[k] for k in ("epochs", "planned_epochs", "min_steps", "steps_per_epoch", "warmup_steps",
                                      "best_epoch", "trainable_params", "trainable_backbone_layers")}
                for s, v in summaries.items()},
        data_sizes=splits.sizes(),
        data_fingerprint=splits.fingerprint(),
        distribution={**placement.describe(config), "learning_rates": learning_rates},
        **caches.metrics(list(summaries)),
    )
    run.write_metrics(metrics)
    for tracker in trackers or []:
        tracker.scalars(total_epochs, {"test_accuracy": metrics["test_accuracy"],
                                       "test_loss": metrics.get("test_loss")})
    run.update_status(state="completed", stage="done", progress=1.0, test_accuracy=metrics["test_accuracy"],
                      finished_at=runs.now())


def _checkpoint_dir(run: runs.Run, stage: str):
    return run.file("checkpoints") / stage


def _restore_finished_stages(classifier: Classifier, run: runs.Run) -> None:
    """The weights of the finished stages (model.keras) into the freshly built classifier."""
    saved = run.load_model().get_weights()
    if [w.shape for w in saved] != [tuple(w.shape) for w in classifier.model.weights]:
        raise TrainingError(f"{run.model_path} does not match the model its config.json builds; "
                            "start a new run instead of resuming this one")
    classifier.model.set_weights(saved)


def _keep_finished_epochs(config: Config, run: runs.Run, completed: list[str], resume: bool) -> None:
    """history.csv keeps the finished stages and the epochs the next stage's checkpoint holds; other
    checkpoints are dropped (a fresh start, or stages the checkpoint cannot belong to)."""
    pending = [stage for stage in STAGES if stage not in completed and getattr(config, stage).epochs]
    resumed = pending[0] if resume and pending else None
    saved = EpochCheckpoint.saved_epoch(_checkpoint_dir(run, resumed)) if resumed else 0
    for stage in STAGES:
        if stage != resumed or not saved:
            shutil.rmtree(_checkpoint_dir(run, stage), ignore_errors=True)
    run.write_history([row for row in run.history()
                       if row["stage"] in completed or (row["stage"] == resumed and row["epoch"] <= saved)])


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _monitor_for(run: runs.Run, stage: str, epochs: int, epochs_before: int, total_epochs: int,
                 trackers: list | None = None) -> StageMonitor:
    """A StageMonitor whose reports land in history.csv and status.json (progress, what is running,
    and `elapsed_s` / `eta_s` of it: a cache being computed, else the stage's epochs), and in the
    `trackers` (TensorBoard, MLflow) at the run's global epoch."""
    stage_started = time.perf_counter()
    fit_origin: list[tuple[float, float]] = []  # (time, stage fraction) at the first fit report
    activity_started: dict[str, float] = {}

    def overall(epoch_fraction: float) -> float:
        return round(0.97 * (epochs_before + epoch_fraction) / max(total_epochs, 1), 4)

    def fit_timing(epochs_done: float) -> dict:
        now, fraction = time.perf_counter(), epochs_done / max(epochs, 1)
        if not fit_origin:
            fit_origin.append((now, fraction))
        (since, fraction_then) = fit_origin[0]
        rate = (fraction - fraction_then) / (now - since) if now > since else 0.0
        eta = (1 - fraction) / rate if rate > 0 else None
        return {"elapsed_s": round(now - stage_started, 1), "eta_s": None if eta is None else round(eta, 1)}

    def on_epoch(report: EpochReport) -> None:
        logs = report.logs
        run.append_history({"stage": stage, "epoch": report.epoch, "loss": logs.get("loss"),
                            "accuracy": logs.get("accuracy"), "val_loss": logs.get("val_loss"),
                            "val_accuracy": logs.get("val_accuracy"), "lr": report.lr,
                            "seconds": round(report.seconds, 3)})
        run.update_status(epoch=report.epoch, progress=overall(report.epoch), **fit_timing(report.epoch),
                          last={k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        for tracker in trackers or []:
            tracker.scalars(epochs_before + report.epoch, {
                **{f"epoch_{key}": logs.get(key) for key in ("loss", "accuracy", "val_loss", "val_accuracy")},
                "learning_rate": report.lr})

    def on_progress(epoch: int, fraction: float) -> None:
        run.update_status(epoch=epoch - 1, progress=overall(epoch - 1 + fraction), **fit_timing(epoch - 1 + fraction))

    def on_activity(label: str, fraction: float) -> None:
        started = activity_started.setdefault(label, time.perf_counter())
        timing = _timing(started, fraction)
        run.update_status(activity=f"{label} {fraction:.0%}" if fraction < 1 else None,
                          elapsed_s=round(time.perf_counter() - stage_started, 1), eta_s=timing["eta_s"])

    return StageMonitor(stage, epochs, on_epoch=on_epoch, on_progress=on_progress,
                        should_stop=_cancel_requested.is_set, on_activity=on_activity)


def _predictor(classifier: Classifier, caches: RunCaches | None, batch_size: int):
    """(images, on_progress) → class probabilities (float64): from cached features when `caches` is given."""
    def predict(images: np.ndarray, on_progress) -> np.ndarray:
        if caches is not None:
            probabilities = caches.predict_from_features(images, batch_size, on_progress)
            if probabilities is not None:
                return probabilities
        outputs = [np.empty((len(images), int(classifier.model.output.shape[-1])), np.float32)]
        predict_in_chunks(classifier.model, images, batch_size, outputs, on_progress)
        return outputs[0].astype(np.float64)

    return predict


def _evaluate(predict, splits: Splits, run: runs.Run, tta_flip: bool = False) -> dict:
    """Test-set metrics; with `tta_flip`, averaged over each image and its mirror image."""
    start = time.perf_counter()
    passes = 2 if tta_flip else 1

    def progress(done_passes: int):
        def report(fraction: float) -> None:
            if _cancel_requested.is_set():
                raise RunCancelled("cancelled while evaluating")
            overall = (done_passes + fraction) / passes
            run.update_status(activity=f"evaluating {overall:.0%}" if overall < 1 else None,
                              **_timing(start, overall))
        return report

    probabilities = predict(splits.test.images, progress(0))
    if tta_flip:
        # Mirroring the source image equals mirroring the resized image (the resize is symmetric).
        probabilities = (probabilities + predict(mirror(splits.test.images), progress(1))) / 2
    seconds = time.perf_counter() - start
    report = classification_report(splits.test.labels, probabilities, splits.class_names)
    wrong = misclassified(splits.test.labels, probabilities)
    run.write_misclassified(index=splits.test.indices[wrong["position"]], true=wrong["true"],
                            predicted=wrong["predicted"], confidence=wrong["confidence"],
                            images=_for_gallery(splits.test.images[wrong["position"]]))
    report["evaluate_seconds"] = round(seconds, 2)
    report["evaluate_images_per_second"] = len(splits.test) / seconds if seconds else None
    return report


def _timing(started: float, fraction: float) -> dict:
    """status.json's `elapsed_s` and `eta_s` of the current stage or phase (eta None until measurable)."""
    elapsed = time.perf_counter() - started
    eta = elapsed * (1 - fraction) / fraction if 0.01 <= fraction < 1 else (0.0 if fraction >= 1 else None)
    return {"elapsed_s": round(elapsed, 1), "eta_s": None if eta is None else round(eta, 1)}


def _for_gallery(images: np.ndarray) -> np.ndarray:
    """(N, H, W) for grayscale, (N, H, W, 3) for colour: what image viewers take."""
    return images[..., 0] if images.shape[-1] == 1 else images


def _data_info(config: Config, splits: Splits) -> dict:
    return {"source": config.data.source, "class_names": list(splits.class_names),
            "input_shape": list(splits.input_shape), "sizes": splits.sizes(),
            "identity": splits.identity, "skipped": [list(item) for item in splits.skipped[:100]],
            "warnings": list(splits.warnings)}


def save_model(model: keras.Model, run: runs.Run) -> None:
    """Saves `model.keras` atomically (temp file in the run dir, then rename); a failed save
    (a full disk) leaves the previous model.keras and no temp file."""
    temp = run.file(runs.MODEL_TEMP_FILE)
    try:
        model.save(temp)  # HDF5 in memory, then a zip written with Python's file I/O
        runs.fsync_path(temp)
        os.replace(temp, run.model_path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    runs.fsync_path(run.path)


def _check_mlflow(tracking_uri: str) -> None:
    from tlkit import mlflow

    if missing := mlflow.mlflow_missing():
        raise ConfigError(f"mlflow_uri: {missing}")
    try:
        mlflow.check_reachable(tracking_uri)
    except mlflow.MlflowTrackingError as error:
        raise ConfigError(f"mlflow_uri: {error}") from None


@contextlib.contextmanager
def _trackers(config: Config, run: runs.Run):
    """The run's TensorBoard log (`--tensorboard`) and live MLflow run (`--mlflow-uri`), closed
    however the run ends, after its outcome is recorded (MLflow takes the final status then)."""
    trackers = []
    try:
        if config.tensorboard:
            trackers.append(tracking.TensorBoardLog(run.file("tensorboard")))
        if config.mlflow_uri:
            from tlkit.mlflow import MlflowLog

            trackers.append(MlflowLog(config.mlflow_uri, config.mlflow_experiment, run))
        yield trackers
    finally:
        for tracker in trackers:
            tracker.close()


@contextlib.contextmanager
def _precision(precision: str):
    resolved = environment.resolve_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolved)
    try:
        yield resolved
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def _cancel_on_sigterm():
    """Turns SIGTERM into RunCancelled so the run records `cancelled` and exits cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _cancel_requested.set()
        raise RunCancelled("SIGTERM")

    _cancel_requested.clear()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
