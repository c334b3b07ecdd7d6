"""Tracking: TensorBoard event files (read back with TensorBoard's own reader) and live MLflow logging
(read back from a real SQLite store)."""

import time

import keras
import pytest

import tlkit
from tlkit.config import ConfigError

from .helpers import SMOKE, only_run, run_cli, smoke_config

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


# tlkit.mlflow never touches Keras; its live path runs once in CI, in the tensorflow pass (as tests/test_mlflow.py).
MLFLOW_ONCE = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                 reason="MLflow logging is backend-independent: checked in the tensorflow pass")


@MLFLOW_ONCE
def test_mlflow_uri_logs_the_run_live_and_a_later_export_adds_nothing(synthetic_data_dir, tmp_path):
    """`--mlflow-uri` through the CLI, as a user runs it, read back from the real SQLite store."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(*SMOKE, "--data-dir", synthetic_data_dir, "--runs-dir", tmp_path / "runs", "--cache-dir",
                     tmp_path / "cache", "--head-epochs", "2", "--mlflow-uri", uri, "--mlflow-experiment", "live")
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "runs")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("live")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.tags["tlkit.run_id"] == run.run_id
    losses = client.get_metric_history(logged.info.run_id, "loss")
    assert [(m.step, m.value) for m in losses] == [(i + 1, pytest.approx(row["loss"], rel=1e-5))
                                                    for i, row in enumerate(run.history())]
    assert logged.data.metrics["test_accuracy"] == pytest.approx(run.metrics()["test_accuracy"])
    assert logged.data.params["model.backbone"] == "mini_resnet"

    again = run_cli(run.path, "--tracking-uri", uri, "--experiment", "live", module="tlkit.mlflow")
    assert again.returncode == 0, again.stderr
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert len(client.get_metric_history(logged.info.run_id, "loss")) == len(losses)


@MLFLOW_ONCE
def test_an_unreachable_mlflow_uri_stops_the_cli_in_seconds_before_any_run(synthetic_data_dir, tmp_path):
    start = time.monotonic()
    result = run_cli(*SMOKE, "--data-dir", synthetic_data_dir, "--runs-dir", tmp_path / "runs",
                     "--mlflow-uri", "http://127.0.0.1:9")
    assert result.returncode == 2 and "mlflow_uri: MLflow tracking server http://127.0.0.1:9 is not reachable" \
        in result.stderr, result.stderr
    assert time.monotonic() - start < 60  # the CLI's start-up included; the probe itself gives up in 5 s
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
