"""The accuracy results study end to end: real (tiny) run directories in, markdown and PNGs out."""

import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone

import pytest

import tlkit
from studies import results

from .helpers import REPO, smoke_config

pytestmark = pytest.mark.backend_independent

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEMPLATE = """# Results

{{results_table}}

{{ spread }}

{{learning_curves}}

{{confusion_matrix}}

{{hard_pairs}}

{{ablation_table}}

{{provenance}}

{{generated}}
"""


@pytest.fixture(scope="module")
def trained(synthetic_data_dir, tmp_path_factory):
    """Three smoke runs: a baseline, the same without dropout, and one without the finetune stage."""
    root = tmp_path_factory.mktemp("report-runs")
    base = smoke_config(synthetic_data_dir, root, name="base")
    return {
        "base": tlkit.fit(base, verbose=0),
        "no_dropout": tlkit.fit(base.replace(name="no-dropout", model={"dropout": 0.0}), verbose=0),
        "head_only": tlkit.fit(base.replace(name="head-only", finetune={"epochs": 0}), verbose=0),
    }


def toml_tables(name, entries):
    """`[[name]]` tables, one per dict (strings quoted, booleans lowercase)."""
    def value(v):
        return str(v).lower() if isinstance(v, bool) else f'"{v}"'

    return "".join(f"[[{name}]]\n" + "".join(f"{key} = {value(v)}\n" for key, v in entry.items()) + "\n"
                   for entry in entries)


def write_spec(directory, trained, template=TEMPLATE, finals=None):
    """A spec and its template in `directory`; returns the spec's path."""
    base, no_dropout, head_only = (trained[key].path for key in ("base", "no_dropout", "head_only"))
    finals = finals or [{"recipe": "smoke", "run": base}, {"recipe": "smoke", "run": no_dropout}]
    finals = [*finals, {"recipe": "head only", "run": head_only, "hardware": "a toaster"}]
    ablations = [
        {"group": "dropout", "label": "dropout 0.2", "run": base, "baseline": True},
        {"group": "dropout", "label": "dropout 0.0", "run": no_dropout},
        {"group": "stages", "label": "head only", "run": head_only},
        {"group": "stages", "label": "both stages", "run": base, "baseline": True},
    ]
    (directory / "results.template.md").write_text(template)
    path = directory / "spec.toml"
    path.write_text(
        'template = "results.template.md"\noutput = "docs/results.md"\nimages = "docs/img/results"\n'
        f'spread_recipe = "smoke"\nbest_cpu = "{base}"\n\n'
        + toml_tables("final", finals) + toml_tables("ablation", ablations)
    )
    return path


def results_cli(spec_path):
    return subprocess.run([sys.executable, "-m", "studies.results", spec_path.name], cwd=spec_path.parent,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)


