"""`benchmarks/gpu_run.sh --dry-run`: the GPU script end to end on this CPU, only the GPU untested.

The dry run makes a synthetic pack (a mini_resnet `.weights.h5` and Fashion-MNIST-shaped IDX
files, packed as the real ones are), installs Keras from it, unpacks, probes the backend, trains
the `best` recipe at a tiny size and cuts it after 3 epochs as the time budget would, so the cut
run is resumed for its test evaluation. It runs once per CI, in the KERAS_BACKEND=torch pass:
torch is the GPU script's fallback backend and, on 2 CPU cores, the quickest one the GPU image
has (jax's XLA compiles take ~30 s in each of the four Keras processes; the jax dry run is run by
hand: `benchmarks/gpu_run.sh --dry-run`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from .helpers import REPO

BACKEND = "torch"

pytestmark = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", BACKEND) != BACKEND,
    reason=f"the GPU dry run runs once per CI, in the KERAS_BACKEND={BACKEND} pass (it trains under {BACKEND} "
           "whatever KERAS_BACKEND says)",
)


def test_dry_run_installs_unpacks_trains_cuts_and_reports(tmp_path):
    out = tmp_path / "out"
    command = ["bash", "benchmarks/gpu_run.sh", "--dry-run", "--work", str(tmp_path / "work"), "--out", str(out),
               "--backends", BACKEND, "--recipes", "best", "--stop-after", "best=3", "--poll-s", "0.1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run"
    assert {name: phase["ok"] for name, phase in summary["phases"].items()} == {
        name: True for name in ("environment", "inputs", "install", "unpack", "probe", "best", "collect")}
    assert all(phase["seconds"] >= 0 for phase in summary["phases"].values())
    # Keras came from the pack's site archive, not from this environment.
    assert summary["install"]["keras"].startswith(str(tmp_path / "work" / "site"))
    assert summary["inputs"]["mantissa_bits"] == 10 and summary["inputs"]["pack_verify"]["feature_min_cosine"] > 0.999
    assert summary["backend"]["backend"] == BACKEND and summary["backend"]["devices"]

    best = summary["recipes"]["best"]
    assert best["stopped"]["reason"] == "--stop-after best=3"
    assert best["exit_code"] == 130  # tlkit's exit code for a cancelled run
    cut = best["finalize"]["epochs"]
    assert best["finalize"]["exit_code"] == 0 and cut["head"] == 1 and 2 <= cut["finetune"] < 4
    assert best["state"] == "completed" and 0.0 <= best["test_accuracy"] <= 1.0
    assert best["planned_epochs"] == {"head": 1, "finetune": 4}
    assert best["trained_epochs"] == cut
    rates = best["epoch_images_per_second"]
    assert [len(rates["head"]), len(rates["finetune"])] == [1, cut["finetune"]]
    assert all(rate > 0 for rate in rates["head"] + rates["finetune"]) and best["steady_images_per_second"]["finetune"]
    assert [row["stage"] for row in summary["images_per_second"]] == ["head", "finetune"]

    with tarfile.open(out / summary["collect"]["runs_archive"]) as archive:
        names = archive.getnames()
    run_dir = f"runs/best/{best['run_id']}"
    assert {f"{run_dir}/{name}" for name in ("config.json", "status.json", "history.csv", "metrics.json")} <= set(names)
    assert not [name for name in names if "model.keras" in name or "/checkpoints" in name]
    log = (out / "gpu_run.log").read_text()
    assert "[best:finalize]" in log and "test accuracy" in log
    assert (out / "nvidia-smi.txt").exists()
