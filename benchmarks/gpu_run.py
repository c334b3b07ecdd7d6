"""One prepared GPU run: install, unpack, the `seed` and `best` recipes within a time budget, a summary.

`benchmarks/gpu_run.sh` runs this module; its header has the device tool call. The machine is
bare and reaches nothing, so everything beyond the repository comes from the pack that
`python -m benchmarks.gpu_pack pack` writes to `.gpu-pack/` (carried along). Phases, each timed
in `summary.json`:

- `environment`: nvidia-smi, Python, CPUs, how long the machine had been up when the script began.
- `inputs` (dry run only): a synthetic pack (mini_resnet, 200 + 100 images) unless `--pack` names one.
- `install`: the pack's Keras, namex and optree extracted onto `PYTHONPATH` and compiled (the
  GPU image has jax, torch, numpy and h5py but no Keras; the pack's wheels are for its Python,
  3.12, and are left out under another one); pip from the package index only if something is
  still missing.
- `unpack`: the `.weights.h5` (float16 kernels widened back to float32) and the raw IDX files.
- `probe`: the first backend of `--backends` whose Keras trains a step and sees a GPU (dry run:
  any device).
- one phase per recipe: `python -m tlkit.train --preset NAME` in a fresh process. Each recipe
  gets an equal share of the time left when it starts (time a recipe does not use goes to the
  next). When the next epoch would not finish before its share ends (less `--reserve-s` for the
  test evaluation), the trainer gets SIGTERM: tlkit records `cancelled` and keeps every finished
  epoch, and a second process (`--existing-run DIR --resume` with the stage lengths cut to the
  epochs trained) evaluates that model, so a cut run is still a complete, evaluated run directory
  of the recipe with fewer epochs; `summary.json` records where it stopped and why.
- `collect`: the run directories without `model.keras` and checkpoints (too big for what comes
  back from the machine) → `runs.tar.gz`; images/s per stage; `summary.json`.

Example:

```
benchmarks/gpu_run.sh                # on the GPU machine (OUT set by the device tool)
benchmarks/gpu_run.sh --dry-run      # here, on CPU: the same steps with a tiny configuration
```
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import gpu_pack
from tlkit import runs

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("seed", "best")
STAGES = ("head", "finetune")
# The whole script (not the machine's start) on the GPU: the device tool allows 600 s a command.
GPU_BUDGET_S = 540.0
# Kept free at the end of each recipe's share for the test evaluation (or the resumed one).
GPU_RESERVE_S = 90.0
# After SIGTERM, how long the trainer may take to record `cancelled` before it is killed.
STOP_GRACE_S = 45.0
# The dry run: tiny and quick on a CPU, otherwise the recipes' own settings. Augmentation is off
# (XLA compiling it takes most of a CPU dry run; tlkit's tests cover it); best's finetune stage
# keeps its 1-epoch warm-up and has 4 epochs, so that `--stop-after best=3` cuts it after 2.
DRY_RUN_ARGS = ["--image-size", "32", "--train-limit", "200", "--test-limit", "100", "--batch-size", "32",
                "--no-aug-flip", "--aug-rotation", "0", "--aug-zoom", "0", "--aug-translation", "0"]
DRY_RUN_EPOCHS = {"seed": {"head": 1, "finetune": 1}, "best": {"head": 1, "finetune": 4}}
# Files of a run directory that stay on the machine: the model (95 MB for ResNet50 in float32)
# and the epoch checkpoints exceed what the device tool returns (16 MiB a file).
LEFT_BEHIND = {runs.MODEL_FILE, runs.MODEL_TEMP_FILE, runs.LOCK_FILE, "checkpoints"}
# What summary.json's figures are.
NOTES = {
    "phases": "wall seconds of each phase of this script, from its own start (the machine's start-up is before "
              "it: environment.machine_uptime_at_start_s)",
    "epoch_images_per_second": "training images / the epoch's seconds in history.csv (the epoch's validation "
                               "pass included; the first epoch of a stage also compiles its step functions)",
    "steady_images_per_second": "median of epoch_images_per_second over a stage's epochs after the first",
    "images_per_second": "metrics.json of the process that wrote it: a stage's training images × epochs / its fit "
                         "call's seconds (compiling included); null for stages a resumed (cut) run did not train",
    "stopped / finalize": "a recipe cut by the time budget (or --stop-after) and resumed with its stages cut to the "
                          "epochs trained, to evaluate that model; planned_epochs are the recipe's",
}
# Prints where Keras is, or what is missing (exit 1). Keras is only found (importing it takes
# seconds; the probe does); its compiled dependency optree is imported.
FIND_PACKAGES = """
import importlib, importlib.util
missing = []
for name in ("optree", "namex", "h5py", "numpy"):
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing.append(f"{name} ({error})")
if importlib.util.find_spec("keras") is None:
    missing.append("keras")
