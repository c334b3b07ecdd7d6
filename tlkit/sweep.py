"""`python -m tlkit.sweep SPEC.toml`: hyperparameter sweeps whose trials are ordinary tlkit runs.

A sweep spec (TOML or JSON) names a base config, a search space over config fields, the metric
and how many trials to run:

```toml
name = "smoke-lr"
metric = "val_accuracy"          # or val_loss; read from each epoch of history.csv
trials = 3                       # samples; grid axes multiply them (Ray's rule)
search = "random"                # random (grid axes crossed, other axes drawn) | optuna (TPE)
seed = 0
max_concurrent = 2               # trials at once (Ray: else as many as the resources allow; local: 1)

[resources]                      # per trial (Ray engine)
cpus = 1
gpus = 0

[scheduler]                      # optional early stopping (Ray engine): ASHA on the metric, per epoch
type = "asha"
grace_period = 1
reduction_factor = 2

[base]                           # like a config file: preset, then an optional config file, then fields
preset = "smoke"
head.epochs = 4

[space]                          # config fields and their distributions
"head.learning_rate" = { loguniform = [1e-4, 3e-2] }
"model.dropout" = { grid = [0.1, 0.4] }
```

Distributions: `grid = [values]` (every value), `choice = [values]`, `uniform = [low, high]`,
`loguniform = [low, high]` (float fields) and `randint = [low, high]` (int fields, both ends
included). Everything is checked through `tlkit.config` before any trial starts: unknown fields,
values or bounds outside a field's range or choices, and the base config with each grid value
and each bound put in (`Config.validate()`).

Engines: `--engine local` queues the trials in the runs directory's queue (`tlkit.run_queue`, the
explorer's) and trains them here, `max_concurrent` at a time; `--engine ray` runs them as Ray Tune
trials (`tlkit.sweep_ray`; `pip install 'tlkit[ray]'`): `ray.init()` starts a local cluster,
`--address HOST:PORT` joins a running one. Either way each trial is a run directory under the runs
directory, tagged `sweep:<sweep id>` and `trial:<n>` (annotations.json), trained by
`python -m tlkit.train --existing-run`; trials that ASHA stops end as `stopped`, with the reason.
`RUNS_DIR/sweeps/<sweep id>/sweep.json` holds the spec, each trial's run id, state and best metric,
and the best trial.

Example:

```
python -m tlkit.sweep examples/sweep.toml --data-dir ../shared/data/fashion-mnist
python -m tlkit.sweep examples/sweep.toml --engine ray --address 10.0.0.5:6379 --runs-dir /shared/runs
```
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import tomllib

from tlkit import run_queue, runs
from tlkit.cli import add_config_arguments, config_flags
from tlkit.config import (
    KERAS_HUB_PREFIX,
    Config,
    ConfigError,
    DataConfig,
    FieldSpec,
    apply_overrides,
    check_value,
    coerce,
    field_specs,
    flatten_dict,
    read_config_file,
)

SWEEPS_DIR = "sweeps"  # under the runs directory; list_runs skips it (no status.json or config.json)
SWEEP_FILE = "sweep.json"
METRICS = {"val_accuracy": "max", "val_loss": "min"}  # history.csv columns a sweep can optimise
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
SEARCHES = ("random", "optuna")
SPEC_KEYS = ("name", "metric", "trials", "search", "seed", "max_concurrent", "resources", "scheduler", "base",
             "space")
NOT_SWEPT = ("name", "preset", "runs_dir")  # set by the sweep itself, or where the sweep lives
SWEEP_TAG, TRIAL_TAG = "sweep:", "trial:"
EXIT_OK, EXIT_NO_TRIAL_COMPLETED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
RAY_EXTRA = "pip install 'tlkit[ray]'"


class SweepError(ConfigError):
    """A sweep spec or command line that cannot run; the message says what to change."""


# ---- the spec ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept config field and its distribution.

    Args:
        key: the config field (`"model.dropout"`).
        kind: one of `DISTRIBUTIONS`.
        values: the values (`grid`, `choice`) or the `(low, high)` bounds (`uniform`, `loguniform`,
            `randint`, both included).
    """

    key: str
    kind: str
    values: tuple

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    def sample(self, rng) -> Any:
        """A random value (not for grid axes: those are crossed, see `sample_trials`)."""
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return int(rng.integers(low, high + 1))

    def to_dict(self) -> dict[str, list]:
        return {self.kind: list(self.values)}


