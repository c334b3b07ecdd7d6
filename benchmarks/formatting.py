"""Markdown helpers shared by the section renderers and `benchmarks.report` (parent side; no Keras import)."""

from __future__ import annotations

from tlkit.report import markdown_table


def table(headers, rows) -> str:
    """A markdown table (`tlkit.report.markdown_table`, left-aligned)."""
    return markdown_table(list(headers), rows)


def num(value, digits=1) -> str:
    """`1234.56` → `1,234.6`; None → `–`; anything else as `str`."""
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(numerator, denominator, digits=2) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, digits)


def times(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def failure(report: dict) -> str | None:
    """What went wrong in a case (its error, or no result), None when it has a result."""
    if report.get("error"):
        return f"**failed**: {report['error']} (log: `{report.get('log', '?')}`)"
    if report.get("result") is None:
        return "**no result**"
    return None


def ok(report: dict | None) -> bool:
    return bool(report) and not failure(report)


def by_backend(reports: list[dict]) -> dict[str, list[dict]]:
    """Reports grouped by backend, in the order the backends first appear."""
    grouped: dict[str, list[dict]] = {}
    for report in reports:
        grouped.setdefault(report["backend"], []).append(report)
    return grouped


def find(reports: list[dict], function: str, label_part: str = "") -> dict | None:
    """The first report of case function `function` whose label contains `label_part`."""
    for report in reports:
        if report["function"] == function and label_part in report["label"]:
            return report
    return None


def load_range(reports: list[dict]) -> str:
    """`load 1.4–6.0`: the 1-minute load averages the cases saw at their start and end."""
    loads = [report["process"][key] for report in reports if report.get("process")
             for key in ("load_start", "load_end")]
    return f"load {min(loads):.1f}–{max(loads):.1f}" if loads else "load unknown"


def load_note(reports: list[dict], cores: int) -> str:
    if not any(report.get("process") for report in reports):
        return ""
    return f"Load average (1 min) seen by these runs: {load_range(reports)[5:]} on {cores} cores."
