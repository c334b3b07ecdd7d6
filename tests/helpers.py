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
