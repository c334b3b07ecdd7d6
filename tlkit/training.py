"""One training run, top to bottom: data → model → stages → evaluation → run directory.

`tlkit.train(config)` (this module's `train`) is the Python API behind
`python -m tlkit.train`.

Example:

```python
import tlkit

config = tlkit.Config.from_preset("smoke", overrides={"data": {"data_dir": "fashion-mnist/"}})
run = tlkit.train(config)
run.metrics()["test_accuracy"]
```
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import signal
import threading
import time

import keras
import numpy as np

from tlkit import runs
from tlkit.boundary import plan_boundary
from tlkit.config import Config
from tlkit.data import Splits, load_splits
from tlkit.evaluate import classification_report, misclassified
from tlkit.features import FeatureCache, head_model
from tlkit.model import build_classifier
from tlkit.stages import EpochReport, StageMonitor, run_stage

STAGES = ("head", "finetune")


class RunCancelled(Exception):
    """The run was cancelled (SIGTERM or Ctrl-C); what was done so far is kept."""


# Set by SIGTERM. The handler also raises, but a raise can land inside library code that
# swallows it, so stages poll this flag after every batch as well.
_cancel_requested = threading.Event()


def train(config: Config, run: runs.Run | None = None, resume: bool = False, verbose="auto") -> runs.Run:
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
        Exception: any other failure, after status.json records it as `failed`.
    """
    config.validate()
    run = run or runs.create_run(config.runs_dir, config.name)
    run.write_config(config.to_dict())
    previous = run.status()
    completed = list(previous.get("completed_stages", [])) if resume else []
    run.update_status(state="running", pid=os.getpid(), error=None, backend=keras.backend.backend(),
                      started_at=runs._now(), completed_stages=completed, stage="setup", progress=0.0)
    with _cancel_on_sigterm(), _precision(config.precision) as precision:
        try:
            _execute(config, run, completed, precision, verbose)
        except (KeyboardInterrupt, RunCancelled):
            run.update_status(state="cancelled", error="cancelled by the user")
            raise RunCancelled(f"run {run.run_id} cancelled; finished stages are kept in {run.path}") from None
        except BaseException as error:
            run.update_status(state="failed", error=describe_error(error))
            raise
    return run


