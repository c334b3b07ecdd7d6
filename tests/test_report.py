"""The general report helpers: pure functions over configs, histories and metrics of run directories."""

import copy
import subprocess
import sys

import pytest

from tlkit import report
from tlkit.config import STAGES, Config

from .helpers import REPO

pytestmark = pytest.mark.backend_independent

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = {"head": {"epochs": 3}, "finetune": {"epochs": 2, "unfreeze": "conv5"}}


def history_rows(stages):
    """History rows: `{stage: epochs}` in training order, accuracy rising and loss falling."""
    rows = []
    for stage, epochs in stages.items():
        for epoch in range(epochs):
            step = len(rows)
            rows.append({"stage": stage, "epoch": epoch, "accuracy": 0.5 + 0.05 * step, "loss": 1.0 - 0.1 * step,
                         "val_accuracy": 0.45 + 0.05 * step, "val_loss": None if step == 0 else 1.1 - 0.1 * step})
    return rows


def test_markdown_table_aligns_columns_and_stringifies_cells():
    assert report.markdown_table(["name", "value", "note"], [["a", 1, None], ["b", 2.5, "x"]], align="lr") == (
        "| name | value | note |\n| --- | ---: | --- |\n| a | 1 | None |\n| b | 2.5 | x |")
    assert report.markdown_table(["only"], []) == "| only |\n| --- |"


def test_formatting_helpers():
    assert (report.percent(0.91234), report.percent(1), report.percent(None)) == ("91.23", "100.00", "—")
    assert (report.minutes(90), report.minutes(None)) == ("1.5", "—")
    assert [report.format_value(v) for v in (None, True, False, 0.0, 1e-05, 3, "conv5")] == [
        "none", "true", "false", "0.0", "1e-05", "3", "conv5"]


def test_time_span_repeats_the_date_only_when_it_changes():
    assert report.time_span("2026-11-29T10:15:00+00:00", "2026-11-29T11:02:30+00:00") == "2026-11-29 10:15 → 11:02 UTC"
    assert report.time_span("2026-11-29T23:50:00+01:00", "2026-11-30T01:10:00+01:00") == (
        "2026-11-29 22:50 → 2026-11-30 00:10 UTC")
    assert report.time_span(None, "2026-11-29T11:02:30+00:00") == "—"
    assert report.time_span("yesterday", "2026-11-29T11:02:30+00:00") == "—"


def test_stage_rows_and_epochs_follow_the_configured_stages():
    assert STAGES == ("head", "finetune")
    history = history_rows({"head": 3, "finetune": 1})
    per_stage = report.stage_rows(history)
    assert list(per_stage) == ["head", "finetune"] and [len(rows) for rows in per_stage.values()] == [3, 1]
    assert report.epochs_text(CONFIG, history) == "3 + 1 (of 2)"  # the finetune stage stopped early
    head_only = history_rows({"head": 3})
    assert list(report.stage_rows(head_only)) == ["head"]
    assert report.epochs_text({**CONFIG, "finetune": {"epochs": 0}}, head_only) == "3 + 0"


def test_unfrozen_depth_names_what_the_finetune_stage_trained():
    assert report.unfrozen_depth(CONFIG) == "conv5"
    assert report.unfrozen_depth({"finetune": {"epochs": 2, "unfreeze": " 16 "}}) == "last 16 layers"
    assert report.unfrozen_depth({"finetune": {"epochs": 0, "unfreeze": "conv5"}}) == "none"


def test_hardware_and_versions_come_from_the_metrics():
    assert report.describe_hardware({"cpu_count": 2, "processor": "x86_64", "devices": ["CPU:0", "GPU:0"]}) == (
        "2-core x86_64 CPU + GPU:0")
    assert report.describe_hardware({"cpu_count": 4}) == "4-core CPU"
    described = {"model": "AMD EPYC", "family": "25", "model_number": "1", "vector": "AVX2"}
    assert report.describe_hardware({"cpu_count": 2, "processor": "x86_64", "cpu": described}) == (
        "2-core AMD EPYC CPU (family 25, model 1, AVX2)")
    assert report.describe_hardware(None) == "CPU"
    versions = {"python": "3.11.7", "keras": "3.15.1", "tensorflow": "2.21.0", "jax": "0.7.0"}
    assert report.describe_versions({"backend": "jax", "versions": versions}) == (
        "python 3.11.7, keras 3.15.1, jax 0.7.0")
    assert report.describe_versions({"backend": "numpy", "versions": versions}) == "python 3.11.7, keras 3.15.1"
    assert report.describe_versions({}) == ""


def test_class_names_and_recall_come_from_the_metrics():
    metrics = {"class_names": ["cat", "dog", "owl"], "confusion_matrix": [[8, 2, 0], [1, 3, 0], [0, 0, 0]]}
    assert report.class_names_of(metrics) == ["cat", "dog", "owl"]
    assert report.recall_by_class(metrics) == {"cat": 0.8, "dog": 0.75, "owl": 0.0}
    unnamed = {"confusion_matrix": [[1, 0], [1, 1]]}
    assert report.class_names_of(unnamed) == ["0", "1"]
    assert report.recall_by_class(unnamed) == {"0": 1.0, "1": 0.5}


def test_config_diff_names_changed_fields_and_skips_bookkeeping():
    baseline = {"name": "a", "runs_dir": "/x", "seed": 1, "model": {"dropout": 0.3, "l2": 1e-4},
                "augment": {"flip": False}}
    other = {"name": "b", "runs_dir": "/y", "seed": 1, "model": {"dropout": 0.0, "l2": 1e-05},
             "augment": {"flip": True}}
    assert report.config_diff(baseline, other) == [
        "augment.flip false → true", "model.dropout 0.3 → 0.0", "model.l2 0.0001 → 1e-05"]
    assert report.config_diff(baseline, baseline) == []


def test_config_diff_fills_current_defaults_and_compares_local_files_by_name():
    reference = Config.from_preset("smoke", {"data": {"data_dir": "../shared/data/fashion-mnist"}}).to_dict()
    older = copy.deepcopy(reference)
    del older["augment"]["contrast"]  # a run made before the field existed
    older["data"]["data_dir"] = "/work/shared/data/fashion-mnist"  # the same files, launched from elsewhere
    assert report.config_diff(reference, older) == []
    older["model"]["dropout"] = 0.0
    assert report.config_diff(reference, older) == [f"model.dropout {reference['model']['dropout']!r} → 0.0"]
    # Configs that no longer validate are compared as they are; a field only one side has shows an em dash.
    assert report.config_diff({"gone": 0, "seed": 1}, {"gone": 0, "seed": 2, "new": True}) == [
        "new — → true", "seed 1 → 2"]


def test_plots_are_reproducible_pngs():
    history = history_rows({"head": 3, "finetune": 2})
    curves = report.learning_curves_png(history, title="run")
    matrix = report.confusion_matrix_png([[5, 1], [2, 4]], ["cat", "dog"], title="test set")
    for png in (curves, matrix):
        assert png.startswith(PNG_MAGIC) and len(png) > 1000 and b"Software" not in png
    assert curves == report.learning_curves_png(history, title="run")
    assert report.learning_curves_png(history_rows({"head": 3})).startswith(PNG_MAGIC)


def test_a_missing_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[report\]"):
        report.confusion_matrix_png([[1, 0], [0, 1]], ["a", "b"])


def test_importing_the_helpers_loads_no_deep_learning_framework_or_matplotlib():
    code = ("import sys, tlkit.report; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow', 'jax', 'torch', "
            "'matplotlib'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
