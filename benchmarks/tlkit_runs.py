"""What the `feature_cache` and `boundary_cache` sections share: whole `tlkit.fit` runs with a cache on or off.

The config overrides every such case starts from, the case function (child side; it imports tlkit's training
code when called) and the per-run cost figures and table row (parent side). No Keras import at module level.

metrics.json `seconds.head` / `seconds.finetune` time only the `fit` call; building a cache (extracting
features, computing boundary activations) happens before it and is recorded in the cache entry. The stage
cost compared is fit + cache building, so a cold cache is charged for its extraction.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import DATA_DIR, SEED, WEIGHTS, phase
from benchmarks.formatting import failure, num, ratio


def run_overrides(settings: dict, workdir: Path, name: str, **fields) -> dict:
    """Config overrides on top of the `cpu` preset shared by every tlkit.fit case."""
    overrides = {
        "name": name, "precision": "float32", "seed": SEED,
        "runs_dir": str(workdir / "runs"),
        "data": {"data_dir": str(DATA_DIR), "train_limit": settings["train_limit"],
                 "test_limit": settings["test_limit"]},
        "model": {"weights": str(WEIGHTS), "image_size": settings["image_size"]},
        "augment": {"flip": False, "rotation": 0.0, "zoom": 0.0, "translation": 0.0, "contrast": 0.0},
        # Every stage runs the epochs its section states (each case gives them, which turns the preset's
        # step floor off); early stopping would end stages at varying points.
        "head": {"early_stopping": 0},
        "finetune": {"early_stopping": 0},
    }
    for key, value in fields.items():
        if isinstance(value, dict):
            overrides.setdefault(key, {}).update(value)
        else:
            overrides[key] = value
    return overrides


# ---- the case (child side) --------------------------------------------------------------------------


def tlkit_train(params: dict, emit) -> dict:
    """One `tlkit.fit(config)` run; returns the parts of metrics.json the report compares."""
    import tlkit
    from tlkit.config import Config

    config = Config.from_preset(params["preset"], overrides=params["overrides"])
    record = {}
    with phase(record, "train"):
        run = tlkit.fit(config, verbose=0)
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
        "run_dir": str(run.path), "finetune_convolution_gflop": finetune_convolution_gflop(config),
    }


def finetune_convolution_gflop(config) -> dict | None:
    """Convolution arithmetic of one image in the finetune stage, in GFLOP (2 per multiply-add).

    `frozen`: the frozen prefix's forward pass (what the boundary cache saves); `unfrozen_forward`: the rest's
    forward pass (validation); `unfrozen_train`: its forward and backward pass (the kernel gradient, plus the
    input gradient of each unfrozen convolution that reads an unfrozen layer). Only convolutions count: they are
    almost all of ResNet50's arithmetic. None without a finetune stage.
    """
    import keras

    from tlkit.backbones import build_backbone, select_layers

    if not config.finetune.unfreeze or not config.finetune.epochs:
        return None
    model = build_backbone(config.model.backbone, "none", config.model.image_size).model
    unfrozen = {id(layer) for layer in select_layers(model, config.finetune.unfreeze)}
    work = {"frozen": 0.0, "unfrozen_forward": 0.0, "unfrozen_train": 0.0}
    for layer in model.layers:  # the layers select_layers picks from
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        height, width, filters = layer.output.shape[1:]
        channels = layer.input.shape[-1] // layer.groups
        forward = 2 * height * width * filters * channels * layer.kernel_size[0] * layer.kernel_size[1] / 1e9
        if id(layer) not in unfrozen:
            work["frozen"] += forward
            continue
        reads_unfrozen = id(layer.input._keras_history.operation) in unfrozen
        work["unfrozen_forward"] += forward
        work["unfrozen_train"] += forward * (3 if reads_unfrozen else 2)
    return work


# ---- figures and table (parent side) ----------------------------------------------------------------


def stage_seconds(report: dict, stage: str):
    return (report["result"].get("seconds") or {}).get(stage)


def feature_cache_seconds(result: dict) -> float:
    """Seconds the head stage spent getting train/val features (extraction on a miss, a read on a hit)."""
    head = ((result.get("feature_cache") or {}).get("head")) or {}
    return sum((record or {}).get("seconds") or 0.0 for record in head.values())


def boundary_cache_seconds(result: dict) -> float:
    entry = result.get("boundary_cache") or {}
    return (entry.get("seconds") or 0.0) if entry.get("used") else 0.0


def stage_cost(report: dict, stage: str) -> float | None:
    fit = stage_seconds(report, stage)
    if fit is None:
        return None
    build = feature_cache_seconds if stage == "head" else boundary_cache_seconds
    return fit + build(report["result"])


def training_cost(report: dict) -> float | None:
    """Both stages with every extraction and cache build (the prefix may be computed in either stage)."""
    head, finetune = stage_cost(report, "head"), stage_cost(report, "finetune")
    return None if head is None or finetune is None else head + finetune


CACHE_COLUMNS = ("fit (s)", "cache build (s)", "stage = fit + build (s)", "evaluate (s)", "run total (s)",
                 "val acc.", "test acc.")


def cache_row(report: dict, stage: str, note) -> tuple:
    """One run's row under CACHE_COLUMNS, then `note(result)` and the process peak RSS."""
    if failure(report):
        return (report["label"], failure(report), *["–"] * 8)
    result = report["result"]
    build = feature_cache_seconds(result) if stage == "head" else boundary_cache_seconds(result)
    val = (result.get("val_accuracy") or {}).get(stage)
    return (report["label"], num(stage_seconds(report, stage), 1), num(build, 1), num(stage_cost(report, stage), 1),
            num(stage_seconds(report, "evaluate"), 1), num(stage_seconds(report, "total"), 1), num(val, 4),
            num(result.get("test_accuracy"), 4), note(result), num(report["process"]["peak_rss_mb"], 0))


def load_control(first: dict, second: dict) -> str:
    """Evaluation of the test set is the same work in both runs (full model, no cache): a built-in load check."""
    a, b = stage_seconds(first, "evaluate"), stage_seconds(second, "evaluate")
    control = ratio(a, b)
    if control is None:
        return ""
    verdict = ("similar load while evaluating" if 0.8 <= control <= 1.25 else
               "**the load changed between the runs; this speedup is unreliable**")
    return f"- Load control: test evaluation (identical work) took {num(a, 1)} s vs {num(b, 1)} s ({verdict})."
