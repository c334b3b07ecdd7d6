"""Assembles docs/performance.md from saved runs (parent side; no Keras import).

A run is the content of one `results.json`: the machine it ran on, the sections it measured and every case's
report. The document is one current picture: for each section and backend, the latest run (by date) that
measured it is shown; a section's text, tables and ratios come from that section's module
(`benchmarks/sections/<name>.py`). The summary has one row per comparison, from those latest measurements;
the same comparisons from older runs are listed, one line each, under *History* at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess

from benchmarks.common import REPO_ROOT
from benchmarks.formatting import by_backend, load_note, load_range, table
from benchmarks.sections import SECTIONS, SummaryRow
from tlkit import environment

# CPU flags that decide how float32 / bfloat16 / float16 run on x86.
INTERESTING_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_fp16")


# ---- the machine a run measures on (recorded when it starts) ----------------------------------------


def git_state() -> str:
    """Commit of the code measured, and whether tlkit/ or benchmarks/ had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "tlkit", "benchmarks")
    except OSError:
        return "unknown"
    return f"{commit} (+ uncommitted changes in tlkit/ or benchmarks/)" if dirty else commit


def machine_info(command: str, mode: str) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "mode": mode, "cpu": environment.cpu_info(),
        "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": environment.memory_gb(), "platform": platform.platform(), "versions": environment.versions(),
        "code": git_state(), "load_start": round(os.getloadavg()[0], 2),
    }


def cpu_label(info: dict) -> str:
    """A short name for the CPU a run measured on, by what decides float32/bfloat16 speed: the widest SIMD
    it has. Our 2-core machines have come as AMD EPYC family 25 model 17 (AVX-512 with bf16) and model 1
    (AVX2 only), which trains a ResNet50 about 3x slower, so a figure means little without it."""
    cpu = info["cpu"]
    widest = environment.widest_vector_unit(cpu["flags"]) or "no AVX2"
    return f"{widest} (model {cpu.get('model_number')})"


def machine_rows(info: dict) -> tuple[tuple[str, str], ...]:
    cpu = info["cpu"]
    flags = [flag for flag in INTERESTING_FLAGS if flag in cpu["flags"]]
    absent = [flag for flag in INTERESTING_FLAGS if flag not in cpu["flags"]]
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    return (
        ("CPU", f"{cpu['model']} (family {cpu.get('family')}, model {cpu.get('model_number')})"),
        ("Cores", f"{info['cores']} ({info['usable_cores']} usable by this process)"),
        ("SIMD flags present", " ".join(flags) or "none of the listed"),
        ("SIMD flags absent", " ".join(absent) or "none"),
        ("RAM", f"{info['memory_gb']} GB"),
        ("OS", info["platform"]),
        ("Versions", versions),
    )


# ---- which measurement is current ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One section's reports for one backend, from one run (`index`: its position among the runs rendered)."""

    section: str
    backend: str
    run: dict
    index: int
    reports: list[dict]

    @property
    def order(self) -> tuple[str, int]:
        """Sorts by date ("YYYY-MM-DD HH:MM UTC" sorts as text); a tie goes to the later file."""
        return self.run["info"]["date"], self.index

    @property
    def date(self) -> str:
        return self.run["info"]["date"]


def select(runs: list[dict]) -> tuple[dict[str, list[Measurement]], list[Measurement]]:
    """Section → its current measurements (one per backend), and every older measurement.

    A section's current measurements are, per backend, the latest of the runs in the mode of the latest run that
    measured the section (a quick run never mixes with a full one), the section's default backends first.
    """
    current, older = {}, []
    for name in SECTIONS:
        found = [Measurement(name, backend, run, index, reports)
                 for index, run in enumerate(runs) if name in run["sections"]
                 for backend, reports in by_backend([r for r in run["reports"] if r["section"] == name]).items()]
        if not found:
            continue
        latest = max(found, key=lambda measurement: measurement.order)
        chosen: dict[str, Measurement] = {}
        for measurement in sorted(found, key=lambda measurement: measurement.order):
            if measurement.run["mode"] == latest.run["mode"]:
                chosen[measurement.backend] = measurement
        ordered = dict.fromkeys([*SECTIONS[name].default_backends,
                                 *(m.backend for m in sorted(found, key=lambda measurement: measurement.order))])
        current[name] = [chosen[backend] for backend in ordered if backend in chosen]
        shown = {id(measurement) for measurement in current[name]}
        older += [measurement for measurement in found if id(measurement) not in shown]
    return current, older


