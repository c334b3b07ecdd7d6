"""Run summaries and the runs table, built from `tlkit.runs` readers only.

Every reader here tolerates missing or corrupt files (a run in the middle of
being written, a failed run, garbage in status.json): the worst case is an
empty cell and the run's `error`, never an exception on the page.

Example:

```python
from tlkit import runs
from explorer import tables

summaries = [tables.summarise(run) for run in runs.list_runs("runs")]
frame, differing = tables.runs_table(summaries)
```
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any

import pandas as pd

from tlkit import runs
from tlkit.config import flatten_dict
from tlkit.environment import NATIVE_NOISE

# Shown for every run; any other config field appears when it differs between the listed runs.
KEY_FIELDS = (
    "model.backbone", "model.image_size", "model.dropout", "finetune.unfreeze",
    "head.epochs", "finetune.epochs", "head.learning_rate", "finetune.learning_rate", "batch_size",
)
# Fields that differ between almost any two runs without describing the experiment.
IGNORED_FIELDS = ("name", "runs_dir")
# Streamlit material icons (markdown), so they render without an emoji font.
STATE_ICONS = {"queued": ":material/schedule:", "running": ":material/play_circle:",
               "completed": ":green[:material/check_circle:]", "failed": ":red[:material/error:]",
               "cancelled": ":material/cancel:", "crashed": ":red[:material/heart_broken:]",
               "stopped": ":orange[:material/content_cut:]", "unknown": ":orange[:material/help:]"}


class RunSummary:
    """What the pages need to know about one run, each file read at most once per rerun.

    The status is read up front; config and metrics (which holds the confusion
    matrix) only when asked for, so the live progress panel stays cheap.
    """

    def __init__(self, run: runs.Run):
        self.run = run
        self.status = run.status()

    @functools.cached_property
    def config(self) -> dict | None:
        return self.run.config()

    @functools.cached_property
    def metrics(self) -> dict | None:
        return self.run.metrics()

    @functools.cached_property
    def annotations(self) -> dict[str, Any]:
        """Title, tags and notes the user gave the run (annotations.json, never written by the trainer)."""
        return self.run.annotations()

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def tags(self) -> list[str]:
        return self.annotations["tags"]

    @property
    def error_field(self) -> str | None:
        """The config key the run's error is about (status.json's `error_field`), if the trainer named one."""
        field = self.status.get("error_field")
        return field if isinstance(field, str) and field else None

    @property
    def state(self) -> str:
        state = self.status.get("state")
        return state if state in STATE_ICONS else "unknown"

    @property
    def name(self) -> str:
        return str((self.config or {}).get("name") or "")

    @property
    def error(self) -> str | None:
        error = self.status.get("error")
        if error:
            return str(error)
        if self.state == "completed" and self.metrics is None:
            return "metrics.json is missing or unreadable"
        if self.config is None:
            return "config.json is missing or unreadable"
        return None

    @property
    def test_accuracy(self) -> float | None:
        return _number((self.metrics or {}).get("test_accuracy"))

    @property
    def macro_f1(self) -> float | None:
        return _number((self.metrics or {}).get("macro_f1"))

    @property
    def backend(self) -> str:
        return str((self.metrics or {}).get("backend") or self.status.get("backend") or "")

    @property
    def flat_config(self) -> dict[str, Any]:
        return flatten_dict(self.config or {})

    @property
    def duration(self) -> float | None:
        """Seconds: the trainer's own total, else the status timestamps (elapsed if running)."""
        seconds = (self.metrics or {}).get("seconds")
        if isinstance(seconds, dict) and _number(seconds.get("total")) is not None:
            return float(seconds["total"])
        start = _time(self.status.get("started_at"))
        end = _time(self.status.get("finished_at")) or (
            datetime.now().astimezone() if self.state == "running" else _time(self.status.get("updated_at")))
        if start and end:
            return max(0.0, (end - start).total_seconds())
        return None

    @property
    def label(self) -> str:
        """How lists and legends name the run: its title if it was given one, else its config name,
        else its id."""
        return self.annotations["title"] or self.name or self.run_id

    @property
    def class_names(self) -> list[str]:
        names = (self.metrics or {}).get("class_names")
        return [str(name) for name in names] if isinstance(names, list) else []


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean_log(text: str) -> str:
    """Terminal output as it would look: no colour codes, progress bars collapsed to their last state,
    and without TensorFlow's native start-up lines (`tlkit.environment.NATIVE_NOISE`: the CLI drops
    them now, older runs' logs still hold them)."""
    lines = [_as_shown(line) for line in ANSI_ESCAPE.sub("", text).split("\n")]
    return "\n".join(line for line in lines if not NATIVE_NOISE.search(line))


