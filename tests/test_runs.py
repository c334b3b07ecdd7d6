import numpy as np
import pytest

from tlkit import runs


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


def test_a_running_run_whose_process_died_reads_as_failed(tmp_path):
    run = runs.create_run(tmp_path)
    run.update_status(pid=2 ** 22 + 12345)  # no such process
    status = run.status()
    assert status["state"] == "failed" and "ended without finishing" in status["error"]


def test_delete_refuses_running_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_RUNS_DIR", str(tmp_path))
    run = runs.create_run(None)  # uses the env var
    assert run.path.parent == tmp_path
    with pytest.raises(RuntimeError, match="still running"):
        runs.delete_run(run)
    run.update_status(state="completed")
    runs.delete_run(run)
    assert runs.list_runs() == []
