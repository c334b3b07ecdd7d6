import os
import socket
import time

import numpy as np
import pytest

from tlkit import runs

pytestmark = pytest.mark.backend_independent


def test_run_store_round_trip(tmp_path):
    run = runs.create_run(tmp_path, name="my run/1", state="queued")
    assert run.status()["state"] == "queued" and "my-run-1" in run.run_id
    run.write_config({"seed": 1})
    run.append_history({"stage": "head", "epoch": 1, "loss": 0.5, "accuracy": 0.8, "val_loss": None,
                        "val_accuracy": None, "lr": 1e-3, "seconds": 2.0})
    run.write_metrics({"test_accuracy": np.float32(0.5)})
    run.write_misclassified(index=np.arange(3), images=np.zeros((3, 28, 28), np.uint8))
    assert run.config() == {"seed": 1}
    assert run.history() == [{"stage": "head", "epoch": 1, "loss": 0.5, "accuracy": 0.8, "val_loss": None,
                              "val_accuracy": None, "lr": 0.001, "seconds": 2.0}]
    assert run.metrics() == {"test_accuracy": 0.5}
    assert run.misclassified()["images"].shape == (3, 28, 28)
    assert runs.list_runs(tmp_path) == [run] and runs.get_run(tmp_path, run.run_id) == run
    assert not list(tmp_path.glob(f"{run.run_id}/.*.tmp"))  # atomic writes leave no temp files


def test_readers_tolerate_corrupt_and_missing_files(tmp_path):
    run = runs.create_run(tmp_path)
    (run.path / runs.STATUS_FILE).write_text("{garbage")
    (run.path / runs.HISTORY_FILE).write_text("stage,epoch\nhead,notanumber\n")
    (run.path / runs.MISCLASSIFIED_FILE).write_bytes(b"nope")
    assert run.status()["state"] == "unknown" and "unreadable" in run.status()["error"]
    assert run.history() == [] and run.metrics() is None and run.misclassified() is None


def test_a_running_run_whose_process_died_reads_as_crashed(tmp_path):
    run = runs.create_run(tmp_path)
    run.update_status(pid=2 ** 22 + 12345)  # no such process
    status = run.status()
    assert status["state"] == "crashed" and "--existing-run DIR --resume" in status["error"]
    assert run.status(raw=True)["state"] == "running"


def beat(run, host, age, pid=None):
    runs.write_json(run.file(runs.HEARTBEAT_FILE), {"pid": pid or os.getpid(), "host": host, "at": time.time() - age})


def test_liveness_comes_from_the_heartbeat_on_any_host(tmp_path):
    run = runs.create_run(tmp_path)
    run.update_status(pid=2 ** 22 + 12345, host="gpu-node-7")  # a pid that means nothing here
    beat(run, "gpu-node-7", age=5)
    assert run.status()["state"] == "running" and run.holder() == {"pid": os.getpid(), "host": "gpu-node-7"}
    with pytest.raises(RuntimeError, match="being trained by pid .* on host gpu-node-7"):
        runs.delete_run(run)
    beat(run, "gpu-node-7", age=runs.HEARTBEAT_STALE + 1)
    assert run.status()["state"] == "crashed" and run.holder() is None
    # This host: a live pid with a stale heartbeat is a recycled pid, not the trainer.
    beat(run, socket.gethostname(), age=runs.HEARTBEAT_STALE + 1)
    assert run.status()["state"] == "crashed"
    beat(run, socket.gethostname(), age=1)
    assert run.status()["state"] == "running"


def test_one_trainer_per_run_directory(tmp_path):
    run = runs.create_run(tmp_path)
    assert run.holder() is None and not run.file(runs.LOCK_FILE).exists()  # readers create nothing
    with run.claim():
        assert run.heartbeat()["pid"] == os.getpid() and run.trainer_alive()
        assert run.holder()["pid"] == os.getpid()
        with pytest.raises(runs.RunLocked, match=f"run {run.run_id} is being trained by pid {os.getpid()} on host"):
            with run.claim():
                pass
    assert run.holder() is None and run.heartbeat() is None
    with run.claim():  # free again
        pass


def test_delete_refuses_running_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_RUNS_DIR", str(tmp_path))
    run = runs.create_run(None)  # uses the env var
    assert run.path.parent == tmp_path
    with pytest.raises(RuntimeError, match="still being trained"):
        runs.delete_run(run)
    run.update_status(state="completed")
    runs.delete_run(run)
    assert runs.list_runs() == []


def test_run_files_never_follow_a_link_out_of_the_run_directory(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    run = runs.create_run(tmp_path / "runs")
    for name in (runs.LOG_FILE, runs.METRICS_FILE, runs.HISTORY_FILE):
        run.file(name).symlink_to(secret)
    assert run.log_tail() == "" and run.metrics() is None and run.history() == []
    inside = run.file("notes.json")
    inside.write_text('{"a": 1}')
    run.file(runs.DATA_FILE).symlink_to(inside)  # a link that stays inside is fine
    assert run.data_info() == {"a": 1}


def test_the_worker_never_appends_through_a_planted_log_link(tmp_path):
    from explorer.worker import open_log

    target = tmp_path / "victim.txt"
    target.write_text("keep me\n")
    log = tmp_path / "train.log"
    log.symlink_to(target)
    with open_log(log) as handle:
        handle.write(b"trainer output\n")
    assert target.read_text() == "keep me\n" and not log.is_symlink()
    assert log.read_text() == "trainer output\n"


def test_annotations_are_kept_apart_from_what_the_trainer_writes(tmp_path):
    run = runs.create_run(tmp_path)
    assert run.annotations() == {"title": None, "tags": [], "notes": ""} and run.title == run.run_id
    with run.claim():  # a training run can be annotated: the trainer never writes annotations.json
        run.annotate(title="  conv4, strong aug ", tags=["baseline", " baseline", "", "aug"])
    run.annotate(notes="val loss still falling")
    assert run.annotations() == {"title": "conv4, strong aug", "tags": ["baseline", "aug"],
                                 "notes": "val loss still falling"}
    assert run.title == "conv4, strong aug"
    for bad, message in ((dict(tags=["a,b"]), "no commas"), (dict(title="x" * 121), "at most 120"),
                         (dict(colour="red"), "unknown annotation")):
        with pytest.raises(ValueError, match=message):
            run.annotate(**bad)
    run.annotate(title="")
    assert run.title == run.run_id and run.annotations()["tags"] == ["baseline", "aug"]
    run.file(runs.ANNOTATIONS_FILE).write_text('{"title": 3, "tags": "x"}')  # damaged: defaults
    assert run.annotations() == {"title": None, "tags": [], "notes": ""}
