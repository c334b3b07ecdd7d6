"""What a crash, a concurrent reader or a bad input costs: the figures of docs/reliability.md.

    python -m benchmarks.reliability                       # every part, every backend (~12 min on 2 cores)
    python -m benchmarks.reliability --parts kills --backends torch --trials 3
    python -m benchmarks.reliability --render benchmarks/results/reliability.json

Parts (each runs the CLI in fresh processes, as a user does; this process never imports Keras):

- `kills`: kill -9 at a random moment of fine-tune epochs 3-5 (smoke preset on real Fashion-MNIST,
  1,000 training images, 6 fine-tune epochs). Whole epochs lost = fine-tune rows in history.csv
  at the kill minus the epochs its checkpoint holds (the interrupted epoch's partial work is always
  redone); then `--resume`, and the largest difference of test probabilities from the
  uninterrupted run with the same seed.
- `reads`: while the first trial's trainer writes its run, a reader parses status.json,
  .heartbeat.json and history.csv raw, and reads them through `tlkit.runs`; a torn read is
  one that fails to parse.
- `inputs`: a table of bad inputs (config values and files, data, weights, runs dir, resume);
  clear = exit 1 or 2, an `error:` line naming what to do, no traceback.
- `fuzz`: the hypothesis tests of tests/test_bad_inputs.py with `--fuzz-examples` examples each.

Results go to benchmarks/results/reliability.json and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.common import DATA_DIR, REPO_ROOT
from tlkit import runs
from tlkit.data import IDX_FILES, write_idx
from tlkit.runs import write_json

RESULTS = REPO_ROOT / "benchmarks" / "results" / "reliability.json"
DOC = REPO_ROOT / "docs" / "reliability.md"
BACKENDS = ("tensorflow", "jax", "torch")
FINETUNE_EPOCHS = 6
BASE = ["--preset", "smoke", "--train-limit", "1000", "--test-limit", "500", "--head-epochs", "1",
        "--finetune-epochs", str(FINETUNE_EPOCHS)]


def cli(args, backend="torch", timeout=600, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, "-m", "tlkit.train", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def finetune_rows(run: runs.Run) -> int:
    return sum(row["stage"] == "finetune" for row in run.history())


def only_run(runs_dir: Path) -> runs.Run | None:
    listed = runs.list_runs(runs_dir)
    return listed[0] if listed else None


# ---- kills and reads ------------------------------------------------------------------


class Reader(threading.Thread):
    """Reads a run's files as fast as it can until stopped; counts reads and torn reads."""

    def __init__(self, runs_dir: Path):
        super().__init__(daemon=True)
        self.runs_dir, self.stop = runs_dir, threading.Event()
        self.reads = {"status.json": 0, ".heartbeat.json": 0, "history.csv": 0, "tlkit.runs": 0}
        self.torn: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            run = only_run(self.runs_dir)
            if run is None:
                continue
            for name in (runs.STATUS_FILE, runs.HEARTBEAT_FILE):
                try:
                    text = (run.path / name).read_text()
                except FileNotFoundError:
                    continue  # not written yet (or the heartbeat after the trainer ended)
                self.reads[name] += 1
                try:
                    json.loads(text)
                except ValueError:
                    self.torn.append(f"{name}: {text[:60]!r}")
            try:
                text = (run.path / runs.HISTORY_FILE).read_text()
            except FileNotFoundError:
                text = None
            if text is not None:
                self.reads["history.csv"] += 1
                rows = list(csv.reader(io.StringIO(text)))
                if rows and (rows[0] != list(runs.HISTORY_COLUMNS) or any(len(r) != len(rows[0]) for r in rows)):
                    self.torn.append(f"history.csv: {text[-60:]!r}")
            run.status(), run.history(), run.metrics(), run.heartbeat()
            self.reads["tlkit.runs"] += 1


