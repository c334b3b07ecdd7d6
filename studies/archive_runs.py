"""Keeps the records of finished runs in the repository, so that reports built from them stay
reproducible after the run directories are gone.

    python -m studies.archive_runs RUN_DIR [RUN_DIR ...] --to docs/runs

Copies each run's small files (config, data info, history, metrics, status, the misclassified
gallery and study outputs such as `tta_val.json`) into `--to/<run id>/`, leaving out the model
and checkpoints. `studies.results` reads the copies like the original directories: point a
spec's `run` at them (paths are relative to the spec file).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from tlkit import runs

# The model (~100 MB for ResNet50), its temporary save and the trainer's lock: large or process-bound.
LEFT_OUT = {runs.MODEL_FILE, runs.MODEL_TEMP_FILE, ".trainer.lock"}


def archive_run(run: runs.Run, destination: Path) -> Path:
    """Copies `run`'s record (every top-level file but the model and lock) to `destination/<run id>`."""
    state = run.status().get("state")
    if state != "completed":
        raise SystemExit(f"{run.path}: only completed runs are archived (state: {state})")
    target = destination / run.run_id
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(run.path.iterdir()):
        if path.is_file() and path.name not in LEFT_OUT:
            shutil.copy2(path, target / path.name)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run directories")
    parser.add_argument("--to", required=True, type=Path, help="folder that receives one folder per run")
    args = parser.parse_args(argv)
    for path in args.runs:
        print(archive_run(runs.Run(path), args.to))
    return 0


if __name__ == "__main__":
    sys.exit(main())
