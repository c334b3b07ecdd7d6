"""MLflow tracking (`python -m tlkit.mlflow`, `tlkit.mlflow.MlflowLog`) into a real SQLite MLflow store,
read back with MLflow's own client; the runs come from one real smoke training.

tlkit.mlflow reads run directories and never touches Keras, so these tests run once, under the
tensorflow backend (the fastest smoke training), not under each backend.
"""

import shutil
import socket
import subprocess
import sys
import time

import keras
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tlkit.mlflow is backend-independent: its tests run once, under tensorflow", allow_module_level=True)
pytest.importorskip("mlflow", reason="mlflow is in the dev extra")

from mlflow.tracking import MlflowClient  # noqa: E402

import tlkit  # noqa: E402
from tlkit import runs  # noqa: E402
from tlkit.config import flatten_dict  # noqa: E402
from tlkit.mlflow import MlflowLog, MlflowTrackingError, main  # noqa: E402

from .helpers import REPO, run_cli, smoke_config, wait_until  # noqa: E402

# MLflow's SQL store still uses a SQLAlchemy loader that SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")
EPOCH_METRICS = {"loss": "loss", "accuracy": "accuracy", "val_loss": "val_loss", "val_accuracy": "val_accuracy",
                 "learning_rate": "lr"}
RUN_FILES = {"config.json", "metrics.json", "history.csv", "status.json", "data.json", "model.keras",
             "misclassified.npz"}


@pytest.fixture(scope="module")
def trained(synthetic_data_dir, tmp_path_factory):
    """One real run (head 2 epochs, then fine-tune 2), and the same run as it stood earlier: started with
    --finetune-epochs 1, cancelled during fine-tuning (head rows only, no test metrics), so logging the
    finished run afterwards is a resumed run with more epochs."""
    root = tmp_path_factory.mktemp("mlflow")
    config = smoke_config(synthetic_data_dir, root, head={"epochs": 2}, finetune={"epochs": 2})
    run = tlkit.fit(config, verbose=0)
    earlier = runs.Run(shutil.copytree(run.path, root / "earlier" / run.run_id))
    earlier.write_config(config.replace(finetune={"epochs": 1}).to_dict())
    earlier.write_history([row for row in run.history() if row["stage"] == "head"])
    for name in (runs.METRICS_FILE, runs.MISCLASSIFIED_FILE):
        earlier.file(name).unlink()
    earlier.update_status(state="cancelled", stage="finetune", error="cancelled by the user", test_accuracy=None)
    return run, earlier


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def mlflow_runs(uri, experiment):
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def the_mlflow_run(uri, experiment, tlkit_run):
    client, found = mlflow_runs(uri, experiment)
    mine = [r for r in found if r.data.tags.get("tlkit.run_id") == tlkit_run.run_id]
    assert len(mine) == 1, [r.data.tags for r in found]
    return client, client.get_run(mine[0].info.run_id)


def history(client, mlflow_run, key):
    return [(point.step, point.value) for point in client.get_metric_history(mlflow_run.info.run_id, key)]


def point_count(client, mlflow_run):
    return sum(len(client.get_metric_history(mlflow_run.info.run_id, key)) for key in mlflow_run.data.metrics)


def assert_logged_in_full(client, mlflow_run, run):
    """Params, every epoch of both stages at its global epoch, test metrics, files, tags and status."""
    config = run.config()
    params = mlflow_run.data.params
    assert len(params) == len(flatten_dict(config))
    assert params["finetune.epochs"] == "2" and params["model.backbone"] == "mini_resnet"
    assert float(params["head.learning_rate"]) == config["head"]["learning_rate"]
    rows = run.history()
    assert [(row["stage"], row["epoch"]) for row in rows] == [("head", 1), ("head", 2), ("finetune", 1),
                                                            ("finetune", 2)]
    for key, column in EPOCH_METRICS.items():
        points = sorted(history(client, mlflow_run, key))
        assert [step for step, _ in points] == [1, 2, 3, 4], key
        assert [value for _, value in points] == pytest.approx([row[column] for row in rows], rel=1e-6), key
    metrics = run.metrics()
    assert set(mlflow_run.data.metrics) == {*EPOCH_METRICS, "test_accuracy", "test_loss", "macro_f1", "num_test_images"}
    assert history(client, mlflow_run, "test_accuracy") == [(4, pytest.approx(metrics["test_accuracy"]))]
    assert history(client, mlflow_run, "test_loss") == [(4, pytest.approx(metrics["test_loss"]))]
    listed = {info.path for info in client.list_artifacts(mlflow_run.info.run_id)}
    # Never .trainer.lock (still in the run directory), temp files or checkpoints.
    assert listed == RUN_FILES | {"annotations.json"}
    assert run.file(runs.LOCK_FILE).exists()
    tags = mlflow_run.data.tags
    assert tags["tlkit.state"] == "completed" and tags["tlkit.backend"] == metrics["backend"]
    assert tags["tlkit.run_dir"] == str(run.path.resolve())
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.end_time


