"""The Ray engine of `python -m tlkit.sweep`: each trial a Ray Tune trial that trains a tlkit run.

A trial (`TlkitTrial`, Tune's class API) makes its run directory (tagged with the sweep and
its trial number), starts `python -m tlkit.train --existing-run RUN` as a child process and
reports each epoch's metric from history.csv to Tune, on one epoch axis across both stages. A
trial's last epoch is reported as its final result, once the trainer has finished evaluating,
so a scheduler never stops a trial that has nothing left to train. When ASHA stops a trial, Tune
stops its actor: the trainer gets SIGTERM and records `cancelled`, keeping every finished epoch;
the driver (`SweepRecorder`, a Tune callback that sees which results ASHA stopped) then marks the
run `stopped` with the reason. A trainer that fails makes its trial fail; the sweep goes on.

Imports Ray: only `tlkit.sweep` imports this module, for `--engine ray`.

Example:

```python
from tlkit import sweep, sweep_ray

spec = sweep.load_spec("examples/sweep.toml")
sweep_ray.check_ready(spec, address=None)         # the search's packages; an --address must answer
print(sweep_ray.connect(address=None))            # ray.init(): a local cluster
record = sweep_ray.run(spec, sweep.Sweep.create(spec.runs_dir, spec.name))
```
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from tlkit import runs
from tlkit.sweep import (
    Sweep,
    SweepError,
    SweepSpec,
    TrainerProcess,
    create_trial_run,
    trial_runs,
)

CONNECT_TIMEOUT_SECONDS = 5.0  # an --address that does not accept a connection by then is unreachable
INIT_TIMEOUT_SECONDS = 15.0  # one that accepts it but never answers as a Ray cluster (Ray: ~20 s)
FINAL = "trainer_exited"  # in a trial's last result: the trainer finished (not a scheduler's stop)
RECORD_SECONDS = 2.0  # how often the driver rewrites sweep.json during the sweep


# ---- before anything is written ---------------------------------------------------------


def check_ready(spec: SweepSpec, address: str | None) -> None:
    """Raises SweepError unless the spec's search can run and the cluster at `address` (or
    $RAY_ADDRESS) accepts connections; takes at most CONNECT_TIMEOUT_SECONDS."""
    if spec.search == "optuna":
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch  # noqa: F401
        except ImportError as error:
            raise SweepError(f"search: optuna needs the optuna package ({error}); pip install optuna") from None
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("auto", "local"):
        check_reachable(address)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Raises SweepError unless something accepts a TCP connection at `address` within `timeout`
    (Ray itself would retry an unreachable cluster for minutes)."""
    host, port = split_address(address)
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise SweepError(
            f"--address {address}: no Ray cluster answers there ({reason} after {time.monotonic() - started:.1f} s); "
            "start one on that machine with `ray start --head` and pass the address it prints, or leave out "
            "--address to start a local cluster") from None


def split_address(address: str) -> tuple[str, int]:
    """`(host, port)` of `HOST:PORT`, `[IPv6]:PORT` or `ray://HOST:PORT` (Ray's default ports when left out)."""
    text, port = address.strip(), 6379
    if text.startswith("ray://"):
        text, port = text[len("ray://"):], 10001
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        text_port = rest.lstrip(":")
    else:
        host, _, text_port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if text_port:
        if not text_port.isdigit():
            raise SweepError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379)")
        port = int(text_port)
    if not host:
        raise SweepError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379)")
    return host, port


# ---- the trial ----------------------------------------------------------------------------


