"""The run queue: queued run directories and a worker that trains them one after another.

`queue_run` writes a queued run directory (config + Keras backend); a worker
(`python -m tlkit.run_queue --runs-dir DIR`, started detached by `start_worker`
in its own session so it outlives whoever started it) holds one of
`max_concurrent` slot locks in the runs directory, takes the oldest queued run,
runs `python -m tlkit.train --existing-run <run>` with `KERAS_BACKEND` set from
the run's status, and repeats until nothing is queued. The explorer's Launch
button and `python -m tlkit.sweep --engine local` both queue here; the explorer
never trains in the Streamlit process. (`python -m explorer.worker` is the same
worker under its old name.)

All state changes to queued runs (queueing, claiming, cancelling) happen under
one short lock (`.queue.lock`), so a run is started at most once and a run
cancelled while queued is never started.

Tests (and experiments) can swap the trainer: `--train-cmd` or the env var
`TLKIT_EXPLORER_TRAIN_CMD` holds a command line (split with `shlex`, never run
through a shell) that gets `--existing-run <run>` appended.

Example:

```python
from tlkit import run_queue
from tlkit.config import Config

run = run_queue.queue_run("runs", Config.from_preset("smoke"), backend="jax", tags=["try"])
run_queue.work("runs")            # trains it (and anything else queued) in this process
# or: run_queue.start_worker("runs") for a detached worker; run_queue.cancel_run(run) to cancel
```
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tlkit import runs
from tlkit.config import Config

QUEUE_LOCK = ".queue.lock"
SLOT_LOCK = ".queue-worker-{}.lock"
WORKER_LOG = ".queue-worker.log"
TRAIN_CMD_ENV = "TLKIT_EXPLORER_TRAIN_CMD"
MAX_CONCURRENT_ENV = "TLKIT_EXPLORER_MAX_CONCURRENT"


def default_max_concurrent() -> int:
    try:
        return max(1, int(os.environ.get(MAX_CONCURRENT_ENV, "1")))
    except ValueError:
        return 1


# ---- locks ----------------------------------------------------------------------


@contextlib.contextmanager
def queue_lock(runs_dir: Path):
    """Serialises queue edits (queue, claim, cancel) across processes."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(runs_dir / QUEUE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def acquire_slot(runs_dir: Path, max_concurrent: int) -> int | None:
    """Takes a free worker slot (a non-blocking flock); returns its fd or None."""
    for index in range(max(1, max_concurrent)):
        fd = os.open(runs_dir / SLOT_LOCK.format(index), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        # The pid inside lets the explorer show which worker is busy.
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd
    return None


def release_slot(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.close(fd)


def active_workers(runs_dir: Path) -> list[int]:
    """Pids of workers currently holding a slot (probing each slot lock)."""
    pids = []
    for path in sorted(Path(runs_dir).glob(SLOT_LOCK.format("*"))):
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            pids.append(int(text) if text.isdigit() else 0)
        finally:
            os.close(fd)
    return pids


# ---- the queue ------------------------------------------------------------------


def queue_run(runs_dir, config: Config, backend: str | None, tags=()) -> runs.Run:
    """Writes a queued run directory (config, backend and `tags`) for a worker to pick up.

    Args:
        runs_dir: the runs directory the worker watches.
        config: the run's config (the trainer validates it).
        backend: the Keras backend the trainer runs under (None: the worker's environment decides).
        tags: annotations.json tags (e.g. a sweep's `sweep:<id>`), written before a worker can see the run.
    """
    runs_dir = Path(runs_dir)
    name = config.name or config.preset or "run"
    # Under the queue lock, so a worker never sees a queued run without its config.
    with queue_lock(runs_dir):
        run = runs.create_run(runs_dir, name, state="queued")
        run.write_config(config.to_dict())
        if tags:
            run.annotate(tags=list(tags))
        run.update_status(backend=backend, queued_at=time.time())
    return run


def queue_position(run: runs.Run, status: dict) -> tuple[float, str]:
    """Sort key: explorer runs carry a precise `queued_at`; others fall back to the id's stamp."""
    queued_at = status.get("queued_at")
    if not isinstance(queued_at, (int, float)):
        try:
            queued_at = datetime.strptime(run.run_id[:15], "%Y%m%d-%H%M%S").timestamp()
        except ValueError:
            queued_at = 0.0
    return float(queued_at), run.run_id


def queued_runs(runs_dir: Path) -> list[runs.Run]:
    """Queued runs, oldest first."""
    found = []
    for run in runs.list_runs(runs_dir):
        status = run.status()
        if status.get("state") == "queued":
            found.append((queue_position(run, status), run))
    return [run for _, run in sorted(found, key=lambda item: item[0])]


def train_command(run_dir: Path, train_cmd: str | list[str] | None = None, resume: bool = False) -> list[str]:
    """The trainer's argv for an existing (queued) run directory: `python -m tlkit.train` unless
    overridden (tests, custom trainers), then `--existing-run <run_dir>`."""
    train_cmd = train_cmd or os.environ.get(TRAIN_CMD_ENV)
    if isinstance(train_cmd, str):
        base = shlex.split(train_cmd)
    elif train_cmd:
        base = list(train_cmd)
    else:
        # One line per epoch: progress-bar redraws would fill train.log.
        base = [sys.executable, "-m", "tlkit.train", "--verbose", "2"]
    return [*base, "--existing-run", str(run_dir), *(["--resume"] if resume else [])]


def open_log(path: Path):
    """Opens a run's train.log for appending without following a symbolic link (one planted in the
    run directory would make the trainer's output overwrite its target): the link is replaced."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        if not path.is_symlink():
            raise
        path.unlink()
        fd = os.open(path, flags, 0o644)
    return os.fdopen(fd, "ab")


def child_env(backend: str | None) -> dict[str, str]:
    """The parent's env with the run's Keras backend (tlkit and explorer are installed: `pip install -e`)."""
    env = dict(os.environ)
    if backend:
        env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keeps TensorFlow's C++ info lines out of train.log
    return env


def claim_next(runs_dir: Path, train_cmd=None) -> tuple[runs.Run, subprocess.Popen] | None:
    """Starts the oldest queued run; None when the queue is empty.

    Runs under the queue lock so the state check and the start are one step: a
    run cancelled (or claimed by another worker) a moment ago is skipped.
    """
    with queue_lock(runs_dir):
        for run in queued_runs(runs_dir):
            status = run.status()
            if status.get("state") != "queued" or run.holder() is not None:
                continue  # cancelled or claimed a moment ago, or a trainer started by hand holds it
            if run.config() is None:
                run.update_status(state="failed", error="config.json is missing or unreadable",
                                  finished_at=runs.now())
                continue
            with open_log(run.file(runs.LOG_FILE)) as log:
                process = subprocess.Popen(
                    train_command(run.path.resolve(), train_cmd, resume=bool(status.get("resume"))),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=child_env(status.get("backend")),
                )
            # The trainer rewrites this with its own details once it is up.
            run.update_status(state="running", pid=process.pid, worker_pid=os.getpid(), host=socket.gethostname(),
                              started_at=runs.now(), error=None, resume=False)
            return run, process
    return None


def finish(run: runs.Run, returncode: int) -> dict:
    """Gives a run a final state if its trainer died without writing one."""
    if run.holder() is not None:  # another trainer holds the run (ours was refused): leave its files alone
        return run.status()
    run.update_status(exit_code=returncode)
    status = run.status(raw=True)
    if status.get("state") in runs.FINAL_STATES:
        return status
    if returncode == -signal.SIGTERM:
        # Cancelled before the trainer installed its SIGTERM handler.
        return run.update_status(state="cancelled", finished_at=runs.now())
    if returncode < 0:  # killed by a signal (SIGKILL: the OOM killer, kill -9): it can be resumed
        return run.update_status(state="crashed", finished_at=runs.now(),
                                 error=f"the trainer was killed by signal {-returncode}; {runs.CRASHED_ERROR}")
    tail = run.log_tail(400).strip().splitlines()
    hint = f": {tail[-1]}" if tail else ""
    return run.update_status(
        state="failed", finished_at=runs.now(),
        error=f"the trainer exited with code {returncode} without a final state{hint}",
    )


def work(runs_dir, max_concurrent: int = 1, train_cmd=None, should_stop=None, say=None) -> int:
    """Trains queued runs until none are left (or `should_stop()` is true before the next one);
    returns the number of runs started. `say` gets a line per start and finish (default: print)."""
    runs_dir = Path(runs_dir).resolve()
    started = 0
    should_stop = should_stop or (lambda: False)
    say = say or (lambda line: print(line, flush=True))
    while True:
        if should_stop():
            return started
        slot = acquire_slot(runs_dir, max_concurrent)
        if slot is None:
            return started  # enough workers are busy; they will pick up our runs
        try:
            while not should_stop() and (job := claim_next(runs_dir, train_cmd)) is not None:
                run, process = job
                started += 1
                say(f"{runs.now()} started {run.run_id} (pid {process.pid})")
                finish(run, process.wait())
                say(f"{runs.now()} finished {run.run_id}: {run.status().get('state')}")
        finally:
            release_slot(slot)
        # A run queued while we were releasing the slot would have no worker; look again.
        if not queued_runs(runs_dir):
            return started


# ---- starting and cancelling ----------------------------------------------------


def start_worker(runs_dir, max_concurrent: int = 1, train_cmd: str | None = None) -> subprocess.Popen:
    """Starts a detached worker (own session, output to `<runs_dir>/.queue-worker.log`)."""
    runs_dir = Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "tlkit.run_queue", "--runs-dir", str(runs_dir),
            "--max-concurrent", str(max_concurrent)]
    if train_cmd:
        argv += ["--train-cmd", train_cmd]
    with open(runs_dir / WORKER_LOG, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=child_env(None), cwd=os.getcwd(), start_new_session=True)


def _looks_like_trainer(pid: int, run: runs.Run) -> bool:
    """Guards against signalling a recycled pid: the process must mention tlkit or the run."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return not Path("/proc/self").exists()  # no procfs (macOS): trust status.json
    return run.run_id in cmdline or "tlkit" in cmdline


def cancel_run(run: runs.Run) -> str:
    """Cancels a queued run (marks it) or a running one (SIGTERM to its trainer).

    Returns:
        A sentence saying what happened.
    """
    with queue_lock(run.path.parent):
        status = run.status()
        state = status.get("state")
        if state == "queued":
            run.update_status(state="cancelled", finished_at=runs.now(), error=None)
            return f"{run.run_id}: cancelled before it started."
        if state != "running":
            return f"{run.run_id} is {state}; nothing to cancel."
        pid = status.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return f"{run.run_id}: no trainer pid recorded yet; try again in a moment."
        if not _looks_like_trainer(pid, run):
            return f"{run.run_id}: pid {pid} is not its trainer any more; not signalling it."
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return f"{run.run_id}: the trainer (pid {pid}) has already exited."
    return f"{run.run_id}: asked the trainer (pid {pid}) to stop; it will be marked cancelled."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlkit.run_queue", description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", default=None,
                        help="Runs directory (default: $TLKIT_RUNS_DIR or ./runs).")
    parser.add_argument("--max-concurrent", type=int, default=default_max_concurrent(),
                        help=f"Runs trained at once on this machine (default: ${MAX_CONCURRENT_ENV} or 1).")
    parser.add_argument("--train-cmd", default=None,
                        help=f"Trainer command line (default: ${TRAIN_CMD_ENV} or python -m tlkit.train).")
    args = parser.parse_args(argv)
    started = work(runs.resolve_runs_dir(args.runs_dir), args.max_concurrent, args.train_cmd)
    print(f"{runs.now()} queue empty; {started} run(s) started by worker {os.getpid()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