def kill_trial(work: Path, backend: str, rng: random.Random, reader: bool) -> dict:
    runs_dir = work / "runs"
    args = [*BASE, "--data-dir", DATA_DIR, "--runs-dir", runs_dir, "--cache-dir", work / "cache"]
    watcher = Reader(runs_dir) if reader else None
    if watcher:
        watcher.start()
    process = subprocess.Popen([sys.executable, "-m", "tlkit.train", *map(str, args)], cwd=REPO_ROOT,
                               env={**os.environ, "KERAS_BACKEND": backend},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while (only_run(runs_dir) is None or finetune_rows(only_run(runs_dir)) < 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    run = only_run(runs_dir)
    epoch_seconds = max(run.history()[-1]["seconds"], 0.05)  # epoch 2: epoch 1 includes tracing
    delay = rng.uniform(0, (FINETUNE_EPOCHS - 3) * epoch_seconds)
    time.sleep(delay)
    process.kill()
    process.wait()
    rows, saved = finetune_rows(run), _saved_epoch(run)
    if "finetune" in run.status(raw=True).get("completed_stages", []):
        saved = rows  # the kill came after the stage was saved in model.keras
    state = run.status()["state"]
    resumed = cli(["--existing-run", run.path, "--resume"], backend)
    if watcher:
        watcher.stop.set()
        watcher.join()
    return {"delay_s": round(delay, 2), "epoch_seconds": round(epoch_seconds, 2), "rows_at_kill": rows,
            "checkpoint_epoch": saved, "whole_epochs_lost": rows - saved, "read_as": state,
            "resume_exit": resumed.returncode, "run": str(run.path),
            "reads": watcher.reads if watcher else None, "torn": watcher.torn if watcher else None}


def _saved_epoch(run: runs.Run) -> int:
    saved = sorted((run.path / "checkpoints" / "finetune").glob("epoch-[0-9][0-9][0-9][0-9]"))
    return int(saved[-1].name.split("-")[1]) if saved else 0


COMPARE = """
import json, sys
import numpy as np
import tlkit
from tlkit.data import load_splits
a, b = tlkit.runs.Run(sys.argv[1]), tlkit.runs.Run(sys.argv[2])
config = tlkit.Config.from_dict(a.config())
images = load_splits(config.data, config.seed).test.images
difference = np.abs(a.load_model().predict(images, verbose=0) - b.load_model().predict(images, verbose=0)).max()
print(json.dumps({"max_abs_probability_difference": float(difference),
                  "accuracy": [a.metrics()["test_accuracy"], b.metrics()["test_accuracy"]]}))
"""


def kills(work: Path, backends, trials: int, seed: int) -> dict:
    rng = random.Random(seed)
    results = {}
    for backend in backends:
        reference_dir = work / backend / "reference"
        straight = cli([*BASE, "--data-dir", DATA_DIR, "--runs-dir", reference_dir, "--cache-dir",
                        work / backend / "reference-cache"], backend)
        assert straight.returncode == 0, straight.stderr[-2000:]
        reference = only_run(reference_dir)
        rows = []
        for trial in range(trials):
            row = kill_trial(work / backend / f"trial{trial}", backend, rng, reader=(trial == 0))
            compared = subprocess.run([sys.executable, "-c", COMPARE, row.pop("run"), str(reference.path)],
                                      cwd=REPO_ROOT, env={**os.environ, "KERAS_BACKEND": backend},
                                      capture_output=True, text=True, check=True)
            row.update(json.loads(compared.stdout.strip().splitlines()[-1]))
            rows.append(row)
            print(f"{backend} trial {trial}: {row['rows_at_kill']} rows, checkpoint {row['checkpoint_epoch']}, "
                  f"resume exit {row['resume_exit']}, max |Δp| {row['max_abs_probability_difference']:.2e}",
                  flush=True)
        results[backend] = rows
    return results


# ---- bad inputs ---------------------------------------------------------------------------


def make_inputs(work: Path) -> dict[str, Path]:
    """The damaged files the bad-input cases point at."""
    made = {}
    empty = work / "empty"
    empty.mkdir(parents=True)
    made["empty"] = empty
    truncated = work / "truncated"
    truncated.mkdir()
    for name, stem in IDX_FILES.items():
        raw = (DATA_DIR / f"{stem}.gz").read_bytes()
        (truncated / f"{stem}.gz").write_bytes(raw[: len(raw) // 2] if name == "train_images" else raw)
    made["truncated"] = truncated
    forged = work / "forged"
    forged.mkdir()
    for name, stem in IDX_FILES.items():
        raw = gzip.decompress((DATA_DIR / f"{stem}.gz").read_bytes())
        if name == "train_images":
            raw = raw[:4] + (2 ** 31).to_bytes(4, "big") * 3 + raw[16:]
        (forged / stem).write_bytes(raw)
    made["forged"] = forged
    one_class = work / "one-class"
    one_class.mkdir()
    labels = np.zeros(60, np.uint8)
    write_idx(one_class / IDX_FILES["train_images"], np.zeros((60, 28, 28), np.uint8))
    write_idx(one_class / IDX_FILES["train_labels"], labels)
    write_idx(one_class / IDX_FILES["test_images"], np.zeros((20, 28, 28), np.uint8))
    write_idx(one_class / IDX_FILES["test_labels"], (np.arange(20) % 10).astype(np.uint8))
    made["one_class"] = one_class
    np.savez(work / "wrong-keys.npz", images=np.zeros((10, 8, 8), np.uint8))
    made["wrong_keys"] = work / "wrong-keys.npz"
    np.savez(work / "no-test.npz", x_train=np.zeros((40, 8, 8), np.uint8), y_train=np.arange(40) % 2,
             x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, np.int64))
    made["no_test"] = work / "no-test.npz"
    folder = work / "folder"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for index in range(12):
            (folder / label / f"{index}.png").write_bytes(_png(label == "cat"))
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    made["folder"] = folder
    single = work / "single-folder" / "only"
    single.mkdir(parents=True)
    for index in range(6):
        (single / f"{index}.png").write_bytes(_png(True))
    made["single_folder"] = single.parent
    (work / "garbage.weights.h5").write_bytes(os.urandom(4096))
    made["garbage_weights"] = work / "garbage.weights.h5"
    for name, text in {"syntax.toml": "[model\ndropout = ", "list.json": "[1, 2]", "unknown.toml":
                       "[model]\ndropuot = 0.2\n", "type.toml": '[model]\ndropout = "high"\n',
                       "preset.json": '{"preset": [0]}'}.items():
        (work / name).write_text(text)
        made[name] = work / name
    (work / "latin1.toml").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    made["latin1.toml"] = work / "latin1.toml"
    (work / "a-file").write_text("not a directory")
    made["a_file"] = work / "a-file"
    queued = runs.create_run(work / "existing", state="queued")
    queued.write_config({"preset": "smoke", "model": {"backbone": "mini_resnet", "weights": "none",
                                                      "image_size": 32, "dropout": 0.2}})
    made["existing"] = queued.path
    return made


def _png(bright: bool) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 200 if bright else 30, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def input_cases(made: dict[str, Path], runs_dir: Path) -> list[tuple[str, str, list]]:
    data = ["--data-dir", DATA_DIR, "--runs-dir", runs_dir]
    return [
        ("config value", "dropout 1.5", ["--preset", "smoke", "--dropout", "1.5", *data]),
        ("config value", "negative head LR", ["--preset", "smoke", "--head-lr", "-1", *data]),
        ("config value", "batch size 0", ["--preset", "smoke", "--batch-size", "0", *data]),
        ("config value", "unfreeze a block the backbone lacks", ["--preset", "smoke", "--unfreeze", "conv9", *data]),
        ("config value", "unknown backbone", ["--preset", "smoke", "--backbone", "nosuchnet", *data]),
        ("config value", "unknown precision", ["--preset", "smoke", "--precision", "float8", *data]),
        ("config value", "train limit below its minimum", ["--preset", "smoke", "--train-limit", "5", *data]),
        ("config value", "image size 4", ["--preset", "smoke", "--image-size", "4", *data]),
        ("config value", "validation split 0.9", ["--preset", "smoke", "--validation-split", "0.9", *data]),
        ("config value", "unknown preset", ["--preset", "huge", *data]),
        ("config file", "TOML syntax error", ["--config", made["syntax.toml"], *data]),
        ("config file", "not UTF-8", ["--config", made["latin1.toml"], *data]),
        ("config file", "JSON list at the top", ["--config", made["list.json"], *data]),
        ("config file", "misspelt key", ["--config", made["unknown.toml"], *data]),
        ("config file", "wrong type", ["--config", made["type.toml"], *data]),
        ("config file", "preset that is not a name", ["--config", made["preset.json"], *data]),
        ("config file", "missing file", ["--config", made["empty"] / "nope.toml", *data]),
        ("data", "empty data dir", ["--preset", "smoke", "--data-dir", made["empty"], "--runs-dir", runs_dir]),
        ("data", "missing data dir", ["--preset", "smoke", "--data-dir", made["empty"] / "nope",
                                      "--runs-dir", runs_dir]),
        ("data", "truncated .gz", ["--preset", "smoke", "--data-dir", made["truncated"], "--runs-dir", runs_dir]),
        ("data", "forged IDX header", ["--preset", "smoke", "--data-dir", made["forged"], "--runs-dir", runs_dir]),
        ("data", "single-class training set", ["--preset", "smoke", "--data-dir", made["one_class"],
                                               "--train-limit", "none", "--runs-dir", runs_dir]),
        ("data", "missing .npz", ["--preset", "smoke", "--data", made["empty"] / "x.npz", "--runs-dir", runs_dir]),
        ("data", ".npz without x_train/y_train", ["--preset", "smoke", "--data", made["wrong_keys"],
                                                  "--runs-dir", runs_dir]),
        ("data", ".npz with an empty test set", ["--preset", "smoke", "--data", made["no_test"],
                                                 "--train-limit", "none", "--runs-dir", runs_dir]),
        ("data", "folder with a broken image, --strict-data", ["--preset", "smoke", "--data", made["folder"],
                                                               "--strict-data", "--runs-dir", runs_dir]),
        ("data", "folder with a single class", ["--preset", "smoke", "--data", made["single_folder"],
                                                "--runs-dir", runs_dir]),
        ("weights", "missing weights file", ["--preset", "smoke", "--weights", made["empty"] / "w.weights.h5", *data]),
        ("weights", "weights file of random bytes", ["--preset", "smoke", "--weights", made["garbage_weights"],
                                                     *data]),
        ("runs dir", "runs dir that is a file", ["--preset", "smoke", "--data-dir", DATA_DIR,
                                                 "--runs-dir", made["a_file"]]),
        ("resume", "--resume without --existing-run", ["--preset", "smoke", "--resume", *data]),
        ("resume", "--existing-run that does not exist", ["--existing-run", made["empty"] / "run", "--resume"]),
        ("resume", "--resume with a changed dropout", ["--existing-run", made["existing"], "--resume",
                                                       "--dropout", "0.5"]),
        ("resume", "--existing-run with a preset", ["--existing-run", made["existing"], "--preset", "cpu"]),
        ("config value", "learning rate above its maximum", ["--preset", "smoke", "--head-lr", "1e12",
                                                               "--finetune-epochs", "0", *data]),
    ]


def bad_inputs(work: Path, backend: str) -> list[dict]:
    made = make_inputs(work / "inputs")
    rows = []
    for group, name, args in input_cases(made, work / "runs"):
        start = time.perf_counter()
        result = cli(args, backend)
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if re.match(r"(python -m tlkit\.train: )?error:", line)]
        clear = result.returncode in (1, 2) and bool(errors) and "Traceback" not in result.stderr
        rows.append({"group": group, "case": name, "exit": result.returncode, "clear": clear,
                     "message": (errors[-1] if errors else lines[-1] if lines else "")[:300],
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{'clear' if clear else 'UNCLEAR'} {result.returncode} {name}: {rows[-1]['message'][:120]}", flush=True)
    return rows


def fuzz(examples: int) -> dict:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_bad_inputs.py", "-k", "fuzz",
                             "-p", "no:cacheprovider", "--hypothesis-show-statistics"],
                            cwd=REPO_ROOT, env={**os.environ, "TLKIT_FUZZ_EXAMPLES": str(examples),
                                                "KERAS_BACKEND": "torch"},
                            capture_output=True, text=True)
    tests = re.findall(r"::(test_fuzzed\w+):", result.stdout)
    passing = [int(n) for n in re.findall(r"- (\d+) passing, \d+ failing", result.stdout)]
    failing = [int(n) for n in re.findall(r"- \d+ passing, (\d+) failing", result.stdout)]
    return {"examples_per_test": examples, "tests": tests, "passing": sum(passing), "failing": sum(failing),
            "exit": result.returncode}


# ---- markdown ---------------------------------------------------------------------------------


def render(results: dict) -> str:
    lines = ["# Reliability", "",
             f"Measured {results['date']} on {results['machine']} by `python -m benchmarks.reliability` "
             "(raw figures: `benchmarks/results/reliability.json`; this page is rendered from them). "
             "The checks behind each figure run smoke-sized in CI too (`tests/test_faults.py`, "
             "`tests/test_bad_inputs.py`, `tests/test_cli.py`).", ""]
    lines += _render_kills(results.get("kills"))
    lines += _render_reads(results.get("kills"))
    lines += _render_inputs(results.get("inputs"))
    lines += _render_fuzz(results.get("fuzz"))
    lines += ["## How a run survives", "",
              "- **Epoch checkpoints.** After every whole epoch the stage's weights, optimizer state (its step, so the "
              "LR schedule continues) and random-generator states (seed generators; torch's global generator) are "
              "written as one `.npz` to a temp directory that is renamed to `checkpoints/<stage>/epoch-NNNN` as a "
              "whole. Keras' `BackupAndRestore` is not used: it writes the weights file in place and the epoch "
              "record in a second file, so a kill between the two resumed an epoch late on top of its weights "
              "(found by CI: max |Δp| 0.13 under jax); it leaves the generator states out; and its HDF5 weights "
              "file, when a full disk fails its write, crashes the process (SIGSEGV in h5py) instead of letting "
              "it record why (found by the full-disk test under tensorflow).",
              "- **One trainer per run.** An exclusive `flock` on `.trainer.lock`; a second trainer fails at once "
              "naming the holder's pid and host. The trainer refreshes `.heartbeat.json` every 10 s; a run whose "
              "trainer is gone reads as `crashed` (its pid is gone on this host, or the heartbeat is older than "
              "120 s on another), and `--existing-run DIR --resume` continues it.",
              "- **Writes.** Every run file is written to a temp file, fsynced, renamed, and the directory fsynced; "
              "a failed write removes its temp file. On a full disk the run's last word goes into status.json in "
              "place (its blocks exist already) and names the fix; files get the mode the umask gives any new file.",
              ""]
    return "\n".join(lines)


def _render_kills(kills: dict | None) -> list[str]:
    if not kills:
        return []
    lines = ["## kill -9, then --resume", "",
             f"Smoke preset on real Fashion-MNIST (1,000 training images, {FINETUNE_EPOCHS} fine-tune epochs), "
             "killed at a random moment between the end of fine-tune epoch 2 and epoch 5. *Whole epochs lost*: "
             "epochs whose row was in history.csv at the kill but not in the checkpoint (the interrupted "
             "epoch's partial work is always redone). *max |Δp|*: largest difference of a test probability "
             "between the resumed run and the same run never interrupted.", "",
             "| backend | kills | resumed (exit 0) | read as crashed | whole epochs lost (max) | max \\|Δp\\| | "
             "test accuracy resumed / uninterrupted |",
             "|---|---|---|---|---|---|---|"]
    for backend, rows in kills.items():
        accuracies = sorted({tuple(row["accuracy"]) for row in rows})
        lines.append(
            f"| {backend} | {len(rows)} | {sum(r['resume_exit'] == 0 for r in rows)} | "
            f"{sum(r['read_as'] == 'crashed' for r in rows)} | {max(r['whole_epochs_lost'] for r in rows)} | "
            f"{max(r['max_abs_probability_difference'] for r in rows):.1e} | "
            + ", ".join(f"{a:.4f} / {b:.4f}" for a, b in accuracies) + " |")
    lines += ["", "Kill moments (seconds after fine-tune epoch 2 ended → the epoch the checkpoint held): "
              + "; ".join(f"{backend} " + ", ".join(f"{r['delay_s']} s → {r['checkpoint_epoch']}" for r in rows)
                          for backend, rows in kills.items()), ""]
    return lines


def _render_reads(kills: dict | None) -> list[str]:
    if not kills:
        return []
    lines = ["## Reading while a trainer writes", "",
             "A reader polls the run's files during a whole trial (training, kill, resume): raw `json.loads` of "
             "status.json and .heartbeat.json, a CSV parse of history.csv, and `tlkit.runs`' readers.", "",
             "| backend | status.json | .heartbeat.json | history.csv | tlkit.runs reads | torn |",
             "|---|---|---|---|---|---|"]
    for backend, rows in kills.items():
        reads, torn = rows[0]["reads"], rows[0]["torn"]
        lines.append(f"| {backend} | {reads['status.json']:,} | {reads['.heartbeat.json']:,} | "
                     f"{reads['history.csv']:,} | {reads['tlkit.runs']:,} | {len(torn)} |")
    return lines + [""]


def _render_inputs(rows: list[dict] | None) -> list[str]:
    if not rows:
        return []
    clear = sum(row["clear"] for row in rows)
    lines = ["## Bad inputs", "",
             f"{len(rows)} cases run through the CLI as a user would; **{clear} of {len(rows)}** end with exit 1 or 2 "
             "and one `error:` line, no traceback (exit 2: refused before any compute; 1: the run failed and "
             "status.json says why).", "",
             "| kind | case | exit | message |", "|---|---|---|---|"]
    for row in rows:
        message = re.sub(r"/tmp/tlkit-reliability-[^/]+/inputs/inputs/", "…/", row["message"]).replace("|", "\\|")
        lines.append(f"| {row['group']} | {row['case']} | {row['exit']}{'' if row['clear'] else ' ✗'} | {message} |")
    return lines + [""]


def _render_fuzz(result: dict | None) -> list[str]:
    if not result:
        return []
    return ["## Fuzzing", "",
            f"`hypothesis`, {result['examples_per_test']:,} examples for each of {len(result['tests'])} tests "
            f"({', '.join(result['tests'])}): {result['passing']:,} passing, {result['failing']} failing. "
            "Config files as random fields and as random bytes must run or exit 2; IDX files with random shapes "
            "and damaged headers must load or raise a one-line DataError. It found one traceback (a config "
            "file's `preset` that is not a string), fixed before this measurement. CI runs 60 examples each.", ""]


# ---- main ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="kills,inputs,fuzz",
                        help="comma-separated: kills (with reads), inputs, fuzz")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--trials", type=int, default=3, help="kills per backend")
    parser.add_argument("--fuzz-examples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--render", metavar="RESULTS_JSON", help="measure nothing: render docs from a results file")
    args = parser.parse_args(argv)
    if args.render:
        DOC.write_text(render(json.loads(Path(args.render).read_text())))
        print(f"wrote {DOC}")
        return 0
    if not (DATA_DIR / f"{IDX_FILES['train_images']}.gz").is_file():
        print(f"reliability: Fashion-MNIST not found in {DATA_DIR} (set TLKIT_BENCH_DATA)", file=sys.stderr)
        return 2
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(date=str(date.today()), machine=f"{os.cpu_count()} CPU cores, no GPU")
    with tempfile.TemporaryDirectory(prefix="tlkit-reliability-") as work:
        work = Path(work)
        if "kills" in parts:
            results["kills"] = {**results.get("kills", {}), **kills(work / "kills", backends, args.trials, args.seed)}
        if "inputs" in parts:
            results["inputs"] = bad_inputs(work / "inputs", backends[-1])
        if "fuzz" in parts:
            results["fuzz"] = fuzz(args.fuzz_examples)
    write_json(RESULTS, results)
    DOC.write_text(render(results))
    print(f"wrote {RESULTS} and {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
