"""What the explorer's buttons do: queue runs, start the worker, resume and cancel runs.

The queue itself (queued run directories, the worker, cancelling) is `tlkit.run_queue`;
this module adds what only the explorer needs.

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

import time
from pathlib import Path

from tlkit import run_queue, runs
from tlkit.config import Config
from tlkit.run_queue import cancel_run, queue_run  # noqa: F401  the Launch and Cancel buttons call these


def resume_run(run: runs.Run) -> str:
    """Queues a crashed, failed or cancelled run again; the worker continues it after its last
    finished stage (`--existing-run DIR --resume`)."""
    with run_queue.queue_lock(run.path.parent):
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
    if len(run_queue.active_workers(Path(runs_dir))) >= max_concurrent:
        return None
    return run_queue.start_worker(runs_dir, max_concurrent)


def queue_summary(runs_dir) -> dict[str, int]:
    counts = {"queued": 0, "running": 0}
    for run in runs.list_runs(runs_dir):
        state = run.status().get("state")
        if state in counts:
            counts[state] += 1
    return counts