print(missing or importlib.util.find_spec("keras").origin)
raise SystemExit(bool(missing))
"""
PROBE = """
import json, time
import numpy as np
import keras
from tlkit import environment
started = time.perf_counter()
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
model.compile(optimizer="adam", loss="mse")
loss = float(model.train_on_batch(np.ones((16, 8), "float32"), np.zeros((16, 4), "float32")))
print(json.dumps({"backend": keras.backend.backend(), "devices": environment.list_devices(), "loss": loss,
                  "versions": environment.versions(), "seconds": round(time.perf_counter() - started, 2)}))
"""


class Log:
    """Everything printed goes to stdout and to `gpu_run.log`."""

    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)
            self.file.write(line + "\n")


class Context:
    """What the phases share: options, paths, the environment of child processes, the summary."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        self.work = args.work
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.out / "gpu_run.log")
        self.python = sys.executable
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        self.summary: dict = {"mode": "dry-run" if args.dry_run else "gpu", "command": sys.argv,
                              "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                              "budget_s": args.budget_s, "reserve_s": args.reserve_s, "notes": NOTES,
                              "phases": {}, "recipes": {}}
        self.inputs: dict = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def phase(self, name: str, function, *args):
        """Runs one phase and records its wall time and outcome in `phases`; returns its result.
        A failing phase raises (the script then collects what was done)."""
        self.log(f"== {name} (at {self.elapsed()} s)")
        started = time.monotonic()
        record = self.summary["phases"][name] = {"started_at_s": self.elapsed()}
        try:
            result = function(self, *args)
            record["ok"] = True
            return result
        except BaseException as error:
            record.update(ok=False, error=f"{type(error).__name__}: {error}")
            raise
        finally:
            record["seconds"] = round(time.monotonic() - started, 2)
            self.log(f"== {name}: {record['seconds']} s{'' if record.get('ok') else ' FAILED: ' + record['error']}")
            self.write_summary()

    def write_summary(self) -> None:
        """summary.json as it stands: after every phase, so a killed script still leaves one."""
        self.summary["images_per_second"] = images_per_second_table(self.summary)
        self.summary["wall_s"] = self.elapsed()
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str))


# ---- child processes ----------------------------------------------------------------------------


def start(ctx: Context, command: list[str], label: str, env: dict | None = None) -> subprocess.Popen:
    """A child process whose output lines reach the log, prefixed by `label`."""
    ctx.log(f"[{label}] $ {' '.join(command)}")
    process = subprocess.Popen(command, cwd=REPO, env=env or ctx.env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")

    def pump():
        for line in process.stdout:
            ctx.log(f"[{label}] {line.rstrip()}")

    process.pump = threading.Thread(target=pump, daemon=True)
    process.pump.start()
    return process


def finish(process: subprocess.Popen, timeout: float | None) -> int:
    """Waits for `process` (killing it after `timeout` seconds) and its output."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    process.pump.join(timeout=10)
    return code


def run_child(ctx: Context, command: list[str], label: str, timeout: float, env: dict | None = None) -> int:
    return finish(start(ctx, command, label, env), timeout)


def capture(command: list[str], timeout: float = 30) -> str:
    """A command's output, or why there is none."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        return result.stdout if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"not available: {error}"


# ---- phases -------------------------------------------------------------------------------------


def environment(ctx: Context) -> dict:
    smi = capture(["nvidia-smi"])
    (ctx.out / "nvidia-smi.txt").write_text(smi)
    uptime = Path("/proc/uptime").read_text().split()[0] if Path("/proc/uptime").exists() else None
    return {"nvidia_smi": smi,
            "gpus": capture(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                             "--format=csv,noheader"]).strip(),
            "python": platform.python_version(), "python_executable": sys.executable,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "machine_uptime_at_start_s": float(uptime) if uptime else None}


