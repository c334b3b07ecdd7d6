"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wait_until(predicate, timeout: float = 240.0, interval: float = 0.1) -> bool:
    """Polls `predicate` until it is true; False when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run_cli(*args, env: dict | None = None, module: str = "tlkit.train", timeout: float = 600,
            **kwargs) -> subprocess.CompletedProcess:
    """`python -m tlkit.train ARGS` in a fresh process, from the repo root, as a user runs it."""
    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def smoke_config(data_dir, tmp_path, **overrides):
    """The smoke preset on synthetic data, writing runs under tmp_path."""
    from tlkit.config import Config

    base = {"data": {"data_dir": str(data_dir), "train_limit": None, "test_limit": None},
            "runs_dir": str(tmp_path / "runs"), "batch_size": 32}
    config = Config.from_preset("smoke", base)
    return config.replace(**overrides) if overrides else config


SMOKE = ["--preset", "smoke", "--train-limit", "none", "--test-limit", "none", "--batch-size", "32"]


def only_run(runs_dir):
    """The one run in `runs_dir`."""
    from tlkit import runs

    (run,) = runs.list_runs(runs_dir)
    return run


def trainer_args(runs_dir, synthetic_data_dir, *extra):
    """CLI arguments of a smoke run that trains until stopped (300 fine-tune epochs)."""
    return [*SMOKE, "--data-dir", synthetic_data_dir, "--runs-dir", runs_dir, "--cache-dir",
            Path(runs_dir).parent / "cache", "--head-epochs", "1", "--finetune-epochs", "300", *extra]


def start_trainer(runs_dir, synthetic_data_dir, *extra, min_finetune_rows=1):
    """A trainer process, returned once `min_finetune_rows` fine-tune epochs are in history.csv."""
    args = map(str, trainer_args(runs_dir, synthetic_data_dir, *extra))
    process = subprocess.Popen([sys.executable, "-m", "tlkit.train", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: _finetune_rows(runs_dir) >= min_finetune_rows or process.poll() is not None)
    assert process.poll() is None, process.stderr.read()
    return process, only_run(runs_dir)


def _finetune_rows(runs_dir) -> int:
    from tlkit import runs

    listed = runs.list_runs(runs_dir)
    return sum(row["stage"] == "finetune" for row in listed[0].history()) if listed else 0


def checkpoint_epoch(run, stage="finetune") -> int:
    """The last whole epoch of `stage` that the run's checkpoint holds (0 if none)."""
    from tlkit.stages import EpochCheckpoint

    return EpochCheckpoint.saved_epoch(run.path / "checkpoints" / stage)