def test_cli_generates_the_report_from_run_directories(trained, tmp_path):
    result = results_cli(write_spec(tmp_path, trained))
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "docs" / "results.md").read_text()
    assert "{{" not in markdown

    for key, depth, epochs in (("base", "conv3", "1 + 1"), ("no_dropout", "conv3", "1 + 1"),
                               ("head_only", "none", "1 + 0")):
        metrics = trained[key].metrics()
        accuracy, f1 = f"{100 * metrics['test_accuracy']:.2f}", f"{metrics['macro_f1']:.3f}"
        recipe = "head only" if key == "head_only" else "smoke"
        row = f"| {recipe} | 32 | {depth} | {epochs} | {metrics['backend']} | float32 | {accuracy} | {f1} |"
        assert row in markdown
    assert "| a toaster |" in markdown and "-core" in markdown  # explicit and derived hardware
    assert "The smoke recipe over 2 run(s) (" in markdown and " on the " not in markdown  # one hardware

    # Runs on different hardware are summarised apart, each naming its hardware.
    finals = [{"recipe": "smoke", "run": trained["base"].path, "hardware": "CPU A"},
              {"recipe": "smoke", "run": trained["no_dropout"].path, "hardware": "CPU B"}]
    (tmp_path / "by-hardware").mkdir()
    spec = results.load_spec(write_spec(tmp_path / "by-hardware", trained, finals=finals))
    line = results.spread_line(spec.final, spec.spread_recipe, spec.hardware)
    accuracy = f"{100 * trained['base'].metrics()['test_accuracy']:.2f} %"
    assert f"The smoke recipe's one run ({trained['base'].metrics()['backend']}) on the CPU A: test accuracy " \
           f"{accuracy}, macro-F1" in line and ") on the CPU B:" in line

    assert "| dropout 0.0 | model.dropout 0.2 → 0.0 |" in markdown
    assert "| head only | finetune.epochs 1 → 0 |" in markdown
    assert "**dropout** (baseline: dropout 0.2)" in markdown

    assert "| run | T-shirt/top recall (%) | Pullover recall (%) | Coat recall (%) | Shirt recall (%) |" in markdown
    assert "The 5 most confused (true → predicted) pairs" in markdown
    for run in trained.values():
        assert f"`{run.run_id}`" in markdown  # provenance
    assert "Generated by `python -m studies.results spec.toml`" in markdown

    for name in ("learning_curves.png", "confusion_matrix.png"):
        assert f"](img/results/{name})" in markdown
        data = (tmp_path / "docs" / "img" / "results" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_reports_are_reproducible(trained, tmp_path):
    spec = results.load_spec(write_spec(tmp_path, trained))
    moment = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    first, second = (results.render_report(spec, "make results", now=moment) for _ in range(2))
    assert first.markdown == second.markdown and "on 2026-01-02 03:04 UTC" in first.markdown
    assert first.images == second.images and len(first.images) == 2
    assert all(b"Software" not in png for png in first.images.values())  # no version/time stamps


def test_archived_run_records_rebuild_the_same_report_without_the_models(trained, tmp_path):
    archive = tmp_path / "archive"
    done = subprocess.run([sys.executable, "-m", "studies.archive_runs", *(str(run.path) for run in trained.values()),
                           "--to", str(archive)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {path.name for path in archive.iterdir()} == {run.run_id for run in trained.values()}
    assert not list(archive.glob("*/model.keras")) and not list(archive.glob("*/.trainer.lock"))
    copies = {key: tlkit.runs.Run(archive / run.run_id) for key, run in trained.items()}
    moment = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    original, archived = (results.render_report(results.load_spec(write_spec(directory, runs)), "make results",
                                                now=moment)
                          for directory, runs in ((tmp_path, trained), (archive, copies)))
    # The same report but for where the runs live (the provenance table names each run directory).
    assert archived.markdown.replace(str(archive), "") == original.markdown.replace(
        str(trained["base"].path.parent), "")
    assert sorted((path.name, png) for path, png in archived.images.items()) == sorted(
        (path.name, png) for path, png in original.images.items())


def test_build_report_names_the_study_command_by_default(trained, tmp_path):
    spec_path = write_spec(tmp_path, trained, template="{{generated}}\n")
    output = results.build_report(spec_path, now=datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc))
    assert output.read_text() == (f"Generated by `python -m studies.results {spec_path}` on 2026-01-02 03:04 UTC "
                                  "from 3 run directories; edit the template or the spec, not this file.\n")


def test_unknown_placeholder_exits_2_and_writes_nothing(trained, tmp_path):
    result = results_cli(write_spec(tmp_path, trained, template="{{results_table}}\n{{resluts_table}}\n"))
    assert result.returncode == 2
    assert "{{resluts_table}}" in result.stderr and "results.template.md" in result.stderr
    assert not (tmp_path / "docs").exists()


@pytest.mark.parametrize("damage", ["missing", "no_metrics", "running"])
def test_a_missing_or_unfinished_run_exits_2_naming_it(trained, tmp_path, capsys, damage):
    broken = tmp_path / "broken-run"
    if damage != "missing":
        shutil.copytree(trained["base"].path, broken)
        if damage == "no_metrics":
            (broken / "metrics.json").unlink()
        else:
            tlkit.runs.Run(broken).update_status(state="running", pid=None)
    spec = write_spec(tmp_path, trained, finals=[{"recipe": "smoke", "run": trained["base"].path},
                                                 {"recipe": "cpu", "run": broken}])
    assert results.main([str(spec)]) == 2
    error = capsys.readouterr().err
    assert "final[1] (cpu)" in error and str(broken) in error
    assert {"missing": "does not exist", "no_metrics": "metrics.json", "running": "not completed"}[damage] in error
    assert not (tmp_path / "docs").exists()


def test_a_missing_matplotlib_exits_2_saying_how_to_install_it(trained, tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path, trained)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(results.ReportError, match=r"pip install -e \.\[report\]"):
        results.render_report(results.load_spec(spec))
    assert results.main([str(spec)]) == 2
    assert "pip install -e .[report]" in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()
