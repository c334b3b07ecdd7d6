"""Process-wide settings of the explorer: which runs directory it shows.

`streamlit run explorer -- --runs-dir DIR` passes script arguments after `--`;
without them the directory is `$TLKIT_RUNS_DIR` or `./runs`
(`tlkit.runs.resolve_runs_dir`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlkit import run_queue, runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlit run explorer --", allow_abbrev=False, add_help=False)
    parser.add_argument("--runs-dir", default=None)
    parser.add_argument("--max-concurrent", type=int, default=None)
    # Unknown arguments are ignored: under AppTest, sys.argv is pytest's.
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def runs_dir(argv: list[str] | None = None) -> Path:
    return runs.resolve_runs_dir(parse_args(argv).runs_dir)


def max_concurrent(argv: list[str] | None = None) -> int:
    value = parse_args(argv).max_concurrent
    return max(1, value) if value else run_queue.default_max_concurrent()
