"""TensorBoard event files: both stages on one epoch axis, read back with TensorBoard's own reader."""

import pytest

import tlkit
from tlkit.config import ConfigError

from .helpers import smoke_config

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is in the dev extra")


def scalars(directory, tag):
    events = event_accumulator.EventAccumulator(str(directory))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_tensorboard_holds_both_stages_on_one_epoch_axis(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, tensorboard=True, head={"epochs": 2}, finetune={"epochs": 2})
    run = tlkit.fit(config, verbose=0)
    log = run.path / "tensorboard"
    history = run.history()
    assert [step for step, _ in scalars(log, "epoch_loss")] == [1, 2, 3, 4]
    assert [value for _, value in scalars(log, "epoch_loss")] == pytest.approx([row["loss"] for row in history],
                                                                              rel=1e-4)
    assert [value for _, value in scalars(log, "learning_rate")] == pytest.approx([row["lr"] for row in history],
                                                                                 rel=1e-4)
    assert [step for step, _ in scalars(log, "epoch_val_accuracy")] == [1, 2, 3, 4]
    assert scalars(log, "test_accuracy") == [(4, pytest.approx(run.metrics()["test_accuracy"]))]


def test_tensorboard_without_the_package_is_a_config_error_before_any_run(synthetic_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tlkit.tracking, "tensorboard_missing", lambda: "--tensorboard needs the tensorboard package")
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        tlkit.fit(smoke_config(synthetic_data_dir, tmp_path, tensorboard=True), verbose=0)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