def latest_run(measurements: list[Measurement]) -> dict:
    return max(measurements, key=lambda measurement: measurement.order).run


def settings_of(run: dict, name: str) -> dict:
    """The sizes a run measured a section with: saved in results.json by newer runs, else the code's current ones."""
    return (run.get("settings") or {}).get(name) or SECTIONS[name].settings[run["mode"]]


def summary_rows(measurement: Measurement) -> list[SummaryRow]:
    section = SECTIONS[measurement.section]
    rows = section.summarise(measurement.reports, settings_of(measurement.run, measurement.section))
    if measurement.backend == section.default_backends[0]:
        return rows
    return [row if measurement.backend in row.label else dataclasses.replace(row, label=f"{row.label}, "
                                                                              f"{measurement.backend}")
            for row in rows]


# ---- the document -------------------------------------------------------------------------------------


# Until a GPU session fills them (docs/results.md says how), no GPU figure exists: say so, don't estimate.
GPU_NOTE = (
    "**GPU: open.** No GPU measurement has been made (no session has been lent one). The prepared run "
    "`benchmarks/gpu_run.sh` (device tool `run`: command `bash benchmarks/gpu_run.sh`, carry `[\".gpu-pack\"]` "
    "after `.venv/bin/python -m benchmarks.gpu_pack pack`, `timeout_s` 600) returns `summary.json` with, per recipe "
    "and stage, images/s per epoch, the steady-state median over the epochs after the first (the first also "
    "compiles) and tlkit's own `images_per_second` from `metrics.json`, plus the wall time of every phase "
    "(install, unpack, backend probe, each recipe), `nvidia-smi` output and package versions. Precision is "
    "`auto` (mixed_float16 on a GPU); the backend is jax, or torch if jax fails the probe."
)


def render(runs: list[dict]) -> str:
    """The whole markdown document from one or more saved runs (`results.json` contents), in any order."""
    current, older = select(runs)
    parts = [
        "# Performance",
        "Generated by `python -m benchmarks.run` from the saved results of the runs listed under *Machine* "
        "(benchmarks/README.md says how); regenerate rather than edit. Each section shows the latest measurement "
        "of each of its backends; earlier figures of the summary's comparisons are listed under *History* at the "
        "end. Every comparison below was measured side by side in one invocation, each case in a fresh child "
        "process with `KERAS_BACKEND` set in its environment (and, from 2026-12-01, jax's persistent compilation "
        "cache off, `TLKIT_JAX_COMPILATION_CACHE=0`, so no case reads what another compiled). When other work "
        "shares the machine, absolute "
        "numbers move with the load; ratios of cases run back to back are the figures to read. The machine's CPU "
        "has varied between runs (see *Machine*): figures from different CPUs do not compare, so the summary "
        "names the CPU of each. Each section "
        "states the load average its cases saw, and *CPU util.* is a child's CPU seconds / wall seconds during the "
        "measured phase (≈ the core count when it had the machine to itself, ≈ 1 when it got one core's worth).",
        render_summary(current),
        GPU_NOTE,
        "## Machine",
        render_machine(current),
    ]
    for number, name in enumerate(SECTIONS, start=1):  # stable numbers, also when a section is missing
        if name not in current:
            continue
        measurements = current[name]
        run = latest_run(measurements)
        reports = [report for measurement in measurements for report in measurement.reports]
        parts.append(f"## {number}. {SECTIONS[name].title}")
        parts.append(measured_by(measurements))
        parts.append(SECTIONS[name].render(reports, settings_of(run, name), run["info"]["cores"]))
        note = load_note(reports, run["info"]["cores"])
        if note:
            parts.append(f"*{note}*")
    history = render_history(current, older)
    if history:
        parts.append(history)
    return "\n\n".join(parts) + "\n"


def describe_run(run: dict) -> str:
    info = run["info"]
    return f"`{info['command']}` ({run['mode']} mode) on {info['date']}, code at {info['code']}"


