"""What the explorer's buttons do: queue runs, start the worker, cancel runs.

Example:

```python
from tlkit.config import Config
from explorer import launcher

run = launcher.queue_run("runs", Config.from_preset("smoke"), backend="jax")
launcher.ensure_worker("runs")
launcher.cancel_run(run)
```
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from explorer import worker
from tlkit import runs
from tlkit.config import Config


def queue_run(runs_dir, config: Config, backend: str) -> runs.Run:
    """Writes a queued run directory (config + backend) for the worker to pick up."""
    runs_dir = Path(runs_dir)
    name = config.name or config.preset or "run"
    # Under the queue lock, so a worker never sees a queued run without its config.
    with worker.queue_lock(runs_dir):
        run = runs.create_run(runs_dir, name, state="queued")
        run.write_config(config.to_dict())
        run.update_status(backend=backend, queued_at=time.time())
    return run


def resume_run(run: runs.Run) -> str:
    """Queues a crashed, failed or cancelled run again; the worker continues it after its last
    finished stage (`--existing-run DIR --resume`)."""
    with worker.queue_lock(run.path.parent):
        state = run.status().get("state")
        if state not in ("crashed", "failed", "cancelled"):
            return f"{run.run_id} is {state}; only a crashed, failed or cancelled run can be resumed."
        if run.holder() is not None:
            return f"{run.run_id} is being trained right now; not queueing it again."
        run.update_status(state="queued", resume=True, error=None, queued_at=time.time())
    return f"{run.run_id}: queued to resume after its last finished stage."


def queue_many(runs_dir, configs: list[Config], backend: str) -> list[runs.Run]:
    return [queue_run(runs_dir, config, backend) for config in configs]


def ensure_worker(runs_dir, max_concurrent: int = 1):
    """Starts a worker unless all `max_concurrent` slots are busy (a busy worker loops on)."""
    if len(worker.active_workers(Path(runs_dir))) >= max_concurrent:
        return None
    return worker.start_worker(runs_dir, max_concurrent)


def queue_summary(runs_dir) -> dict[str, int]:
    counts = {"queued": 0, "running": 0}
    for run in runs.list_runs(runs_dir):
        state = run.status().get("state")
        if state in counts:
            counts[state] += 1
    return counts


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
        A sentence for the page saying what happened.
    """
    with worker.queue_lock(run.path.parent):
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