def _as_shown(line: str) -> str:
    kept: list[str] = []
    for char in line.rsplit("\r", 1)[-1]:  # `\r` redraws the line
        if char == "\b":
            if kept:
                kept.pop()
        else:
            kept.append(char)
    return "".join(kept)


def distinct_labels(summaries: list[RunSummary]) -> dict[str, str]:
    """`{run id: label}` where runs sharing a label (a clone keeps its run's name) get their id's
    last four characters added, so legends never merge two runs."""
    counts: dict[str, int] = {}
    for summary in summaries:
        counts[summary.label] = counts.get(summary.label, 0) + 1
    return {s.run_id: s.label if counts[s.label] == 1 else f"{s.label} #{s.run_id[-4:]}" for s in summaries}


def summarise(run: runs.Run) -> RunSummary:
    return RunSummary(run)


def summarise_all(runs_dir) -> list[RunSummary]:
    return [summarise(run) for run in runs.list_runs(runs_dir)]


def newest_first(summaries: list[RunSummary]) -> list[RunSummary]:
    """By when each run was (last) queued (the launcher's float time), else created (`created_at`,
    to the millisecond), then id."""
    def moment(summary: RunSummary) -> float:
        queued = _number(summary.status.get("queued_at"))
        created = _time(summary.status.get("created_at"))
        return queued if queued is not None else created.timestamp() if created else 0.0

    return sorted(summaries, key=lambda s: (moment(s), s.run_id), reverse=True)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _time(text) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.astimezone()


def differing_fields(summaries: list[RunSummary]) -> list[str]:
    """Config keys whose values are not all equal across the runs that have a config."""
    flats = [summary.flat_config for summary in summaries if summary.config]
    if len(flats) < 2:
        return []
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [key for key in keys if key not in IGNORED_FIELDS
            and len({repr(flat.get(key)) for flat in flats}) > 1]


# Fields that differ between runs without being what the experiment varies (limits, caches, paths).
NOISE_FIELDS = ("preset", "cache_dir", "cache_memory_gb", "feature_cache", "boundary_cache", "tensorboard",
                "mlflow_uri", "mlflow_experiment", "distribution.coordinator_address", "distribution.num_processes",
                "distribution.process_id", "data.data_dir", "data.train_limit", "data.test_limit", "data.strict")
MAX_DEFAULT_AXES = 8


def hyperparameter_axes(summaries: list[RunSummary]) -> tuple[list[str], list[str]]:
    """(default axes, every choice) for the Hyperparameters view of these runs.

    The default is the fields that differ and matter (not the `NOISE_FIELDS`), at most
    `MAX_DEFAULT_AXES`; the choices are every config field, the differing ones first.
    """
    differing = differing_fields(summaries)
    default = [key for key in differing if key not in NOISE_FIELDS][:MAX_DEFAULT_AXES]
    every = list(dict.fromkeys(key for s in summaries for key in s.flat_config if key not in IGNORED_FIELDS))
    choices = differing + [key for key in every if key not in differing]
    if not default:
        default = [key for key in KEY_FIELDS if key in choices][:3]
    return default, choices


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