def test_cli_logs_every_run_of_a_runs_dir_and_a_repeat_duplicates_nothing(trained, tracking_uri, tmp_path, capsys):
    run, _ = trained
    runs_dir = tmp_path / "runs"
    completed = runs.Run(shutil.copytree(run.path, runs_dir / run.run_id))
    completed.annotate(title="baseline", tags=["smoke", "mlflow"], notes="logged by the test")
    failed = runs.Run(shutil.copytree(run.path, runs_dir / "20990101-000000-failed-0000"))
    failed.update_status(state="failed", error="ValueError: boom")

    done = run_cli(runs_dir, "--tracking-uri", tracking_uri, "--experiment", "cli", module="tlkit.mlflow")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("2 of 2 runs logged to experiment 'cli'")
    assert all(" new MLflow run " in line for line in lines[:2])

    client, logged = the_mlflow_run(tracking_uri, "cli", completed)
    assert_logged_in_full(client, logged, completed)
    tags = logged.data.tags
    assert logged.info.run_name == "baseline" and tags["tlkit.tags"] == "smoke, mlflow"
    assert tags["mlflow.note.content"] == "logged by the test"
    _, logged_failed = the_mlflow_run(tracking_uri, "cli", failed)
    assert logged_failed.info.status == "FAILED" and logged_failed.data.tags["tlkit.error"] == "ValueError: boom"
    before = {r.info.run_id: point_count(client, r) for r in mlflow_runs(tracking_uri, "cli")[1]}
    assert sorted(before.values()) == [24, 24]  # 5 metrics × 4 epochs + 4 test metrics

    # Twice more (the same code as the CLI, in this process): the same two MLflow runs, not one point more.
    for _ in range(2):
        assert main([str(runs_dir), "--tracking-uri", tracking_uri, "--experiment", "cli"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("0 params, 0 metric points, 0 files") == 4
    after = {r.info.run_id: point_count(client, r) for r in mlflow_runs(tracking_uri, "cli")[1]}
    assert after == before


def test_a_resumed_run_updates_its_mlflow_run_with_the_new_epochs_and_the_changed_params(trained, tracking_uri):
    run, earlier = trained
    assert main([str(earlier.path), "--tracking-uri", tracking_uri, "--experiment", "resumed"]) == 0
    client, logged = the_mlflow_run(tracking_uri, "resumed", earlier)
    assert logged.info.status == "KILLED" and logged.data.params["finetune.epochs"] == "1"
    assert [step for step, _ in history(client, logged, "loss")] == [1, 2]
    assert "test_accuracy" not in logged.data.metrics

    assert main([str(run.path), "--tracking-uri", tracking_uri, "--experiment", "resumed"]) == 0
    client, logged = the_mlflow_run(tracking_uri, "resumed", run)
    assert logged.info.status == "FINISHED"
    assert sorted(step for step, _ in history(client, logged, "loss")) == [1, 2, 3, 4]
    assert history(client, logged, "test_accuracy") == [(4, pytest.approx(run.metrics()["test_accuracy"]))]
    # MLflow params never change: the first value stays, the current one is a tag.
    assert logged.data.params["finetune.epochs"] == "1"
    assert logged.data.tags["tlkit.config.finetune.epochs"] == "2"
    assert logged.data.tags["tlkit.changed_params"] == "finetune.epochs"


def test_live_log_during_a_resumed_run_and_the_exporter_converge_on_one_mlflow_run(trained, tracking_uri, tmp_path):
    run, earlier = trained
    live = runs.Run(shutil.copytree(earlier.path, tmp_path / run.run_id))  # the run dir as the trainer resumes it
    log = MlflowLog(tracking_uri, "live", live)
    client, logged = the_mlflow_run(tracking_uri, "live", live)
    assert logged.info.status == "RUNNING" and logged.data.params["model.backbone"] == "mini_resnet"
    assert [step for step, _ in history(client, logged, "loss")] == [1, 2]  # what the run dir held

    for row in run.history()[2:]:  # the fine-tune epochs, reported as training reports them
        values = {key: row[column] for key, column in EPOCH_METRICS.items()}
        log.scalars(2 + row["epoch"], {**values, "accuracy": None})
    log.scalars(4, {"loss": 123.0})  # a step already logged is not logged again
    shutil.copytree(run.path, live.path, dirs_exist_ok=True)  # the run finishes
    log.close()

    client, logged = the_mlflow_run(tracking_uri, "live", live)
    loss = sorted(history(client, logged, "loss"))
    assert [step for step, _ in loss] == [1, 2, 3, 4]
    assert [value for _, value in loss] == pytest.approx([row["loss"] for row in run.history()], rel=1e-6)
    assert sorted(step for step, _ in history(client, logged, "accuracy")) == [1, 2, 3, 4]  # close filled 3, 4
    assert history(client, logged, "test_accuracy") == [(4, pytest.approx(run.metrics()["test_accuracy"]))]
    assert {info.path for info in client.list_artifacts(logged.info.run_id)} == RUN_FILES
    assert logged.info.status == "FINISHED"
    points = point_count(client, logged)

    assert main([str(live.path), "--tracking-uri", tracking_uri, "--experiment", "live"]) == 0
    client, again = the_mlflow_run(tracking_uri, "live", live)
    assert again.info.run_id == logged.info.run_id and point_count(client, again) == points == 24


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: tmp, "neither a run directory"),
])
def test_a_path_that_is_no_run_is_a_usage_error_and_nothing_is_logged(make_path, message, trained, tmp_path):
    run, _ = trained
    database = tmp_path / "mlflow.db"
    done = run_cli(run.path, make_path(tmp_path), "--tracking-uri", f"sqlite:///{database}", module="tlkit.mlflow")
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not database.exists()


