"""Run directories: the only code that reads or writes a run's files.

A run lives in `<runs_dir>/<run_id>/` and holds:

- `config.json`: the full resolved `Config`.
- `status.json`: `state` (queued, running, completed, failed, cancelled, and as read:
  crashed), `stage`, `epoch`, `epochs`, `progress` 0..1, `activity` (a cache being computed,
  the evaluation), `elapsed_s` and `eta_s` (of the stage or the activity), `error`, `pid`,
  `host`, timestamps; updated every few seconds while running.
- `history.csv`: one row per epoch: `stage, epoch, loss, accuracy, val_loss,
  val_accuracy, lr, seconds`.
- `metrics.json`: `test_accuracy`, `test_loss`, `confusion_matrix`, per-class
  metrics, class names, backend, versions, device, seconds per stage, images/s.
- `model.keras`: the trained model (reloads on every backend after `import tlkit`).
- `data.json`: what the run trained on: source, class names, input shape, split sizes, warnings,
  skipped files (written when the data is loaded, so `tlkit.predict` can name classes).
- `misclassified.npz`: `index`, `true`, `predicted`, `confidence` and the `images` of the
  misclassified test images (N, H, W) for grayscale, (N, H, W, 3) for colour.
- `train.log`: the CLI's output when launched by the explorer.
- `annotations.json`: what people say of the run: `title`, `tags`, `notes` (`Run.annotate`);
  never written by the trainer, so it can change while the run trains.
- `checkpoints/<stage>/epoch-NNNN/`: while a stage trains, its last whole epoch (weights, optimizer
  state, random-generator states; `tlkit.stages.EpochCheckpoint`); removed when the stage is saved
  in `model.keras`.
- `.trainer.lock`, `.heartbeat.json`: held and refreshed by the one trainer of the run (`Run.claim`).

Every write goes to a temp file first, is fsynced and renamed into place, so a
reader never sees half a file, and gets the mode the umask gives any new file.
Readers are tolerant: a missing or corrupt file reads as `None` (or an empty
history) instead of raising.

Example:

```python
from tlkit import runs

for run in runs.list_runs("runs"):
    print(run.run_id, run.status().get("state"), (run.metrics() or {}).get("test_accuracy"))
```
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

FINAL_STATES = ("completed", "failed", "cancelled", "crashed", "stopped")  # stopped: ended early by a sweep scheduler
HISTORY_COLUMNS = ("stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
MODEL_TEMP_FILE = ".model.tmp.keras"  # written, then renamed to MODEL_FILE
MISCLASSIFIED_FILE = "misclassified.npz"
DATA_FILE = "data.json"
ANNOTATIONS_FILE = "annotations.json"
LOG_FILE = "train.log"
LOCK_FILE = ".trainer.lock"
HEARTBEAT_FILE = ".heartbeat.json"
# The trainer rewrites its heartbeat this often; a heartbeat older than HEARTBEAT_STALE means its
# trainer is gone (killed, out of memory, machine down), whichever host it ran on.
HEARTBEAT_SECONDS = 10.0
HEARTBEAT_STALE = float(os.environ.get("TLKIT_HEARTBEAT_STALE_SECONDS", 120))
CRASHED_ERROR = ("the trainer stopped without finishing (killed, out of memory or its machine went down); "
                 "continue it with --existing-run DIR --resume")


class RunLocked(RuntimeError):
    """Another trainer holds the run directory; the message names its pid and host."""


def default_runs_dir() -> Path:
    """`$TLKIT_RUNS_DIR` if set, else `./runs`."""
    return Path(os.environ.get("TLKIT_RUNS_DIR") or "runs")


def resolve_runs_dir(runs_dir: str | os.PathLike | None) -> Path:
    return Path(runs_dir).expanduser() if runs_dir else default_runs_dir()


# ---- atomic writes ------------------------------------------------------------

# mkstemp makes 0600 files; run files get the mode any other new file gets (0666 less the umask,
# like model.keras), so a runs dir shared by a team reads the same for everyone. Read once, at
# import: os.umask can only be read by setting it, which would race with the heartbeat thread.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def write_atomic(path: Path, data: bytes | str) -> None:
    """Writes `data` to `path` through a temp file in the same directory + rename (the file, then
    the directory, are fsynced), with the umask's usual file mode."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)  # the rename itself survives a power cut


