"""MLflow tracking for tlkit runs: `python -m tlkit.mlflow RUNS...` and live logging while a run trains.

A tlkit run becomes one MLflow run, found again by its `tlkit.run_id` tag, holding:

- params: the resolved config (`config.json`), flattened to dotted keys (`model.dropout`);
- metrics: `loss`, `accuracy`, `val_loss`, `val_accuracy`, `learning_rate` per epoch at the run's
  global epoch (the fine-tune stage continues the head stage's axis, as in TensorBoard), then every
  numeric top-level entry of `metrics.json` (`test_accuracy`, `test_loss`, `macro_f1`, ...) at the
  last epoch;
- tags: `tlkit.run_id`, `tlkit.run_dir`, `tlkit.state`, `tlkit.backend`, `tlkit.name`, and the
  annotations (`tlkit.title`, `tlkit.tags`; the notes become the MLflow run's description);
- artefacts: the run's files (`config.json`, `metrics.json`, `history.csv`, `status.json`,
  `data.json`, `annotations.json`, `model.keras`, `misclassified.npz`, `train.log`), never its
  lock, heartbeat, temp or checkpoint files;
- status: completed → FINISHED, failed/crashed → FAILED, cancelled/stopped → KILLED,
  running → RUNNING, queued → SCHEDULED.

Logging is a sync, so it can be repeated: a metric step already logged is not logged again, a
param already logged with the same value is left alone, and a file is uploaded again only when its
content changed. MLflow params cannot change once logged; when a run's config changes on resume
(e.g. more fine-tune epochs), the param keeps its first value and the tag `tlkit.config.<key>`
holds the current one (`tlkit.changed_params` lists those keys).

The tracking URI defaults to `$MLFLOW_TRACKING_URI`, else MLflow's own default: since MLflow 3.7
that is `sqlite:///mlflow.db` in the current directory (MLflow 3 refuses a plain `./mlruns` file
store unless `MLFLOW_ALLOW_FILE_STORE=true`). An experiment that tlkit creates in a SQLite store
keeps its artefacts beside the database, in `mlruns/`, whatever directory logged first.

Example:

```
python -m tlkit.mlflow runs/                                  # every run, into ./mlflow.db
python -m tlkit.mlflow runs/20261129-101500-cpu-1a2b --tracking-uri http://mlflow:5000 --experiment fmnist
mlflow ui --backend-store-uri sqlite:///mlflow.db            # needs the full mlflow package
```

```python
from tlkit import runs
from tlkit.mlflow import MlflowLog

log = MlflowLog("sqlite:///mlflow.db", "tlkit", runs.Run("runs/my-run"))
log.scalars(1, {"loss": 0.52, "val_accuracy": 0.81, "learning_rate": 1e-3})
log.close()  # test metrics, tags, files and status from the run directory
```
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

from tlkit import runs
from tlkit.config import STAGES, flatten_dict

EXTRA = "mlflow"  # pip install 'tlkit[mlflow]'
DEFAULT_EXPERIMENT = "tlkit"
RUN_ID_TAG = "tlkit.run_id"
ARTIFACTS_TAG = "tlkit.artifacts"  # {file name: content hash} of the files uploaded, to upload only changes
CHANGED_PARAMS_TAG = "tlkit.changed_params"
CURRENT_PARAM_PREFIX = "tlkit.config."
# history.csv column → MLflow metric (the names TensorBoardLog and MlflowLog.scalars use too).
EPOCH_METRICS = {"loss": "loss", "accuracy": "accuracy", "val_loss": "val_loss", "val_accuracy": "val_accuracy",
                 "lr": "learning_rate"}
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "crashed": "FAILED", "cancelled": "KILLED",
                 "stopped": "KILLED", "running": "RUNNING", "queued": "SCHEDULED"}
ARTIFACT_FILES = (runs.CONFIG_FILE, runs.METRICS_FILE, runs.HISTORY_FILE, runs.STATUS_FILE, runs.DATA_FILE,
                  runs.ANNOTATIONS_FILE, runs.MODEL_FILE, runs.MISCLASSIFIED_FILE, runs.LOG_FILE)
# MLflow's limits (mlflow.utils.validation): longer values are refused, so they are cut.
MAX_PARAM_VALUE, MAX_TAG_VALUE, MAX_PER_BATCH, MAX_METRICS_PER_BATCH = 6000, 8000, 100, 1000
# An unreachable server must fail in seconds: MLflow's own HTTP defaults (7 retries with backoff,
# 120 s timeouts) retry a refused connection for about four minutes. Applied unless set by the user.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_TIMEOUT = 5.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class MlflowTrackingError(RuntimeError):
    """MLflow could not be reached or refused what tlkit logged; the message is one line that says what to do."""


def mlflow_missing() -> str | None:
    """Why MLflow tracking cannot work here (the package to install), or None when it can."""
    try:
        found = importlib.util.find_spec("mlflow") is not None
    except ValueError:  # a module entry without a spec: blocked or half-imported
        found = False
    if not found:
        return f"MLflow tracking needs the mlflow package: pip install 'tlkit[{EXTRA}]' (or mlflow)"
    return None


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The tracking URI to use: `tracking_uri`, else `$MLFLOW_TRACKING_URI`, else MLflow's default
    (`sqlite:///mlflow.db` in the current directory); a relative SQLite path is made absolute, so
    the printed URI says where the database is."""
    uri = tracking_uri
    if not uri:
        from mlflow.tracking import get_tracking_uri  # MLflow's rule: $MLFLOW_TRACKING_URI, an existing ./mlruns, ...

        uri = get_tracking_uri()
    path = _sqlite_path(uri)
    if path is not None and not path.is_absolute() and str(path) != ":memory:":
        uri = f"sqlite:///{path.resolve()}"
    return uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):].split("?")[0]))


