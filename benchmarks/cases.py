"""The measurements; each runs inside a fresh child process (see `benchmarks.child`).

Importing this module imports Keras, so the backend is whatever `KERAS_BACKEND`
said when the child started. Every case takes its parameters (a JSON-able
dict from `benchmarks.sections`) and an `emit(partial_result)` callback that
saves partial results (long cases call it as they go, so a timeout keeps what
was measured), and returns a JSON-able dict.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time

import keras
import numpy as np

import tlkit
from benchmarks import seed_style
from benchmarks.common import DATA_DIR, MB, WEIGHTS, RssSampler, cpu_seconds, phase, rss_bytes
from tlkit.batches import ArrayBatches
from tlkit.config import Config, FinetuneStageConfig, HeadStageConfig, ModelConfig
from tlkit.data import load_fashion_mnist, stratified_subset
from tlkit.model import build_classifier, unfreeze_backbone
from tlkit.stages import StageMonitor, compile_for_stage, run_stage


def train_subset(count: int, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """A stratified subset of the real training set: uint8 (N, 28, 28, 1) and int32 labels."""
    (images, labels), _ = load_fashion_mnist(DATA_DIR)
    chosen = stratified_subset(labels, count, seed)
    return np.ascontiguousarray(images[chosen][..., None]), labels[chosen].astype("int32")


def describe_array(array: np.ndarray) -> dict:
    return {"shape": list(array.shape), "dtype": str(array.dtype), "mb": round(array.nbytes / MB, 2)}


def trainable_count(model: keras.Model) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def epoch_monitor(epochs: int, seconds: list[float]) -> StageMonitor:
    """tlkit's own stage callback, used on both sides of a comparison so the per-batch work is identical."""
    return StageMonitor("head", epochs, on_epoch=lambda report: seconds.append(report.seconds))


def throughput_summary(images: int, epoch_seconds: list[float], setup_seconds: float = 0.0) -> dict:
    """Steady-state images/s (epochs after the first, which also traces/compiles) and end to end."""
    steady = epoch_seconds[1:] or epoch_seconds
    return {
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "train_images_per_second": round(images * len(steady) / sum(steady), 2),
        "end_to_end_images_per_second": round(images * len(epoch_seconds) / (setup_seconds + sum(epoch_seconds)), 2),
    }


# ---- section 1: seed-style host pipeline vs tlkit's in-graph pipeline ----------------
#
# Both cases take the same params: image_size, images, epochs, batch_size, seed, head, and an optional
# steps_per_epoch. With steps_per_epoch (the memory comparison at full resolution) only a few steps
# train, but the whole array is still prepared and handed to `fit`, which is what costs the memory.


def pipeline_seed_style(params: dict, emit) -> dict:
    """Host resize → float32 array → fit on the frozen-backbone classifier (the seed's way)."""
    keras.utils.set_random_seed(params["seed"])
    images, labels = train_subset(params["images"], params["seed"])
    model = seed_style.build_model(params["image_size"], str(WEIGHTS), **params["head"])
    record, seconds = {}, []
    # The sampler starts after the model is built, so its increase is the pipeline + training working set.
    with phase(record, "pipeline"):
        start = time.perf_counter()
        prepared = seed_style.prepare_images(images, params["image_size"])
        prepare_seconds = time.perf_counter() - start
        seed_style.train(model, prepared, labels, params["epochs"], params["batch_size"],
                         steps_per_epoch=params.get("steps_per_epoch"),
                         callbacks=[epoch_monitor(params["epochs"], seconds)])
    return {"host_array": describe_array(prepared), "prepare_seconds": round(prepare_seconds, 3),
            "params": model.count_params(), "trainable_params": trainable_count(model), "memory": record["pipeline"],
            **throughput_summary(images_per_epoch(params, len(labels)), seconds, prepare_seconds)}


def pipeline_tlkit(params: dict, emit) -> dict:
    """uint8 (N, 28, 28, 1) → tlkit's classifier (resize, RGB, normalise in-graph), head stage, no feature cache."""
    keras.utils.set_random_seed(params["seed"])
    images, labels = train_subset(params["images"], params["seed"])
    model_config = ModelConfig(backbone="resnet50", weights=str(WEIGHTS), image_size=params["image_size"],
                               **params["head"])
    model = build_classifier(model_config, seed=params["seed"]).model
    stage = HeadStageConfig(epochs=params["epochs"], learning_rate=1e-3)
    record, seconds = {}, []
    monitor = epoch_monitor(params["epochs"], seconds)
    with phase(record, "pipeline"):
        if params.get("steps_per_epoch"):
            # run_stage has no step limit; this is its head-stage path (frozen backbone, same compile) cut short.
            compile_for_stage(model, stage, params["steps_per_epoch"])
            model.fit(images, labels, batch_size=params["batch_size"], epochs=params["epochs"],
                      steps_per_epoch=params["steps_per_epoch"], callbacks=[monitor], verbose=0, shuffle=True)
        else:
            run_stage(model, "head", stage, (images, labels), None, batch_size=params["batch_size"],
                      monitor=monitor, verbose=0)
    return {"host_array": describe_array(images), "prepare_seconds": 0.0, "params": model.count_params(),
            "trainable_params": trainable_count(model), "memory": record["pipeline"],
            **throughput_summary(images_per_epoch(params, len(labels)), seconds)}