def test_an_unreachable_tracking_server_fails_within_seconds(trained):
    run, _ = trained
    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{free.getsockname()[1]}"
    started = time.monotonic()
    done = run_cli(run.path, "--tracking-uri", uri, module="tlkit.mlflow", timeout=60)
    assert time.monotonic() - started < 10
    assert done.returncode == 1 and "is not reachable" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    started = time.monotonic()
    with pytest.raises(MlflowTrackingError, match="not reachable"):
        MlflowLog(uri, "tlkit", run)
    assert time.monotonic() - started < 10


def test_without_mlflow_the_cli_says_which_extra_to_install(trained):
    run, _ = trained
    script = ("import sys; sys.modules['mlflow'] = None\n"  # as if mlflow were not installed
              "from tlkit.mlflow import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, str(run.path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "pip install 'tlkit[mlflow]'" in done.stderr



def test_trainers_starting_at_once_on_a_new_sqlite_store_all_log(tmp_path):
    """A sweep's trainers open one new SQLite store at the same moment: MLflow would create its tables
    in each and leave the database unusable; tlkit sets the store up one process at a time."""
    uri, go = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", tmp_path / "go"
    trials = []
    for index in range(2):
        trial = runs.create_run(tmp_path / "runs", name=f"trial-{index}")
        trial.write_config(tlkit.Config.from_preset("smoke").to_dict())
        trials.append(trial)
    script = ("import sys, time, pathlib\n"
              "import mlflow.store.tracking.sqlalchemy_store\n"
              "from tlkit import runs\n"
              "from tlkit.mlflow import MlflowLog\n"
              "pathlib.Path(sys.argv[3] + '.ready').touch()\n"
              "while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.005)\n"
              "MlflowLog(sys.argv[1], 'sweep', runs.Run(sys.argv[2]))\n")
    other = subprocess.Popen([sys.executable, "-c", script, uri, str(trials[0].path), str(go)], cwd=REPO,
                             stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: go.with_suffix(".ready").exists() or other.poll() is not None, timeout=60)
    go.touch()  # the other trainer and this one open the new store now
    MlflowLog(uri, "sweep", trials[1])
    assert other.wait(timeout=120) == 0, other.stderr.read()
    _, logged = mlflow_runs(uri, "sweep")
    assert sorted(r.data.tags["tlkit.run_id"] for r in logged) == sorted(trial.run_id for trial in trials)
    assert {r.info.status for r in logged} == {"RUNNING"}
