"""The queue worker: one run at a time, oldest first, cancellation, crashes, detachment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from explorer import launcher
from tlkit import run_queue, runs
from tlkit.config import Config

from ..helpers import REPO, wait_until
from .explorer_fixtures import FAKE_TRAINER_CMD as FAKE
from .fake_trainer import EVENTS_FILE


def queue(runs_dir, name, **overrides):
    config = Config.from_preset("smoke", overrides).replace(name=name)
    return launcher.queue_run(runs_dir, config, backend="jax")


def events(runs_dir) -> list[tuple[str, str, float]]:
    path = runs_dir / EVENTS_FILE
    lines = path.read_text().split() if path.exists() else []
    return [(lines[i], lines[i + 1], float(lines[i + 2])) for i in range(0, len(lines), 3)]


def test_train_command_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv(run_queue.TRAIN_CMD_ENV, raising=False)
    assert run_queue.train_command(tmp_path) == [sys.executable, "-m", "tlkit.train", "--verbose", "2",
                                              "--existing-run", str(tmp_path)]
    monkeypatch.setenv(run_queue.TRAIN_CMD_ENV, "python 'my trainer.py' --quiet")
    expected = ["python", "my trainer.py", "--quiet", "--existing-run", str(tmp_path)]
    assert run_queue.train_command(tmp_path) == expected


def test_queue_run_writes_config_and_backend(runs_dir):
    run = queue(runs_dir, "one", model={"dropout": 0.3})
    status = run.status()
    assert status["state"] == "queued" and status["backend"] == "jax"
    assert run.config()["model"]["dropout"] == 0.3
    assert run_queue.queued_runs(runs_dir) == [run]


def test_runs_one_at_a_time_oldest_first(runs_dir, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_EPOCH_SECONDS", "0.1")
    queued = [queue(runs_dir, name) for name in ("first", "second", "third")]
    assert run_queue.work(runs_dir, max_concurrent=1, train_cmd=FAKE) == 3
    log = events(runs_dir)
    assert [run_id for kind, run_id, _ in log if kind == "start"] == [run.run_id for run in queued]
    # Each run ends before the next starts.
    for (kind_a, id_a, _), (kind_b, id_b, _) in zip(log[::2], log[1::2]):
        assert (kind_a, kind_b) == ("start", "end") and id_a == id_b
    for run in queued:
        status = run.status()
        assert status["state"] == "completed" and status["exit_code"] == 0
        assert status["backend"] == "jax" and len(run.history()) == 2
        assert "fake trainer" in run.log_tail()


def test_cancelled_queued_run_is_skipped(runs_dir):
    keep, drop = queue(runs_dir, "keep"), queue(runs_dir, "drop")
    assert "cancelled before it started" in launcher.cancel_run(drop)
    run_queue.work(runs_dir, train_cmd=FAKE)
    assert keep.status()["state"] == "completed"
    assert drop.status()["state"] == "cancelled"
    assert [run_id for kind, run_id, _ in events(runs_dir) if kind == "start"] == [keep.run_id]


def test_cancel_running_run_sends_sigterm(runs_dir, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_EPOCH_SECONDS", "5")
    run, after = queue(runs_dir, "long"), queue(runs_dir, "after")
    thread = threading.Thread(target=run_queue.work, args=(runs_dir,), kwargs={"train_cmd": FAKE})
    thread.start()
    assert wait_until(lambda: run.status().get("stage") == "head")
    monkeypatch.setenv("FAKE_TRAINER_EPOCH_SECONDS", "0.05")  # read when the next trainer starts
    assert "asked the trainer" in launcher.cancel_run(run)
    thread.join(timeout=30)
    assert not thread.is_alive()
    status = run.status()
    assert status["state"] == "cancelled" and status["exit_code"] == 130
    assert after.status()["state"] == "completed"


def test_trainer_without_final_state_is_marked_failed(runs_dir, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_FAIL", "1")
    run = queue(runs_dir, "crash")
    run_queue.work(runs_dir, train_cmd=FAKE)
    status = run.status()
    assert status["state"] == "failed" and status["exit_code"] == 1
    assert "simulated crash" in status["error"]
    assert len(run.history()) == 1


def test_killed_trainer_is_crashed_and_resume_requeues_it_with_resume(runs_dir, tmp_path):
    run = queue(runs_dir, "oom")
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    run_queue.work(runs_dir, train_cmd=killed)
    status = run.status()
    assert status["state"] == "crashed" and "killed by signal 9" in status["error"]
    assert "--resume" in status["error"]
    assert "queued to resume" in launcher.resume_run(run)
    assert run.status()["state"] == "queued" and run.status()["resume"] is True
    assert run_queue.train_command(tmp_path, FAKE, resume=True)[-3:] == ["--existing-run", str(tmp_path), "--resume"]
    assert "only a crashed, failed or cancelled run" in launcher.resume_run(run)  # queued already


def test_sigterm_before_handler_counts_as_cancelled(runs_dir):
    run = queue(runs_dir, "early")
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    thread = threading.Thread(target=run_queue.work, args=(runs_dir,), kwargs={"train_cmd": sleeper})
    thread.start()
    assert wait_until(lambda: run.status().get("state") == "running")
    os.kill(run.status()["pid"], signal.SIGTERM)
    thread.join(timeout=10)
    assert run.status()["state"] == "cancelled"


def test_missing_config_fails_the_run(runs_dir):
    run = runs.create_run(runs_dir, "noconfig", state="queued")
    run_queue.work(runs_dir, train_cmd=FAKE)
    assert run.status()["state"] == "failed"
    assert "config.json" in run.status()["error"]


def test_busy_slot_means_second_worker_exits(runs_dir):
    slot = run_queue.acquire_slot(runs_dir, 1)
    try:
        queue(runs_dir, "waiting")
        assert run_queue.active_workers(runs_dir) == [os.getpid()]
        assert run_queue.work(runs_dir, max_concurrent=1, train_cmd=FAKE) == 0
        assert launcher.ensure_worker(runs_dir, 1) is None
    finally:
        run_queue.release_slot(slot)
    assert run_queue.active_workers(runs_dir) == []


def test_max_concurrent_two_overlaps(runs_dir, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_EPOCH_SECONDS", "0.6")
    queued = [queue(runs_dir, f"par{i}") for i in range(2)]
    threads = [threading.Thread(target=run_queue.work, args=(runs_dir, 2), kwargs={"train_cmd": FAKE})
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    log = events(runs_dir)
    starts = sorted(t for kind, _, t in log if kind == "start")
    first_end = min(t for kind, _, t in log if kind == "end")
    assert len(starts) == 2 and starts[1] < first_end  # both trained at the same time
    assert all(run.status()["state"] == "completed" for run in queued)


def test_detached_worker_survives_and_drains_queue(runs_dir):
    run = queue(runs_dir, "detached")
    process = launcher.ensure_worker(runs_dir, 1)
    assert process is not None
    assert os.getsid(process.pid) == process.pid  # its own session: the browser/server can go away
    status = runs.wait_for(run, timeout=40)
    assert status["state"] == "completed", run.log_tail()
    process.wait(timeout=20)
    assert "queue empty" in (runs_dir / run_queue.WORKER_LOG).read_text()


def test_worker_runs_under_its_new_and_its_old_module_name(runs_dir):
    """The queue lives in tlkit (tlkit.run_queue); `python -m explorer.worker` still starts the same worker."""
    for module in ("tlkit.run_queue", "explorer.worker"):
        run = queue(runs_dir, module.split(".")[0])
        result = subprocess.run([sys.executable, "-m", module, "--runs-dir", str(runs_dir)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "queue empty; 1 run(s) started" in result.stdout
        assert run.status()["state"] == "completed"