class TlkitTrial(tune.Trainable):
    """One trial: a tlkit run directory and its trainer, an epoch per Tune result.

    Tune passes the sampled values as `config` (dotted config keys); `with_parameters` passes the
    rest to `setup`.
    """

    def setup(self, config, spec: SweepSpec = None, sweep_id: str = "", backend: str | None = None,
              cwd: str | None = None):
        self.spec = spec
        params = {key: value.item() if hasattr(value, "item") else value for key, value in config.items()}
        self.number, self.run = create_trial_run(spec, sweep_id, params)
        trial = spec.trial_config(params, self.number)
        self.epochs = trial.head.epochs + trial.finetune.epochs
        self.trainer = TrainerProcess.start(self.run, backend, cwd)
        self.last: dict[str, Any] = {}

    def step(self):
        row = self.trainer.next_epoch()
        while row is not None and row["global_epoch"] >= self.epochs:  # the last epoch: wait for the end
            self.last = row
            row = self.trainer.next_epoch()
        if row is not None:
            self.last = row
            return self._result(row)
        status = self.trainer.wait()
        if status.get("state") == "completed":
            metrics = self.run.metrics() or {}
            return {**self._result(self.last), "done": True, FINAL: True,
                    "test_accuracy": metrics.get("test_accuracy", math.nan)}
        raise RuntimeError(f"trial {self.number} (run {self.run.run_id}) {status.get('state')}: "
                           f"{status.get('error') or 'no reason recorded'}")

    def _result(self, row: dict[str, Any]) -> dict[str, Any]:
        value = row.get(self.spec.metric)
        return {self.spec.metric: value if isinstance(value, float) else math.nan,
                "epoch": row.get("global_epoch", 0), "stage": row.get("stage", ""), "trial": self.number,
                "run_id": self.run.run_id}

    def cleanup(self):
        # Tune stops the actor: after the last result, when a scheduler stops the trial, or when
        # the sweep is interrupted. A trainer still at work gets SIGTERM and records `cancelled`.
        if getattr(self, "trainer", None) is not None:
            self.trainer.stop()


# ---- the driver ---------------------------------------------------------------------------


class SweepRecorder(tune.Callback):
    """Keeps sweep.json current and turns the runs of trials ASHA stopped into `stopped`.

    Tune marks a result `done` when its scheduler decides to stop the trial; a trial's own last
    result carries `FINAL`. The run is rewritten only after the trial's actor has stopped its
    trainer (`exit_code` recorded), so nobody else writes its status any more.
    """

    def __init__(self, spec: SweepSpec, sweep: Sweep):
        self.spec, self.sweep = spec, sweep
        self.stopped: dict[str, dict[str, Any]] = {}  # run id → the result ASHA stopped it at
        self.written = 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("done") and not result.get(FINAL) and result.get("run_id"):
            self.stopped[result["run_id"]] = dict(result)

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.written >= RECORD_SECONDS:
            self.flush()

    def flush(self, force: bool = False, state: str = "running", **extra) -> dict[str, Any]:
        for run_id, result in list(self.stopped.items()):
            if mark_stopped(runs.Run(self.spec.runs_dir / run_id), result, self.spec.metric, force):
                del self.stopped[run_id]
        self.written = time.monotonic()
        return self.sweep.write(self.spec, "ray", state, **extra)