def measured_by(measurements: list[Measurement]) -> str:
    runs: dict[int, list[str]] = {}
    for measurement in measurements:
        runs.setdefault(measurement.index, []).append(measurement.backend)
    by_index = {measurement.index: measurement.run for measurement in measurements}
    if len(runs) == 1:
        return f"Measured by {describe_run(by_index[next(iter(runs))])}."
    return "Measured per backend:\n\n" + "\n".join(
        f"- {', '.join(backends)}: {describe_run(by_index[index])}" for index, backends in runs.items())


def render_summary(current: dict[str, list[Measurement]]) -> str:
    """One row per comparison (the headline ratios against the targets of issue 4), from the latest measurements."""
    rows = [(row.label, row.measured, row.target, measurement.date, cpu_label(measurement.run["info"]),
             load_range(row.reports)[5:])
            for measurements in current.values() for measurement in measurements
            for row in summary_rows(measurement)]
    if not rows:
        return ""
    return "## Summary\n\n" + table(("", "measured", "target", "measured on", "CPU", "load (1 min)"), rows)


def render_machine(current: dict[str, list[Measurement]]) -> str:
    """The machine (one table per distinct machine among the runs shown) and the runs behind the figures."""
    runs: dict[int, dict] = {}
    provides: dict[int, list[str]] = {}
    for name, measurements in current.items():
        indices = {measurement.index for measurement in measurements}
        for measurement in measurements:
            runs[measurement.index] = measurement.run
        for index in indices:
            backends = [m.backend for m in measurements if m.index == index]
            partial = len(indices) > 1
            provides.setdefault(index, []).append(f"{name} ({', '.join(backends)})" if partial else name)
    order = sorted(runs, key=lambda index: (runs[index]["info"]["date"], index))
    # One machine per hardware and software; the host kernel's build string varies between days and does not
    # split a machine, its values are listed together.
    machines: dict[tuple, list[int]] = {}
    for index in reversed(order):  # the latest run's machine first
        rows = tuple(row for row in machine_rows(runs[index]["info"]) if row[0] != "OS")
        machines.setdefault(rows, []).append(index)
    parts = []
    for rows, indices in machines.items():
        if len(machines) > 1:
            label = cpu_label(runs[indices[0]]["info"])
            parts.append(f"**{label}**: runs of {', '.join(runs[index]['info']['date'] for index in sorted(indices))}:")
        systems = dict.fromkeys(runs[index]["info"]["platform"] for index in indices)
        parts.append(table(("", ""), (*rows[:-1], ("OS", ", ".join(systems)), rows[-1])))
    run_rows = [(runs[index]["info"]["date"], f"`{runs[index]['info']['command']}`", runs[index]["mode"],
                 ", ".join(provides[index]), runs[index]["info"]["code"],
                 f"{(runs[index]['total_seconds'] or 0) / 60:.1f}",
                 f"{runs[index]['info']['load_start']} / {runs[index]['info'].get('load_end')}")
                for index in order]
    parts.append("The runs shown (each section names its own):\n\n" + table(
        ("date", "command", "mode", "sections shown", "code", "wall time (min)", "load (1 min) at start / end"),
        run_rows))
    return "\n\n".join(parts)


def render_history(current: dict[str, list[Measurement]], older: list[Measurement]) -> str:
    """Earlier measurements of the summary's comparisons, one line each, grouped by comparison, oldest first."""
    labels = [row.label for measurements in current.values() for measurement in measurements
              for row in summary_rows(measurement)]
    lines = []
    for measurement in older:
        for row in summary_rows(measurement):
            mode = "" if measurement.run["mode"] == "full" else f", {measurement.run['mode']} mode"
            rank = labels.index(row.label) if row.label in labels else len(labels)
            lines.append(((rank, row.label, measurement.order),
                          f"- {measurement.date}: {row.label}: {row.measured} ({cpu_label(measurement.run['info'])}; "
                          f"{load_range(row.reports)}{mode}; "
                          f"`{measurement.run['info']['command']}`)"))
    if not lines:
        return ""
    return ("## History\n\nEarlier measurements of the summary's comparisons, superseded by the ones above.\n\n"
            + "\n".join(line for _, line in sorted(lines)))
