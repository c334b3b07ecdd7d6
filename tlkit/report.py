"""Markdown tables, text and PNG plots about finished runs, as pure functions.

Every function here reads plain values (`Run.config()`, `Run.history()`,
`Run.metrics()` and `Run.status()` of a run directory, see `tlkit.runs`) and
returns text or PNG bytes; nothing is written and nothing trains. Reports,
benchmarks and the explorer share them: `markdown_table` is the project's one
markdown-table helper. Class names come from each run's `metrics.json`, stage
names from `tlkit.config.STAGES`. Keras is never imported; the PNG functions
import matplotlib when called (`pip install -e .[report]`).

Example:

```python
from tlkit import report
from tlkit.runs import Run

run = Run("runs/20261129-101500-cpu-tf-1a2b")
config, history, metrics = run.config(), run.history(), run.metrics()
print(report.markdown_table(
    ["backbone depth", "epochs (head + finetune)", "test accuracy (%)"],
    [[report.unfrozen_depth(config), report.epochs_text(config, history, metrics),
      report.percent(metrics["test_accuracy"])]],
    align="llr",
))
png = report.confusion_matrix_png(metrics["confusion_matrix"], report.class_names_of(metrics), title=run.run_id)
```
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tlkit.config import STAGES, Config, ConfigError, UnfreezeSpec, flatten_dict
from tlkit.evaluate import per_class_metrics

# Fields that say where a run lives or how it was cached, not what was trained.
BOOKKEEPING_KEYS = ("name", "preset", "runs_dir", "cache_dir", "cache_memory_gb", "tensorboard", "mlflow_uri",
                    "mlflow_experiment")
# Fields holding local file paths: runs launched from different folders spell the same file differently.
LOCAL_FILE_KEYS = ("data.source", "data.data_dir", "model.weights")
# Keys of metrics.json's `versions` that name a Keras backend's own package.
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


# ---- formatting helpers -------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A GitHub markdown table.

    Args:
        headers: column titles.
        rows: cell values (converted with `str`).
        align: one letter per column, `l` or `r` (default `l`).
    """
    align = align.ljust(len(headers), "l")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [headers, rule, *[[str(cell) for cell in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def percent(fraction: float | None) -> str:
    """0.91234 → `91.23` (percent, 2 decimals); None → an em dash."""
    return "—" if fraction is None else f"{100 * fraction:.2f}"


def minutes(seconds: float | None) -> str:
    """90 → `1.5` (minutes, 1 decimal); None → an em dash."""
    return "—" if seconds is None else f"{seconds / 60:.1f}"


def format_value(value) -> str:
    """A config value as it reads in a diff (`0.0`, `1e-05`, `true`, `none`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _utc(timestamp: str | None) -> datetime | None:
    try:
        moment = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return None
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment


def time_span(started_at: str | None, finished_at: str | None) -> str:
    """`2026-11-29 10:15 → 11:02 UTC` (the date repeated only when it changes); `—` if either is unreadable."""
    start, end = _utc(started_at), _utc(finished_at)
    if start is None or end is None:
        return "—"
    end_text = f"{end:%H:%M}" if end.date() == start.date() else f"{end:%Y-%m-%d %H:%M}"
    return f"{start:%Y-%m-%d %H:%M} → {end_text} UTC"


# ---- per-run facts ------------------------------------------------------------------------


def stage_rows(history: Sequence[dict]) -> dict[str, list[dict]]:
    """History rows per stage that ran, in training order (`tlkit.config.STAGES`)."""
    stages = {stage: [row for row in history if row["stage"] == stage] for stage in STAGES}
    return {stage: rows for stage, rows in stages.items() if rows}


def epochs_text(config: dict, history: Sequence[dict], metrics: dict | None = None) -> str:
    """`10 + 3`: epochs run per stage; early-stopped stages show the planned count too.

    The plan is metrics.json's (`min_steps` may lengthen a stage on a small dataset), else the config's.
    """
    ran = stage_rows(history)
    planned_by_stage = (metrics or {}).get("stages") or {}
    parts = []
    for stage in STAGES:
        planned = (planned_by_stage.get(stage) or {}).get("planned_epochs") or config[stage]["epochs"]
        done = len(ran.get(stage, []))
        parts.append(str(done) if done == planned else f"{done} (of {planned})")
    return " + ".join(parts)


def unfrozen_depth(config: dict) -> str:
    """What the finetune stage trained of the backbone (`conv5`, `last 16 layers`, `none`)."""
    finetune = config["finetune"]
    if not finetune["epochs"]:
        return "none"
    spec = UnfreezeSpec.parse(finetune["unfreeze"])
    return spec.describe() if spec.is_count else spec.block


def describe_hardware(device: dict | None) -> str:
    """`2-core AMD EPYC CPU (family 25, model 1, AVX2)` (+ accelerators) from metrics.json's `device`.

    Runs recorded before metrics.json named the CPU model say `2-core x86_64 CPU`.
    """
    device = device or {}
    cores = device.get("cpu_count")
    described = device.get("cpu") or {}
    name = described.get("model") or device.get("processor") or ""
    cpu = f"{cores}-core {name} CPU".replace("  ", " ") if cores else "CPU"
    details = [f"family {described['family']}" if described.get("family") else "",
               f"model {described['model_number']}" if described.get("model_number") else "",
               described.get("vector", "")]
    if any(details):
        cpu += f" ({', '.join(detail for detail in details if detail)})"
    accelerators = [str(d) for d in device.get("devices", []) if not str(d).lower().startswith("cpu")]
    return " + ".join([cpu, *accelerators])


def describe_versions(metrics: dict) -> str:
    """`python 3.11.7, keras 3.15.1, tensorflow 2.21.0`: only the backend that ran."""
    versions = metrics.get("versions") or {}
    package = BACKEND_PACKAGES.get(metrics.get("backend"))
    names = ["python", "keras", *([package] if package else [])]
    return ", ".join(f"{name} {versions[name]}" for name in names if name in versions)


def class_names_of(metrics: dict) -> list[str]:
    """The run's class names (`metrics.json`'s `class_names`), one per confusion-matrix row.

    A run whose metrics lack them (or list a different number) gets the class
    indices as text, `"0"`, `"1"`, ….
    """
    size = len(metrics.get("confusion_matrix") or [])
    names = list(metrics.get("class_names") or [])
    return names if len(names) == size else [str(i) for i in range(size)]


def recall_by_class(metrics: dict) -> dict[str, float]:
    """Per-class recall computed from the run's confusion matrix, keyed by `class_names_of(metrics)`."""
    matrix = np.asarray(metrics["confusion_matrix"])
    return {row["class"]: row["recall"] for row in per_class_metrics(matrix, class_names_of(metrics))}


def with_defaults(config: dict) -> dict:
    """The config with the current defaults filled in (runs made before a field existed lack it).

    A config that no longer validates is returned unchanged.
    """
    try:
        return Config.from_dict(config).to_dict()
    except ConfigError:
        return config


def config_diff(reference: dict, other: dict, ignore: Sequence[str] = BOOKKEEPING_KEYS) -> list[str]:
    """What `other` changes relative to `reference`, e.g. `["model.dropout 0.3 → 0.0"]`.

    Both configs get the current defaults first (`with_defaults`); local file
    paths (`LOCAL_FILE_KEYS`) compare by file name only.

    Args:
        reference: the baseline config dict (`Config.to_dict()`).
        other: the config dict to compare.
        ignore: dotted keys that do not change what is trained (names, paths).
    """
    before, after = flatten_dict(with_defaults(reference)), flatten_dict(with_defaults(other))
    missing = object()
    changes = []
    for key in sorted(set(before) | set(after)):
        if key in ignore:
            continue
        old, new = before.get(key, missing), after.get(key, missing)
        if key in LOCAL_FILE_KEYS and isinstance(old, str) and isinstance(new, str):
            old, new = Path(old).name, Path(new).name  # one local copy, spelled relative or absolute
        if old != new:
            old_text = "—" if old is missing else format_value(old)
            new_text = "—" if new is missing else format_value(new)
            changes.append(f"{key} {old_text} → {new_text}")
    return changes


# ---- plots --------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    """A matplotlib Figure drawn by Agg, independent of pyplot's global state.

    Raises:
        ImportError: matplotlib is not installed; the message says how to install it.
    """
    try:
        # A bare Figure renders PNGs with Agg and never touches pyplot, so no GUI
        # backend is chosen and the caller's pyplot state is left alone.
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the report's plots need matplotlib: pip install -e .[report]", name="matplotlib") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" entry: the PNG stays byte-identical across matplotlib builds and re-runs.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def learning_curves_png(history: Sequence[dict], title: str = "") -> bytes:
    """Train/val accuracy and loss against the global epoch, each stage change marked.

    Args:
        history: `Run.history()` rows.
        title: figure title (e.g. the run id).

    Raises:
        ImportError: matplotlib is not installed.
    """
    per_stage = stage_rows(history)
    rows = [row for stage_history in per_stage.values() for row in stage_history]
    epochs = np.arange(1, len(rows) + 1)
    figure = _new_figure(10, 4)
    axes = figure.subplots(1, 2)
    ran = list(per_stage)
    for axis, metric in ((axes[0], "accuracy"), (axes[1], "loss")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = [np.nan if row[prefix + metric] is None else row[prefix + metric] for row in rows]
            axis.plot(epochs, values, style, markersize=3, label=f"{'val' if prefix else 'train'} {metric}")
        boundary = 0
        for previous, stage in zip(ran, ran[1:]):
            boundary += len(per_stage[previous])
            axis.axvline(boundary + 0.5, color="grey", linestyle=":", label=f"{previous} → {stage}")
        if len(epochs) <= 20:
            axis.set_xticks(epochs)
        axis.set_xlabel("epoch (both stages)")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    if title:
        figure.suptitle(title, fontsize="medium")
    return _png_bytes(figure)


def confusion_matrix_png(matrix, class_names: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix as a heat map with the count in every cell.

    Args:
        matrix: counts, rows = true class, columns = predicted class.
        class_names: tick labels, e.g. `class_names_of(metrics)`.
        title: figure title.

    Raises:
        ImportError: matplotlib is not installed.
    """
    matrix = np.asarray(matrix)
    figure = _new_figure(8, 7)
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, shrink=0.8, label="test images")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            axis.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize="small",
                      color="white" if matrix[i, j] > threshold else "black")
    if title:
        axis.set_title(title, fontsize="medium")
    return _png_bytes(figure)