def mark_stopped(run: runs.Run, result: dict[str, Any], metric: str, force: bool = False) -> bool:
    """Records that ASHA stopped `run` after `result`'s epoch, once its trainer is gone; returns
    whether the run needs no more attention."""
    status = run.status(raw=True)
    if status.get("state") in ("completed", "failed", "stopped"):
        return True  # it finished (or failed) before the stop reached it: that is what it did
    if run.holder() is not None or ("exit_code" not in status and not force):
        return False  # its trainer, or the actor that stops it, is still at work
    value = result.get(metric)
    shown = f" ({metric} {value:.4f})" if isinstance(value, float) and not math.isnan(value) else ""
    run.update_status(state="stopped", finished_at=runs.now(), stopped_by="asha",
                      error=f"stopped early by ASHA after epoch {result.get('epoch')}{shown}")
    return True


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's search space: one domain per swept field (Tune's randint excludes its upper end)."""
    domains = {
        "grid": lambda values: tune.grid_search(list(values)),
        "choice": lambda values: tune.choice(list(values)),
        "uniform": lambda values: tune.uniform(*values),
        "loguniform": lambda values: tune.loguniform(*values),
        "randint": lambda values: tune.randint(values[0], values[1] + 1),
    }
    return {axis.key: domains[axis.kind](axis.values) for axis in spec.space}


def search_algorithm(spec: SweepSpec):
    """Optuna's TPE, or Tune's variant generator (grid axes crossed, the rest drawn), each seeded and
    limited to `max_concurrent` trials at once."""
    if spec.search == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed))
        return ConcurrencyLimiter(searcher, spec.max_concurrent) if spec.max_concurrent else searcher
    return BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0, random_state=spec.seed)


def scheduler(spec: SweepSpec):
    """ASHA on the metric per epoch; its horizon is the most epochs a trial trains (a trial's last
    epoch is its final result, so a trial is never stopped for reaching the horizon)."""
    if spec.scheduler is None:
        return None
    return ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs, grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor)


def connect(address: str | None) -> str:
    """`ray.init`: joins `address` (or $RAY_ADDRESS), else starts a new local cluster (even when
    one runs here already: pass `--address auto` to join that); returns a line saying which.

    Raises:
        SweepError: the cluster refused us. One that accepts the connection but never answers as
            Ray (or refuses our token) ends the process after INIT_TIMEOUT_SECONDS with the reason
            (Ray would retry for longer); nothing is written before this.
    """
    joining = address or os.environ.get("RAY_ADDRESS")

    def give_up():
        print(f"error: --address {joining}: no Ray cluster answered within {INIT_TIMEOUT_SECONDS:.0f} s; check "
              "the address `ray start --head` printed, and with token authentication on the cluster set "
              "RAY_AUTH_MODE=token here (and RAY_AUTH_TOKEN from `ray get-auth-token` on another machine); "
              "nothing was started", file=sys.stderr, flush=True)
        os._exit(2)

    watchdog = threading.Timer(INIT_TIMEOUT_SECONDS, give_up) if joining else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    started = time.monotonic()
    try:
        ray.init(address=joining or "local", include_dashboard=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError) as error:
        raise SweepError(f"--address {joining}: {str(error).strip().splitlines()[0].rstrip('.')}; check the address "
                         "`ray start --head` printed, or leave out --address for a local cluster") from None
    finally:
        if watchdog:
            watchdog.cancel()
    resources = ray.cluster_resources()
    nodes = len([node for node in ray.nodes() if node.get("Alive")])
    where = f"joined the Ray cluster at {joining}" if joining else "started a local Ray cluster"
    return (f"{where} in {time.monotonic() - started:.1f} s: {nodes} node{'s' if nodes != 1 else ''}, "
            f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")


def run(spec: SweepSpec, sweep: Sweep) -> dict[str, Any]:
    """Runs the sweep as Ray Tune trials on the cluster `connect` joined; returns the final sweep.json."""
    recorder = SweepRecorder(spec, sweep)
    trainable = tune.with_resources(
        tune.with_parameters(TlkitTrial, spec=spec, sweep_id=sweep.sweep_id,
                             backend=os.environ.get("KERAS_BACKEND"), cwd=os.getcwd()),
        {"cpu": spec.cpus, "gpu": spec.gpus})
    tuner = tune.Tuner(
        trainable, param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.trials,
                                    search_alg=search_algorithm(spec), scheduler=scheduler(spec),
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        # No Tune checkpoints: the run directory keeps each epoch (tlkit's own checkpoints).
        run_config=tune.RunConfig(name="ray", storage_path=str(sweep.path.resolve()), callbacks=[recorder],
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=1,
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
    )
    try:
        results = tuner.fit()
        errors = [f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
                  for error in results.errors]
    finally:
        _settle(recorder)
        ray.shutdown()
    states = [run.status().get("state") for run in trial_runs(spec.runs_dir, sweep.sweep_id).values()]
    # Interrupted: a trial cancelled (not stopped by ASHA), or trials missing that no error explains.
    interrupted = "cancelled" in states or len(states) + len(errors) < spec.total_trials
    return recorder.flush(force=True, state="cancelled" if interrupted else "completed", errors=errors,
                          finished_at=runs.now())


def _settle(recorder: SweepRecorder, timeout: float = 60.0) -> None:
    """After Tune returns, waits (bounded) for stopped trials' trainers to exit, so their runs can
    be marked `stopped` rather than left `cancelled`."""
    deadline = time.monotonic() + timeout
    while recorder.stopped and time.monotonic() < deadline:
        recorder.flush()
        time.sleep(0.5)
