"""Plotly figures from run data (history rows, metrics.json, misclassified arrays).

Pure functions of plain Python/numpy inputs so they can be unit tested and
reused outside Streamlit.

Example:

```python
from tlkit import runs
from explorer import figures

run = runs.list_runs("runs")[0]
figures.curves_figure({run.run_id: run.history()}).show()
```
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from tlkit.config import STAGES

COLORS = qualitative.Plotly


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


# ---- learning curves ------------------------------------------------------------


def with_global_epochs(history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float | None]:
    """Puts both stages on one axis: fine-tuning epoch e becomes head_epochs + e.

    Returns:
        The rows with a `step` key, and the x of the head→finetune boundary
        (None unless both stages have rows).
    """
    head_epochs = max((row["epoch"] for row in history if row.get("stage") == "head"), default=0)
    rows = []
    for row in history:
        if row.get("stage") not in STAGES:
            continue
        offset = head_epochs if row["stage"] == "finetune" else 0
        rows.append({**row, "step": offset + row["epoch"]})
    rows.sort(key=lambda row: row["step"])
    has_both = head_epochs and any(row["stage"] == "finetune" for row in rows)
    return rows, (head_epochs + 0.5 if has_both else None)


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing): 0 keeps the values, 0.9 smooths hard."""
    smoothed, last = [], None
    for value in values:
        last = value if last is None else weight * last + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def with_positions(history: list[dict[str, Any]], x_axis: str = "epoch") -> tuple[list[dict], float | None]:
    """`with_global_epochs`, plus an `x` per row: the epoch step, or the wall-clock seconds at the
    end of the epoch (history.csv's per-epoch wall time `seconds`, summed) when `x_axis == "time"`.
    Returns the rows and the boundary's x."""
    rows, boundary = with_global_epochs(history)
    if x_axis != "time":
        for row in rows:
            row["x"] = row["step"]
        return rows, boundary
    elapsed, head_end = 0.0, None
    for row in rows:
        seconds = row.get("seconds")
        elapsed += float(seconds) if isinstance(seconds, (int, float)) else 0.0
        row["x"] = elapsed
        if row["stage"] == "head":
            head_end = elapsed
    return rows, (head_end if boundary is not None else None)


CURVE_PANELS = (("loss", "loss"), ("accuracy", "accuracy"), ("lr", "learning rate"))


def curves_figure(histories: dict[str, list[dict[str, Any]]], x_axis: str = "epoch", smoothing: float = 0.0,
                  show_lr: bool = True) -> go.Figure:
    """Loss and accuracy (train solid, validation dashed) and the learning rate, stages joined.

    Args:
        histories: run label → `history.csv` rows.
        x_axis: `epoch` (both stages on one epoch axis) or `time` (wall-clock seconds of training).
        smoothing: exponential-moving-average weight in [0, 1) for loss and accuracy.
        show_lr: add the learning-rate panel (log scale).
    """
    panels = CURVE_PANELS if show_lr else CURVE_PANELS[:2]
    figure = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.07,
                           subplot_titles=[title for _, title in panels])
    boundaries: dict[float, list[str]] = {}
    for index, (label, history) in enumerate(histories.items()):
        rows, boundary = with_positions(history, x_axis)
        if boundary is not None:
            boundaries.setdefault(round(boundary, 3), []).append(label)
        for col, (metric, _) in enumerate(panels, start=1):
            for prefix, dash in (("", "solid"), ("val_", "dash")) if metric != "lr" else (("", "dot"),):
                points = [(row["x"], row[prefix + metric], row["stage"]) for row in rows
                          if isinstance(row.get(prefix + metric), (int, float))]
                if not points:
                    continue
                x, y, stage = zip(*points)
                shown = smooth(list(y), smoothing) if smoothing and metric != "lr" else list(y)
                figure.add_trace(go.Scatter(
                    x=list(x), y=shown, customdata=list(zip(stage, y)), mode="lines+markers",
                    name=f"{label} · {'val' if prefix else 'train'}" if metric != "lr" else f"{label} · lr",
                    legendgroup=label, showlegend=col == 1,
                    line={"color": color(index), "dash": dash}, marker={"size": 5},
                    hovertemplate=f"{label}<br>%{{customdata[0]}} · {prefix}{metric} %{{customdata[1]:.4g}}"
                                  "<extra></extra>",
                ), row=1, col=col)
    _mark_boundaries(figure, boundaries, len(panels))
    title = "epoch (both stages)" if x_axis != "time" else "training time (s)"
    dtick = 1 if x_axis != "time" and _max_step(histories) <= 30 else None
    figure.update_xaxes(title_text=title, dtick=dtick)
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    if show_lr:
        figure.update_yaxes(type="log", exponentformat="e", row=1, col=3)
    figure.update_layout(height=430, margin={"t": 40, "b": 40}, legend={"orientation": "h", "y": -0.22},
                         hovermode="closest")
    return figure