def overwrite_in_place(path: Path, value: dict) -> None:
    """Rewrites an existing small JSON file in place, compact: the fallback when a full disk refuses
    the temp file of `write_json` (the file's blocks exist already). A reader may see it torn for
    a moment; readers treat that as missing."""
    data = json.dumps(value, separators=(",", ":"), default=_json_default).encode()
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Flushes a file's data, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ---- the run ------------------------------------------------------------------


class Run:
    """One run directory.

    Args:
        path: the run directory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and other.path.resolve() == self.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def _inside(self, name: str) -> Path:
        """The run file `name` for reading; a symbolic link out of the run directory reads as missing
        (a run directory must never show another file's content)."""
        path = self.file(name)
        if path.is_symlink() and not path.resolve().is_relative_to(self.path.resolve()):
            raise FileNotFoundError(f"{path} links out of its run directory; not followed")
        return path

    def _json(self, name: str) -> dict | None:
        try:
            return _read_json(self._inside(name))
        except OSError:
            return None

    # ---- readers (never raise on missing/corrupt files) ----

    def config(self) -> dict | None:
        """The resolved config as a nested dict (see `tlkit.config.Config.from_dict`)."""
        return self._json(CONFIG_FILE)

    def status(self, raw: bool = False) -> dict:
        """The status dict; `{"state": "unknown", "error": ...}` when unreadable.

        A `running` run whose trainer is gone reads as `crashed` (with a reason that says how
        to resume); see `trainer_alive`.

        Args:
            raw: return the file as written.
        """
        status = self._json(STATUS_FILE)
        if status is None:
            return {"state": "unknown", "error": f"{STATUS_FILE} is missing or unreadable"}
        if not raw and status.get("state") == "running" and not self.trainer_alive(status):
            status = {**status, "state": "crashed", "error": status.get("error") or CRASHED_ERROR}
        return status

    def heartbeat(self) -> dict | None:
        """The trainer's last heartbeat: `pid`, `host`, `at` (seconds since the epoch)."""
        return self._json(HEARTBEAT_FILE)

    def trainer_alive(self, status: dict | None = None) -> bool:
        """Whether a trainer is working on this run, on this host or another.

        A heartbeat younger than `HEARTBEAT_STALE` seconds means alive on any host; on this host
        the trainer's pid must also still exist (a kill -9 shows at once). Without a heartbeat
        (a trainer still starting, or an old run), the recorded pid decides on this host.
        """
        beat = self.heartbeat()
        if beat and isinstance(beat.get("at"), (int, float)):
            fresh = time.time() - beat["at"] < HEARTBEAT_STALE
            if beat.get("host") == socket.gethostname():
                return fresh and pid_alive(beat.get("pid"))
            return fresh
        status = status if status is not None else (self._json(STATUS_FILE) or {})
        if status.get("host") not in (None, socket.gethostname()):
            return True  # another host, no heartbeat yet: not ours to call dead
        return pid_alive(status.get("pid"))

    def holder(self) -> dict | None:
        """`{"pid", "host", "since"}` of the trainer holding this run's lock (this host's view), or None."""
        local = self._lock_holder()
        if local is not None:
            return local
        beat = self.heartbeat()  # a trainer on another host holds no lock here: its heartbeat speaks
        if beat and beat.get("host") != socket.gethostname() and self.trainer_alive():
            return {key: beat.get(key) for key in ("pid", "host")}
        return None

    def _lock_holder(self) -> dict | None:
        try:
            handle = open(self._inside(LOCK_FILE))  # read-only: a reader never creates the lock file
        except OSError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    return json.loads(handle.read() or "{}")
                except ValueError:
                    return {}
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    @contextlib.contextmanager
    def claim(self):
        """Holds the run for one trainer: an exclusive lock plus a heartbeat, for the `with` block.

        Raises:
            RunLocked: another trainer holds it ("run X is being trained by pid P on host H").
        """
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.file(LOCK_FILE), "a+")
        for attempt in range(5):  # a reader's brief shared lock (holder()) is no rival trainer
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05 * (attempt + 1))
        else:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except ValueError:
                holder = {}
            handle.close()
            raise RunLocked(f"run {self.run_id} is being trained by pid {holder.get('pid', '?')} on host "
                            f"{holder.get('host', '?')}; wait for it, or cancel it first")
        beat = self.heartbeat()
        if beat and beat.get("host") != socket.gethostname() and self.trainer_alive():
            fcntl.flock(handle, fcntl.LOCK_UN)  # a trainer on another host (its lock is not visible here)
            handle.close()
            raise RunLocked(f"run {self.run_id} is being trained by pid {beat.get('pid')} on host "
                            f"{beat.get('host')}; wait for it, or cancel it first")
        self._remove_leftovers()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(me))
        handle.flush()
        stop = threading.Event()
        beating = threading.Thread(target=self._beat, args=(stop,), name=f"heartbeat-{self.run_id}", daemon=True)
        self._write_heartbeat()
        beating.start()
        try:
            yield self
        finally:
            stop.set()
            beating.join(timeout=5)
            with contextlib.suppress(OSError):
                self.file(HEARTBEAT_FILE).unlink()
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def _remove_leftovers(self) -> None:
        """Temp files of a trainer killed mid-write (held locked, so no writer of ours is busy)."""
        for temp in [*self.path.glob(".*.tmp"), self.file(MODEL_TEMP_FILE)]:
            with contextlib.suppress(OSError):
                temp.unlink()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                self._write_heartbeat()

    def _write_heartbeat(self) -> None:
        beat = {"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}
        try:
            write_json(self.file(HEARTBEAT_FILE), beat)
        except OSError:  # a full disk: the trainer is alive all the same
            overwrite_in_place(self.file(HEARTBEAT_FILE), beat)

    def history(self) -> list[dict[str, Any]]:
        """Epoch rows with numeric fields as floats/ints; [] when missing; a damaged file yields the
        rows before the damage (bad bytes, oversized fields and malformed rows never raise)."""
        try:
            text = self._inside(HISTORY_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        rows = []
        try:
            for row in csv.DictReader(io.StringIO(text)):
                try:
                    rows.append(_parse_history_row(row))
                except (TypeError, ValueError, KeyError):
                    continue
        except csv.Error:  # e.g. a field over csv's size limit: keep what was readable
            pass
        return rows

    def metrics(self) -> dict | None:
        return self._json(METRICS_FILE)

    def data_info(self) -> dict | None:
        """`data.json`: source, class names, input shape, sizes."""
        return self._json(DATA_FILE)

    def class_names(self) -> list[str] | None:
        """The class names of the run's data (data.json, else metrics.json), None if unknown."""
        for record in (self.data_info(), self.metrics()):
            if record and record.get("class_names"):
                return [str(name) for name in record["class_names"]]
        return None

    def misclassified(self) -> dict[str, np.ndarray] | None:
        """Arrays `index`, `true`, `predicted`, `confidence`, `images`; None if absent."""
        try:
            with np.load(self._inside(MISCLASSIFIED_FILE)) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, KeyError):
            return None

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            text = self._inside(LOG_FILE).read_text(errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    @property
    def model_path(self) -> Path:
        return self.file(MODEL_FILE)

    def load_model(self):
        """The trained model (`model.keras`), loadable in any process; see `load_model`."""
        return load_model(self.model_path)

    # ---- writers (used by the training process) ----

    def write_config(self, config_dict: dict) -> None:
        write_json(self.file(CONFIG_FILE), config_dict)

    def annotations(self) -> dict[str, Any]:
        """`{"title": str | None, "tags": [str], "notes": str}`; defaults when none were written."""
        stored = self._json(ANNOTATIONS_FILE) or {}
        tags = stored.get("tags")
        return {"title": stored.get("title") if isinstance(stored.get("title"), str) else None,
                "tags": [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else [],
                "notes": stored.get("notes") if isinstance(stored.get("notes"), str) else ""}

    @property
    def title(self) -> str:
        """The run's title if it was given one, else its id."""
        return self.annotations()["title"] or self.run_id

    def annotate(self, **changes) -> dict[str, Any]:
        """Changes the annotations passed (the others stay) and returns all of them.

        Args:
            title: a display name (up to 120 characters); None or "" goes back to the run id.
            tags: labels (each up to 40 characters, no commas); duplicates and blanks are dropped.
            notes: free text (up to 20,000 characters).

        Raises:
            ValueError: a value out of those bounds, or another name (the message says which).

        Example:

        ```python
        run.annotate(title="conv4, strong aug", tags=["baseline"])
        run.annotate(notes="val loss still falling")   # title and tags stay
        ```
        """
        unknown = set(changes) - {"title", "tags", "notes"}
        if unknown:
            raise ValueError(f"unknown annotation(s) {', '.join(sorted(unknown))}; use title, tags or notes")
        current = self.annotations()
        if "title" in changes:
            title = changes["title"]
            title = (title or "").strip() or None
            if title is not None and len(title) > 120:
                raise ValueError(f"title: {len(title)} characters; at most 120")
            current["title"] = title
        if "tags" in changes:
            cleaned = []
            for tag in changes["tags"]:
                tag = str(tag).strip()
                if "," in tag or len(tag) > 40:
                    raise ValueError(f"tag {tag[:50]!r}: at most 40 characters and no commas")
                if tag and tag not in cleaned:
                    cleaned.append(tag)
            current["tags"] = cleaned
        if "notes" in changes:
            notes = str(changes["notes"])
            if len(notes) > 20_000:
                raise ValueError(f"notes: {len(notes)} characters; at most 20,000")
            current["notes"] = notes
        write_json(self.file(ANNOTATIONS_FILE), current)
        return current

    def update_status(self, **fields) -> dict:
        """Merges `fields` into status.json (atomically) and returns the new status."""
        status = self._json(STATUS_FILE) or {}
        status.update(fields)
        status["updated_at"] = now()
        write_json(self.file(STATUS_FILE), status)
        return status

    def record_outcome(self, **fields) -> bool:
        """`update_status` for a run's last word (failed, cancelled), even on a full disk.

        A full disk refuses the temp file of an atomic write; status.json is then rewritten in
        place, compact, into the blocks it already holds. Returns False when neither worked
        (the caller then says it on stderr).
        """
        try:
            self.update_status(**fields)
            return True
        except OSError:
            pass
        status = {**(self._json(STATUS_FILE) or {}), **fields, "updated_at": now()}
        try:
            overwrite_in_place(self.file(STATUS_FILE), status)
            return True
        except OSError:
            return False

    def append_history(self, row: dict[str, Any]) -> None:
        self.write_history(self.history() + [row])

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for existing in rows:
            writer.writerow({key: _format_cell(existing.get(key)) for key in HISTORY_COLUMNS})
        write_atomic(self.file(HISTORY_FILE), buffer.getvalue())

    def write_data_info(self, info: dict) -> None:
        write_json(self.file(DATA_FILE), info)

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.file(METRICS_FILE), metrics)

    def write_misclassified(self, **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_atomic(self.file(MISCLASSIFIED_FILE), buffer.getvalue())


def _format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _parse_history_row(row: dict[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {"stage": row["stage"], "epoch": int(row["epoch"])}
    for key in HISTORY_COLUMNS[2:]:
        text = row.get(key) or ""
        parsed[key] = float(text) if text else None
    return parsed


def pid_alive(pid) -> bool:
    """Whether process `pid` exists on this host (True when unknown: no pid, or not ours to signal)."""
    if not isinstance(pid, int) or pid <= 0:
        return True  # no pid recorded: trust the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now() -> str:
    """The local time with its UTC offset, to the millisecond (status.json timestamps; runs made in
    one second still sort by `created_at`)."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def load_model(path: str | os.PathLike):
    """Loads a tlkit `model.keras` (or a run directory's) in any process, on any backend.

    tlkit's custom layers and its learning-rate schedule (named by the saved optimizer of a
    compiled model) are registered with Keras when their modules are imported; this imports
    them first, so `keras.saving.load_model` finds them.

    Raises:
        FileNotFoundError: a directory without a `model.keras` (e.g. a run that has not finished).
    """
    import keras

    if Path(path).is_dir():  # a run directory: Keras would read it as a SavedModel and fail obscurely
        if not (Path(path) / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{path} is a directory without a {MODEL_FILE}; pass a run directory whose "
                                    "run completed, or the path of a .keras file")
        path = Path(path) / MODEL_FILE

    from tlkit import layers, schedules  # noqa: F401  registers tlkit's Keras objects
    from tlkit.model import convolve_small_maps_as_matmul

    model = keras.saving.load_model(path)
    convolve_small_maps_as_matmul(model)  # what the saved model does not carry: backend speed-ups
    return model


# ---- the store ----------------------------------------------------------------


class RunsDirError(ValueError):
    """The runs directory cannot hold new runs; the message says why."""


def ensure_runs_dir(runs_dir: str | os.PathLike | None) -> Path:
    """The runs directory, created if needed and checked writable (cheap: call it before heavy imports).

    Raises:
        RunsDirError: it is a file, cannot be created, or is not writable.
    """
    root = resolve_runs_dir(runs_dir)
    if root.exists() and not root.is_dir():
        raise RunsDirError(f"runs_dir: {str(root)!r} is a file, not a directory; pass --runs-dir DIR")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunsDirError(f"runs_dir: cannot create {str(root)!r} ({error.strerror or error}); "
                           "pass a writable --runs-dir") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise RunsDirError(f"runs_dir: {str(root)!r} is not writable; pass a writable --runs-dir")
    return root


def create_run(runs_dir: str | os.PathLike | None, name: str = "", state: str = "running") -> Run:
    """Makes a new, uniquely named run directory with an initial status."""
    root = ensure_runs_dir(runs_dir)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    while True:
        run_id = "-".join(part for part in (stamp, slug, secrets.token_hex(2)) if part)
        path = root / run_id
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    run = Run(path)
    run.update_status(state=state, stage=None, epoch=0, epochs=0, progress=0.0, error=None,
                      pid=os.getpid() if state == "running" else None, created_at=now())
    return run


def get_run(runs_dir: str | os.PathLike | None, run_id: str) -> Run:
    path = resolve_runs_dir(runs_dir) / run_id
    if not path.is_dir():
        raise FileNotFoundError(f"no run {run_id!r} in {str(path.parent)!r}")
    return Run(path)


def list_runs(runs_dir: str | os.PathLike | None = None) -> list[Run]:
    """Run directories (those holding a status or config file), newest first (by id)."""
    root = resolve_runs_dir(runs_dir)
    if not root.is_dir():
        return []
    found = [Run(p) for p in root.iterdir()
             if p.is_dir() and not p.name.startswith(".")
             and ((p / STATUS_FILE).exists() or (p / CONFIG_FILE).exists())]
    return sorted(found, key=lambda run: run.run_id, reverse=True)


def delete_run(run: Run) -> None:
    """Removes a run directory; refuses while a trainer (on any host) works on it."""
    holder = run.holder()
    if holder is not None or run.status().get("state") == "running":
        where = f" by pid {holder.get('pid')} on host {holder.get('host')}" if holder else ""
        raise RuntimeError(f"run {run.run_id} is still being trained{where}; cancel it first")
    shutil.rmtree(run.path)


def wait_for(run: Run, states=FINAL_STATES, timeout: float = 60.0, interval: float = 0.2) -> dict:
    """Polls a run until its state is one of `states` (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while True:
        status = run.status()
        if status.get("state") in states or time.monotonic() > deadline:
            return status
        time.sleep(interval)