# The metrics a run can be the best at: (summary attribute, how the page names it).
BEST_METRICS = (("test_accuracy", "test acc"), ("macro_f1", "macro F1"))


def best_runs(summaries: list[RunSummary]) -> dict[str, str]:
    """`{metric attribute: run id}` of the completed run with the highest value of each metric."""
    best = {}
    for attribute, _ in BEST_METRICS:
        scored = [s for s in summaries if s.state == "completed" and getattr(s, attribute) is not None]
        if scored:
            best[attribute] = max(scored, key=lambda s: (getattr(s, attribute), s.run_id)).run_id
    return best


def best_marks(summary: RunSummary, best: dict[str, str]) -> str:
    """`★ test acc, macro F1`: the metrics `summary` is the best run at ('' when none)."""
    names = [name for attribute, name in BEST_METRICS if best.get(attribute) == summary.run_id]
    return "★ " + ", ".join(names) if names else ""


def runs_table(summaries: list[RunSummary], best: dict[str, str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per run; returns the frame and the config columns whose values differ.

    `best` (from `best_runs`, over every run, not only the listed ones) fills the `best` column.
    """
    differing = differing_fields(summaries)
    # What differs comes first, so the highlighted columns are visible without scrolling.
    config_columns = differing + [key for key in KEY_FIELDS if key not in differing]
    best = best_runs(summaries) if best is None else best
    rows = []
    for summary in summaries:
        flat = summary.flat_config
        row = {
            "title": summary.label,
            "run": summary.run_id,
            "tags": list(summary.tags),
            "state": summary.state,
            "best": best_marks(summary, best),
            "test acc": summary.test_accuracy,
            "macro F1": summary.macro_f1,
            "duration": format_duration(summary.duration),
            "backend": summary.backend,
        }
        row.update({key: _cell(flat.get(key)) for key in config_columns})
        row["error"] = (summary.error or "")[:200]
        rows.append(row)
    columns = ["title", "run", "tags", "state", "best", "test acc", "macro F1", "duration", "backend",
               *config_columns, "error"]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("test acc", "macro F1"):
        frame[column] = pd.to_numeric(frame[column])  # all-None columns would stay object ("None")
    return frame, differing


def _cell(value) -> Any:
    # Arrow needs one type per column; mixed ints/strings (unfreeze '16' vs 'conv5') stay strings.
    if value is None or isinstance(value, (bool, int, float)):
        return value if not isinstance(value, bool) else str(value)
    return str(value)


def all_tags(summaries: list[RunSummary]) -> list[str]:
    """Every tag used by these runs, sorted."""
    return sorted({tag for summary in summaries for tag in summary.tags})


def filter_summaries(summaries: list[RunSummary], states: list[str] | None = None,
                     text: str = "", tags: list[str] | None = None) -> list[RunSummary]:
    """The runs in one of `states`, carrying every tag of `tags`, whose title, name or id contains `text`."""
    text = text.strip().lower()
    return [summary for summary in summaries
            if (not states or summary.state in states)
            and set(tags or ()) <= set(summary.tags)
            and (not text or any(text in value.lower() for value in (summary.run_id, summary.name, summary.label)))]


SORTS = {
    "newest first": (lambda s: s.run_id, True),
    "oldest first": (lambda s: s.run_id, False),
    "test accuracy": (lambda s: (s.test_accuracy is not None, s.test_accuracy or 0.0), True),
    "macro F1": (lambda s: (s.macro_f1 is not None, s.macro_f1 or 0.0), True),
    "state": (lambda s: (s.state, s.run_id), False),
    "title": (lambda s: (s.label.lower(), s.run_id), False),
}


def sort_summaries(summaries: list[RunSummary], order: str) -> list[RunSummary]:
    key, reverse = SORTS[order]
    return sorted(summaries, key=key, reverse=reverse)