def synthetic_pack(ctx: Context) -> dict:
    pack = ctx.work / "synthetic-pack"
    # Keras' numpy backend builds, saves and runs the tiny backbone without a compiler: the quickest.
    env = {**ctx.env, "KERAS_BACKEND": "numpy"}
    code = run_child(ctx, [ctx.python, "-m", "benchmarks.gpu_pack", "synthetic", "--out", str(pack)], "pack", 600, env)
    if code:
        raise RuntimeError(f"the synthetic pack failed (exit {code})")
    ctx.args.pack = pack
    return {"pack": str(pack)}


def install(ctx: Context) -> dict:
    """Keras and its missing dependencies from the pack; the package index only as a fallback."""
    manifest = gpu_pack.read_manifest(ctx.args.pack)
    ctx.inputs["manifest"] = manifest
    packed = manifest.get("site") or {}
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    detail = {"from_pack": packed.get("packages"), "site": None}
    if packed and packed.get("python") != python:  # e.g. a dry run here with the GPU machine's pack
        detail["site_skipped"] = f"the pack's packages are for Python {packed.get('python')}, this is {python}"
    elif site := gpu_pack.unpack_site(ctx.args.pack, ctx.work / "site"):
        ctx.env["PYTHONPATH"] = f"{site}{os.pathsep}{REPO}"
        detail["site"] = str(site)
        started = time.monotonic()  # compiled once on every core, not module by module in each process
        subprocess.run([ctx.python, "-m", "compileall", "-q", "-j", "0", str(site)], capture_output=True)
        detail["compile_seconds"] = round(time.monotonic() - started, 2)
    found = subprocess.run([ctx.python, "-c", FIND_PACKAGES], env=ctx.env, capture_output=True, text=True)
    if found.returncode:
        pins = packed.get("packages") or list(gpu_pack.SITE_PACKAGES)
        target = ctx.work / "site-pip"
        started = time.monotonic()
        code = run_child(ctx, [ctx.python, "-m", "pip", "install", "-q", "--target", str(target), "--timeout", "15",
                               "--retries", "1", *pins], "pip", 300)
        detail["pip"] = {"packages": pins, "exit_code": code, "seconds": round(time.monotonic() - started, 1)}
        ctx.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), detail["site"], str(REPO)]))
        found = subprocess.run([ctx.python, "-c", FIND_PACKAGES], env=ctx.env, capture_output=True, text=True)
        if found.returncode:
            raise RuntimeError(f"still missing after pip: {found.stdout.strip()}")
    detail["keras"] = found.stdout.strip()
    return detail


def unpack(ctx: Context) -> dict:
    manifest = ctx.inputs["manifest"]
    started = time.monotonic()
    weights = gpu_pack.unpack_weights(ctx.args.pack, manifest["weights"], ctx.work / gpu_pack.WEIGHTS_FILE)
    weights_seconds = round(time.monotonic() - started, 2)
    data_dir = gpu_pack.unpack_data(ctx.args.pack, manifest["data"], ctx.work / "data")
    ctx.inputs.update(weights=weights, data_dir=data_dir, backbone=manifest["backbone"])
    return {"weights": str(weights), "weights_seconds": weights_seconds, "data_dir": str(data_dir),
            "backbone": manifest["backbone"], "mantissa_bits": manifest["weights"]["mantissa_bits"],
            "pack_sizes": manifest.get("sizes"), "pack_verify": manifest.get("verify")}