@dataclasses.dataclass(frozen=True)
class Scheduler:
    """ASHA early stopping: a trial whose metric at a rung (epoch grace_period, × reduction_factor,
    …) falls below the best 1/reduction_factor of the trials that reached it before is stopped."""

    grace_period: int = 1
    reduction_factor: float = 2.0
    kind: str = "asha"


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the base config, the space and how to search it (see the module docstring)."""

    name: str
    base: Config
    space: tuple[Axis, ...]
    metric: str = "val_accuracy"
    trials: int = 1
    search: str = "random"
    seed: int | None = 0
    max_concurrent: int | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    scheduler: Scheduler | None = None
    source: str = ""

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    @property
    def runs_dir(self) -> Path:
        return Path(self.base.runs_dir)

    @property
    def total_trials(self) -> int:
        """`trials` × the size of every grid axis."""
        return self.trials * math.prod(len(axis.values) for axis in self.space if axis.is_grid)

    @property
    def max_epochs(self) -> int:
        """The most epochs (both stages) any trial can train: ASHA's horizon."""
        most = {}
        for key in ("head.epochs", "finetune.epochs"):
            axis = next((axis for axis in self.space if axis.key == key), None)
            most[key] = max(axis.values) if axis else _get(self.base, key)
        return int(most["head.epochs"] + most["finetune.epochs"])

    def trial_config(self, params: dict[str, Any], number: int) -> Config:
        """The base config with a trial's values (dotted keys) and the trial's name."""
        return apply_overrides(self.base, {**params, "name": f"{self.name}-{number}"})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "metric": self.metric, "mode": self.mode,
                "trials": self.trials, "total_trials": self.total_trials, "search": self.search, "seed": self.seed,
                "max_concurrent": self.max_concurrent, "resources": {"cpus": self.cpus, "gpus": self.gpus},
                "scheduler": dataclasses.asdict(self.scheduler) if self.scheduler else None,
                "space": {axis.key: axis.to_dict() for axis in self.space}, "base": self.base.to_dict()}


