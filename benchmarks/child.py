"""Runs one benchmark case in this (fresh) process and writes a JSON report.

Started by `benchmarks.run` with `KERAS_BACKEND` set in the environment:

    python -m benchmarks.child --section feature_cache --case tlkit_train --params '{...}' --out report.json

The case function is `SECTIONS[section].cases[case]`, defined in (or imported by)
`benchmarks/sections/<section>.py`; it imports Keras when called, which fixes
the backend for this process.

The report holds the case's result (or the error) and this process's own
figures: wall and CPU time, load average, and peak RSS from
`getrusage(RUSAGE_SELF).ru_maxrss`, which is clean because nothing else ran
in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from benchmarks.common import cpu_seconds, load_average, peak_rss_mb
from tlkit.runs import write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", required=True, help="the section whose case function runs")
    parser.add_argument("--case", required=True, help="the name of the case function in that section")
    parser.add_argument("--params", required=True, help="JSON parameters of the case")
    parser.add_argument("--out", required=True, help="where the JSON report goes")
    args = parser.parse_args(argv)
    started, load_start = time.perf_counter(), load_average()
    report = {"section": args.section, "case": args.case, "backend": os.environ.get("KERAS_BACKEND"),
              "params": json.loads(args.params), "result": None, "error": None}

    def finish_process_figures():
        wall = time.perf_counter() - started
        report["process"] = {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu_seconds(), 2),
                             "peak_rss_mb": round(peak_rss_mb(), 1), "load_start": load_start,
                             "load_end": load_average(), "pid": os.getpid()}

    def emit(partial):
        report["result"] = partial
        finish_process_figures()
        write_json(args.out, report)

    status = 0
    try:
        from benchmarks.sections import SECTIONS

        case = SECTIONS[args.section].cases[args.case]  # imports Keras when called: the backend is fixed then
        report["result"] = case(report["params"], emit)
    except BaseException as error:  # the parent reports it and goes on with the next case
        traceback.print_exc()
        report["error"] = f"{type(error).__name__}: {str(error).strip()[:500]}"
        status = 1
    finish_process_figures()
    write_json(args.out, report)
    return status


if __name__ == "__main__":
    sys.exit(main())