def _max_step(histories) -> int:
    return max((len(history) for history in histories.values()), default=0)


def _mark_boundaries(figure: go.Figure, boundaries: dict[float, list[str]], panels: int) -> None:
    """One dotted line per distinct head → finetune boundary in every panel, labelled once, inside
    the loss panel along the line (never over the plotly toolbar); hover names the runs."""
    for boundary, labels in sorted(boundaries.items()):
        for col in range(1, panels + 1):
            figure.add_vline(x=boundary, line={"color": "gray", "dash": "dot", "width": 1.5}, row=1, col=col)
        figure.add_annotation(x=boundary, y=0.02, xref="x", yref="y domain", text="head → finetune",
                              textangle=-90, xanchor="right", yanchor="bottom", showarrow=False,
                              font={"size": 10, "color": "gray"}, hovertext=", ".join(labels))


# ---- confusion matrices ---------------------------------------------------------


def as_matrix(value, size: int | None = None) -> np.ndarray | None:
    """A square int matrix from metrics.json, or None if it is not one."""
    try:
        matrix = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or not matrix.size:
        return None
    if size is not None and matrix.shape[0] != size:
        return None
    return matrix


def row_normalise(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=float), where=totals > 0)


def class_labels(class_names: list[str], size: int) -> list[str]:
    return list(class_names) if len(class_names) == size else [str(i) for i in range(size)]


def confusion_figure(matrix, class_names: list[str], normalise: bool = False, title: str = "") -> go.Figure:
    """A heatmap (rows: true class, columns: predicted) with a clickable point per cell.

    Plotly heatmaps emit no selection events, so an invisible marker sits on
    every cell; its customdata `[true, predicted]` is what a click selects.
    Arrays go in as lists so the figure JSON stays plain (plotly 7 base64-encodes arrays).
    """
    matrix = np.asarray(matrix, dtype=float)
    size = matrix.shape[0]
    names = class_labels(class_names, size)
    shown = row_normalise(matrix) if normalise else matrix
    text = [[f"{value:.0%}" if normalise else f"{int(value)}" for value in row] for row in shown]
    figure = go.Figure(go.Heatmap(
        z=shown.tolist(), x=names, y=names, text=text, texttemplate="%{text}", colorscale="Blues",
        zmin=0, zmax=1 if normalise else None, showscale=False,
        customdata=matrix.tolist(),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata:.0f} images<extra></extra>",
    ))
    true_index, pred_index = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    figure.add_trace(go.Scatter(
        x=[names[j] for j in pred_index.ravel()], y=[names[i] for i in true_index.ravel()],
        customdata=np.stack([true_index.ravel(), pred_index.ravel()], axis=1).tolist(),
        mode="markers", marker={"size": 22, "color": "rgba(0,0,0,0)", "symbol": "square"},
        selected={"marker": {"color": "rgba(255,140,0,0.45)"}},
        unselected={"marker": {"opacity": 0}},
        hovertemplate="true %{y}<br>predicted %{x}<br>click to show these images<extra></extra>",
        showlegend=False, name="cells",
    ))
    figure.update_yaxes(autorange="reversed", title_text="true class", type="category")
    figure.update_xaxes(title_text="predicted class", type="category", tickangle=-35)
    figure.update_layout(title=title or None, height=460, margin={"t": 40 if title else 10, "b": 10},
                         clickmode="event+select", dragmode=False)
    return figure