def _get(config: Config, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def load_spec(path: str | os.PathLike, flags: dict[str, Any] | None = None) -> SweepSpec:
    """Reads and validates a sweep spec; nothing is written.

    Args:
        path: a `.toml` or `.json` spec.
        flags: config fields given on the command line (dotted keys), applied over the spec's base.

    Raises:
        SweepError: naming the key or config field at fault ("model.dropout: ...").

    Example:

    ```python
    spec = load_spec("examples/sweep.toml", {"data.data_dir": "../shared/data/fashion-mnist"})
    spec.total_trials, [axis.key for axis in spec.space]
    ```
    """
    values = _read_spec(Path(path))
    unknown = sorted(set(values) - set(SPEC_KEYS))
    if unknown:
        raise SweepError(f"{', '.join(unknown)}: unknown sweep spec key; the keys are {', '.join(SPEC_KEYS)}")
    flags = dict(flags or {})
    base = _base_config(values.get("base", {}), flags)
    space = _space(values.get("space"), base)
    swept_flags = sorted(set(flags) & {axis.key for axis in space})
    if swept_flags:
        raise SweepError(f"{swept_flags[0]}: given as a flag and swept in the spec's [space]; drop one of them")
    spec = SweepSpec(
        name=_name(values.get("name", Path(path).stem)), base=base, space=space,
        metric=_choice("metric", values.get("metric", "val_accuracy"), tuple(METRICS)),
        trials=_whole("trials", values.get("trials", 1), low=1),
        search=_choice("search", values.get("search", "random"), SEARCHES),
        seed=None if values.get("seed", 0) is None else _whole("seed", values.get("seed", 0), low=0),
        max_concurrent=None if values.get("max_concurrent") is None else _whole(
            "max_concurrent", values["max_concurrent"], low=1),
        **_resources(values.get("resources", {})),
        scheduler=_scheduler(values.get("scheduler")), source=str(path),
    )
    _check_together(spec)
    return spec


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SweepError(f"sweep spec {str(path)!r} does not exist; see examples/sweep.toml")
    if path.suffix not in (".toml", ".json"):
        raise SweepError(f"sweep spec {str(path)!r}: use a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise SweepError(f"sweep spec {str(path)!r} is not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(values, dict):
        raise SweepError(f"sweep spec {str(path)!r} must hold a table of keys ({', '.join(SPEC_KEYS)})")
    return values


def _name(value: Any) -> str:
    text = str(value).strip()
    if not text or len(text) > 40:
        raise SweepError(f"name: {value!r} must be 1 to 40 characters")
    return text


def _choice(key: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise SweepError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _whole(key: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SweepError(f"{key}: {value!r} must be a whole number ≥ {low}")
    return value


def _number(key: str, value: Any, low: float, inclusive: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if not ok or value < low or (not inclusive and value == low):
        raise SweepError(f"{key}: {value!r} must be a number {'≥' if inclusive else '>'} {low:g}")
    return float(value)


def _table(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise SweepError(f"{key}: must be a table ([{key}] in TOML), got {value!r}")
    return value


def _resources(values: Any) -> dict[str, float]:
    values = _table("resources", values)
    unknown = sorted(set(values) - {"cpus", "gpus"})
    if unknown:
        raise SweepError(f"resources.{unknown[0]}: unknown; resources per trial are cpus and gpus")
    return {"cpus": _number("resources.cpus", values.get("cpus", 1), 0, inclusive=False),
            "gpus": _number("resources.gpus", values.get("gpus", 0), 0)}


def _scheduler(values: Any) -> Scheduler | None:
    if values is None:
        return None
    values = _table("scheduler", values)
    unknown = sorted(set(values) - {"type", "grace_period", "reduction_factor"})
    if unknown:
        raise SweepError(f"scheduler.{unknown[0]}: unknown; the scheduler keys are type, grace_period, "
                         "reduction_factor")
    _choice("scheduler.type", values.get("type", "asha"), ("asha",))
    return Scheduler(grace_period=_whole("scheduler.grace_period", values.get("grace_period", 1), low=1),
                     reduction_factor=_number("scheduler.reduction_factor", values.get("reduction_factor", 2), 1,
                                              inclusive=False))


# ---- the base config and the space, checked through tlkit.config --------------------


def _base_config(values: Any, flags: dict[str, Any]) -> Config:
    """preset < config file < the spec's [base] fields < command-line flags, as `tlkit.train` does;
    relative paths made absolute (trials run elsewhere: a Ray worker, the queue's worker)."""
    values = dict(_table("base", values))
    preset = values.pop("preset", "") or ""
    config_file = values.pop("config", None)
    try:
        file_values = read_config_file(config_file) if config_file else {}
        preset = preset or file_values.get("preset") or ""
        file_values.pop("preset", None)
        config = Config.from_preset(preset) if preset else Config()
        config = apply_overrides(config, file_values, values, flags)
        config = apply_overrides(config, {key: absolute(key, _get(config, key)) for key in PATH_FIELDS})
        return config.validate()
    except ConfigError as error:
        raise SweepError(f"{error} (in the sweep's base config: [base] or a flag)") from None


PATH_FIELDS = ("runs_dir", "cache_dir", "data.source", "data.data_dir", "model.weights", "model.backbone")


def absolute(key: str, value: Any) -> Any:
    """`value` of config field `key` with a relative path made absolute (names kept): relative paths
    mean the directory the sweep was started in, wherever a trial runs."""
    if key == "runs_dir":
        return str(runs.resolve_runs_dir(value).resolve())
    if key not in PATH_FIELDS or not isinstance(value, str) or not value:
        return value
    if key == "model.backbone":  # a keras-hub preset in a local directory, else a name
        local = value.removeprefix(KERAS_HUB_PREFIX)
        return KERAS_HUB_PREFIX + str(Path(local).resolve()) if value != local and Path(local).is_dir() else value
    if (key == "data.source" and value in DataConfig.BUILTINS) or (key == "model.weights"
                                                                    and value in ("imagenet", "none")):
        return value
    return str(Path(value).expanduser().resolve())


def _space(values: Any, base: Config) -> tuple[Axis, ...]:
    if not values:
        raise SweepError("space: the spec sweeps nothing; add a [space] table, e.g. "
                         "\"model.dropout\" = { grid = [0.1, 0.3] }")
    specs = {spec.key: spec for spec in field_specs()}
    axes = tuple(_axis(key, table, specs) for key, table in _space_leaves(_table("space", values)))
    for axis in axes:  # each grid value and each bound, put into the base, must make a valid config
        for value in axis.values:
            try:
                apply_overrides(base, {axis.key: value}).validate()
            except ConfigError as error:
                raise SweepError(f"{axis.key}: {axis.kind} value {value!r} makes the config invalid: {error}") from None
    return axes


def _space_leaves(values: dict, prefix: str = ""):
    """(dotted key, distribution table) pairs; [space.model] dropout = {...} and "model.dropout" = {...} alike."""
    for key, value in values.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value and set(value) <= set(DISTRIBUTIONS):
            yield full, value
        elif isinstance(value, dict) and value and not set(value) & set(DISTRIBUTIONS):
            yield from _space_leaves(value, f"{full}.")
        else:
            raise SweepError(f"{full}: give one distribution: {{ grid = [...] }}, {{ choice = [...] }}, "
                             "{ uniform = [low, high] }, { loguniform = [low, high] } or { randint = [low, high] } "
                             "(fixed values go under [base])")


def _axis(key: str, table: dict, specs: dict[str, FieldSpec]) -> Axis:
    if key not in specs:
        groups = sorted({name.split(".")[0] for name in specs if "." in name})
        raise SweepError(f"{key}: unknown config field (in the sweep's [space]); groups are {', '.join(groups)}")
    if key in NOT_SWEPT:
        raise SweepError(f"{key}: set by the sweep itself; it cannot be swept")
    if len(table) != 1:
        raise SweepError(f"{key}: give one distribution, not {', '.join(table)}")
    spec = specs[key]
    ((kind, raw),) = table.items()
    if not isinstance(raw, list) or not raw:
        raise SweepError(f"{key}: {kind} takes a non-empty list, got {raw!r}")
    if kind in ("grid", "choice"):
        values = tuple(_field_value(spec, value, kind) for value in raw)
        return Axis(key, kind, values)
    if len(raw) != 2:
        raise SweepError(f"{key}: {kind} takes [low, high], got {raw!r}")
    wanted = int if kind == "randint" else float
    if spec.type is not wanted:
        other = "randint" if spec.type is int else "grid or choice" if spec.type in (bool, str) else "uniform"
        raise SweepError(f"{key}: {kind} needs a{'n int' if wanted is int else ' float'} field, but {key} is "
                         f"{spec.type.__name__}; use {other}")
    low, high = (_field_value(spec, value, kind) for value in raw)
    if not low < high:
        raise SweepError(f"{key}: {kind} [{low}, {high}]: low must be below high")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"{key}: loguniform [{low}, {high}]: both bounds must be > 0")
    return Axis(key, kind, (low, high))


def _field_value(spec: FieldSpec, value: Any, kind: str) -> Any:
    """A spec value coerced to the field's type and checked against its range or choices."""
    try:
        value = coerce(spec, value)
        check_value(spec, value)
    except ConfigError as error:
        raise SweepError(f"{error} (a {kind} value in the sweep's [space])") from None
    return absolute(spec.key, value)


def _check_together(spec: SweepSpec) -> None:
    """Rules that span the spec's parts."""
    split = next((axis for axis in spec.space if axis.key == "data.validation_split"), None)
    if spec.base.data.validation_split == 0 or (split and min(split.values) == 0):
        raise SweepError(f"data.validation_split: the sweep's metric {spec.metric} needs a validation split > 0")
    if spec.search == "optuna" and any(axis.is_grid for axis in spec.space):
        grid = next(axis.key for axis in spec.space if axis.is_grid)
        raise SweepError(f"{grid}: grid axes need search = \"random\" (Optuna draws every value); use choice")
    if spec.scheduler and spec.scheduler.grace_period >= spec.max_epochs:
        raise SweepError(f"scheduler.grace_period: {spec.scheduler.grace_period} leaves nothing to stop; trials "
                         f"train at most {spec.max_epochs} epochs")


def sample_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """Each trial's values (dotted keys) in order: per sample, every grid combination, the other
    axes drawn at random (seeded) for each (Ray Tune's order and rule)."""
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    grid = [axis for axis in spec.space if axis.is_grid]
    drawn = [axis for axis in spec.space if not axis.is_grid]
    trials = []
    for _ in range(spec.trials):
        for combination in itertools.product(*(axis.values for axis in grid)):
            params = dict(zip((axis.key for axis in grid), combination))
            params.update({axis.key: axis.sample(rng) for axis in drawn})
            trials.append({axis.key: params[axis.key] for axis in spec.space})
    return trials


def describe_params(params: dict[str, Any]) -> str:
    """`head.learning_rate=0.003, model.dropout=0.2` (floats to 4 significant digits)."""
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


# ---- trials: ordinary run directories, tagged ---------------------------------------


def trial_tags(sweep_id: str, number: int) -> list[str]:
    return [f"{SWEEP_TAG}{sweep_id}", f"{TRIAL_TAG}{number}"]


def trial_runs(runs_dir, sweep_id: str) -> dict[int, runs.Run]:
    """The sweep's trial runs by trial number, found by their tags."""
    found = {}
    for run in runs.list_runs(runs_dir):
        tags = run.annotations()["tags"]
        if f"{SWEEP_TAG}{sweep_id}" in tags:
            numbers = [tag[len(TRIAL_TAG):] for tag in tags if tag.startswith(TRIAL_TAG)]
            if numbers and numbers[0].isdigit():
                found[int(numbers[0])] = run
    return dict(sorted(found.items()))


def create_trial_run(spec: SweepSpec, sweep_id: str, params: dict[str, Any]) -> tuple[int, runs.Run]:
    """A new `running` run directory for the next trial number (held by the caller, who starts its
    trainer). Numbers are handed out under the queue lock, so concurrent trials never share one."""
    with run_queue.queue_lock(spec.runs_dir):
        number = max(trial_runs(spec.runs_dir, sweep_id), default=0) + 1
        config = spec.trial_config(params, number)
        run = runs.create_run(spec.runs_dir, config.name, state="running")
        run.write_config(config.to_dict())
        run.annotate(tags=trial_tags(sweep_id, number))
    return number, run


def trial_row(number: int, run: runs.Run, spec: SweepSpec) -> dict[str, Any]:
    """What sweep.json says of one trial, read from its run directory."""
    status = run.status()
    config = flatten_dict(run.config() or {})
    history = run.history()
    values = [(row[spec.metric], index) for index, row in enumerate(history, start=1)
              if isinstance(row.get(spec.metric), float) and not math.isnan(row[spec.metric])]
    best = (max if spec.mode == "max" else min)(values) if values else (None, None)
    return {"trial": number, "run_id": run.run_id, "state": status.get("state"),
            "params": {axis.key: config.get(axis.key) for axis in spec.space},
            "best_metric": best[0], "best_epoch": best[1], "epochs": len(history),
            "test_accuracy": (run.metrics() or {}).get("test_accuracy"), "error": status.get("error")}


def best_trial(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    scored = [row for row in rows if row.get("best_metric") is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda row: row["best_metric"])


# ---- the sweep directory and sweep.json --------------------------------------------


class Sweep:
    """One sweep's directory, `RUNS_DIR/sweeps/<sweep id>/`, and its `sweep.json`.

    Args:
        path: the sweep directory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def sweep_id(self) -> str:
        return self.path.name

    @property
    def runs_dir(self) -> Path:
        return self.path.parent.parent

    @property
    def file(self) -> Path:
        return self.path / SWEEP_FILE

    @classmethod
    def create(cls, runs_dir, name: str) -> Sweep:
        root = runs.ensure_runs_dir(runs_dir) / SWEEPS_DIR
        root.mkdir(exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:12]
        while True:  # short enough for the `sweep:<id>` tag (40 characters at most)
            sweep_id = "-".join(part for part in (datetime.now().strftime("%Y%m%d-%H%M%S"), slug,
                                                 secrets.token_hex(2)) if part)
            try:
                (root / sweep_id).mkdir()
                return cls(root / sweep_id)
            except FileExistsError:
                continue

    def record(self) -> dict | None:
        """sweep.json, or None when missing or unreadable."""
        try:
            value = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def trials(self, spec: SweepSpec) -> list[dict[str, Any]]:
        """Each trial as its run directory says now (state, values, best metric; see `trial_row`)."""
        return [trial_row(number, run, spec) for number, run in trial_runs(self.runs_dir, self.sweep_id).items()]

    def write(self, spec: SweepSpec, engine: str, state: str, **extra) -> dict[str, Any]:
        """Rewrites sweep.json (atomically) from the trials' run directories; returns it."""
        rows = self.trials(spec)
        previous = self.record() or {}
        record = {
            "sweep_id": self.sweep_id, "name": spec.name, "engine": engine, "state": state,
            "created_at": previous.get("created_at") or runs.now(), "updated_at": runs.now(),
            "metric": spec.metric, "mode": spec.mode, "trials_planned": spec.total_trials,
            "counts": {state: sum(row["state"] == state for row in rows) for state in {row["state"] for row in rows}},
            "best": best_trial(rows, spec.mode), "trials": rows, "spec": spec.to_dict(),
            **{key: value for key, value in previous.items() if key in ("address", "errors")}, **extra,
        }
        runs.write_json(self.file, record)
        return record


def list_sweeps(runs_dir=None) -> list[Sweep]:
    """Sweeps in a runs directory (those with a sweep.json), newest first."""
    root = runs.resolve_runs_dir(runs_dir) / SWEEPS_DIR
    if not root.is_dir():
        return []
    found = [Sweep(path) for path in root.iterdir() if (path / SWEEP_FILE).is_file()]
    return sorted(found, key=lambda sweep: sweep.sweep_id, reverse=True)


def spec_from_record(record: dict[str, Any]) -> SweepSpec:
    """The spec stored in a sweep.json (already validated when the sweep started)."""
    stored = record["spec"]
    axes = tuple(Axis(key, *next(iter(table.items()))) for key, table in stored["space"].items())
    axes = tuple(dataclasses.replace(axis, values=tuple(axis.values)) for axis in axes)
    scheduler = stored.get("scheduler")
    return SweepSpec(name=stored["name"], base=Config.from_dict(stored["base"]), space=axes,
                     metric=stored["metric"], trials=stored["trials"], search=stored["search"], seed=stored["seed"],
                     max_concurrent=stored["max_concurrent"], cpus=stored["resources"]["cpus"],
                     gpus=stored["resources"]["gpus"], scheduler=Scheduler(**scheduler) if scheduler else None,
                     source=stored.get("source", ""))


def finished(state: str | None) -> bool:
    return state in runs.FINAL_STATES


# ---- a trial's trainer (the Ray engine's trials; the local engine's queue does the same) ----


class TrainerProcess:
    """`python -m tlkit.train --existing-run RUN` as a child process, and its epochs as they land.

    The trainer's output goes to the run's train.log; `KERAS_BACKEND` is `backend` when given,
    else inherited.

    Example:

    ```python
    trainer = TrainerProcess.start(run, backend="jax")
    while (row := trainer.next_epoch()) is not None:
        print(row["global_epoch"], row["val_accuracy"])
    status = trainer.wait()          # the run's final status
    ```
    """

    POLL_SECONDS = 0.25

    def __init__(self, run: runs.Run, process: subprocess.Popen):
        self.run = run
        self.process = process
        self.seen = 0

    @classmethod
    def start(cls, run: runs.Run, backend: str | None = None, cwd: str | None = None) -> TrainerProcess:
        with run_queue.open_log(run.file(runs.LOG_FILE)) as log:
            process = subprocess.Popen(run_queue.train_command(run.path.resolve()), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, env=run_queue.child_env(backend),
                                       cwd=cwd if cwd and Path(cwd).is_dir() else None)
        run.update_status(state="running", pid=process.pid, backend=backend, started_at=runs.now())
        return cls(run, process)

    def next_epoch(self) -> dict[str, Any] | None:
        """Blocks until the next history row (with `global_epoch`, counting both stages), or returns
        None once the trainer has exited and every row was seen."""
        while True:
            exited = self.process.poll() is not None  # read before the history: no row lands unseen
            history = self.run.history()
            if len(history) > self.seen:
                self.seen += 1
                return {**history[self.seen - 1], "global_epoch": self.seen}
            if exited:
                return None
            time.sleep(self.POLL_SECONDS)

    def wait(self) -> dict[str, Any]:
        """Waits for the trainer to exit; returns the run's final status (a state is recorded if the
        trainer died without one, as the queue does)."""
        return run_queue.finish(self.run, self.process.wait())

    def stop(self, grace_seconds: float = 60.0) -> dict[str, Any]:
        """SIGTERM (the trainer records `cancelled`, keeping every finished epoch), SIGKILL after
        `grace_seconds`; returns the final status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.wait()


# ---- the local engine: the run queue -------------------------------------------------


def run_local(spec: SweepSpec, sweep: Sweep, say=print) -> dict[str, Any]:
    """Queues every trial in the runs directory's queue and trains them here, `max_concurrent` at a
    time (workers of `tlkit.run_queue`; another worker on the same runs directory may take some).
    Returns the final sweep.json."""
    backend = os.environ.get("KERAS_BACKEND")
    trials = {}
    for number, params in enumerate(sample_trials(spec), start=1):
        trials[number] = run_queue.queue_run(spec.runs_dir, spec.trial_config(params, number), backend,
                                              tags=trial_tags(sweep.sweep_id, number))
    sweep.write(spec, "local", "running")
    say(f"queued {len(trials)} trials in {spec.runs_dir}; training {spec.max_concurrent or 1} at a time")

    def done() -> bool:
        return all(finished(run.status().get("state")) for run in trials.values())

    stopping = threading.Event()
    workers = [threading.Thread(target=run_queue.work, args=(spec.runs_dir, spec.max_concurrent or 1),
                                kwargs={"should_stop": lambda: stopping.is_set() or done(), "say": lambda line: None},
                                daemon=True)
               for _ in range(spec.max_concurrent or 1)]
    for worker in workers:
        worker.start()
    state, shown = "completed", {}
    try:
        with _interrupt_on_sigterm():
            while not done():
                _report_changes(spec, trials, shown, say)
                sweep.write(spec, "local", "running")
                time.sleep(1.0)
    except KeyboardInterrupt:
        state = "cancelled"
        stopping.set()
        for run in trials.values():
            run_queue.cancel_run(run)
        say("cancelled: queued trials were dropped, running ones asked to stop (finished epochs are kept)")
    for worker in workers:
        worker.join()
    _report_changes(spec, trials, shown, say)
    others = run_queue.queued_runs(spec.runs_dir)
    if others and not run_queue.active_workers(spec.runs_dir):
        run_queue.start_worker(spec.runs_dir)  # runs queued by others meanwhile must not wait for nobody
    return sweep.write(spec, "local", state, finished_at=runs.now())


def _report_changes(spec: SweepSpec, trials: dict[int, runs.Run], shown: dict[int, str], say) -> None:
    """A line per trial whose state changed since the last call."""
    for number, run in trials.items():
        state = run.status().get("state")
        if shown.get(number) != state:
            shown[number] = state
            row = trial_row(number, run, spec)
            best = f", best {spec.metric} {row['best_metric']:.4f}" if row["best_metric"] is not None else ""
            say(f"trial {number}/{len(trials)} ({describe_params(row['params'])}): {state}{best}")


@contextlib.contextmanager
def _interrupt_on_sigterm():
    """SIGTERM ends the sweep like Ctrl-C (trials cancelled, sweep.json written), not abruptly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- the command line ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tlkit.sweep",
        description="Hyperparameter sweep over tlkit runs: each trial is a run directory, tagged with the sweep.",
        epilog="Config flags (e.g. --data-dir, --runs-dir) override the spec's base config; a swept field "
               "cannot be a flag too. Spec format: see examples/sweep.toml.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="SPEC", help="The sweep spec (.toml or .json).")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: the runs directory's queue, no Ray (default); ray: Ray Tune trials "
                             f"({RAY_EXTRA}).")
    parser.add_argument("--address", metavar="ADDR", default=None,
                        help="--engine ray: join the Ray cluster at HOST:PORT (as printed by `ray start --head`), "
                             "ray://HOST:PORT, or auto (the one running on this machine); default: $RAY_ADDRESS, "
                             "else a new local cluster.")
    parser.add_argument("--dry-run", action="store_true",
                        help="Validate the spec, print it resolved (and the local engine's trials) and exit.")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.address and args.engine != "ray":
            raise SweepError("--address: joins a Ray cluster; add --engine ray")
        spec = load_spec(args.spec, config_flags(args))
        if args.dry_run:
            print(json.dumps({**spec.to_dict(), "trials_list": sample_trials(spec)}, indent=2, default=str))
            return EXIT_OK
        engine = _prepare_engine(args, spec)
        runs.ensure_runs_dir(spec.runs_dir)
    except (ConfigError, runs.RunsDirError) as error:
        print(f"error: {args.spec}: {error}" if isinstance(error, ConfigError) else f"error: {error}",
              file=sys.stderr)
        return EXIT_USAGE
    sweep = Sweep.create(spec.runs_dir, spec.name)
    sweep.write(spec, args.engine, "running", address=args.address)
    print(f"sweep {sweep.sweep_id}: {spec.total_trials} trials of {spec.name} on the {args.engine} engine; "
          f"{sweep.file}", flush=True)
    try:
        record = engine(spec, sweep)
    except KeyboardInterrupt:
        record = sweep.write(spec, args.engine, "cancelled", finished_at=runs.now())
    except Exception as error:  # the engine itself broke (Ray went away): say so, keep what was done
        record = sweep.write(spec, args.engine, "failed", error=f"{type(error).__name__}: {error}",
                             finished_at=runs.now())
        print(f"error: the sweep stopped: {record['error']}", file=sys.stderr)
    _print_summary(record)
    if record["state"] == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK if record["counts"].get("completed") else EXIT_NO_TRIAL_COMPLETED


def _prepare_engine(args: argparse.Namespace, spec: SweepSpec):
    """The engine's run function, after the checks that must pass before anything is written."""
    if args.engine == "local":
        if spec.search == "optuna":
            raise SweepError("search: optuna needs --engine ray (Ray Tune's OptunaSearch)")
        if spec.scheduler:
            print("note: the local engine has no scheduler; every trial trains to the end "
                  "(ASHA needs --engine ray)", file=sys.stderr)
        return lambda spec, sweep: run_local(spec, sweep)
    try:
        from tlkit import sweep_ray
    except ImportError as error:
        raise SweepError(f"--engine ray needs Ray Tune ({error}); {RAY_EXTRA}") from None
    sweep_ray.check_ready(spec, args.address)
    print(sweep_ray.connect(args.address), flush=True)
    return sweep_ray.run


def _print_summary(record: dict[str, Any]) -> None:
    rows = record["trials"]
    counts = ", ".join(f"{count} {state}" for state, count in sorted(record["counts"].items()))
    print(f"\nsweep {record['sweep_id']} {record['state']}: {len(rows)} of {record['trials_planned']} trials ran"
          + (f" ({counts})" if counts else ""))
    for row in rows:
        best = f"{row['best_metric']:.4f}" if row["best_metric"] is not None else "-"
        print(f"  trial {row['trial']:>3}  {row['state']:<9}  best {record['metric']} {best}  "
              f"{describe_params(row['params'])}  {row['run_id']}"
              + (f"  ({row['error']})" if row["error"] and row["state"] != "completed" else ""))
    best = record.get("best")
    if best:
        print(f"best: trial {best['trial']} ({describe_params(best['params'])}) with {record['metric']} "
              f"{best['best_metric']:.4f} at epoch {best['best_epoch']}: run {best['run_id']}")


if __name__ == "__main__":
    # Run the CLI from the imported module, not from this __main__ copy: Ray pickles the spec's
    # classes by reference to tlkit.sweep, and one copy of each class must be in play.
    from tlkit.sweep import main as _main

    sys.exit(_main())
