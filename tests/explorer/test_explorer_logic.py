"""Unit tests of the explorer's pure logic: form generation, sweeps, tables, figures."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import figures, forms, offline, session, tables
from tlkit.config import Config, ConfigError, field_specs

from .explorer_fixtures import NATIVE_STARTUP_LINE, make_completed, make_corrupt, make_failed

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
    log_scale = {key for key, widget in widgets.items() if widget.kind == "log"}
    assert log_scale == {"model.l2", "head.learning_rate", "finetune.learning_rate", "head.weight_decay",
                         "finetune.weight_decay"}
    assert widgets["cache_memory_gb"].kind == "number"
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


def test_best_run_per_metric_tags_and_titles(runs_dir):
    a = make_completed(runs_dir, "alpha", seed=0)
    b = make_completed(runs_dir, "beta", seed=1)  # the more skilled fixture
    make_failed(runs_dir)
    a.annotate(title="my baseline", tags=["baseline", "cpu"])
    b.annotate(tags=["cpu"])
    summaries = tables.summarise_all(runs_dir)
    best = tables.best_runs(summaries)
    assert best == {"test_accuracy": b.run_id, "macro_f1": b.run_id}
    rows = {row["run"]: row for row in tables.runs_table(summaries, best)[0].to_dict("records")}
    assert rows[b.run_id]["best"] == "★ test acc, macro F1" and rows[a.run_id]["best"] == ""
    assert rows[a.run_id]["title"] == "my baseline" and rows[b.run_id]["title"] == "beta"
    assert rows[a.run_id]["tags"] == ["baseline", "cpu"]
    assert tables.all_tags(summaries) == ["baseline", "cpu"]
    assert {s.run_id for s in tables.filter_summaries(summaries, tags=["cpu"])} == {a.run_id, b.run_id}
    assert [s.run_id for s in tables.filter_summaries(summaries, tags=["cpu", "baseline"])] == [a.run_id]
    assert [s.run_id for s in tables.filter_summaries(summaries, text="baseline")] == [a.run_id]  # the title
    clone = make_completed(runs_dir, "beta", seed=2)  # a clone keeps its run's name: legends stay apart
    labels = tables.distinct_labels(tables.summarise_all(runs_dir))
    assert labels[a.run_id] == "my baseline"
    assert {labels[b.run_id], labels[clone.run_id]} == {f"beta #{b.run_id[-4:]}", f"beta #{clone.run_id[-4:]}"}


def test_progress_line_shows_the_trainers_eta(runs_dir):
    from explorer import ui

    run = make_failed(runs_dir)
    run.update_status(state="running", stage="finetune", epoch=2, epochs=5, eta_s=83.0)
    assert ui.progress_line(tables.summarise(run)) == "stage **finetune** · epoch 2/5 · ~1m23s left"
    run.update_status(elapsed_s=65.0)
    assert ui.progress_line(tables.summarise(run)) == "stage **finetune** · epoch 2/5 · 1m05s in · ~1m23s left"
    run.update_status(eta_s=None, elapsed_s=None, activity="features (train) 40%")
    assert ui.progress_line(tables.summarise(run)).endswith("· features (train) 40%")


def test_format_duration():
    assert tables.format_duration(None) == ""
    assert tables.format_duration(59.6) == "1m00s"
    assert tables.format_duration(3725) == "1h02m"


# ---- figures --------------------------------------------------------------------

HISTORY = [
    {"stage": "head", "epoch": 1, "loss": 1.0, "accuracy": 0.6, "val_loss": 1.1, "val_accuracy": 0.55,
     "lr": 1e-3, "seconds": 4.0},
    {"stage": "head", "epoch": 2, "loss": 0.8, "accuracy": 0.7, "val_loss": None, "val_accuracy": None,
     "lr": 5e-4, "seconds": 3.0},
    {"stage": "finetune", "epoch": 1, "loss": 0.6, "accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.75,
     "lr": 1e-5, "seconds": 10.0},
]


def test_stages_share_one_epoch_axis():
    rows, boundary = figures.with_global_epochs(HISTORY)
    assert [row["step"] for row in rows] == [1, 2, 3] and boundary == 2.5
    assert figures.with_global_epochs(HISTORY[:2])[1] is None
    figure = figures.curves_figure({"a": HISTORY, "b": HISTORY[:2]})
    names = [trace.name for trace in figure.data]
    assert names.count("a · train") == 2 and "b · val" in names  # loss and accuracy panels
    assert [trace.y for trace in figure.data if trace.name == "a · lr"] == [(1e-3, 5e-4, 1e-5)]
    assert [shape.x0 for shape in figure.layout.shapes] == [2.5, 2.5, 2.5]  # loss, accuracy, lr


def test_one_boundary_marker_per_distinct_boundary_inside_the_plot():
    longer_head = [{**row, "epoch": row["epoch"] + 1} if row["stage"] == "head" else row for row in HISTORY]
    longer_head.insert(0, {**HISTORY[0], "epoch": 1})
    figure = figures.curves_figure({"a": HISTORY, "b": HISTORY, "c": longer_head}, show_lr=False)
    markers = [a for a in figure.layout.annotations if a.text == "head → finetune"]
    assert sorted(a.x for a in markers) == [2.5, 3.5]
    assert all(a.yref == "y domain" and a.y < 0.5 for a in markers)  # inside the plot, not by the toolbar
    assert [a.hovertext for a in sorted(markers, key=lambda a: a.x)] == ["a, b", "c"]
    assert len(figure.layout.shapes) == 4  # two boundaries × two panels


def test_curves_on_wall_clock_time_and_smoothed():
    figure = figures.curves_figure({"a": HISTORY}, x_axis="time", smoothing=0.5)
    loss = next(trace for trace in figure.data if trace.name == "a · train")
    assert list(loss.x) == [4.0, 7.0, 17.0] and figure.layout.shapes[0].x0 == 7.0  # end of the head stage
    assert list(loss.y) == pytest.approx([1.0, 0.9, 0.75])
    assert [raw for _, raw in loss.customdata] == [1.0, 0.8, 0.6]  # hover shows the raw values
    assert figures.smooth([1.0, 0.0], 0.0) == [1.0, 0.0]

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
    heatmap = figures.difference_figure(a, b, ["x", "y"], "A", "B").data[0]
    # Coloured by better (> 0) / worse for B: the diagonal as is, confusions negated; text is the signed Δ.
    np.testing.assert_allclose(np.array(heatmap.z), [[0.2, 0.2], [-0.5, -0.5]])
    assert [list(row) for row in heatmap.text] == [["+20%", "-20%"], ["+50%", "-50%"]]
    assert [list(row) for row in heatmap.customdata] == [["better", "better"], ["worse", "worse"]]
    assert figures.as_matrix("garbage") is None and figures.as_matrix([[1, 2]]) is None
    assert figures.as_matrix([[1, 2], [3, 4]]).shape == (2, 2)


def test_per_class_and_parallel_figures():
    rows = [{"class": "cat", "precision": 0.5, "recall": 0.6, "f1": 0.55, "support": 3}]
    figure = figures.per_class_figure({"a": rows, "b": rows})
    assert len(figure.data) == 6
    points = [{"model.dropout": 0.2, "finetune.unfreeze": "conv5", "test_accuracy": 0.8},
              {"model.dropout": 0.4, "finetune.unfreeze": "16", "test_accuracy": 0.9}]
    dims = figures.parallel_figure(points, ["model.dropout", "finetune.unfreeze"]).data[0].dimensions
    assert [d.label for d in dims] == ["dropout", "unfreeze", "test accuracy"]
    assert list(dims[1].ticktext) == ["16", "conv5"] and list(dims[1].values) == [1, 0]
    assert figures.axis_label("head.epochs", ["head.epochs", "finetune.epochs"]) == "head · epochs"
    assert figures.short_value("/data/weights/resnet50_imagenet_notop.weights.h5") == "resnet50_imagen…"
    scatter = figures.scatter_figure([{**p, "run": f"r{i}"} for i, p in enumerate(points)], "model.dropout")
    assert list(scatter.data[0].x) == [0.2, 0.4] and list(scatter.data[0].text) == ["r0", "r1"]


def test_hyperparameter_axes_default_to_differing_fields_that_matter(runs_dir):
    a = make_completed(runs_dir, "a", model={"dropout": 0.2}, data={"train_limit": 500})
    b = make_completed(runs_dir, "b", model={"dropout": 0.4}, data={"train_limit": 800})
    default, choices = tables.hyperparameter_axes([tables.summarise(a), tables.summarise(b)])
    assert default == ["model.dropout"]
    assert choices[:2] == ["data.train_limit", "model.dropout"] and "head.epochs" in choices


# ---- form checks, presets, offline copies -----------------------------------------


def test_log_grid_spans_decades_with_zero_when_allowed():
    assert forms.log_grid(1e-5, 1e-3) == (1e-5, 2e-5, 3e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3)
    assert forms.log_grid(0.0, 1.0)[:2] == (0.0, 1e-7)
    widget = forms.widget_spec(forms.specs_by_key()["head.learning_rate"])
    assert 3.5e-4 in forms.log_options(widget, 3.5e-4) and forms.format_log(3.5e-4) == "3.5e-04"


def test_field_problems_name_the_form_field():
    values = forms.preset_values("smoke")
    assert forms.field_problems(values) == {}
    problems = forms.field_problems({**values, "data.train_limit": 5, "model.image_size": "big"})
    assert problems == {"data.train_limit": "Data › Train limit: 5 is outside the allowed range [20, inf]",
                        "model.image_size": "Model › Image size: cannot read 'big' as int"}
    problems = forms.field_problems({**values, "head.epochs": 0, "finetune.epochs": 0})
    assert list(problems) == ["head.epochs"] and "Finetune › Epochs" in problems["head.epochs"]
    assert forms.name_form_fields("pass it with --data-dir") == "pass it with the field Data › Data dir (--data-dir)"


def test_switching_presets_changes_only_what_the_new_preset_defines():
    values = {**forms.preset_values("smoke"), "name": "mine", "data.data_dir": "/data", "model.dropout": 0.45}
    switched = forms.switch_preset(values, "smoke", "cpu")
    cpu = forms.preset_values("cpu")
    assert switched["name"] == "mine" and switched["data.data_dir"] == "/data"  # not in any preset
    assert switched["model.dropout"] == cpu["model.dropout"]  # cpu defines it
    assert switched["data.train_limit"] is None  # only smoke set it; unedited, so it follows cpu
    assert switched["preset"] == "cpu"
    weights = {**cpu, "model.weights": "/w/resnet50.weights.h5"}
    assert forms.switch_preset(weights, "cpu", "seed")["model.weights"] == "/w/resnet50.weights.h5"
    assert forms.switch_preset(weights, "cpu", "smoke")["model.weights"] == "none"
    assert all(forms.preset_note(name) for name in forms.PRESETS)


def test_offline_copies_are_found_next_to_the_project_or_in_the_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_SHARED_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(offline.DATA_DIR_ENV, raising=False)
    values = {**forms.preset_values("cpu"), "data.data_dir": None}
    assert offline.find_data_dir("fashion_mnist") is None and len(offline.download_warnings(values)) == 2
    copy = tmp_path / "shared" / "data" / "fashion-mnist"
    copy.mkdir(parents=True)
    (copy / "t10k-labels-idx1-ubyte").write_bytes(b"")
    weights = tmp_path / "shared" / "weights" / offline.RESNET50_WEIGHTS
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    filled = offline.machine_defaults(values)
    assert filled["data.data_dir"] == str(copy) and filled["model.weights"] == str(weights)
    assert offline.download_warnings(filled) == []
    assert offline.machine_defaults({**values, "data.data_dir": "/mine"})["data.data_dir"] == "/mine"
    monkeypatch.setenv(offline.DATA_DIR_ENV, str(copy))
    assert offline.find_data_dir("fashion_mnist") == copy and offline.find_data_dir("cifar10") is None


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
    # TensorFlow's native start-up lines in older runs' logs: dropped with the CLI's own filter.
    assert tables.clean_log(f"{NATIVE_STARTUP_LINE}\nEpoch 1/2\n") == "Epoch 1/2\n"


def test_log_scale_fields_are_the_ones_the_config_marks():
    logs = [w.key for w in forms.widget_specs() if w.kind == "log"]
    assert logs == [spec.key for spec in field_specs(Config) if spec.scale == "log"]
    assert {"head.learning_rate", "finetune.weight_decay", "model.l2"} <= set(logs)