def difference_figure(matrix_a, matrix_b, class_names: list[str], label_a: str, label_b: str) -> go.Figure:
    """Row-normalised B − A, coloured by better (green) or worse (red) for B.

    More of a true class on the diagonal is better; more in an off-diagonal cell (a confusion) is
    worse. The cells show the signed change.
    """
    a, b = row_normalise(np.asarray(matrix_a, dtype=float)), row_normalise(np.asarray(matrix_b, dtype=float))
    names = class_labels(class_names, a.shape[0])
    delta = b - a
    gain = np.where(np.eye(len(delta), dtype=bool), delta, -delta)  # > 0: B is better there
    limit = max(float(np.abs(delta).max()), 1e-6)
    text = [[f"{value:+.0%}" if abs(value) >= 0.005 else "" for value in row] for row in delta]
    verdict = [["better" if g > 0 else "worse" if g < 0 else "same" for g in row] for row in gain]
    figure = go.Figure(go.Heatmap(
        z=gain.tolist(), x=names, y=names, text=text, texttemplate="%{text}", customdata=verdict,
        colorscale=[[0.0, "#b2182b"], [0.5, "#f7f7f7"], [1.0, "#1a9850"]], zmid=0, zmin=-limit, zmax=limit,
        colorbar={"title": f"for {label_b}", "tickvals": [-limit, 0, limit], "ticktext": ["worse", "same", "better"]},
        hovertemplate="true %{y}<br>predicted %{x}<br>Δ %{text} (%{customdata})<extra></extra>",
    ))
    figure.update_yaxes(autorange="reversed", title_text="true class", type="category")
    figure.update_xaxes(title_text="predicted class", type="category", tickangle=-35)
    figure.update_layout(title=f"{label_b} − {label_a} (row-normalised; green: better for {label_b})",
                         height=480, margin={"t": 40, "b": 10})
    return figure


def selected_cell(event) -> tuple[int, int] | None:
    """(true, predicted) from a `st.plotly_chart(on_select=...)` event on a confusion figure."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        data = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(data, (list, tuple)) and len(data) == 2:
            try:
                return int(data[0]), int(data[1])
            except (TypeError, ValueError):
                continue
    return None


# ---- per-class metrics and hyperparameters --------------------------------------

PER_CLASS_METRICS = ("precision", "recall", "f1")


def per_class_figure(per_class: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Grouped bars per class for precision, recall and F1, one colour per run."""
    titles = [name.capitalize() if name != "f1" else "F1" for name in PER_CLASS_METRICS]
    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=titles)
    for index, (label, rows) in enumerate(per_class.items()):
        rows = [row for row in rows if isinstance(row, dict) and "class" in row]
        for line, metric in enumerate(PER_CLASS_METRICS, start=1):
            figure.add_trace(go.Bar(
                x=[str(row["class"]) for row in rows], y=[row.get(metric) for row in rows], name=label,
                legendgroup=label, showlegend=line == 1, marker_color=color(index),
                hovertemplate=f"{label}<br>%{{x}} · {metric} %{{y:.3f}}<extra></extra>",
            ), row=line, col=1)
    figure.update_yaxes(range=[0, 1.02])
    figure.update_layout(barmode="group", height=620, margin={"t": 40, "b": 10},
                         legend={"orientation": "h", "y": 1.08})
    return figure


def axis_label(key: str, keys: list[str]) -> str:
    """A short axis title: `dropout`, or `head · epochs` when another group has an `epochs` too."""
    leaf = key.split(".")[-1]
    clash = sum(other.split(".")[-1] == leaf for other in keys) > 1
    name = leaf.replace("_", " ")
    return f"{key.split('.')[0]} · {name}" if clash and "." in key else name


