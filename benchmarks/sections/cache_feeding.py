"""Section 5, `cache_feeding`: `fit` / `predict` on a float16 array fed as numpy arrays vs `tlkit.batches.ArrayBatches`.

Keras' array adapter casts the whole float16 array to float32 before slicing batches; ArrayBatches casts one batch
at a time. The case function runs in the child and imports Keras and tlkit when called.
"""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path

from benchmarks.common import MB, RssSampler, describe_array, phase, rss_bytes
from benchmarks.formatting import by_backend, failure, find, num, ok, ratio, table, times
from benchmarks.sections.base import BACKENDS, SEED, Case, Section, SummaryRow

# A float16 array shaped like the boundary activations of `--unfreeze conv5` at 72 px (ResNet50's conv4 output,
# 5×5×1024), 51,200 bytes a sample: 10,000 samples are 512 MB (a float32 copy 1 GB), 1,200 are 61 MB.
FEEDING_ARRAY = {"shape": [5, 5, 1024], "batch_size": 64, "predict_batch_size": 256}
SETTINGS = {
    "quick": {**FEEDING_ARRAY, "samples": 1200, "epochs": 2},
    "full": {**FEEDING_ARRAY, "samples": 10000, "epochs": 3},
}


def plan(settings: dict, workdir: Path) -> list[Case]:
    # One child per feeding, so the peak of one never shows up in the other.
    params = {**settings, "seed": SEED}
    return [Case("Keras arrays", "cache_feeding", {**params, "feeding": "keras"}, 1800),
            Case("ArrayBatches", "cache_feeding", {**params, "feeding": "array_batches"}, 1800)]


# ---- the case (child side) --------------------------------------------------------------------------


