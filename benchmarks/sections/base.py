"""What a benchmark section is: its cases, settings and renderers (parent side; no Keras import).

A section module (`benchmarks/sections/<name>.py`) defines one `SECTION`: the sizes per mode, `plan(settings,
workdir)` → the `Case`s, each run in a fresh child process per backend by `benchmarks.run`, the case functions
themselves (`cases`: name → function, called by `benchmarks.child`; they import Keras inside the function), and
`render(reports, settings, cores)` / `summarise(reports, settings)` for docs/performance.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import SEED

__all__ = ["BACKENDS", "SEED", "TORCH_PASSIVE", "Case", "Section", "SummaryRow", "parse_backend"]

BACKENDS = ("tensorflow", "jax", "torch")
# torch's OpenMP threads spin-wait; when other work shares a small machine, a descheduled thread stalls every
# parallel region and throughput collapses (~10× here). OMP_WAIT_POLICY=PASSIVE (read when torch loads) shows it.
TORCH_PASSIVE = "torch+OMP_WAIT_POLICY=PASSIVE"


def parse_backend(spec: str) -> tuple[str, dict[str, str]]:
    """`"torch+OMP_WAIT_POLICY=PASSIVE"` → `("torch", {"OMP_WAIT_POLICY": "PASSIVE"})`: a backend plus env vars.

    Raises:
        ValueError: for an unknown backend or a malformed `+NAME=value`.
    """
    name, *assignments = spec.split("+")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    env = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals or not key:
            raise ValueError(f"{spec!r}: write extra environment variables as backend+NAME=value")
        env[key] = value
    return name, env


@dataclasses.dataclass(frozen=True)
class Case:
    """One child process: the section's case function `function` with `params`, shown as `label`."""

    label: str
    function: str
    params: dict
    timeout: int


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One comparison of the summary table; `reports` are the ones it was computed from (for its load)."""

    label: str
    measured: str
    target: str
    reports: list[dict]


@dataclasses.dataclass(frozen=True)
class Section:
    """A benchmark section.

    Attributes:
        settings: mode ("quick"/"full") → sizes, passed to `plan`, `render` and `summarise`.
        plan: `(settings, workdir)` → the cases, run once per backend.
        cases: case function name → `function(params, emit) -> dict`, run in the child (see `benchmarks.child`).
        render: `(reports, settings, cores)` → the markdown of the section for one or more backends' reports.
        summarise: `(reports, settings)` → the summary rows of one backend's reports.
    """

    name: str
    title: str
    default_backends: tuple[str, ...]
    settings: dict[str, dict]
    plan: Callable[[dict, Path], list[Case]]
    cases: dict[str, Callable[[dict, Callable], dict]]
    render: Callable[[list[dict], dict, int], str]
    summarise: Callable[[list[dict], dict], list[SummaryRow]]