def images_per_epoch(params: dict, count: int) -> int:
    steps = params.get("steps_per_epoch")
    return min(count, steps * params["batch_size"]) if steps else count


# ---- sections 2 and 3: whole tlkit runs with a cache on or off -----------------------


def tlkit_train(params: dict, emit) -> dict:
    """One `tlkit.train(config)` run; returns the parts of metrics.json the report compares."""
    config = Config.from_preset(params["preset"], overrides=params["overrides"])
    record = {}
    with phase(record, "train"):
        run = tlkit.train(config, verbose=0)
    metrics = run.metrics() or {}
    last_val = {}
    for row in run.history():
        if row.get("val_accuracy") is not None:
            last_val[row["stage"]] = row["val_accuracy"]
    return {
        "seconds": metrics.get("seconds"), "images_per_second": metrics.get("images_per_second"),
        "test_accuracy": metrics.get("test_accuracy"), "test_loss": metrics.get("test_loss"),
        "val_accuracy": last_val, "feature_cache": metrics.get("feature_cache"),
        "boundary_cache": metrics.get("boundary_cache"), "data_sizes": metrics.get("data_sizes"),
        "precision": metrics.get("precision"), "stages": metrics.get("stages"), "memory": record["train"],
        "run_dir": str(run.path),
    }


# ---- section 4: per-backend throughput ----------------------------------------------


def backend_throughput(params: dict, emit) -> dict:
    """Inference and training images/s of the full classifier, per image size and precision."""
    largest = max(group["batch_size"] * (group["batches"] + 1) for group in params["grid"])  # + warm-up batch
    images, labels = train_subset(max(largest, 100), params["seed"])
    measurements = []
    for group in params["grid"]:
        try:
            measurements += measure_size(images, labels, **group, unfreeze=params["unfreeze"])
        except Exception as error:  # one failing size must not lose the rest of the grid
            message = f"{type(error).__name__}: {str(error)[:300]}"
            measurements += [{**size_fields(group), "precision": precision, "error": message}
                             for precision in group["precisions"]]
        emit({"measurements": measurements})
    return {"measurements": measurements}


def size_fields(group: dict) -> dict:
    return {key: group[key] for key in ("image_size", "batch_size", "batches")}


