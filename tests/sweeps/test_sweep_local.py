"""`--engine local`: the trials go through the runs directory's queue (tlkit.run_queue, the explorer's)
as ordinary tagged runs; sweep.json sums them up; the explorer's Sweeps page shows them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tlkit import runs, sweep

from ..helpers import REPO
from .conftest import write_spec

SPEC = """
name = "local-lr"
trials = 3
seed = 3
max_concurrent = 2

[space]
"head.learning_rate" = { loguniform = [3e-3, 3e-2] }
"""


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, sweep_data, sweep_env):
    root = tmp_path_factory.mktemp("local-sweep")
    spec_path = write_spec(root / "local.toml", SPEC, head_epochs=2)
    result = subprocess.run(
        [sys.executable, "-m", "tlkit.sweep", str(spec_path), "--runs-dir", str(root / "runs"),
         "--data", str(sweep_data["easy"]), "--cache-dir", str(root / "cache")],
        cwd=REPO, env=sweep_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    spec = sweep.load_spec(spec_path, {"data.source": str(sweep_data["easy"]), "runs_dir": str(root / "runs")})
    return {"runs_dir": root / "runs", "spec": spec, "stdout": result.stdout}


def test_each_trial_is_an_ordinary_tagged_run_and_sweep_json_sums_up(local_sweep):
    runs_dir, spec = local_sweep["runs_dir"], local_sweep["spec"]
    (found,) = sweep.list_sweeps(runs_dir)
    record = json.loads(found.file.read_text())
    listed = runs.list_runs(runs_dir)  # the sweeps/ directory is not mistaken for a run
    assert sorted(run.run_id for run in listed) == sorted(row["run_id"] for row in record["trials"])
    sampled = sweep.sample_trials(spec)  # the same seed: the values the trials trained with
    for row in record["trials"]:
        run = runs.Run(runs_dir / row["run_id"])
        assert run.annotations()["tags"] == [f"sweep:{found.sweep_id}", f"trial:{row['trial']}"]
        assert run.status()["state"] == row["state"] == "completed"
        config = run.config()
        assert config["head"]["learning_rate"] == pytest.approx(sampled[row["trial"] - 1]["head.learning_rate"])
        assert config["name"] == f"local-lr-{row['trial']}" and config["data"]["source"].endswith("easy.npz")
        history = run.history()
        assert len(history) == row["epochs"] == 2
        assert row["best_metric"] == max(r["val_accuracy"] for r in history)
        assert row["test_accuracy"] == run.metrics()["test_accuracy"]
    assert [row["trial"] for row in record["trials"]] == [1, 2, 3]
    assert record["state"] == "completed" and record["engine"] == "local" and record["counts"] == {"completed": 3}
    assert record["best"] == max(record["trials"], key=lambda row: row["best_metric"])
    assert record["spec"]["space"] == {"head.learning_rate": {"loguniform": [3e-3, 3e-2]}}
    assert f"best: trial {record['best']['trial']}" in local_sweep["stdout"]


# Renders the Sweeps page in a fresh process: the explorer server must not import a Keras backend or Ray.
SWEEP_PAGE_CHECK = """
import json, sys
from streamlit.testing.v1 import AppTest

at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
at.switch_page("views/sweeps.py").run()
assert not at.exception, at.exception
frame = at.dataframe[0].value
charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
heavy = sorted(name for name in ("keras", "tensorflow", "jax", "torch", "ray") if name in sys.modules)
print(json.dumps({"trials": frame["trial"].tolist(), "states": frame["state"].tolist(), "runs": frame["run"].tolist(),
                  "best": [m.value for m in at.success], "charts": [e.key for e in at.get("plotly_chart")],
                  "x": [[p for p in c["data"][0]["x"]] for c in charts], "heavy": heavy}))
"""


def test_sweeps_page_shows_trials_best_and_metric_per_field(local_sweep):
    runs_dir = local_sweep["runs_dir"]
    result = subprocess.run([sys.executable, "-c", SWEEP_PAGE_CHECK, str(REPO / "explorer" / "streamlit_app.py"),
                             "--runs-dir", str(runs_dir)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    page = json.loads(result.stdout.strip().splitlines()[-1])
    (found,) = sweep.list_sweeps(runs_dir)
    record = found.record()
    assert page["heavy"] == []
    assert page["trials"] == [1, 2, 3] and page["states"] == ["completed"] * 3
    assert page["runs"] == [row["run_id"] for row in record["trials"]]
    best = record["best"]
    rate = best["params"]["head.learning_rate"]
    assert page["best"] == [f"Best: trial {best['trial']} (head.learning_rate={rate:.4g}): val_accuracy "
                            f"{best['best_metric']:.4f} at epoch {best['best_epoch']} · run `{best['run_id']}` · "
                            "completed"]
    assert page["charts"] == ["sweeps:vs:head.learning_rate"]
    assert sorted(page["x"][0]) == sorted(row["params"]["head.learning_rate"] for row in record["trials"])