def float16_activations(samples: int, shape: list[int], seed: int):
    """Random float16 (samples, *shape) and int32 labels; filled in float32 chunks of ≤ ~50 MB. Allocated
    as tlkit's caches are (64-byte aligned), which TensorFlow feeds from in place."""
    import numpy as np

    from tlkit.batches import aligned_empty

    rng = np.random.default_rng(seed)
    x = aligned_empty((samples, *shape), "float16")
    chunk = max(1, int(50 * MB // (4 * math.prod(shape))))
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        x[start:stop] = rng.standard_normal((stop - start, *shape), dtype="float32")
    return x, rng.integers(0, 10, samples).astype("int32")


def epoch_memory():
    """A Keras callback with the seconds of each epoch, its peak RSS (sampled) and the RSS at its end.

    Growth across epochs shows up in the end RSS. The class is defined when called, so that importing this
    module does not import Keras.
    """
    import keras

    class EpochMemory(keras.callbacks.Callback):
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

    return EpochMemory()


def cache_feeding(params: dict, emit) -> dict:
    """`fit` then `predict` of a small model on a float16 array, fed as numpy arrays or through ArrayBatches.

    The model (1×1 Conv2D to 64 channels → global average pooling → Dense 10) is cheap, so what `fit` and
    `predict` add to host memory is the feeding. Keras' array adapter casts the whole float16 array to float32
    before slicing batches; ArrayBatches casts one batch at a time.
    """
    import keras
    import numpy as np

    from tlkit.batches import ArrayBatches, fit_input, keras_input

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
        # As tlkit feeds them: through keras_input (under TensorFlow a tf.data pipeline without autotuning).
        fit_data = ()
        fit_options = {**fit_input(ArrayBatches(x, y, batch_size, shuffle=True, seed=params["seed"]), epochs),
                       "shuffle": False}
        predict_data, predict_options = keras_input(ArrayBatches(x, batch_size=predict_batch)), {}
    monitor = epoch_memory()
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


# ---- rendering (parent side) ------------------------------------------------------------------------
#
# Memory ratios divide by what ArrayBatches added; below MEMORY_FLOOR_MB that is allocator noise (predict can
# reuse memory fit freed), so the ratio is a lower bound against the floor, shown as "≥".

MEMORY_FLOOR_MB = 10.0

# The backend variant that separates glibc's retained heap from what the feeding holds (see render).
FIXED_MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"


def memory_ratio(keras_mb: float, batches_mb: float) -> str:
    if batches_mb < MEMORY_FLOOR_MB:
        return f"≥ {keras_mb / MEMORY_FLOOR_MB:,.0f}×"
    return times(ratio(keras_mb, batches_mb))


def steady_epoch_seconds(fit: dict) -> float | None:
    """Mean seconds of the epochs after the first (which also traces/compiles); the only epoch if just one."""
    seconds = fit.get("epoch_seconds") or []
    steady = seconds[1:] or seconds
    return sum(steady) / len(steady) if steady else None


def rss_growth(fit: dict) -> float | None:
    """RSS at the last epoch end minus RSS at the first: what each further epoch kept."""
    ends = fit.get("epoch_end_rss_mb") or []
    return ends[-1] - ends[0] if len(ends) > 1 else None


def transient_mb(fit: dict) -> float:
    """The most an epoch's sampled peak rose above the RSS at its end: memory taken and given back per epoch."""
    return max((peak - end for peak, end in zip(fit["epoch_peak_rss_mb"], fit["epoch_end_rss_mb"])), default=0.0)


def feeding_pair(group: list[dict]) -> tuple[dict | None, dict | None]:
    return find(group, "cache_feeding", "Keras arrays"), find(group, "cache_feeding", "ArrayBatches")


def feeding_fit_row(report: dict | None, name: str, other: dict | None) -> tuple:
    if not ok(report):
        return (name, failure(report) if report else "not run", *["–"] * 8)
    result = report["result"]
    fit = result["fit"]
    share = ""
    if name == "Keras arrays" and ok(other):
        share = memory_ratio(fit["rss_increase_mb"], other["result"]["fit"]["rss_increase_mb"])
    ends = " / ".join(num(value, 0) for value in fit["epoch_end_rss_mb"])
    return (name, num(result["array"]["mb"], 0), num(fit["rss_increase_mb"], 0), share,
            f"{num(fit['rss_start_mb'], 0)} → {ends}", " / ".join(num(v, 0) for v in fit["epoch_peak_rss_mb"]),
            f"{' / '.join(num(v, 1) for v in fit['epoch_seconds'])} ({num(steady_epoch_seconds(fit), 1)})",
            num(fit["seconds"], 1), num(fit["loss"][-1], 3), num(fit["cpu_utilisation"], 2))


def feeding_predict_row(report: dict | None, name: str, other: dict | None) -> tuple:
    if not ok(report) or "predict" not in report["result"]:
        return (name, failure(report) if report and failure(report) else "not run", *["–"] * 5)
    result = report["result"]
    predict = result["predict"]
    share = ""
    if name == "Keras arrays" and ok(other) and "predict" in other["result"]:
        share = memory_ratio(predict["rss_increase_mb"], other["result"]["predict"]["rss_increase_mb"])
    return (name, num(result["array"]["mb"], 0), num(predict["rss_start_mb"], 0), num(predict["rss_increase_mb"], 0),
            share, num(predict["seconds"], 1), num(report["process"]["peak_rss_mb"], 0))


def growth_phrase(fit: dict, array_mb: float) -> str:
    growth = rss_growth(fit)
    if growth is None:
        return "one epoch only"
    epochs = len(fit["epoch_end_rss_mb"])
    # Within 5% of the array (or the floor): allocator noise, not a copy kept per epoch.
    if abs(growth) <= max(0.05 * array_mb, MEMORY_FLOOR_MB):
        return f"flat from epoch 1 to {epochs} ({growth:+,.0f} MB)"
    return f"{'up' if growth > 0 else 'down'} {abs(growth):,.0f} MB from epoch 1 to {epochs}"


def feeding_verdict(backend: str, keras_arrays: dict | None, batches: dict | None) -> str:
    if not ok(keras_arrays) or not ok(batches):
        return f"- {backend}: no comparison (a case failed)."
    a, b = keras_arrays["result"], batches["result"]
    array_mb = a["array"]["mb"]
    fit_a, fit_b = a["fit"], b["fit"]
    line = (f"- {backend}: `fit` with Keras arrays added {num(fit_a['rss_increase_mb'], 0)} MB "
            f"({fit_a['rss_increase_mb'] / array_mb:.1f}× the float16 array; a float32 copy of it is 2×), with "
            f"ArrayBatches {num(fit_b['rss_increase_mb'], 0)} MB ({fit_b['rss_increase_mb'] / array_mb:.1f}×): "
            f"**{memory_ratio(fit_a['rss_increase_mb'], fit_b['rss_increase_mb'])}** as much with Keras arrays. "
            f"Epoch-end RSS: Keras arrays {growth_phrase(fit_a, array_mb)}, ArrayBatches "
            f"{growth_phrase(fit_b, array_mb)}; an epoch's peak above its end RSS: up to "
            f"{num(transient_mb(fit_a), 0)} MB ({transient_mb(fit_a) / array_mb:.1f}× the array) vs "
            f"{num(transient_mb(fit_b), 0)} MB. Time, ArrayBatches / Keras arrays: whole "
            f"`fit` {times(ratio(fit_b['seconds'], fit_a['seconds']))}, steady epochs "
            f"{times(ratio(steady_epoch_seconds(fit_b), steady_epoch_seconds(fit_a)))}.")
    if "predict" in a and "predict" in b:
        line += (f" `predict` added {num(a['predict']['rss_increase_mb'], 0)} MB vs "
                 f"{num(b['predict']['rss_increase_mb'], 0)} MB "
                 f"({memory_ratio(a['predict']['rss_increase_mb'], b['predict']['rss_increase_mb'])}) and took "
                 f"{times(ratio(b['predict']['seconds'], a['predict']['seconds']))} the time with ArrayBatches.")
    return line


def render(reports: list[dict], settings: dict, cores: int) -> str:
    shape = "×".join(str(size) for size in settings["shape"])
    array_mb = settings["samples"] * math.prod(settings["shape"]) * 2 / MB
    parts = [
        f"A random float16 array of {settings['samples']:,} samples × {shape} ({array_mb:,.0f} MB; shaped like "
        "the boundary activations of `--unfreeze conv5` at 72 px; 64-byte aligned, as tlkit allocates its caches) "
        "and int32 labels, filled before measuring. A "
        "small model consumes it (1×1 Conv2D to 64 channels → global average pooling → Dense 10; Adam, sparse "
        "cross-entropy), so compute is cheap and host memory is dominated by how the array is fed. *Keras "
        f"arrays*: `model.fit(x, y, batch_size={settings['batch_size']}, shuffle=True)` and `model.predict(x, "
        f"batch_size={settings['predict_batch_size']})`, i.e. Keras' array adapter. *ArrayBatches*: "
        f"`model.fit(**fit_input(batches, epochs={settings['epochs']}), shuffle=False)` for "
        f"`batches = ArrayBatches(x, y, {settings['batch_size']}, shuffle=True, seed=42)` "
        f"and `model.predict(keras_input(ArrayBatches(x, batch_size="
        f"{settings['predict_batch_size']})))`, as tlkit's `run_stage` and `BoundaryActivations.features` feed "
        "float16 caches (`keras_input` is a tf.data pipeline gathering from the array in place under TensorFlow, "
        "the batches themselves elsewhere). Each feeding runs in its own child process per "
        f"backend: `fit` for {settings['epochs']} epochs, then `predict`. *Memory added* is the peak RSS sampled "
        "every 5 ms during the call minus the RSS just before it; `predict` starts from whatever `fit` left "
        "resident (its *RSS before* column) and may reuse memory `fit` freed. *Keras / ArrayBatches* divides the "
        f"two; when ArrayBatches added under {MEMORY_FLOOR_MB:.0f} MB it divides by {MEMORY_FLOOR_MB:.0f} MB "
        "instead (a lower bound, ≥). *RSS before → at each epoch end*: the RSS just before `fit`, then the RSS "
        "read by an `on_epoch_end` callback; *peak RSS per epoch* is sampled during each epoch. Memory kept from "
        "one epoch to the next shows up as growth of the epoch-end RSS, memory taken and given back within an "
        "epoch as a peak above it. *s per epoch* runs from `on_epoch_begin` to `on_epoch_end` (the first epoch "
        "also traces/compiles; the mean of the later ones is in parentheses); *fit (s)* is the whole call, "
        "including what the data adapter does before the first epoch begins.",
    ]
    groups = by_backend(reports)
    for backend, group in groups.items():
        keras_arrays, batches = feeding_pair(group)
        fit_rows = [feeding_fit_row(keras_arrays, "Keras arrays", batches),
                    feeding_fit_row(batches, "ArrayBatches", keras_arrays)]
        predict_rows = [feeding_predict_row(keras_arrays, "Keras arrays", batches),
                        feeding_predict_row(batches, "ArrayBatches", keras_arrays)]
        parts.append(f"**{backend}**\n\n`fit`, {settings['epochs']} epochs:\n\n" + table(
            ("feeding", "array (MB)", "memory added (MB)", "Keras / ArrayBatches", "RSS before → at each epoch "
             "end (MB)", "peak RSS per epoch (MB)", "s per epoch (steady)", "fit (s)", "final loss", "CPU util."),
            fit_rows)
            + "\n\n`predict`:\n\n" + table(
            ("feeding", "array (MB)", "RSS before (MB)", "memory added (MB)", "Keras / ArrayBatches", "seconds",
             "process peak RSS (MB)"), predict_rows))
    parts.append("\n".join(feeding_verdict(backend, *feeding_pair(group)) for backend, group in groups.items()))
    if any(FIXED_MMAP_THRESHOLD in backend for backend in groups):
        parts.append(
            f"*{FIXED_MMAP_THRESHOLD}* rows: the same children with glibc's mmap threshold fixed at that size. By "
            "default glibc raises the threshold to the size of each large block freed, so later blocks of that "
            "size come from the heap and stay resident once freed; under TensorFlow every batch the `tf.data` "
            f"pipeline gathers and casts to float32 is such a block ({settings['predict_batch_size']} samples: "
            f"{settings['predict_batch_size'] * math.prod(settings['shape']) * 4 / MB:,.0f} MB in `predict`). "
            "What these rows take away from the default rows is memory glibc kept for reuse, not data tlkit keeps; "
            "the price is time (compare *s per epoch*): every batch is then mapped from and returned to the kernel, "
            "so tlkit leaves glibc's default alone.")
    return "\n\n".join(parts)



def summarise(reports: list[dict], settings: dict) -> list[SummaryRow]:
    return []  # no target of issue 4 is about feeding; the section states its own ratios


SECTION = Section(
    name="cache_feeding", title="Feeding float16 cached activations: Keras' array adapter vs ArrayBatches",
    default_backends=BACKENDS, settings=SETTINGS, plan=plan, cases={"cache_feeding": cache_feeding},
    render=render, summarise=summarise,
)
