"""A stand-in for `python -m tlkit.train --existing-run DIR`, for the queue and browser tests.

It follows the trainer's contract through `tlkit.runs` only: status `running`
with its own pid, one history row per epoch for both stages, metrics and
misclassified images at the end (from `tlkit.evaluate` over fake probabilities),
`completed`; on SIGTERM it writes `cancelled` (history kept) and exits 130. It
also appends `start`/`end` events to `<runs_dir>/fake-trainer-events.log` so
tests can check the queue's order.

The worker runs it as a script (`python tests/explorer/fake_trainer.py`, via
`TLKIT_EXPLORER_TRAIN_CMD`), so it imports only the installed `tlkit` and works
from any directory; the fixtures import its helpers as `tests.explorer.fake_trainer`.

Knobs (env): FAKE_TRAINER_EPOCH_SECONDS (default 0.2), FAKE_TRAINER_FAIL=1
(crash after the first epoch without a final state).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np

from tlkit import runs
from tlkit.data import CLASS_NAMES
from tlkit.evaluate import classification_report, misclassified

EVENTS_FILE = "fake-trainer-events.log"


def history_rows(head_epochs: int, finetune_epochs: int, seed: int = 0) -> list[dict]:
    """Plausible, improving curves for both stages."""
    rng = np.random.default_rng(seed)
    rows, step = [], 0
    for stage, epochs, lr in (("head", head_epochs, 1e-3), ("finetune", finetune_epochs, 1e-5)):
        for epoch in range(1, epochs + 1):
            step += 1
            loss = 1.6 / (1 + 0.5 * step) + rng.uniform(0, 0.05)
            rows.append({"stage": stage, "epoch": epoch, "loss": loss, "accuracy": 0.6 + 0.3 * (1 - loss),
                         "val_loss": loss + 0.05, "val_accuracy": 0.58 + 0.3 * (1 - loss), "lr": lr,
                         "seconds": 1.5})
    return rows


def fake_probabilities(seed: int = 0, test_size: int = 300, skill: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(labels, softmax probabilities) whose argmax is right for about `skill` of the images."""
    rng = np.random.default_rng(seed)
    classes = len(CLASS_NAMES)
    true = rng.integers(0, classes, test_size)
    wrong = rng.random(test_size) > skill
    predicted = np.where(wrong, (true + rng.integers(1, classes, test_size)) % classes, true)
    logits = rng.normal(0.0, 0.5, (test_size, classes))
    logits[np.arange(test_size), predicted] += rng.uniform(1.5, 4.0, test_size)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    return true, probabilities / probabilities.sum(axis=1, keepdims=True)


def fake_results(seed: int = 0, test_size: int = 300, skill: float = 0.8) -> tuple[dict, dict]:
    """metrics.json and the misclassified arrays, computed like the trainer does (`tlkit.evaluate`)."""
    true, probabilities = fake_probabilities(seed, test_size, skill)
    metrics = classification_report(true, probabilities, CLASS_NAMES)
    metrics.update(backend=os.environ.get("KERAS_BACKEND", "jax"),
                   seconds={"head": 3.0, "finetune": 2.0, "total": 5.5})
    wrong = misclassified(true, probabilities)
    images = np.random.default_rng(seed + 1).integers(0, 256, (len(wrong["position"]), 28, 28), dtype=np.uint8)
    arrays = {"index": wrong["position"], "true": wrong["true"], "predicted": wrong["predicted"],
              "confidence": wrong["confidence"], "images": images}
    return metrics, arrays


def log_event(run: runs.Run, event: str) -> None:
    with open(run.path.parent / EVENTS_FILE, "a") as handle:
        handle.write(f"{event} {run.run_id} {time.time():.3f}\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--existing-run", required=True, metavar="DIR")
    run = runs.Run(parser.parse_args().existing_run)
    cancelled = []
    signal.signal(signal.SIGTERM, lambda *_: cancelled.append(True))
    config = run.config() or {}
    head_epochs = config.get("head", {}).get("epochs", 1)
    finetune_epochs = config.get("finetune", {}).get("epochs", 1)
    epoch_seconds = float(os.environ.get("FAKE_TRAINER_EPOCH_SECONDS", "0.2"))
    log_event(run, "start")
    run.update_status(state="running", pid=os.getpid(), error=None, backend=os.environ.get("KERAS_BACKEND"))
    print(f"fake trainer: {run.run_id} on {os.environ.get('KERAS_BACKEND')}", flush=True)
    rows = history_rows(head_epochs, finetune_epochs, seed=len(run.run_id))
    total = max(len(rows), 1)
    for done, row in enumerate(rows, start=1):
        epochs = head_epochs if row["stage"] == "head" else finetune_epochs
        run.update_status(stage=row["stage"], epoch=row["epoch"] - 1, epochs=epochs,
                          progress=(done - 1) / total)
        deadline = time.monotonic() + epoch_seconds
        while time.monotonic() < deadline and not cancelled:
            time.sleep(0.02)
        if cancelled:
            run.update_status(state="cancelled", error="cancelled by the user")
            log_event(run, "end")
            return 130
        run.append_history(row)
        run.update_status(epoch=row["epoch"], progress=done / total)
        if os.environ.get("FAKE_TRAINER_FAIL") == "1":
            log_event(run, "end")
            raise SystemExit("fake trainer: simulated crash")
    skill = 0.6 + 0.3 * config.get("model", {}).get("dropout", 0.5)
    metrics, wrong = fake_results(seed=len(run.run_id), skill=skill)
    run.write_metrics(metrics)
    run.write_misclassified(**wrong)
    run.update_status(state="completed", stage="done", progress=1.0, test_accuracy=metrics["test_accuracy"])
    log_event(run, "end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
