"""Fault injection: a run killed (kill -9) at the commits that matter, or starved of disk, loses at
most the interrupted epoch, says what happened, leaves no temp files, and resumes to the model an
uninterrupted run trains.

Kills come from `tests.fault_driver` (os._exit at the Nth rename of a chosen file, before or after
it); the full disk is a small tmpfs (root only). Smoke-sized: the slow variants are benchmarks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess

import keras
import numpy as np
import pytest

import tlkit
from tlkit.data import load_splits

from .helpers import checkpoint_epoch, only_run, run_cli, start_trainer, trainer_args, wait_until

RESUME_TOLERANCE = 1e-6  # measured: 0 on tensorflow, jax and torch
FINETUNE_EPOCHS = 4
KILLED = 137


def kill_at(fault: str, *args) -> subprocess.CompletedProcess:
    return run_cli(*args, module="tests.fault_driver", env={"TLKIT_TEST_FAULT": fault})


def history_losses(run) -> list[tuple]:
    return [(row["stage"], row["epoch"], row["loss"]) for row in run.history()]


def leftovers(run) -> list[str]:
    return sorted(path.name for path in run.path.rglob("*") if ".tmp" in path.name)


# The commits are backend-independent Python; the backends differ in the random-generator state the
# checkpoint holds: Keras SeedGenerator variables on every backend, and under torch also torch's own
# generator. The torch pass checks both kinds; each backend's SIGTERM/resume path is checked by
# tests/test_cli.py. One backend keeps CI inside its time budget.
@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="kill/resume at every commit is checked under torch (Keras seed generators and "
                           "torch's own generator)")
def test_kills_at_every_commit_resume_to_the_uninterrupted_model(synthetic_data_dir, tmp_path):
    args = trainer_args(tmp_path / "runs", synthetic_data_dir, "--finetune-epochs", FINETUNE_EPOCHS)

    # 1. Killed while writing the first feature cache entry: nothing trained; the run reads as crashed.
    assert kill_at("before:*.npy:1", *args).returncode == KILLED
    run = only_run(tmp_path / "runs")
    assert run.status(raw=True)["state"] == "running"  # no handler ran
    status = run.status()
    assert status["state"] == "crashed" and "--resume" in status["error"] and run.holder() is None
    resume = ["--existing-run", run.path, "--resume", "--finetune-epochs", FINETUNE_EPOCHS]

    # 2. Killed right after fine-tune epoch 2 was committed: epochs 1 and 2 are kept, row for row.
    assert kill_at("after:*/finetune/epoch-0002:1", *resume).returncode == KILLED
    assert checkpoint_epoch(run) == 2
    assert [(r["stage"], r["epoch"]) for r in run.history()] == [("head", 1), ("finetune", 1), ("finetune", 2)]
    kept = history_losses(run)

    # 3. Killed just before the fine-tuned model.keras replaces the head's: the epochs stay checkpointed.
    assert kill_at("before:*/model.keras:1", *resume).returncode == KILLED
    assert checkpoint_epoch(run) == FINETUNE_EPOCHS and run.status(raw=True)["completed_stages"] == ["head"]
    assert history_losses(run)[:3] == kept

    # 4. Killed just after model.keras was replaced, before the stage was recorded as finished.
    assert kill_at("after:*/model.keras:1", *resume).returncode == KILLED

    # 5. The last resume finishes; no temp file or checkpoint is left behind.
    result = run_cli(*resume)
    assert result.returncode == 0, result.stderr
    assert run.status()["state"] == "completed" and leftovers(run) == []
    assert not (run.path / "checkpoints").exists()

    # The same run, never interrupted: the same epochs with the same losses, the same model.
    straight = run_cli(*trainer_args(tmp_path / "straight", synthetic_data_dir, "--finetune-epochs", FINETUNE_EPOCHS))
    assert straight.returncode == 0, straight.stderr
    reference = only_run(tmp_path / "straight")
    resumed, uninterrupted = history_losses(run), history_losses(reference)
    assert [row[:2] for row in resumed] == [row[:2] for row in uninterrupted]
    np.testing.assert_allclose([row[2] for row in resumed], [row[2] for row in uninterrupted], rtol=1e-5)
    images = load_splits(tlkit.Config.from_dict(run.config()).data, run.config()["seed"]).test.images
    difference = np.abs(run.load_model().predict(images, verbose=0)
                        - reference.load_model().predict(images, verbose=0)).max()
    print(f"killed 4 times vs uninterrupted ({keras.backend.backend()}): max |Δp| {difference:.2e}")
    assert difference < RESUME_TOLERANCE


@contextlib.contextmanager
def small_disk(path, size="16m"):
    """A tmpfs of `size` at `path` (root only: the test skips with the reason otherwise)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a tmpfs, and mounting one failed: {mounted.stderr.strip() or 'not root'}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory) -> None:
    """Writes a filler file until the device is full (the trainer may have filled it already)."""
    block = bytes(1 << 16)
    try:
        with open(directory / "filler", "wb") as handle:
            while True:
                handle.write(block)
                handle.flush()
    except OSError as error:
        assert error.errno == errno.ENOSPC


# Run files, epoch checkpoints (.npz) and their error paths are backend-independent Python; model.keras
# goes through Keras' own zip writer on every backend. One backend keeps CI inside its time budget.
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the full-disk path is backend-independent: checked in the tensorflow pass")
def test_a_full_disk_mid_run_says_so_leaves_no_temp_files_and_resumes(synthetic_data_dir, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        runs_dir = disk / "runs"
        process, run = start_trainer(runs_dir, synthetic_data_dir, "--cache-dir", tmp_path / "cache")
        try:
            fill(disk)
            assert process.wait(timeout=240) == 1
        finally:
            process.kill()
        stderr = process.stderr.read()
        assert "no space left on the device" in stderr and "--resume" in stderr, stderr
        status = run.status()
        assert status["state"] == "failed", status
        assert status["error"].startswith("no space left on the device") and str(run.path) in status["error"]
        assert leftovers(run) == []
        finished = checkpoint_epoch(run)
        rows = [r["epoch"] for r in run.history() if r["stage"] == "finetune"]
        assert rows == list(range(1, finished + 1)) or rows == list(range(1, finished + 2))  # ≤ 1 epoch lost

        if (disk / "filler").exists():
            os.remove(disk / "filler")
        epochs = finished + 1
        result = run_cli("--existing-run", run.path, "--resume", "--finetune-epochs", epochs, timeout=300)
        assert result.returncode == 0, result.stderr
        assert run.status()["state"] == "completed"
        assert [(r["stage"], r["epoch"]) for r in run.history()] == (
            [("head", 1)] + [("finetune", epoch) for epoch in range(1, epochs + 1)])
        assert wait_until(lambda: leftovers(run) == [], timeout=5)
