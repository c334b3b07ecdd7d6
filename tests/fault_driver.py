"""`python -m tests.fault_driver CLI-ARGS`: the training CLI with a kill -9 at a chosen point.

Every commit tlkit makes (a cache entry, an epoch checkpoint, `model.keras`, `status.json`, ...)
is a rename, so renames are where a kill does the most harm. With
`TLKIT_TEST_FAULT="before|after:GLOB:N"` in the environment, the Nth `os.replace` whose
destination matches GLOB ends the process with `os._exit(137)`, just before or just after the
rename: like kill -9, no signal handler, `finally` block or buffered write runs.
"""

from __future__ import annotations

import fnmatch
import os
import sys

KILLED = 137  # what a shell reports for a process killed by SIGKILL


def inject(spec: str) -> None:
    when, pattern, count = spec.split(":")
    if when not in ("before", "after"):
        raise SystemExit(f"TLKIT_TEST_FAULT: {spec!r} is not before|after:GLOB:N")
    real_replace, seen = os.replace, [0]

    def replace(source, destination, *args, **kwargs):
        if not fnmatch.fnmatch(os.fspath(destination), pattern):
            return real_replace(source, destination, *args, **kwargs)
        seen[0] += 1
        if seen[0] == int(count) and when == "before":
            os._exit(KILLED)
        real_replace(source, destination, *args, **kwargs)
        if seen[0] == int(count):
            os._exit(KILLED)

    os.replace = replace


if __name__ == "__main__":
    if os.environ.get("TLKIT_TEST_FAULT"):
        inject(os.environ["TLKIT_TEST_FAULT"])
    from tlkit.cli import main

    sys.exit(main(sys.argv[1:]))
