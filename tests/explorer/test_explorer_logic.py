"""Unit tests of the explorer's pure logic: form generation, sweeps, tables, figures."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import figures, forms, session, tables
from tlkit.config import Config, ConfigError, field_specs

from .explorer_fixtures import make_completed, make_corrupt, make_failed

# ---- forms ----------------------------------------------------------------------


def test_every_visible_field_gets_a_widget_from_its_spec():
    widgets = {widget.key: widget for widget in forms.widget_specs()}
    specs = {spec.key: spec for spec in field_specs()}
    assert set(widgets) == set(specs) - set(forms.HIDDEN_FIELDS)
    for key, widget in widgets.items():
        spec = specs[key]
        assert widget.help == spec.help
        if spec.choices:
            assert widget.kind == "selectbox" and widget.options == tuple(spec.choices)
        if spec.type is bool:
            assert widget.kind == "checkbox"
        if widget.kind in ("number", "slider"):
            assert widget.min_value == spec.min and widget.max_value == spec.max


def test_widget_kinds_follow_type_and_range():
    widgets = {widget.key: widget for widget in forms.widget_specs()}
    assert widgets["model.dropout"].kind == "slider"
    assert widgets["head.learning_rate"].kind == "number" and widgets["head.learning_rate"].format == "%.1e"
    assert widgets["model.l2"].format == "%.1e"
    assert widgets["model.image_size"].kind == "number" and widgets["model.image_size"].step == 1
    assert widgets["data.train_limit"].optional
    assert widgets["augment.flip"].kind == "checkbox"


def test_groups_come_from_the_config_dataclasses():
    names = [name for name, _ in forms.groups()]
    assert names[0] == "" and {"data", "model", "augment", "head", "finetune"} <= set(names)
    assert all(caption for _, caption in forms.groups())


def test_build_config_round_trips_a_preset_and_reports_errors():
    values = forms.preset_values("smoke")
    config = forms.build_config(values)
    assert config.to_dict() == Config.from_preset("smoke").to_dict()
    values.update({"data.train_limit": "", "data.data_dir": "  ", "model.image_size": 48.0})
    config = forms.build_config(values)
    assert config.data.train_limit is None and config.data.data_dir is None and config.model.image_size == 48
    with pytest.raises(ConfigError, match="head.warmup_epochs"):
        forms.build_config({**values, "head.warmup_epochs": 5.0})
    with pytest.raises(ConfigError, match="model.image_size"):
        forms.build_config({**values, "model.image_size": "big"})


def test_sweep_grid_names_and_validation():
    base = Config.from_preset("smoke").replace(name="grid")
    axes = [("model.dropout", forms.parse_sweep_values("model.dropout", "0.1, 0.5")),
            ("finetune.unfreeze", forms.parse_sweep_values("finetune.unfreeze", "conv3,8"))]
    configs = forms.sweep_configs(base, axes)
    assert [(c.model.dropout, c.finetune.unfreeze) for c in configs] == [
        (0.1, "conv3"), (0.1, "8"), (0.5, "conv3"), (0.5, "8")]
    assert configs[0].name == "grid-dropout0.1-unfreezeconv3"
    assert all(c.head.epochs == base.head.epochs for c in configs)
    with pytest.raises(ConfigError, match="at most 3"):
        forms.parse_sweep_values("model.dropout", "0.1,0.2,0.3,0.4")
    with pytest.raises(ConfigError, match="outside the allowed range"):
        forms.parse_sweep_values("model.dropout", "0.95")
    with pytest.raises(ConfigError, match="different fields"):
        forms.sweep_configs(base, [axes[0], axes[0]])
    with pytest.raises(ConfigError, match="warmup"):
        forms.sweep_configs(base, [("head.warmup_epochs", [0.0, 2.0])])


def test_session_reads_runs_dir_after_double_dash(monkeypatch, tmp_path):
    monkeypatch.setenv("TLKIT_RUNS_DIR", str(tmp_path / "env"))
    assert session.runs_dir(["--runs-dir", str(tmp_path / "x")]) == tmp_path / "x"
    assert session.runs_dir(["-x", "-q", "tests"]) == tmp_path / "env"
    assert session.max_concurrent(["--max-concurrent", "3"]) == 3


# ---- tables ---------------------------------------------------------------------


def test_runs_table_handles_every_kind_of_run(runs_dir):
    a = make_completed(runs_dir, "alpha", seed=0, model={"dropout": 0.2})
    b = make_completed(runs_dir, "beta", seed=1, model={"dropout": 0.4})
    failed, corrupt = make_failed(runs_dir), make_corrupt(runs_dir)
    summaries = tables.summarise_all(runs_dir)
    frame, differing = tables.runs_table(summaries)
    assert len(frame) == 4 and "model.dropout" in differing and "name" not in differing
    rows = {row["run"]: row for row in frame.to_dict("records")}
    assert rows[a.run_id]["duration"] == "6s"  # metrics' own total wins over timestamps
    assert rows[b.run_id]["backend"] == "jax"
    assert rows[corrupt.run_id]["state"].endswith("unknown")
    assert "out of memory" in rows[failed.run_id]["error"]
    by_accuracy = tables.sort_summaries(summaries, "test accuracy")
    assert {s.run_id for s in by_accuracy[:2]} == {a.run_id, b.run_id}
    assert by_accuracy[0].test_accuracy >= by_accuracy[1].test_accuracy
    assert [s.run_id for s in tables.filter_summaries(summaries, ["failed"])] == [failed.run_id]
    assert [s.run_id for s in tables.filter_summaries(summaries, text="BETA")] == [b.run_id]


def test_format_duration():
    assert tables.format_duration(None) == ""
    assert tables.format_duration(59.6) == "1m00s"
    assert tables.format_duration(3725) == "1h02m"


# ---- figures --------------------------------------------------------------------

HISTORY = [
    {"stage": "head", "epoch": 1, "loss": 1.0, "accuracy": 0.6, "val_loss": 1.1, "val_accuracy": 0.55},
    {"stage": "head", "epoch": 2, "loss": 0.8, "accuracy": 0.7, "val_loss": None, "val_accuracy": None},
    {"stage": "finetune", "epoch": 1, "loss": 0.6, "accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.75},
]


def test_stages_share_one_epoch_axis():
    rows, boundary = figures.with_global_epochs(HISTORY)
    assert [row["step"] for row in rows] == [1, 2, 3] and boundary == 2.5
    assert figures.with_global_epochs(HISTORY[:2])[1] is None
    figure = figures.curves_figure({"a": HISTORY, "b": HISTORY[:2]})
    names = [trace.name for trace in figure.data]
    assert names.count("a · train") == 2 and "b · val" in names  # loss and accuracy panels
    assert [shape.x0 for shape in figure.layout.shapes] == [2.5, 2.5]


def test_confusion_figure_cells_are_selectable():
    matrix = np.array([[5, 1], [2, 0]])
    figure = figures.confusion_figure(matrix, ["cat", "dog"], normalise=True)
    heatmap, cells = figure.data
    assert list(heatmap.z[1]) == [1.0, 0.0] and list(heatmap.text[0]) == ["83%", "17%"]
    assert [list(cell) for cell in cells.customdata] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert list(cells.y[:2]) == ["cat", "cat"] and list(cells.x[:2]) == ["cat", "dog"]
    event = {"selection": {"points": [{"x": "dog", "y": "cat", "customdata": [0, 1]}]}}
    assert figures.selected_cell(event) == (0, 1)
    assert figures.selected_cell({"selection": {"points": []}}) is None
    assert figures.selected_cell(None) is None


def test_difference_and_matrix_parsing():
    a, b = np.array([[8, 2], [0, 10]]), np.array([[10, 0], [5, 5]])
    delta = np.array(figures.difference_figure(a, b, ["x", "y"], "A", "B").data[0].z)
    np.testing.assert_allclose(delta, [[0.2, -0.2], [0.5, -0.5]])
    assert figures.as_matrix("garbage") is None and figures.as_matrix([[1, 2]]) is None
    assert figures.as_matrix([[1, 2], [3, 4]]).shape == (2, 2)


def test_per_class_and_parallel_figures():
    rows = [{"class": "cat", "precision": 0.5, "recall": 0.6, "f1": 0.55, "support": 3}]
    figure = figures.per_class_figure({"a": rows, "b": rows})
    assert len(figure.data) == 6
    points = [{"model.dropout": 0.2, "finetune.unfreeze": "conv5", "test_accuracy": 0.8},
              {"model.dropout": 0.4, "finetune.unfreeze": "16", "test_accuracy": 0.9}]
    dims = figures.parallel_figure(points, ["model.dropout", "finetune.unfreeze"]).data[0].dimensions
    assert [d.label for d in dims] == ["model.dropout", "finetune.unfreeze", "test accuracy"]
    assert list(dims[1].ticktext) == ["16", "conv5"] and list(dims[1].values) == [1, 0]


def test_misclassified_subset_filters_and_orders():
    data = {"true": np.array([1, 1, 2, 1]), "predicted": np.array([2, 3, 1, 2]),
            "confidence": np.array([0.5, 0.9, 0.8, 0.7]), "images": np.zeros((4, 28, 28), np.uint8)}
    assert figures.misclassified_subset(data) == [1, 2, 3, 0]
    assert figures.misclassified_subset(data, true=1, predicted=2) == [3, 0]
    assert figures.misclassified_subset(None) == []
    assert figures.enlarge(np.ones((28, 28, 1), np.uint8)).shape == (84, 84)
    assert figures.enlarge(np.ones((32, 32, 3), np.uint8)).shape == (64, 64, 3)  # colour stays colour
    assert figures.enlarge(np.ones((224, 224, 3), np.uint8)).shape == (224, 224, 3)


def test_clean_log_collapses_progress_bars():
    raw = "Epoch 1/2\n\x1b[1m 1/29\x1b[0m ━━ 1s/step\r\x1b[1m29/29\x1b[0m ━━━━ done\nab\b\bok\n"
    assert tables.clean_log(raw) == "Epoch 1/2\n29/29 ━━━━ done\nok\n"
