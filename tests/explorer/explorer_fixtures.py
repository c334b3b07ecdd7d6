"""Fixture run directories, written through `tlkit.runs` like the trainer would."""

from __future__ import annotations

import sys
from pathlib import Path

from tlkit import runs
from tlkit.config import Config

from ..helpers import REPO
from . import fake_trainer

FAKE_TRAINER = Path(fake_trainer.__file__).resolve()
# How the worker runs the fake trainer (`TLKIT_EXPLORER_TRAIN_CMD`): as a script, from any directory.
FAKE_TRAINER_CMD = [sys.executable, str(FAKE_TRAINER)]
APP = REPO / "explorer" / "streamlit_app.py"
NATIVE_STARTUP_LINE = ("I0000 00:00:1732000000.000000  1234 port.cc:153] oneDNN custom operations are on. "
                       "You may see slightly different numerical results.")


def make_completed(runs_dir: Path, name: str, seed: int = 0, **overrides) -> runs.Run:
    config = Config.from_preset("smoke", overrides).replace(name=name)
    run = runs.create_run(runs_dir, name, state="queued")
    run.write_config(config.to_dict())
    for row in fake_trainer.history_rows(config.head.epochs, config.finetune.epochs, seed=seed):
        run.append_history(row)
    metrics, misclassified = fake_trainer.fake_results(seed=seed, skill=0.7 + 0.05 * seed)
    run.write_metrics(metrics)
    run.write_misclassified(**misclassified)
    run.update_status(state="completed", stage="done", epoch=1, epochs=1, progress=1.0, backend="jax",
                      started_at="2026-01-01T10:00:00+00:00", finished_at="2026-01-01T10:00:30+00:00")
    return run


def make_failed(runs_dir: Path, name: str = "oom") -> runs.Run:
    run = runs.create_run(runs_dir, name, state="queued")
    run.write_config(Config.from_preset("smoke").replace(name=name).to_dict())
    run.append_history({"stage": "head", "epoch": 1, "loss": 2.0, "accuracy": 0.3, "val_loss": 2.1,
                        "val_accuracy": 0.28, "lr": 1e-3, "seconds": 2.0})
    run.update_status(state="failed", stage="head", error="ResourceExhaustedError: out of memory (fixture)")
    # An older trainer's log: TensorFlow's native start-up line is still in it (the viewer drops it).
    run.file(runs.LOG_FILE).write_text(NATIVE_STARTUP_LINE + "\nepoch 1/2\nTraceback (most recent call last):\n"
                                       "  ...\nResourceExhaustedError: out of memory (fixture)\n")
    return run


def make_corrupt(runs_dir: Path) -> runs.Run:
    run = runs.create_run(runs_dir, "corrupt", state="queued")
    run.file(runs.STATUS_FILE).write_text("{ this is not json")
    run.file(runs.CONFIG_FILE).write_text("[1, 2")
    run.file(runs.METRICS_FILE).write_text("garbage")
    return run
