"""Section 4, `backends`: inference and training images/s per backend and image size, float32 vs mixed precision.

The case function runs in the child and imports Keras and tlkit's model code when called.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from pathlib import Path

from benchmarks.common import WEIGHTS, cpu_seconds, train_subset, trainable_count
from benchmarks.formatting import failure, num, ratio, table, times
from benchmarks.sections.base import BACKENDS, SEED, TORCH_PASSIVE, Case, Section, SummaryRow

# Per image size: batch size and timed batches (after one warm-up batch). A 224 px image costs ~12× a 64 px
# one, so 224 gets a few small batches; medians need at least three. mixed_float16 runs at one size only,
# to show that float16 is slow on a CPU without float16 arithmetic.
THROUGHPUT_GRID = {
    "quick": [(32, 16, 3, ("float32", "mixed_bfloat16", "mixed_float16"))],
    "full": [(32, 32, 4, ("float32", "mixed_bfloat16")),
             (64, 16, 4, ("float32", "mixed_bfloat16", "mixed_float16")),
             (96, 16, 3, ("float32", "mixed_bfloat16")),
             (224, 4, 3, ("float32", "mixed_bfloat16"))],
}


def throughput_settings(mode: str) -> dict:
    grid = [{"image_size": size, "batch_size": batch, "batches": batches, "precisions": list(precisions)}
            for size, batch, batches, precisions in THROUGHPUT_GRID[mode]]
    return {"grid": grid, "unfreeze": "conv5", "seed": SEED}


SETTINGS = {mode: throughput_settings(mode) for mode in ("quick", "full")}


def plan(settings: dict, workdir: Path) -> list[Case]:
    # A timed-out child keeps the sizes it finished (it saves results after each size).
    return [Case("throughput grid", "backend_throughput", settings, 900)]


# ---- the case (child side) --------------------------------------------------------------------------


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
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def measure_size(images, labels, image_size: int, precisions: list[str], batch_size: int, batches: int,
                 unfreeze: str) -> list[dict]:
    """One model per precision at `image_size`, timed batch by batch, the precisions interleaved.

    Interleaving (fp32 batch, bf16 batch, fp32 batch, …) exposes every precision to the same machine
    load, so their ratio holds even when other work shares the CPU. `predict_on_batch` and
    `train_on_batch` return host values, so a timed call includes finishing its work (JAX dispatches
    asynchronously). The headline figure is the median batch.
    """
    import keras
    import numpy as np

    from tlkit.config import FinetuneStageConfig, ModelConfig
    from tlkit.data import CLASS_NAMES
    from tlkit.model import build_classifier
    from tlkit.stages import compile_for_stage

    keras.backend.clear_session()
    gc.collect()
    batch = [(images[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size])
             for i in range(batches + 1)]
    classifiers, models, build_seconds = {}, {}, {}
    for precision in precisions:
        with dtype_policy(precision):
            start = time.perf_counter()
            config = ModelConfig(backbone="resnet50", weights=str(WEIGHTS), image_size=image_size)
            classifiers[precision] = build_classifier(config, num_classes=len(CLASS_NAMES),
                                                       input_shape=images.shape[1:])
            models[precision] = classifiers[precision].model
            build_seconds[precision] = time.perf_counter() - start
    predict = interleaved({p: (lambda x, y, m=models[p]: m.predict_on_batch(x)) for p in precisions}, batch)
    losses, trainable = {p: [] for p in precisions}, {}
    for precision in precisions:
        with dtype_policy(precision):
            trainable[precision] = classifiers[precision].unfreeze(unfreeze)
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


# ---- rendering (parent side) ------------------------------------------------------------------------


def measurements(reports: list[dict]) -> dict[str, list[dict]]:
    """Backend → list of grid measurements (partial when the child timed out)."""
    found = {}
    for report in reports:
        found[report["backend"]] = (report.get("result") or {}).get("measurements") or []
    return found


def lookup(items: list[dict], size: int, precision: str) -> dict | None:
    for item in items:
        if item["image_size"] == size and item["precision"] == precision and not item.get("error"):
            return item
    return None


def grid_sizes(settings: dict) -> list[int]:
    return sorted({group["image_size"] for group in settings["grid"]})


def render(reports: list[dict], settings: dict, cores: int) -> str:
    sizes = grid_sizes(settings)
    parts = [
        "The full classifier (uint8 input → in-graph resize → ResNet50 with ImageNet weights → head). "
        "*Inference*: `model.predict_on_batch`. *Training*: `model.train_on_batch` with the backbone unfrozen from "
        f"`{settings['unfreeze']}` (conv5 and the head train; BatchNorm frozen), Adam. Each figure is batch size / "
        "median batch time over a few timed batches, after one untimed warm-up batch of the same shape (which "
        "compiles/traces); both calls return host values, so a timed batch includes finishing its work. The "
        "precisions of one image size are separate models in one process, timed batch by batch in rotating order, "
        "so they share whatever load the machine had and their ratio is robust to it. "
        "Precision is the Keras dtype policy (`mixed_*` = float32 variables, 16-bit compute). Sizes, batch sizes "
        "and the mean-based figures are in the per-backend details. *jax* runs with the XLA CPU flag that "
        "importing tlkit sets (convolutions on XLA's own multi-threaded kernels, not YNNPACK; "
        "`tlkit/environment.py`) and with convolutions on maps of at most 2×2 computed as one matmul "
        "(`tlkit.model.convolve_small_maps_as_matmul`: conv4 and conv5 at 32 px, conv5 at 64 px), "
        "*jax+TLKIT_XLA_CPU_TUNING=0* without either; *torch+OMP_WAIT_POLICY=PASSIVE* is torch "
        "with OpenMP threads that sleep instead of spinning while they wait."
    ]
    found = measurements(reports)
    for report in reports:
        if failure(report):
            parts.append(f"{report['backend']}: {failure(report)}")
    parts.append(render_speed_tables(found, sizes, cores))
    parts.append(size_anomalies(found, sizes))
    parts.append(render_precision_ratios(found, sizes))
    for backend, items in found.items():
        rows = []
        for item in items:
            shape = f"{item['batch_size']} × {item['batches']}"
            if item.get("error"):
                rows.append((item["image_size"], item["precision"], shape, f"**failed**: {item['error']}",
                             *["–"] * 4))
                continue
            rows.append((item["image_size"], item["precision"], shape,
                         f"{num(item['predict_images_per_second'])} / {num(item['train_images_per_second'])}",
                         f"{num(item['predict_mean_images_per_second'])} / {num(item['train_mean_images_per_second'])}",
                         f"{num(item['predict_warmup_seconds'])} / {num(item['train_warmup_seconds'])}",
                         f"{num(item['predict_cpu_utilisation'], 2)} / {num(item['train_cpu_utilisation'], 2)}",
                         num(item["build_seconds"])))
        parts.append(f"<details><summary>{backend}: every measurement</summary>\n\n" + table(
            ("px", "precision", "batch × timed batches", "median img/s (inference / training)",
             "mean img/s", "warm-up s", "CPU util.", "build s"), rows) + "\n\n</details>")
    return "\n\n".join(parts)


def render_speed_tables(found: dict[str, list[dict]], sizes: list[int], cores: int) -> str:
    backends = list(found)
    rows = []
    for size in sizes:
        for precision in ("float32", "mixed_bfloat16"):
            cells = []
            for backend in backends:
                item = lookup(found[backend], size, precision)
                cells.append(f"{num(item['predict_images_per_second'])} / {num(item['train_images_per_second'])}"
                             if item else "–")
            rows.append((size, precision, *cells))
    utilisation = []
    for backend in backends:
        values = [item[f"{kind}_cpu_utilisation"] for item in found[backend] if not item.get("error")
                  for kind in ("predict", "train")]
        if values:
            utilisation.append(f"{backend} {min(values):.2f}–{max(values):.2f}")
    return ("Images/s (median batch), inference / training:\n\n" + table(("px", "precision", *backends), rows)
            + f"\n\nCPU utilisation during the timed batches ({cores} = all cores): "
            + ", ".join(utilisation) + ".")


def size_anomalies(found: dict[str, list[dict]], sizes: list[int]) -> str:
    """Flags a larger image running faster than a smaller one: a slow kernel path for one shape, not noise."""
    lines = []
    for backend, items in found.items():
        for small, large in zip(sizes, sizes[1:]):
            for precision in ("float32", "mixed_bfloat16"):
                a, b = lookup(items, small, precision), lookup(items, large, precision)
                if a and b and b["predict_images_per_second"] > 1.2 * a["predict_images_per_second"]:
                    lines.append(f"- {backend}, {precision}: {large} px runs faster than {small} px "
                                 f"({num(b['predict_images_per_second'])} vs {num(a['predict_images_per_second'])} "
                                 f"img/s inference) although it has {(large / small) ** 2:.1f}× the pixels.")
    return ("**Anomalies** (a larger image faster than a smaller one):\n\n" + "\n".join(lines)) if lines else ""


def render_precision_ratios(found: dict[str, list[dict]], sizes: list[int]) -> str:
    backends = list(found)
    rows = []
    for backend in backends:
        cells = []
        for size in sizes:
            fp32, bf16 = lookup(found[backend], size, "float32"), lookup(found[backend], size, "mixed_bfloat16")
            if not fp32 or not bf16:
                cells.append("–")
                continue
            cells.append(f"{times(ratio(bf16['predict_images_per_second'], fp32['predict_images_per_second']))} / "
                         f"{times(ratio(bf16['train_images_per_second'], fp32['train_images_per_second']))}")
        rows.append((backend, *cells))
    text = ("**mixed_bfloat16 / float32 speed** (inference / training; > 1× means bfloat16 is faster):\n\n"
            + table(("backend", *[f"{size} px" for size in sizes]), rows) + "\n\n" + bfloat16_verdicts(found, sizes))
    fp16_sizes = sorted({item["image_size"] for items in found.values() for item in items
                         if item["precision"] == "mixed_float16"})
    fp16_rows = []
    for backend in backends:
        for size in fp16_sizes:
            fp32, fp16 = lookup(found[backend], size, "float32"), lookup(found[backend], size, "mixed_float16")
            if fp32 and fp16:
                predict = ratio(fp16["predict_images_per_second"], fp32["predict_images_per_second"])
                train = ratio(fp16["train_images_per_second"], fp32["train_images_per_second"])
                fp16_rows.append((backend, size, f"{num(fp16['predict_images_per_second'])} / "
                                  f"{num(fp16['train_images_per_second'])}", f"{times(predict)} / {times(train)}"))
    if fp16_rows:
        text += ("\n\n**mixed_float16** (this CPU has no native float16 arithmetic):\n\n"
                 + table(("backend", "px", "img/s inference / training", "vs float32"), fp16_rows))
    return text


def bfloat16_means(found: dict[str, list[dict]], sizes: list[int]) -> dict[str, tuple[float, float]]:
    """Backend → geometric means over sizes of bf16/fp32 images/s, (inference, training)."""
    means = {}
    for backend, items in found.items():
        ratios = {"predict": [], "train": []}
        for size in sizes:
            fp32, bf16 = lookup(items, size, "float32"), lookup(items, size, "mixed_bfloat16")
            if fp32 and bf16:
                for kind in ratios:
                    ratios[kind].append(bf16[f"{kind}_images_per_second"] / fp32[f"{kind}_images_per_second"])
        if ratios["predict"]:
            means[backend] = tuple(math.prod(values) ** (1 / len(values)) for values in ratios.values())
    return means


def bfloat16_verdicts(found: dict[str, list[dict]], sizes: list[int]) -> str:
    return "\n".join(f"- {backend}: bfloat16 / float32 geometric mean over the sizes: **{inference:.2f}×** "
                     f"inference, **{training:.2f}×** training."
                     for backend, (inference, training) in bfloat16_means(found, sizes).items())


def summarise(reports: list[dict], settings: dict) -> list[SummaryRow]:
    means = bfloat16_means(measurements(reports), grid_sizes(settings))
    return [SummaryRow(f"mixed_bfloat16 / float32, {backend} (geometric mean over sizes)",
                       f"{inference:.2f}× inference, {training:.2f}× training", "> 1× to pick bf16",
                       [report for report in reports if report["backend"] == backend])
            for backend, (inference, training) in means.items()]


SECTION = Section(
    name="backends", title="Per-backend throughput, float32 vs mixed precision",
    default_backends=(*BACKENDS, "jax+TLKIT_XLA_CPU_TUNING=0", TORCH_PASSIVE), settings=SETTINGS, plan=plan,
    cases={"backend_throughput": backend_throughput}, render=render, summarise=summarise,
)