def describe_error(error: BaseException) -> str:
    """One line for status.json and the CLI."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if type(error).__name__ in ("ConfigError", "DataError", "BackboneError", "TrainingError"):
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _execute(config: Config, run: runs.Run, completed: list[str], precision: str, verbose) -> None:
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    run.update_status(stage="data")
    splits = load_splits(config.data, config.seed)
    run.update_status(stage="model", data_sizes={"train": len(splits.train), "val": len(splits.val),
                                                 "test": len(splits.test)})
    weights_id = None
    if completed and run.model_path.exists():
        model = run.load_model()
        run.write_history([row for row in run.history() if row["stage"] in completed])
    else:
        completed.clear()
        run.write_history([])
        classifier = build_classifier(config.model, config.augment, config.seed)
        model, weights_id = classifier.model, classifier.backbone.weights_id
    # Features of the frozen backbone can be cached when nothing random sits in front of it.
    feature_cache = None
    if config.feature_cache and not config.augment.enabled and weights_id is not None:
        feature_cache = FeatureCache(config.cache_dir or None)
    cache_identity = {"backbone": config.model.backbone, "weights": weights_id, "image_size": config.model.image_size,
                      "precision": precision, "backend": keras.backend.backend(), "keras": keras.__version__}
    boundary, boundary_plan = _plan_boundary(config, model, splits, completed, feature_cache, cache_identity)

    total_epochs = sum(getattr(config, stage).epochs for stage in STAGES)
    summaries: dict[str, dict] = {}
    for stage in STAGES:
        stage_config = getattr(config, stage)
        if stage_config.epochs == 0 or stage in completed:
            continue
        epochs_before = sum(getattr(config, s).epochs for s in STAGES[: STAGES.index(stage)])
        monitor = _monitor_for(run, stage, stage_config.epochs, epochs_before, total_epochs)
        run.update_status(stage=stage, epoch=0, epochs=stage_config.epochs)
        summaries[stage] = run_stage(
            model, stage, stage_config, (splits.train.images, splits.train.labels),
            (splits.val.images, splits.val.labels) if len(splits.val) else None,
            batch_size=config.batch_size, label_smoothing=config.model.label_smoothing,
            unfreeze=getattr(stage_config, "unfreeze", ""), monitor=monitor, verbose=verbose,
            feature_cache=feature_cache if stage == "head" else None, cache_identity=cache_identity,
            boundary=boundary, seed=config.seed + STAGES.index(stage),
        )
        if _cancel_requested.is_set():
            raise RunCancelled("SIGTERM")
        save_model(model, run)
        completed.append(stage)
        run.update_status(completed_stages=list(completed))

    run.update_status(stage="evaluate", progress=0.98)
    backbone_unchanged = feature_cache is not None and completed == ["head"]
    metrics = _evaluate(model, splits, run, config.batch_size,
                        (feature_cache, cache_identity) if backbone_unchanged else None, config.tta_flip)
    metrics.update(
        backend=keras.backend.backend(), precision=precision, versions=_versions(), device=_device(),
        seconds={**{s: round(v["seconds"], 2) for s, v in summaries.items()},
                 "evaluate": metrics.pop("evaluate_seconds"), "total": round(time.perf_counter() - started, 2)},
        images_per_second={**{s: v["images_per_second"] for s, v in summaries.items()},
                           "evaluate": metrics.pop("evaluate_images_per_second")},
        stages={s: {k: v[k] for k in ("epochs", "trainable_params", "trainable_backbone_layers")}
                for s, v in summaries.items()},
        data_sizes={"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        data_fingerprint=splits.fingerprint(),
        feature_cache={"used": feature_cache is not None and "head" in summaries,
                       **({"head": summaries["head"]["cache"]} if "head" in summaries else {}),
                       **({"test": metrics.pop("test_feature_cache")} if "test_feature_cache" in metrics else {})},
        boundary_cache={**boundary_plan, **(summaries["finetune"]["cache"] or {})} if "finetune" in summaries
        else {"used": False},
    )
    run.write_metrics(metrics)
    run.update_status(state="completed", stage="done", progress=1.0, test_accuracy=metrics["test_accuracy"],
                      finished_at=runs._now())


def _plan_boundary(config: Config, model, splits: Splits, completed: list[str], feature_cache, identity):
    """The run's boundary activations when the finetune stage can use them (no augmentation, a
    trainable suffix, within the memory budget); else None and a record saying why."""
    if not config.boundary_cache or config.augment.enabled:
        return None, {"used": False, "reason": "off" if not config.boundary_cache else "augmentation is on"}
    if config.finetune.epochs == 0 or "finetune" in completed:
        return None, {"used": False}
    count = len(splits.train) + len(splits.val)
    boundary, record = plan_boundary(model, config.finetune.unfreeze, count, int(config.cache_memory_gb * 1e9),
                                     max(config.batch_size, 256), feature_cache, identity)
    if boundary is None and "bytes" in record:  # refused for the memory budget
        print(f"note: {record['reason']}", flush=True)
    return boundary, record


def _monitor_for(run: runs.Run, stage: str, epochs: int, epochs_before: int, total_epochs: int) -> StageMonitor:
    def overall(epoch_fraction: float) -> float:
        return round(0.97 * (epochs_before + epoch_fraction) / max(total_epochs, 1), 4)

    def on_epoch(report: EpochReport) -> None:
        logs = report.logs
        run.append_history({"stage": stage, "epoch": report.epoch, "loss": logs.get("loss"),
                            "accuracy": logs.get("accuracy"), "val_loss": logs.get("val_loss"),
                            "val_accuracy": logs.get("val_accuracy"), "lr": report.lr,
                            "seconds": round(report.seconds, 3)})
        run.update_status(epoch=report.epoch, progress=overall(report.epoch),
                          last={k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    def on_progress(epoch: int, fraction: float) -> None:
        run.update_status(epoch=epoch - 1, progress=overall(epoch - 1 + fraction))

    def on_activity(label: str, fraction: float) -> None:
        run.update_status(activity=f"{label} {fraction:.0%}" if fraction < 1 else None)

    return StageMonitor(stage, epochs, on_epoch=on_epoch, on_progress=on_progress,
                        should_stop=_cancel_requested.is_set, on_activity=on_activity)


def _evaluate(model: keras.Model, splits: Splits, run: runs.Run, batch_size: int, cached=None,
              tta_flip: bool = False) -> dict:
    """Test-set metrics; with `cached` (backbone untouched since caching), from cached features;
    with `tta_flip`, averaged over each image and its mirror image."""
    start = time.perf_counter()
    records = []

    def predict(images: np.ndarray) -> np.ndarray:
        if cached:
            cache, identity = cached
            features, record = cache.features(model, identity, images, max(batch_size, 256))
            records.append(record)
            return np.asarray(head_model(model).predict(features, batch_size=batch_size, verbose=0), np.float64)
        return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), np.float64)

    probabilities = predict(splits.test.images)
    if tta_flip:
        # Mirroring the 28×28 source equals mirroring the resized image (the resize is symmetric).
        probabilities = (probabilities + predict(splits.test.images[:, :, ::-1])) / 2
    seconds = time.perf_counter() - start
    report = classification_report(splits.test.labels, probabilities, splits.class_names)
    wrong = misclassified(splits.test.labels, probabilities)
    run.write_misclassified(index=splits.test.indices[wrong["position"]], true=wrong["true"],
                            predicted=wrong["predicted"], confidence=wrong["confidence"],
                            images=splits.test.images[wrong["position"], ..., 0])
    if records:
        report["test_feature_cache"] = records[0]
    report["evaluate_seconds"] = round(seconds, 2)
    report["evaluate_images_per_second"] = len(splits.test) / seconds if seconds else None
    return report


def save_model(model: keras.Model, run: runs.Run) -> None:
    """Saves `model.keras` atomically (temp file in the run dir, then rename)."""
    temp = run.file(".model.tmp.keras")
    model.save(temp)
    os.replace(temp, run.model_path)


# Backends whose CPU kernels run bfloat16 faster than float32 on CPUs with native bf16
# support (docs/performance.md measures it per backend).
BF16_CPU_BACKENDS = ("tensorflow", "torch")


def resolve_precision(precision: str) -> str:
    """`auto` → mixed_float16 on a GPU (Keras adds loss scaling), mixed_bfloat16 on a CPU with
    native bf16 instructions for backends that use them, else float32."""
    if precision != "auto":
        return precision
    devices = [d.lower() for d in list_devices()]
    if any(d.startswith(("gpu", "cuda")) for d in devices):
        return "mixed_float16"
    if keras.backend.backend() in BF16_CPU_BACKENDS and cpu_has_bf16():
        return "mixed_bfloat16"
    return "float32"


def cpu_has_bf16() -> bool:
    """True when the CPU advertises bf16 instructions (AVX512-BF16 or AMX-BF16; Linux only)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def list_devices() -> list[str]:
    """Devices of the current backend, e.g. `["cpu:0"]` or `["gpu:0", "gpu:1"]`."""
    if keras.backend.backend() != "torch":
        return list(keras.distribution.list_devices())
    # Backend-specific helper: Keras' list_devices is not implemented for torch.
    import torch

    gpus = [f"gpu:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return gpus or ["cpu:0"]


@contextlib.contextmanager
def _precision(precision: str):
    resolved = resolve_precision(precision)
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


def _versions() -> dict:
    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": np.__version__}
    for package in ("tensorflow", "jax", "torch", "keras-hub"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def _device() -> dict:
    return {"devices": list_devices(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
