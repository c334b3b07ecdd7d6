"""A recipe sized in optimizer steps: small training sets run more epochs, fine-tuning warms up,
and early stopping ends each stage on its best epoch's weights."""

import numpy as np
import pytest

import tlkit
from tlkit.data import load_splits

from .helpers import smoke_config


def test_a_small_training_set_runs_the_stages_minimum_steps_and_keeps_the_best_epoch(synthetic_data_dir, tmp_path):
    # 270 training images in batches of 32: 9 steps per epoch.
    config = smoke_config(synthetic_data_dir, tmp_path,
                          head={"epochs": 1, "min_steps": 27, "learning_rate": 3e-2},
                          finetune={"epochs": 1, "min_steps": 36, "warmup_steps": 9, "early_stopping": 1,
                                    "schedule": "cosine"})
    run = tlkit.fit(config, verbose=0)
    assert run.config()["head"]["epochs"] == 1  # config.json keeps what was asked for

    stages = run.metrics()["stages"]
    assert (stages["head"]["planned_epochs"], stages["head"]["steps_per_epoch"]) == (3, 9)
    assert (stages["head"]["min_steps"], stages["finetune"]["min_steps"]) == (27, 36)  # metrics.json says why
    assert (stages["finetune"]["planned_epochs"], stages["finetune"]["warmup_steps"]) == (4, 9)
    history = run.history()
    head = [row for row in history if row["stage"] == "head"]
    finetune = [row for row in history if row["stage"] == "finetune"]
    assert len(head) == 3 and 2 <= len(finetune) <= 4
    assert stages["finetune"]["epochs"] == len(finetune)
    # Warm-up: the first fine-tune epoch trains below the peak rate, the second reaches it.
    peak = config.finetune.learning_rate
    assert finetune[0]["lr"] == pytest.approx(peak / 2)  # the mean of its start (0) and its end (the peak)
    assert finetune[1]["lr"] > finetune[0]["lr"]

    # The saved model holds the weights of the fine-tune epoch with the lowest validation loss after
    # warm-up (the first epoch is warm-up: early stopping watches from the second on).
    best = 1 + int(np.argmin([row["val_loss"] for row in finetune[1:]]))
    assert stages["finetune"]["best_epoch"] == best + 1
    splits = load_splits(tlkit.Config.from_dict(run.config()).data, config.seed)
    model = run.load_model()
    model.compile(loss="sparse_categorical_crossentropy")  # the stage's loss; the head's L2 penalty is the model's
    loss = model.evaluate(splits.val.images, splits.val.labels, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(finetune[best]["val_loss"], rel=1e-3)
