"""Runs tlkit's benchmarks side by side and writes the results as markdown.

    python -m benchmarks.run                        # full mode → docs/performance.md (~25 min on 2 cores)
    python -m benchmarks.run --quick                # small sizes, a few minutes → a file in the temp dir
    python -m benchmarks.run --only backends --backends jax,torch,torch+OMP_WAIT_POLICY=PASSIVE
    python -m benchmarks.run --render benchmarks/results/*.json --output docs/performance.md

Every case runs in a fresh child process (`benchmarks.child`) with
`KERAS_BACKEND` set in its environment; this parent never imports Keras.
Only a full run of every section writes docs/performance.md by default, so a
quick or partial run never overwrites the published numbers; `--render`
rebuilds the document from saved results.json files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report as markdown
from benchmarks.common import REPO_ROOT, missing_inputs, read_json
from benchmarks.sections import SECTIONS, Case, Section, parse_backend
from tlkit.runs import write_json

DOC = REPO_ROOT / "docs" / "performance.md"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description="tlkit benchmarks.")
    parser.add_argument("--quick", action="store_true", help="small subsets and few steps (a few minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--backends", default="",
                        help="comma-separated backends for every section, each optionally with extra environment "
                             "variables for its child: torch+OMP_WAIT_POLICY=PASSIVE (default: "
                             + "; ".join(f"{name} {', '.join(section.default_backends)}"
                                         for name, section in SECTIONS.items()) + ")")
    parser.add_argument("--output", default="", help="markdown file to write (default: docs/performance.md for a "
                                                      "full run of every section, else a file in the work dir)")
    parser.add_argument("--keep", action="store_true", help="keep run directories and caches in the work dir")
    parser.add_argument("--render", nargs="+", default=[], metavar="RESULTS_JSON",
                        help="measure nothing: render the markdown from saved results.json files (separated by "
                             "spaces or commas, in any order); each section shows the latest run that measured it, "
                             "per backend, and the summary's older figures go to a History section")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.only.split(",") if name.strip()] or list(SECTIONS)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.backend_list = [name.strip() for name in args.backends.split(",") if name.strip()]
    for spec in args.backend_list:
        try:
            parse_backend(spec)
        except ValueError as error:
            parser.error(str(error))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        paths = [Path(path) for paths in args.render for path in paths.split(",") if path]
        return rerender(paths, Path(args.output) if args.output else None)
    command = "python -m benchmarks.run" + (" " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "")
    missing = missing_inputs()
    if missing:
        print("benchmarks skipped: they measure real data and weights, and these are missing:\n  "
              + "\n  ".join(missing), file=sys.stderr)
        return 0
    mode = "quick" if args.quick else "full"
    workdir = Path(tempfile.mkdtemp(prefix="tlkit-bench-"))
    output = Path(args.output) if args.output else (
        DOC if mode == "full" and args.sections == list(SECTIONS) else workdir / f"performance-{mode}.md")
    info = markdown.machine_info(command, mode)
    print(f"tlkit benchmarks ({mode}); work dir {workdir}", flush=True)
    started = time.perf_counter()
    reports = []
    results = {"info": info, "mode": mode, "sections": args.sections, "reports": reports, "total_seconds": None,
               "settings": {name: SECTIONS[name].settings[mode] for name in args.sections}}
    for name in args.sections:
        section = SECTIONS[name]
        for backend in args.backend_list or section.default_backends:
            for case in section.plan(section.settings[mode], workdir):
                reports.append(run_case(section, case, backend, workdir, len(reports), started))
                write_json(workdir / "results.json", results)  # raw numbers, also when a later case crashes
    total = time.perf_counter() - started
    info["load_end"] = round(os.getloadavg()[0], 2)
    results["total_seconds"] = round(total, 1)
    write_json(workdir / "results.json", results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown.render([results]))
    if not args.keep:
        for folder in ("runs", "cache"):
            shutil.rmtree(workdir / folder, ignore_errors=True)
    failed = [report for report in reports if report.get("error")]
    print(f"done in {total / 60:.1f} min; {len(failed)} failed case(s); wrote {output}; raw results "
          f"{workdir / 'results.json'}", flush=True)
    return 1 if failed else 0


def rerender(paths: list[Path], output: Path | None) -> int:
    """Writes the markdown from saved results.json files (default output: next to the first)."""
    runs = [read_json(path) for path in paths]
    if not runs or not all(runs):
        print(f"cannot read {', '.join(str(path) for path, run in zip(paths, runs) if not run)}", file=sys.stderr)
        return 2
    output = output or paths[0].with_name(f"performance-{runs[0]['mode']}.md")
    output.write_text(markdown.render(runs))
    print(f"wrote {output}")
    return 0


def run_case(section: Section, case: Case, backend: str, workdir: Path, index: int, started: float) -> dict:
    """Runs one case in a fresh child process and returns its report (with any error filled in)."""
    reports_dir = workdir / "reports"
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{index:02d}-{section.name}-{backend}-{case.function}")
    out, log = reports_dir / f"{stem}.json", reports_dir / f"{stem}.log"
    keras_backend, extra_env = parse_backend(backend)
    # jax's compilation cache off unless a variant turns it on: cases read no programs another case compiled.
    env = {**{key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"},
           "TLKIT_JAX_COMPILATION_CACHE": "0", **extra_env, "KERAS_BACKEND": keras_backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           # Keep every run directory and cache inside the work dir, never in ~/.cache or ./runs.
           "TLKIT_CACHE_DIR": str(workdir / "cache" / "default"), "TLKIT_RUNS_DIR": str(workdir / "runs"),
           **case.params.get("env", {})}  # what the case itself sets
    command = [sys.executable, "-m", "benchmarks.child", "--section", section.name, "--case", case.function,
               "--params", json.dumps(case.params), "--out", str(out)]
    print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {section.name} / {backend} / {case.label} …",
          flush=True)
    case_start = time.perf_counter()
    error = None
    with open(log, "w") as handle:
        try:
            completed = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       timeout=case.timeout)
            if completed.returncode:
                error = f"exit code {completed.returncode}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {case.timeout} s (partial results kept)"
    report = read_json(out) or {"result": None, "error": None, "process": None}
    report["error"] = report.get("error") or error
    if report["error"] and not report.get("process"):
        report["error"] += f": {log_tail(log)}"
    report.update(section=section.name, label=case.label, function=case.function, backend=backend,
                  log=str(log), case_seconds=round(time.perf_counter() - case_start, 1))
    status = f"FAILED: {report['error']}" if report["error"] else "ok"
    print(f"        {report['case_seconds']:.0f} s, {status}", flush=True)
    return report


def log_tail(log: Path, lines: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