def check_reachable(tracking_uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Fails in `timeout` seconds when an http(s) tracking server does not answer (other URIs pass).

    Any HTTP answer counts as reachable (a 401 or 404 from a proxy too): only a refused, unresolvable
    or silent address fails here.

    Raises:
        MlflowTrackingError: "MLflow tracking server http://... is not reachable (...)".
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(tracking_uri.rstrip("/") + "/health", method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise MlflowTrackingError(f"MLflow tracking server {tracking_uri} is not reachable ({reason}); start it, "
                                  "or use another tracking URI") from None


@contextlib.contextmanager
def _bounded_http():
    """MLflow's HTTP retry and timeout knobs at `HTTP_LIMITS` for the block (where the user set none),
    restored afterwards: MLflow reads them on every request."""
    added = [name for name in HTTP_LIMITS if name not in os.environ]
    for name in added:
        os.environ[name] = HTTP_LIMITS[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _mlflow_errors(tracking_uri: str):
    """Turns what MLflow and its stores raise into one-line MlflowTrackingErrors."""
    try:
        with _bounded_http():
            yield
    except MlflowTrackingError:
        raise
    except Exception as error:
        if type(error).__module__.startswith(("tlkit", "builtins")) and not isinstance(error, OSError):
            raise  # our own bugs stay tracebacks
        raise MlflowTrackingError(_describe(error, tracking_uri)) from None


def _describe(error: Exception, tracking_uri: str) -> str:
    message = " ".join(str(error).split())
    if "filesystem tracking backend" in message:
        return (f"MLflow 3 refuses the file store {tracking_uri}; use a database such as "
                "sqlite:///mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)")
    if "Max retries exceeded" in message or "Connection refused" in message:
        return f"MLflow tracking server {tracking_uri} is not reachable; start it, or use another tracking URI"
    code = re.search(r"error code (\d{3}) != 200", message)
    if code and code.group(1) in ("401", "403"):
        return (f"MLflow tracking server {tracking_uri} refused the credentials (HTTP {code.group(1)}); set "
                "MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if code and code.group(1) == "404":
        return (f"{tracking_uri} answered HTTP 404 to MLflow's API: is it an MLflow tracking server "
                "(mlflow server), with the right path?")
    if len(message) > 300:
        message = message[:300] + "…"
    return f"MLflow at {tracking_uri}: {type(error).__name__}: {message}"


@contextlib.contextmanager
def _sqlite_setup_lock(tracking_uri: str):
    """One process at a time sets up a SQLite store: MLflow creates a new database's tables without
    a lock, and processes doing it at once (trainers of a sweep) all fail and leave the database
    unusable. The lock is on the database's directory, so no file is left behind."""
    path = _sqlite_path(tracking_uri)
    if path is None or path.name == ":memory:":
        yield
        return
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  the slow imports before the lock, not in turn
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _quiet_mlflow_setup() -> None:
    """MLflow creates a new SQLite store's tables with INFO lines on stderr; the CLI prints one line per run."""
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---- what a run directory says -----------------------------------------------


def stage_offsets(config: dict | None, history: list[dict]) -> dict[str, int]:
    """Epochs before each stage on the run's global epoch axis: the configured epochs of the stages
    before it (as training numbers them), or, without a config, the epochs its history holds."""
    offsets, before = {}, 0
    for stage in STAGES:
        offsets[stage] = before
        configured = _configured_epochs(config, stage)
        before += configured if configured is not None else max(
            (row["epoch"] for row in history if row["stage"] == stage), default=0)
    return offsets


def _configured_epochs(config: dict | None, stage: str) -> int | None:
    epochs = ((config or {}).get(stage) or {}).get("epochs")
    return epochs if isinstance(epochs, int) else None


def epoch_points(run: runs.Run) -> list[tuple[str, int, float]]:
    """`(metric, global epoch, value)` of every epoch in history.csv, both stages on one axis."""
    history = run.history()
    offsets = stage_offsets(run.config(), history)
    return [(metric, offsets[row["stage"]] + row["epoch"], row[column])
            for row in history if row["stage"] in offsets
            for column, metric in EPOCH_METRICS.items() if row.get(column) is not None]


def evaluation_points(run: runs.Run) -> list[tuple[str, int, float]]:
    """`(metric, last epoch, value)` of every numeric top-level entry of metrics.json (test_accuracy, ...)."""
    metrics = run.metrics()
    if not metrics:
        return []
    config, history = run.config(), run.history()
    offsets = stage_offsets(config, history)
    last = max([offsets[STAGES[-1]] + (_configured_epochs(config, STAGES[-1]) or 0),
                *(offsets[row["stage"]] + row["epoch"] for row in history if row["stage"] in offsets)])
    return [(key, last, float(value)) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


def run_params(run: runs.Run) -> dict[str, str]:
    """The flattened config as MLflow param strings (within MLflow's length limit)."""
    params = {}
    for key, value in flatten_dict(run.config() or {}).items():
        text = value if isinstance(value, str) else json.dumps(value)
        params[key] = text if len(text) <= MAX_PARAM_VALUE else text[:MAX_PARAM_VALUE - 1] + "…"
    return params


def run_tags(run: runs.Run, status: dict) -> dict[str, str]:
    """The tags tlkit owns for a run (an empty value: the tag is removed if present)."""
    config, metrics, notes = run.config() or {}, run.metrics() or {}, run.annotations()
    tags = {RUN_ID_TAG: run.run_id, "tlkit.run_dir": str(run.path.resolve()),
            "tlkit.state": str(status.get("state", "unknown")),
            "tlkit.backend": str(metrics.get("backend") or status.get("backend") or ""),
            "tlkit.name": str(config.get("name") or ""), "tlkit.title": notes["title"] or "",
            "tlkit.tags": ", ".join(notes["tags"]),
            "tlkit.error": str(status.get("error") or "") if status.get("state") in ("failed", "crashed") else ""}
    if notes["notes"]:  # the run's description in MLflow's UI; never removed (it may be edited there)
        tags["mlflow.note.content"] = notes["notes"]
    return {key: value[:MAX_TAG_VALUE] for key, value in tags.items()}


def artifact_files(run: runs.Run) -> list[Path]:
    """The run's own files to upload; locks, heartbeats, temp files and checkpoints are never listed."""
    return [run.file(name) for name in ARTIFACT_FILES
            if run.file(name).is_file() and not run.file(name).is_symlink()]


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _metric_name(key: str) -> str:
    """The MLflow name of a reported value: TensorBoard's `epoch_loss` and history's `lr` as the exporter
    names them (`loss`, `learning_rate`), so live and exported points land on the same metrics."""
    key = key.removeprefix("epoch_")
    return EPOCH_METRICS.get(key, key)


def _number(value) -> float | None:
    """`value` as a float (NaN and infinities too, as history.csv keeps them); None for None or a non-number."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _millis(timestamp) -> int | None:
    """status.json's ISO timestamps as MLflow's milliseconds since the epoch."""
    try:
        return int(datetime.fromisoformat(str(timestamp)).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


# ---- MLflow ------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one sync of a tlkit run into MLflow did."""

    mlflow_run_id: str
    created: bool
    params: int = 0
    metric_points: int = 0
    files: int = 0
    status: str = ""
    changed_params: list[str] = field(default_factory=list)


class MlflowTracker:
    """One MLflow experiment through one `MlflowClient` (its own tracking URI; no global MLflow state).

    Args:
        tracking_uri: where to log; None: `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` here.
        experiment: the experiment name (created if missing).

    Raises:
        MlflowTrackingError: mlflow is not installed, the server does not answer (in seconds), the
            experiment was deleted, or the store refused.

    Example:

    ```python
    tracker = MlflowTracker("sqlite:///mlflow.db", "tlkit")
    report = tracker.sync(runs.Run("runs/my-run"))
    report.mlflow_run_id, report.metric_points
    ```
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT):
        if missing := mlflow_missing():
            raise MlflowTrackingError(missing)
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        check_reachable(self.tracking_uri)
        _quiet_mlflow_setup()
        from mlflow.tracking import MlflowClient

        with self.errors(), _sqlite_setup_lock(self.tracking_uri):
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.experiment_id = self._experiment_id(experiment)

    def errors(self):
        """A context that turns MLflow's exceptions into one-line MlflowTrackingErrors."""
        return _mlflow_errors(self.tracking_uri)

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=self._artifact_location())
            except MlflowException as error:  # another process created it a moment ago
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(name)
        if found.lifecycle_stage == "deleted":
            raise MlflowTrackingError(f"MLflow experiment {name!r} at {self.tracking_uri} is deleted; restore it "
                                      f"(mlflow experiments restore --experiment-id {found.experiment_id}) "
                                      "or pass another --experiment")
        return found.experiment_id

    def _artifact_location(self) -> str | None:
        """Beside a SQLite database (its `mlruns/`), so a store's files stay with it whoever logs first;
        elsewhere the store decides."""
        path = _sqlite_path(self.tracking_uri)
        return (path.parent / "mlruns").resolve().as_uri() if path is not None and path.name != ":memory:" else None

    # ---- finding and opening the MLflow run ----

    def find(self, run: runs.Run):
        """The active MLflow run of tlkit run `run` in this experiment (the oldest if several), or None."""
        quote = "'" if "'" not in run.run_id else '"'
        with self.errors():
            found = self.client.search_runs([self.experiment_id],
                                            filter_string=f"tags.`{RUN_ID_TAG}` = {quote}{run.run_id}{quote}",
                                            order_by=["attributes.start_time ASC"], max_results=10)
        return found[0] if found else None

    def open(self, run: runs.Run):
        """`(mlflow run, created)`: the MLflow run of `run`, made if there is none yet."""
        existing = self.find(run)
        if existing is not None:
            return existing, False
        status = run.status()
        start = _millis(status.get("started_at") or status.get("created_at"))
        with self.errors():
            created = self.client.create_run(self.experiment_id, start_time=start, run_name=run.title,
                                             tags={RUN_ID_TAG: run.run_id})
        return created, True

    # ---- the sync ----

    def sync(self, run: runs.Run, files: bool = True, status: str | None = None) -> SyncReport:
        """Logs what run directory `run` holds that its MLflow run lacks (see the module docstring).

        Args:
            run: the tlkit run.
            files: upload the run's files (changed ones only).
            status: the MLflow status to set; None: from the run's state.

        Returns:
            A `SyncReport` of what was logged now (0 everywhere on a repeat).
        """
        mlflow_run, created = self.open(run)
        run_id = mlflow_run.info.run_id
        state = run.status()
        report = SyncReport(run_id, created)
        with self.errors():
            report.params, report.changed_params = self._sync_params(mlflow_run, run)
            logged = self.logged_steps(run_id)
            report.metric_points = self.log_points(run_id, [*epoch_points(run), *evaluation_points(run)], logged)
            self._sync_tags(mlflow_run, run, state)
            if files:
                report.files = self._sync_files(mlflow_run, run)
            report.status = status or MLFLOW_STATUS.get(state.get("state"), "")
            self._sync_status(mlflow_run, report.status, state)
        return report

    def _sync_params(self, mlflow_run, run: runs.Run) -> tuple[int, list[str]]:
        """New params are logged; a changed one keeps its first value (MLflow params are immutable) and
        its current value goes into the tag `tlkit.config.<key>`."""
        from mlflow.entities import Param, RunTag

        logged, tags = mlflow_run.data.params, mlflow_run.data.tags
        params = run_params(run)
        new = [Param(key, value) for key, value in params.items() if key not in logged]
        changed = sorted(key for key, value in params.items() if key in logged and logged[key] != value)
        current = {f"{CURRENT_PARAM_PREFIX}{key}": params[key][:MAX_TAG_VALUE] for key in changed}
        if changed or tags.get(CHANGED_PARAMS_TAG):
            current[CHANGED_PARAMS_TAG] = ", ".join(changed)
        updates = [RunTag(key, value) for key, value in current.items() if tags.get(key) != value]
        for start in range(0, max(len(new), len(updates)), MAX_PER_BATCH):
            self.client.log_batch(mlflow_run.info.run_id, params=new[start:start + MAX_PER_BATCH],
                                  tags=updates[start:start + MAX_PER_BATCH])
        stale = [key for key in tags if key.startswith(CURRENT_PARAM_PREFIX)
                 and key[len(CURRENT_PARAM_PREFIX):] not in changed]
        for key in stale:  # changed back to the first value
            self.client.delete_tag(mlflow_run.info.run_id, key)
        return len(new), changed

    def logged_steps(self, run_id: str) -> dict[str, set[int]]:
        """The steps each metric of `run_id` holds already."""
        keys = self.client.get_run(run_id).data.metrics  # latest value per key: the keys there are
        return {key: {point.step for point in self.client.get_metric_history(run_id, key)} for key in keys}

    def log_points(self, run_id: str, points: list[tuple[str, int, float]], logged: dict[str, set[int]]) -> int:
        """Logs the `(metric, step, value)` points whose step is not in `logged` yet (which it updates)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        new = []
        for key, step, value in points:
            if value is None or step in logged.setdefault(key, set()):
                continue
            logged[key].add(step)
            new.append(Metric(key, float(value), now, int(step)))
        for start in range(0, len(new), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=new[start:start + MAX_METRICS_PER_BATCH])
        return len(new)

    def _sync_tags(self, mlflow_run, run: runs.Run, state: dict) -> None:
        from mlflow.entities import RunTag

        existing, run_id = mlflow_run.data.tags, mlflow_run.info.run_id
        wanted = run_tags(run, state)
        updates = [RunTag(key, value) for key, value in wanted.items() if value and existing.get(key) != value]
        if updates:
            self.client.log_batch(run_id, tags=updates)
        for key, value in wanted.items():
            if not value and key in existing:
                self.client.delete_tag(run_id, key)
        if mlflow_run.info.run_name != run.title:
            self.client.update_run(run_id, name=run.title)

    def _sync_files(self, mlflow_run, run: runs.Run) -> int:
        """Uploads the run's files whose content changed since the last upload (model.keras once)."""
        from mlflow.entities import RunTag

        try:
            uploaded = json.loads(mlflow_run.data.tags.get(ARTIFACTS_TAG) or "{}")
        except ValueError:
            uploaded = {}
        sent = 0
        for path in artifact_files(run):
            digest = _content_hash(path)
            if uploaded.get(path.name) == digest:
                continue
            self.client.log_artifact(mlflow_run.info.run_id, str(path))
            uploaded[path.name] = digest
            sent += 1
            # Recorded after each file: an upload cut short is redone next time, never taken as done.
            self.client.log_batch(mlflow_run.info.run_id, tags=[RunTag(ARTIFACTS_TAG, json.dumps(uploaded))])
        return sent

    def _sync_status(self, mlflow_run, status: str, state: dict) -> None:
        if not status or (mlflow_run.info.status == status and mlflow_run.info.end_time):
            return
        run_id = mlflow_run.info.run_id
        if status in ("FINISHED", "FAILED", "KILLED"):
            end = _millis(state.get("finished_at") or state.get("updated_at"))
            self.client.set_terminated(run_id, status=status, end_time=end)
        elif mlflow_run.info.status != status:
            self.client.update_run(run_id, status=status)


# ---- live logging while a run trains --------------------------------------------


class MlflowLog:
    """Logs a run to MLflow while it trains, alongside `tlkit.tracking.TensorBoardLog`.

    The constructor starts the MLflow run (or re-opens the one a resumed run or an earlier
    `python -m tlkit.mlflow` made: same `tlkit.run_id` tag), logs the params and what the run
    directory already holds, and marks it RUNNING. `scalars` logs an epoch; `close` does the same
    sync as `python -m tlkit.mlflow` (test metrics, tags, files, status), so both converge on one
    MLflow run without duplicate points.

    Only the constructor raises: when MLflow stops answering later, training goes on, a warning
    says so once, and the run can be logged afterwards with `python -m tlkit.mlflow RUN_DIR`.

    Args:
        tracking_uri: where to log ('sqlite:///mlflow.db', 'http://host:5000'); "" or None: MLflow's default.
        experiment: the experiment name.
        run: the `tlkit.runs.Run` being trained.

    Raises:
        MlflowTrackingError: mlflow is missing, the server does not answer (within seconds), or the
            store refused; nothing was logged.

    Example:

    ```python
    log = MlflowLog("sqlite:///mlflow.db", "tlkit", run)
    log.scalars(3, {"loss": 0.41, "accuracy": 0.86, "val_loss": 0.44, "val_accuracy": 0.85, "learning_rate": 1e-4})
    log.close()
    ```
    """

    def __init__(self, tracking_uri: str | None, experiment: str, run: runs.Run):
        self.run = run
        self.tracker = MlflowTracker(tracking_uri or None, experiment or DEFAULT_EXPERIMENT)
        report = self.tracker.sync(run, files=False, status="RUNNING")
        self.mlflow_run_id = report.mlflow_run_id
        with self.tracker.errors():
            self._logged = self.tracker.logged_steps(self.mlflow_run_id)
        self._offline: str | None = None

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """Logs each number of `values` at global epoch `step` (None, and steps already logged, are skipped).

        Keys are the exporter's metric names (`loss`, `accuracy`, `val_loss`, `val_accuracy`,
        `learning_rate`, `test_accuracy`, ...); TensorBoardLog's `epoch_loss` and history's `lr` map onto them.
        """
        if self._offline:
            return
        points = [(_metric_name(key), step, number) for key, value in values.items()
                  if (number := _number(value)) is not None]
        try:
            with self.tracker.errors():
                self.tracker.log_points(self.mlflow_run_id, points, self._logged)
        except MlflowTrackingError as error:
            self._go_offline(error)

    def close(self) -> None:
        """Logs what the run directory holds now: any missing epochs, test metrics, tags, files, status."""
        try:
            self.tracker.sync(self.run)
        except MlflowTrackingError as error:
            self._go_offline(error)

    def _go_offline(self, error: MlflowTrackingError) -> None:
        if not self._offline:
            self._offline = str(error)
            print(f"warning: MLflow logging stopped: {error}; training goes on. Log the run afterwards with: "
                  f"python -m tlkit.mlflow {self.run.path} --tracking-uri {self.tracker.tracking_uri} "
                  f"--experiment {self.tracker.experiment}", file=sys.stderr)


# ---- the command line ------------------------------------------------------------


def find_runs(paths: Sequence[str | os.PathLike]) -> list[runs.Run]:
    """The runs that `paths` name: each a run directory, or a runs directory (all of its runs).

    Raises:
        FileNotFoundError: a path is missing, or neither kind of directory (the message says which).
    """
    found: list[runs.Run] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is a file"
            raise FileNotFoundError(f"{str(raw)!r} {what}; pass a run directory (runs/<run id>) or a runs directory")
        if (path / runs.STATUS_FILE).exists() or (path / runs.CONFIG_FILE).exists():
            listed = [runs.Run(path)]
        else:
            listed = sorted(runs.list_runs(path), key=lambda run: run.run_id)
        if not listed:
            raise FileNotFoundError(f"{str(raw)!r} is neither a run directory (no config.json or status.json) "
                                    "nor a runs directory holding any; pass runs/ or runs/<run id>")
        found += [run for run in listed if run not in found]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tlkit.mlflow",
        description="Log tlkit runs to MLflow: params, per-epoch and test metrics, tags, files and status. "
                    "Repeating it updates the same MLflow runs and never duplicates a metric point.")
    parser.add_argument("paths", nargs="+", metavar="RUNS_DIR_OR_RUN",
                        help="A run directory, or a runs directory (every run in it).")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI ('sqlite:///mlflow.db', 'http://host:5000'). Default: "
                             "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current directory.")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"MLflow experiment (created if missing). Default: {DEFAULT_EXPERIMENT}.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if missing := mlflow_missing():
        print(f"error: {missing}", file=sys.stderr)
        return EXIT_USAGE
    try:
        to_log = find_runs(args.paths)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        tracker = MlflowTracker(args.tracking_uri, args.experiment)
    except MlflowTrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    failed = 0
    for run in to_log:
        try:
            report = tracker.sync(run)
        except MlflowTrackingError as error:
            print(f"error: {run.run_id}: {error}", file=sys.stderr)
            failed += 1
            continue
        changed = f"; changed since first logged: {', '.join(report.changed_params)}" if report.changed_params else ""
        print(f"{run.run_id}: {'new' if report.created else 'updated'} MLflow run {report.mlflow_run_id} "
              f"({report.status or 'status unknown'}): {report.params} params, {report.metric_points} metric points, "
              f"{report.files} files{changed}")
    print(f"{len(to_log) - failed} of {len(to_log)} runs logged to experiment {args.experiment!r} at "
          f"{tracker.tracking_uri}")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