def short_value(value: Any, limit: int = 16) -> str:
    """A category as a tick label: paths by their file name, long text cut with an ellipsis."""
    text = str(value)
    if "/" in text:
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def parallel_figure(points: list[dict[str, Any]], fields: list[str], metric: str = "test_accuracy",
                    metric_label: str = "test accuracy") -> go.Figure:
    """Parallel coordinates: one line per run across `fields`, ending at the metric.

    Args:
        points: dicts with the flat config values, the metric and `run`.
        fields: config keys to show; text and bool fields get categorical axes.
    """
    dimensions = []
    for key in fields:
        values = [point.get(key) for point in points]
        label = axis_label(key, fields)
        if _numeric(values):
            dimensions.append({"label": label, "values": [float(v) for v in values]})
            continue
        categories = sorted({str(v) for v in values})
        codes = [categories.index(str(v)) for v in values]
        dimensions.append({"label": label, "values": codes, "tickvals": list(range(len(categories))),
                           "ticktext": [short_value(c) for c in categories],
                           "range": [-0.5, len(categories) - 0.5]})
    scores = [point[metric] for point in points]
    dimensions.append({"label": metric_label, "values": scores})
    figure = go.Figure(go.Parcoords(
        dimensions=dimensions, labelangle=-20, labelside="top",
        line={"color": scores, "colorscale": "Viridis", "showscale": True, "colorbar": {"title": metric_label}},
    ))
    figure.update_layout(height=440, margin={"t": 90, "l": 70, "r": 70, "b": 30})
    return figure


def scatter_figure(points: list[dict[str, Any]], field: str, metric: str = "test_accuracy",
                   metric_label: str = "test accuracy", log_x: bool = False) -> go.Figure:
    """One config field against a metric, a labelled point per run (categorical fields as categories)."""
    values = [point.get(field) for point in points]
    numeric = _numeric(values)
    x = values if numeric else [short_value(v) for v in values]
    figure = go.Figure(go.Scatter(
        x=x, y=[point[metric] for point in points], mode="markers+text",
        text=[point.get("label", point["run"]) for point in points], textposition="top center",
        cliponaxis=False,  # a label at either end may reach into the margin rather than be cut off
        marker={"size": 11, "color": [color(i) for i in range(len(points))]},
        hovertemplate="%{text}<br>" + field + " %{x}<br>" + metric_label + " %{y:.4f}<extra></extra>",
    ))
    figure.update_xaxes(title_text=axis_label(field, [field]) + (" (log)" if log_x and numeric else ""),
                        type="log" if log_x and numeric else None if numeric else "category")
    figure.update_yaxes(title_text=metric_label)
    figure.update_layout(height=380, margin={"t": 30, "b": 40, "l": 110, "r": 110})
    return figure


# ---- misclassified images -------------------------------------------------------


def misclassified_subset(data: dict[str, np.ndarray] | None, true: int | None = None,
                         predicted: int | None = None, limit: int = 48) -> list[int]:
    """Positions in the arrays matching the (true, predicted) filter, most confident mistakes first."""
    if not data or "images" not in data:
        return []
    size = len(data["images"])
    mask = np.ones(size, dtype=bool)
    if true is not None and "true" in data:
        mask &= np.asarray(data["true"]) == true
    if predicted is not None and "predicted" in data:
        mask &= np.asarray(data["predicted"]) == predicted
    order = np.flatnonzero(mask)
    if "confidence" in data:
        order = order[np.argsort(-np.asarray(data["confidence"])[order], kind="stable")]
    return order[:limit].tolist()


def enlarge(image: np.ndarray, target: int = 84) -> np.ndarray:
    """Nearest-neighbour upscaling of small images (28×28 → 84×84) so they stay crisp in the browser;
    grayscale as (H, W), colour as (H, W, 3); images already `target` px or larger are left as they are."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    factor = max(1, target // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
