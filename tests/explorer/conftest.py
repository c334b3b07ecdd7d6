"""Fixtures for the explorer tests; helpers live in `explorer_fixtures`."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tlkit import run_queue, runs

from .explorer_fixtures import FAKE_TRAINER_CMD, make_completed, make_corrupt, make_failed


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv("TLKIT_RUNS_DIR", str(path))
    monkeypatch.setenv(run_queue.TRAIN_CMD_ENV, shlex.join(FAKE_TRAINER_CMD))
    return path


@pytest.fixture
def populated(runs_dir) -> dict[str, runs.Run]:
    """Two completed runs that differ in dropout and unfreeze, a failed one and a corrupt one."""
    return {
        "a": make_completed(runs_dir, "alpha", seed=0, model={"dropout": 0.2}),
        "b": make_completed(runs_dir, "beta", seed=1, model={"dropout": 0.4}, finetune={"unfreeze": "4"}),
        "failed": make_failed(runs_dir),
        "corrupt": make_corrupt(runs_dir),
    }
