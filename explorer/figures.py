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


def curves_figure(histories: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Loss and accuracy (train solid, validation dashed) for several runs, stages joined."""
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.08)
    boundaries = {}
    for index, (label, history) in enumerate(histories.items()):
        rows, boundary = with_global_epochs(history)
        if boundary is not None:
            boundaries.setdefault(boundary, []).append(index)
        for col, metric in ((1, "loss"), (2, "accuracy")):
            for prefix, dash in (("", "solid"), ("val_", "dash")):
                points = [(row["step"], row[prefix + metric], row["stage"]) for row in rows
                          if row.get(prefix + metric) is not None]
                if not points:
                    continue
                x, y, stage = zip(*points)
                figure.add_trace(go.Scatter(
                    x=x, y=y, customdata=stage, mode="lines+markers",
                    name=f"{label} · {'val' if prefix else 'train'}",
                    legendgroup=label, showlegend=col == 1,
                    line={"color": color(index), "dash": dash}, marker={"size": 5},
                    hovertemplate=f"{label}<br>%{{customdata}} · {prefix}{metric} %{{y:.4f}}<extra></extra>",
                ), row=1, col=col)
    for boundary, indices in boundaries.items():
        # One shared line when the runs agree; otherwise one per run in its colour.
        line_color = "gray" if len(indices) == len(histories) or len(boundaries) == 1 else color(indices[0])
        for col, xref in ((1, "x"), (2, "x2")):
            figure.add_vline(x=boundary, line={"color": line_color, "dash": "dot", "width": 1.5},
                             row=1, col=col)
            figure.add_annotation(x=boundary, y=1.0, xref=xref, yref="paper", text="head → finetune",
                                  showarrow=False, yanchor="bottom", font={"size": 11, "color": line_color})
    figure.update_xaxes(title_text="epoch (both stages)", dtick=1 if _max_step(histories) <= 30 else None)
    figure.update_yaxes(title_text="loss", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(title_text="accuracy", row=1, col=2)
    figure.update_layout(height=420, margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": -0.2},
                         hovermode="closest")
    return figure


def _max_step(histories) -> int:
    return max((len(history) for history in histories.values()), default=0)


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
    """Row-normalised B − A: blue where B puts more of a true class, red where fewer."""
    a, b = row_normalise(np.asarray(matrix_a, dtype=float)), row_normalise(np.asarray(matrix_b, dtype=float))
    names = class_labels(class_names, a.shape[0])
    delta = b - a
    limit = max(float(np.abs(delta).max()), 1e-6)
    text = [[f"{value:+.0%}" if abs(value) >= 0.005 else "" for value in row] for row in delta]
    figure = go.Figure(go.Heatmap(
        z=delta.tolist(), x=names, y=names, text=text, texttemplate="%{text}", colorscale="RdBu",
        zmid=0, zmin=-limit, zmax=limit, colorbar={"title": "Δ rate", "tickformat": "+.0%"},
        hovertemplate="true %{y}<br>predicted %{x}<br>Δ %{z:+.1%}<extra></extra>",
    ))
    figure.update_yaxes(autorange="reversed", title_text="true class", type="category")
    figure.update_xaxes(title_text="predicted class", type="category", tickangle=-35)
    figure.update_layout(title=f"{label_b} − {label_a} (row-normalised)", height=480,
                         margin={"t": 40, "b": 10})
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


def parallel_figure(points: list[dict[str, Any]], fields: list[str]) -> go.Figure:
    """Parallel coordinates: one line per run across `fields`, ending at test accuracy.

    Args:
        points: dicts with the flat config values, `test_accuracy` and `run`.
        fields: config keys to show; text and bool fields get categorical axes.
    """
    dimensions = []
    for key in fields:
        values = [point.get(key) for point in points]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            dimensions.append({"label": key, "values": [float(v) for v in values]})
            continue
        categories = sorted({str(v) for v in values})
        codes = [categories.index(str(v)) for v in values]
        dimensions.append({"label": key, "values": codes, "tickvals": list(range(len(categories))),
                               "ticktext": categories, "range": [-0.5, len(categories) - 0.5]})
    accuracy = [point["test_accuracy"] for point in points]
    dimensions.append({"label": "test accuracy", "values": accuracy})
    figure = go.Figure(go.Parcoords(
        dimensions=dimensions,
        line={"color": accuracy, "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": "test acc"}},
    ))
    figure.update_layout(height=420, margin={"t": 60, "l": 60, "r": 60, "b": 30})
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