@contextlib.contextmanager
def dtype_policy(name: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def measure_size(images: np.ndarray, labels: np.ndarray, image_size: int, precisions: list[str], batch_size: int,
                 batches: int, unfreeze: str) -> list[dict]:
    """One model per precision at `image_size`, timed batch by batch, the precisions interleaved.

    Interleaving (fp32 batch, bf16 batch, fp32 batch, …) exposes every precision to the same machine
    load, so their ratio holds even when other work shares the CPU. `predict_on_batch` and
    `train_on_batch` return host values, so a timed call includes finishing its work (JAX dispatches
    asynchronously). The headline figure is the median batch.
    """
    keras.backend.clear_session()
    gc.collect()
    batch = [(images[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size])
             for i in range(batches + 1)]
    models, build_seconds = {}, {}
    for precision in precisions:
        with dtype_policy(precision):
            start = time.perf_counter()
            config = ModelConfig(backbone="resnet50", weights=str(WEIGHTS), image_size=image_size)
            models[precision] = build_classifier(config).model
            build_seconds[precision] = time.perf_counter() - start
    predict = interleaved({p: (lambda x, y, m=models[p]: m.predict_on_batch(x)) for p in precisions}, batch)
    losses, trainable = {p: [] for p in precisions}, {}
    for precision in precisions:
        with dtype_policy(precision):
            trainable[precision] = unfreeze_backbone(models[precision], unfreeze)
            compile_for_stage(models[precision], FinetuneStageConfig(epochs=1, learning_rate=1e-4), batches)

    def train_step(model, loss_log):
        return lambda x, y: loss_log.append(float(np.ravel(model.train_on_batch(x, y))[0]))

    train = interleaved({p: train_step(models[p], losses[p]) for p in precisions}, batch)
    return [{"image_size": image_size, "precision": p, "batch_size": batch_size, "batches": batches,
             "build_seconds": round(build_seconds[p], 2), **prefixed("predict", predict[p], batch_size),
             **prefixed("train", train[p], batch_size), "train_loss": losses[p][-1],
             "trainable_backbone_layers": len(trainable[p]), "trainable_params": trainable_count(models[p])}
            for p in precisions]


def interleaved(steps: dict, batches: list) -> dict[str, dict]:
    """Warms every step up on the first batch, then times each step on each further batch, in rotating order."""
    names = list(steps)
    timings = {name: {"batch_seconds": [], "cpu": 0.0} for name in names}
    for name in names:
        with dtype_policy(name):
            start = time.perf_counter()
            steps[name](*batches[0])
            timings[name]["warmup_seconds"] = time.perf_counter() - start
    for index, (x, y) in enumerate(batches[1:]):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            with dtype_policy(name):
                cpu_start, start = cpu_seconds(), time.perf_counter()
                steps[name](x, y)
                timings[name]["batch_seconds"].append(time.perf_counter() - start)
                timings[name]["cpu"] += cpu_seconds() - cpu_start
    return timings


def prefixed(name: str, timing: dict, batch_size: int) -> dict:
    seconds = timing["batch_seconds"]
    return {
        f"{name}_warmup_seconds": round(timing["warmup_seconds"], 2),
        f"{name}_batch_seconds": [round(s, 4) for s in seconds],
        f"{name}_images_per_second": round(batch_size / statistics.median(seconds), 2),
        f"{name}_mean_images_per_second": round(batch_size * len(seconds) / sum(seconds), 2),
        f"{name}_cpu_utilisation": round(timing["cpu"] / sum(seconds), 2),
    }


# ---- section 5: feeding float16 cached activations ------------------------------------


def float16_activations(samples: int, shape: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random float16 (samples, *shape) and int32 labels; filled in float32 chunks of ≤ ~50 MB."""
    rng = np.random.default_rng(seed)
    x = np.empty((samples, *shape), dtype="float16")
    chunk = max(1, int(50 * MB // (4 * math.prod(shape))))
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        x[start:stop] = rng.standard_normal((stop - start, *shape), dtype="float32")
    return x, rng.integers(0, 10, samples).astype("int32")


class EpochMemory(keras.callbacks.Callback):
    """Seconds of each epoch, its peak RSS (sampled) and the RSS at its end: growth across epochs shows up here."""

    def __init__(self):
        super().__init__()
        self.seconds, self.peak_mb, self.end_mb = [], [], []
        self._start, self._sampler = 0.0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._sampler = RssSampler().__enter__()
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 3))
        self.end_mb.append(round(rss_bytes() / MB, 1))
        self._sampler.__exit__(None, None, None)
        self.peak_mb.append(round(self._sampler.peak_mb, 1))


def cache_feeding(params: dict, emit) -> dict:
    """`fit` then `predict` of a small model on a float16 array, fed as numpy arrays or through ArrayBatches.

    The model (1×1 Conv2D to 64 channels → global average pooling → Dense 10) is cheap, so what `fit` and
    `predict` add to host memory is the feeding. Keras' array adapter casts the whole float16 array to float32
    before slicing batches; ArrayBatches casts one batch at a time.
    """
    keras.utils.set_random_seed(params["seed"])
    x, y = float16_activations(params["samples"], params["shape"], params["seed"])
    inputs = keras.Input(tuple(params["shape"]))
    hidden = keras.layers.Conv2D(64, 1, activation="relu")(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    epochs, batch_size, predict_batch = params["epochs"], params["batch_size"], params["predict_batch_size"]
    if params["feeding"] == "keras":
        fit_data, fit_options = (x, y), {"batch_size": batch_size, "shuffle": True}
        predict_data, predict_options = x, {"batch_size": predict_batch}
    else:
        fit_data, fit_options = (ArrayBatches(x, y, batch_size, shuffle=True, seed=params["seed"]),), {"shuffle": False}
        predict_data, predict_options = ArrayBatches(x, batch_size=predict_batch), {}
    monitor = EpochMemory()
    record = {}
    gc.collect()
    # The sampler starts after the array is filled and the model built: its increase is what feeding adds.
    with phase(record, "fit"):
        history = model.fit(*fit_data, epochs=epochs, callbacks=[monitor], verbose=0, **fit_options)
    result = {"feeding": params["feeding"], "array": describe_array(x), "params": model.count_params(),
              "fit": {**record["fit"], "epoch_seconds": monitor.seconds, "epoch_peak_rss_mb": monitor.peak_mb,
                      "epoch_end_rss_mb": monitor.end_mb,
                      "loss": [round(float(value), 4) for value in history.history["loss"]]}}
    emit(result)
    del history
    gc.collect()
    with phase(record, "predict"):
        predictions = model.predict(predict_data, verbose=0, **predict_options)
    result["predict"] = {**record["predict"], "output": describe_array(np.asarray(predictions))}
    return result


CASES = {
    "pipeline_seed_style": pipeline_seed_style,
    "pipeline_tlkit": pipeline_tlkit,
    "tlkit_train": tlkit_train,
    "backend_throughput": backend_throughput,
    "cache_feeding": cache_feeding,
}
