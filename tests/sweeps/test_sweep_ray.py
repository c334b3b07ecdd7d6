"""`--engine ray`: a real local Ray cluster (2 CPUs, one per trial), ASHA on each epoch's validation
accuracy, and a trial that crashes; every trial an ordinary run directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tlkit import runs, sweep

from ..helpers import REPO
from .conftest import write_spec

# Two learnable trials start first (max_concurrent 2); the unlearnable one starts when a slot frees, so
# the learnable ones have reached every rung before it: by epoch 2 its 0.5 trails their 1.0 and ASHA
# stops it (its epochs take most of a second each: the stop lands long before its tenth). The last
# trial's data cannot be read: the trainer fails, the others finish.
SPEC = """
name = "ray-asha"
trials = 1
max_concurrent = 2

[resources]
cpus = 1

[scheduler]
type = "asha"
grace_period = 1
reduction_factor = 2

[space]
"data.source" = {{ grid = ["{easy}", "{easy_copy}", "{noise}", "{broken}"] }}
"""


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory, sweep_data, sweep_env):
    root = tmp_path_factory.mktemp("ray-sweep")
    spec_path = write_spec(root / "ray.toml", SPEC.format(**{k: str(v) for k, v in sweep_data.items()}),
                           head_epochs=10)
    env = {key: value for key, value in sweep_env.items() if key != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "tlkit.sweep", str(spec_path), "--engine", "ray", "--runs-dir", str(root / "runs"),
         "--cache-dir", str(root / "cache")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    (found,) = sweep.list_sweeps(root / "runs")
    by_data = {}
    for row in found.record()["trials"]:
        by_data[next(name for name, path in sweep_data.items() if str(path) == row["params"]["data.source"])] = row
    return {"runs_dir": root / "runs", "sweep": found, "record": found.record(), "by_data": by_data,
            "stdout": result.stdout}


def test_asha_stops_the_trailing_trial_and_its_run_says_why(ray_sweep):
    row = ray_sweep["by_data"]["noise"]
    run = runs.Run(ray_sweep["runs_dir"] / row["run_id"])
    status = run.status()
    assert row["state"] == status["state"] == "stopped", status
    assert re.fullmatch(r"stopped early by ASHA after epoch [12] \(val_accuracy 0\.\d{4}\)", status["error"])
    assert status["exit_code"] == 130  # its trainer got SIGTERM and ended as a cancelled run would
    history = run.history()
    assert 1 <= len(history) < 10  # stopped before its last epoch; the finished epochs are kept
    assert run.config()["data"]["source"].endswith("noise.npz") and run.metrics() is None


def test_crashing_trial_is_recorded_and_the_others_finish(ray_sweep):
    crashed = ray_sweep["by_data"]["broken"]
    assert crashed["state"] == "failed" and crashed["best_metric"] is None
    assert "broken.npz: cannot read it as an .npz file" in crashed["error"]
    assert any("broken.npz: cannot read it as an .npz file" in error for error in ray_sweep["record"]["errors"])
    learnable = [ray_sweep["by_data"][name] for name in ("easy", "easy_copy")]
    assert "completed" in {row["state"] for row in learnable}
    assert {row["state"] for row in learnable} <= {"completed", "stopped"}
    for row in learnable:
        if row["state"] == "completed":
            run = runs.Run(ray_sweep["runs_dir"] / row["run_id"])
            assert len(run.history()) == 10 and run.metrics()["test_accuracy"] == row["test_accuracy"]
            assert row["best_metric"] == 1.0


def test_sweep_json_and_tags_describe_every_trial(ray_sweep):
    record, found = ray_sweep["record"], ray_sweep["sweep"]
    assert record["state"] == "completed" and record["engine"] == "ray" and record["trials_planned"] == 4
    assert sorted(row["trial"] for row in record["trials"]) == [1, 2, 3, 4]
    assert record["best"]["params"]["data.source"].endswith(("easy.npz", "easy_copy.npz"))
    assert record["best"]["best_metric"] == 1.0
    listed = {run.run_id: run for run in runs.list_runs(ray_sweep["runs_dir"])}
    assert sorted(listed) == sorted(row["run_id"] for row in record["trials"])  # the sweep dir is no run
    for row in record["trials"]:
        assert listed[row["run_id"]].annotations()["tags"] == [f"sweep:{found.sweep_id}", f"trial:{row['trial']}"]
        assert listed[row["run_id"]].status()["state"] == row["state"]
    assert json.loads((found.path / sweep.SWEEP_FILE).read_text()) == record
    assert (found.path / "ray").is_dir()  # Tune's own records stay inside the sweep's directory
    assert "started a local Ray cluster" in ray_sweep["stdout"] and "2 CPUs" in ray_sweep["stdout"]
