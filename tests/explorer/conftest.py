"""Fixtures for the explorer tests; helpers live in `explorer_fixtures` (a unique module name)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from explorer_fixtures import FAKE_TRAINER, make_completed, make_corrupt, make_failed  # noqa: E402

from tlkit import runs  # noqa: E402


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv("TLKIT_RUNS_DIR", str(path))
    monkeypatch.setenv("TLKIT_EXPLORER_TRAIN_CMD", f"{sys.executable} {FAKE_TRAINER}")
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
