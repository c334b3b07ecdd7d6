"""`python -m explorer.worker`: the run queue's worker under its old name.

The queue lives in `tlkit.run_queue` (the explorer and `python -m tlkit.sweep --engine local`
share it; tlkit never imports the explorer). This module keeps the old entry point and
names working.
"""

import sys

from tlkit.run_queue import (  # noqa: F401  re-exported under the old module name
    MAX_CONCURRENT_ENV,
    QUEUE_LOCK,
    SLOT_LOCK,
    TRAIN_CMD_ENV,
    WORKER_LOG,
    acquire_slot,
    active_workers,
    cancel_run,
    child_env,
    claim_next,
    default_max_concurrent,
    finish,
    main,
    open_log,
    queue_lock,
    queue_position,
    queue_run,
    queued_runs,
    release_slot,
    start_worker,
    train_command,
    work,
)

if __name__ == "__main__":
    sys.exit(main())