def probe(ctx: Context) -> dict:
    """The first backend that trains a step (on a GPU, except in the dry run)."""
    tried = {}
    for backend in ctx.args.backends:
        env = {**ctx.env, "KERAS_BACKEND": backend}
        try:
            result = subprocess.run([ctx.python, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                                    timeout=300)
        except subprocess.TimeoutExpired:
            tried[backend] = "no answer in 300 s"
            continue
        lines = result.stdout.strip().splitlines()
        if result.returncode or not lines:
            tried[backend] = f"exit {result.returncode}: {' | '.join(result.stderr.strip().splitlines()[-3:])}"
            continue
        found = json.loads(lines[-1])
        gpus = [d for d in found["devices"] if d.lower().startswith(("gpu", "cuda"))]
        if gpus or ctx.args.dry_run:
            ctx.env["KERAS_BACKEND"] = backend
            ctx.log(f"backend {backend}: devices {found['devices']}")
            return {**found, "tried": tried}
        tried[backend] = f"no GPU among {found['devices']}"
    raise RuntimeError(f"no backend sees a GPU: {tried}")


# ---- a recipe -----------------------------------------------------------------------------------


def train_command(ctx: Context, recipe: str) -> list[str]:
    command = [ctx.python, "-m", "tlkit.train", "--preset", recipe, "--data-dir", str(ctx.inputs["data_dir"]),
               "--weights", str(ctx.inputs["weights"]), "--backbone", ctx.inputs["backbone"],
               "--runs-dir", str(ctx.work / "runs" / recipe), "--cache-dir", str(ctx.work / "cache"),
               "--name", f"gpu-{recipe}", "--verbose", "2"]
    if ctx.args.dry_run:
        epochs = DRY_RUN_EPOCHS.get(recipe, {"head": 1, "finetune": 1})
        command += [*DRY_RUN_ARGS, "--head-epochs", str(epochs["head"]), "--finetune-epochs", str(epochs["finetune"])]
    return command + ctx.args.train_args


def the_run(runs_dir: Path) -> runs.Run | None:
    listed = runs.list_runs(runs_dir) if runs_dir.is_dir() else []
    return listed[0] if listed else None


def epochs_done(run: runs.Run) -> dict[str, int]:
    rows = run.history()
    return {stage: sum(row["stage"] == stage for row in rows) for stage in STAGES}


def planned_epochs(run: runs.Run) -> dict[str, int]:
    config = run.config() or {}
    return {stage: int(config.get(stage, {}).get("epochs", 0)) for stage in STAGES}


def stop_reason(ctx: Context, run: runs.Run | None, recipe: str, stop_at: float, deadline: float) -> str | None:
    """Why the trainer should stop now, or None.

    Stops once `--stop-after` epochs are trained; at `stop_at`; or earlier when the next epoch
    would end after `stop_at`, estimated as the quickest epoch of its stage so far (the first one
    also compiles), or twice the quickest head epoch for the first finetune epoch. While the test
    set is evaluated it may run on to `deadline`.
    """
    now = time.monotonic()
    if run is None:
        return "time budget: no run directory yet" if now >= stop_at else None
    done, planned = epochs_done(run), planned_epochs(run)
    limit = ctx.args.stop_after.get(recipe)
    if limit is not None and sum(done.values()) >= limit:
        return f"--stop-after {recipe}={limit}"
    if sum(done.values()) >= sum(planned.values()):  # evaluating the test set
        return "time budget: the test evaluation did not finish" if now >= deadline else None
    if now >= stop_at:
        return "time budget"
    seconds = {stage: [row["seconds"] for row in run.history() if row["stage"] == stage] for stage in STAGES}
    stage = "head" if done["head"] < planned["head"] else "finetune"
    if seconds[stage]:
        estimate = min(seconds[stage])
    elif stage == "finetune" and seconds["head"]:
        estimate = 2 * min(seconds["head"])
    else:
        return None
    if now + estimate > stop_at:
        return f"time budget: the next {stage} epoch (~{estimate:.1f} s) would end after the recipe's share"
    return None


def train_recipe(ctx: Context, recipe: str, share: float) -> dict:
    recipe_deadline = time.monotonic() + ctx.left() * share
    stop_at = recipe_deadline - ctx.args.reserve_s
    runs_dir = ctx.work / "runs" / recipe
    command = train_command(ctx, recipe)
    process = start(ctx, command, recipe)
    started, stopped, signalled_at = time.monotonic(), None, None
    try:
        while process.poll() is None:
            time.sleep(ctx.args.poll_s)
            run = the_run(runs_dir)
            if stopped is None and (reason := stop_reason(ctx, run, recipe, stop_at, recipe_deadline)):
                stopped = {"reason": reason, "at_s": ctx.elapsed(), "epochs_done": epochs_done(run) if run else {}}
                ctx.log(f"[{recipe}] stopping: {reason}")
                process.send_signal(signal.SIGTERM)
                signalled_at = time.monotonic()
            if signalled_at and time.monotonic() - signalled_at > STOP_GRACE_S:
                process.kill()
    except BaseException as error:  # the script itself is stopped: the trainer records `cancelled` first
        process.send_signal(signal.SIGTERM)
        finish(process, 20)
        run = the_run(runs_dir)
        ctx.summary["recipes"][recipe] = {"command": command, "interrupted": f"{type(error).__name__}: {error}",
                                          **(describe_run(run) if run else {"state": "no run directory"})}
        raise
    code = finish(process, 30)
    result = {"command": command, "exit_code": code, "wall_s": round(time.monotonic() - started, 1),
              "share_s": round(recipe_deadline - started, 1), "stopped": stopped}
    run = the_run(runs_dir)
    if run is None:
        return {**result, "state": "no run directory"}
    planned = planned_epochs(run)  # before a resume cuts them in config.json
    if run.status().get("state") in ("cancelled", "crashed"):
        result["finalize"] = finalize(ctx, run, recipe, recipe_deadline)
    return {**result, **describe_run(run), "planned_epochs": planned}


def finalize(ctx: Context, run: runs.Run, recipe: str, recipe_deadline: float) -> dict:
    """Evaluates a cut run: resumes it with each stage cut to the epochs it trained."""
    status, config = run.status(), run.config() or {}
    planned = planned_epochs(run)
    done = epochs_done(run)
    completed = status.get("completed_stages") or []
    epochs = {stage: planned[stage] if stage in completed else done[stage] for stage in STAGES}
    if "head" not in completed:
        epochs["finetune"] = 0
    notes = []
    for stage in STAGES:
        warmup = float(config.get(stage, {}).get("warmup_epochs") or 0)
        if 0 < epochs[stage] < planned[stage] and warmup >= epochs[stage]:
            notes.append(f"{stage}: {epochs[stage]} epoch(s) dropped, fewer than its {warmup:g}-epoch warm-up allows")
            epochs[stage] = 0
    if not any(epochs.values()):
        return {"skipped": "no whole epoch to evaluate", "notes": notes}
    command = [ctx.python, "-m", "tlkit.train", "--existing-run", str(run.path), "--resume",
               "--head-epochs", str(epochs["head"]), "--finetune-epochs", str(epochs["finetune"]), "--verbose", "2"]
    timeout = max(60.0, recipe_deadline - time.monotonic() + 30, min(ctx.left(), ctx.args.reserve_s))
    started = time.monotonic()
    code = run_child(ctx, command, f"{recipe}:finalize", timeout)
    return {"command": command, "epochs": epochs, "exit_code": code, "wall_s": round(time.monotonic() - started, 1),
            "notes": notes, "state": run.status().get("state")}


def describe_run(run: runs.Run) -> dict:
    """State, accuracy and images/s per stage of a run directory."""
    status, metrics = run.status(), run.metrics() or {}
    sizes = status.get("data_sizes") or metrics.get("data_sizes") or {}
    per_epoch = {}
    for stage in STAGES:
        rows = [row for row in run.history() if row["stage"] == stage and row.get("seconds")]
        if rows and sizes.get("train"):
            per_epoch[stage] = [round(sizes["train"] / row["seconds"], 1) for row in rows]
    # The first epoch of a stage includes compiling its step functions.
    steady = {stage: round(statistics.median(rates[1:]), 1) if len(rates) > 1 else None
              for stage, rates in per_epoch.items()}
    fit = {stage: round(rate, 1) if rate else rate for stage, rate in (metrics.get("images_per_second") or {}).items()}
    return {"run_id": run.run_id, "state": status.get("state"), "error": status.get("error"),
            "planned_epochs": planned_epochs(run), "trained_epochs": epochs_done(run),
            "test_accuracy": metrics.get("test_accuracy"), "macro_f1": metrics.get("macro_f1"),
            "precision": metrics.get("precision"), "backend": metrics.get("backend"), "data_sizes": sizes,
            "images_per_second": fit, "seconds": metrics.get("seconds"),
            "epoch_images_per_second": per_epoch, "steady_images_per_second": steady}


def recipes(ctx: Context) -> None:
    for index, recipe in enumerate(ctx.args.recipes):
        share = 1.0 / (len(ctx.args.recipes) - index)
        ctx.summary["recipes"][recipe] = ctx.phase(recipe, train_recipe, recipe, share)
        collect(ctx)  # so that a script killed later still returns this run


# ---- collect ------------------------------------------------------------------------------------


def collect(ctx: Context) -> dict:
    """Run directories (less `LEFT_BEHIND`) → `runs.tar.gz`."""
    runs_root = ctx.work / "runs"
    archive = ctx.out / "runs.tar.gz"

    def keep(info: tarfile.TarInfo):
        return None if set(Path(info.name).parts) & LEFT_BEHIND else info

    with tarfile.open(archive, "w:gz") as tar:
        if runs_root.is_dir():
            tar.add(runs_root, arcname="runs", filter=keep)
    return {"runs_archive": archive.name, "bytes": archive.stat().st_size, "left_behind": sorted(LEFT_BEHIND)}


def images_per_second_table(summary: dict) -> list[dict]:
    """One row per recipe and stage: what the docs' GPU rows need."""
    rows = []
    for recipe, result in summary["recipes"].items():
        for stage in STAGES:
            rows.append({"recipe": recipe, "stage": stage,
                         "epochs": f"{(result.get('trained_epochs') or {}).get(stage)} of "
                                   f"{(result.get('planned_epochs') or {}).get(stage)}",
                         "steady_images_per_second": (result.get("steady_images_per_second") or {}).get(stage),
                         "fit_images_per_second": ((result.get("images_per_second") or {}).get(stage))})
    return rows


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_run.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="Run on this CPU with a tiny configuration.")
    parser.add_argument("--pack", type=Path, help="The pack (default .gpu-pack; the dry run makes a synthetic one).")
    parser.add_argument("--out", type=Path, help="Where results go (default $OUT, else WORK/out).")
    parser.add_argument("--work", type=Path, help="Scratch folder (default a new temporary one).")
    parser.add_argument("--budget-s", type=float, help=f"Seconds for the whole script (GPU default {GPU_BUDGET_S:g}).")
    parser.add_argument("--reserve-s", type=float, default=GPU_RESERVE_S,
                        help="Seconds kept at the end of each recipe's share for the test evaluation.")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="Presets to run, in order.")
    parser.add_argument("--backends", default="jax,torch", help="Keras backends to try, in order.")
    parser.add_argument("--stop-after", default="", metavar="RECIPE=N,...",
                        help="Stop a recipe after N epochs, as the time budget would (a cut run).")
    parser.add_argument("--train-args", default="", help="Extra tlkit.train flags for every recipe (one string).")
    parser.add_argument("--poll-s", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.recipes = [name for name in args.recipes.split(",") if name]
    args.backends = [name for name in args.backends.split(",") if name]
    args.stop_after = {name: int(count) for name, count in
                       (item.split("=", 1) for item in args.stop_after.split(",") if item)}
    args.train_args = args.train_args.split()
    args.budget_s = args.budget_s or (3600.0 if args.dry_run else GPU_BUDGET_S)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="tlkit-gpu-run-"))
    args.out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else args.work / "out")
    if args.pack is None and not args.dry_run:
        args.pack = gpu_pack.DEFAULT_PACK
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args)
    code = 0
    # The device tool's timeout: stop the trainer, then collect and summarise what was done.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ctx.summary["environment"] = ctx.phase("environment", environment)
        if args.pack is None:
            ctx.phase("inputs", synthetic_pack)
        ctx.summary["install"] = ctx.phase("install", install)
        ctx.summary["inputs"] = ctx.phase("unpack", unpack)
        ctx.summary["backend"] = ctx.phase("probe", probe)
        recipes(ctx)
    except (Exception, KeyboardInterrupt) as error:  # recorded in its phase; what was done is collected below
        ctx.log(f"error: {type(error).__name__}: {error}")
        code = 1
    finally:
        try:
            ctx.summary["collect"] = ctx.phase("collect", collect)
        except Exception:  # the summary is still written
            code = 1
        ctx.summary["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        ctx.write_summary()
        for row in ctx.summary["images_per_second"]:
            ctx.log(f"{row['recipe']:>5} {row['stage']:>8}: epochs {row['epochs']}, steady "
                    f"{row['steady_images_per_second']} img/s, fit {row['fit_images_per_second']} img/s")
        ctx.log(f"summary: {ctx.out / 'summary.json'} ({ctx.summary['wall_s']} s); work dir {ctx.work}")
    if any(result.get("state") != "completed" for result in ctx.summary["recipes"].values()):
        code = 1
    return code


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
