"""Data-parallel throughput: training images/s of one run on 1, 2 and 4 devices (docs/scale.md).

    python -m benchmarks.distribution                     # simulated CPU devices (XLA host platform split)
    python -m benchmarks.distribution --real --devices 1,2,4,8 --preset seed --data-dir DIR --weights FILE
                                                          # real accelerators (a multi-GPU machine)
    python -m benchmarks.distribution --render benchmarks/results/distribution.json

Each device count runs the CLI in a fresh process (JAX backend; `--distribution none` for 1 device,
`data_parallel` above), with the same global batch and data, caches off so that every step runs the
whole graph, and reads each stage's images/s from the run's metrics.json.

Simulated devices split this machine's CPU cores among themselves: the figures measure what the
distribution costs (sharding, all-reduce, padding), not a speed-up, and on 2 cores none can show.
With `--real`, device counts become `CUDA_VISIBLE_DEVICES` subsets of the machine's accelerators.

Results go to benchmarks/results/distribution.json and the "Measured" section of docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.common import DATA_DIR, REPO_ROOT, replace_marked_section
from tlkit.runs import list_runs, write_json

RESULTS = REPO_ROOT / "benchmarks" / "results" / "distribution.json"
DOC = REPO_ROOT / "docs" / "scale.md"
MARKERS = ("<!-- distribution-benchmark:start -->", "<!-- distribution-benchmark:end -->")
# Smoke-sized but whole-graph: mini ResNet at 64 px on real Fashion-MNIST, every step through the backbone.
SIMULATED = ["--preset", "smoke", "--data-dir", str(DATA_DIR), "--image-size", "64", "--train-limit", "2304",
             "--test-limit", "512", "--batch-size", "64", "--head-epochs", "2", "--finetune-epochs", "2",
             "--no-feature-cache", "--no-boundary-cache"]


def measure(devices: int, real: bool, extra: list[str], workdir: Path, label: str = "") -> dict:
    """One run on `devices` devices; its stage throughputs and what it ran on."""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    if real:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(devices)))
    else:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    runs_dir = workdir / f"devices-{devices}{label}"
    mode = "none" if devices == 1 else "data_parallel"
    cpu_before, wall_before = _children_cpu_seconds(), time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "tlkit.train", *extra, "--runs-dir", runs_dir, "--cache-dir", workdir / "cache",
         "--distribution", mode, "--name", f"devices-{devices}", "--verbose", "0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600)
    cores_busy = (_children_cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
    if result.returncode:
        return {"devices": devices, "error": result.stderr.strip().splitlines()[-1:]}
    (run,) = list_runs(runs_dir)
    metrics = run.metrics()
    return {"devices": devices, "label": label, "mode": mode, "device_list": metrics["distribution"]["devices"],
            "images_per_second": metrics["images_per_second"], "seconds": metrics["seconds"],
            "test_accuracy": metrics["test_accuracy"], "versions": metrics["versions"],
            "per_device_batch_size": metrics["distribution"]["per_device_batch_size"],
            "cores_busy": round(cores_busy, 2)}


def _children_cpu_seconds() -> float:
    """CPU seconds used so far by finished child processes (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def render(results: dict) -> str:
    rows = [r for r in results["runs"] if "error" not in r]
    base = {stage: rows[0]["images_per_second"].get(stage) for stage in ("head", "finetune")} if rows else {}
    lines = [f"Measured {results['date']} on {results['machine']} ({results['kind']}), "
             f"`python -m benchmarks.distribution{' --real' if results['kind'] == 'real' else ''}`; "
             f"command: `{' '.join(results['command'])}`; 1-minute load average "
             f"{results['load_average'][0]} before, {results['load_average'][1]} after "
             "(other work shared the machine: compare the rows with each other, not with other pages).", "",
             "| devices | per-device batch | head img/s | × 1 device | finetune img/s | × 1 device "
             "| cores busy | test acc |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        speeds = row["images_per_second"]
        lines.append(f"| {row['devices']}{row.get('label', '')} | {row['per_device_batch_size']} | "
                     f"{speeds['head']:.1f} | "
                     f"{speeds['head'] / base['head']:.2f} | {speeds['finetune']:.1f} | "
                     f"{speeds['finetune'] / base['finetune']:.2f} | {row.get('cores_busy', float('nan')):.2f} | "
                     f"{row['test_accuracy']:.3f} |")
    for row in results["runs"]:
        if "error" in row:
            lines.append(f"\n{row['devices']} devices failed: {row['error']}")
    if results["kind"] == "simulated":
        lines += ["", "Simulated devices share this machine's cores, so no row is a scaling figure. The "
                  "*control* row is one device fed the last row's per-device batch: where more devices look "
                  "faster, compare them with it, since XLA's CPU convolutions run small batches faster per "
                  "image. *Cores busy* is the run's CPU time over its wall time (whole process, start-up "
                  "included). What the rows show is what sharding each batch and all-reducing the gradients "
                  "costs here. Test accuracy is of 2 + 2 epochs of the tiny smoke model, which moves by "
                  "several points with the batch split and the order of floating-point sums: no accuracy "
                  "comparison (the tests check that 1 and 4 devices give the same losses on the same global "
                  "batch). Real scaling needs real accelerators: run the `--real` command above on a "
                  "multi-GPU machine."]
    return "\n".join(lines)


def write_doc(results: dict) -> None:
    replace_marked_section(DOC, MARKERS, render(results))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distribution", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="1,2,4", help="device counts to measure")
    parser.add_argument("--real", action="store_true", help="real accelerators instead of simulated CPU devices")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="measure nothing: render docs from a results file")
    args, train_flags = parser.parse_known_args(argv)
    if args.render:
        write_doc(json.loads(Path(args.render).read_text()))
        return 0
    extra = train_flags or SIMULATED
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tlkit-distribution-") as workdir:
        measured = []
        for count in map(int, args.devices.split(",")):
            measured.append(measure(count, args.real, extra, Path(workdir)))
            print(json.dumps(measured[-1]), flush=True)
        if not args.real and len(measured) > 1 and measured[-1].get("per_device_batch_size"):
            # Control: one device fed the smallest per-device batch, to separate batch size from devices.
            small = str(measured[-1]["per_device_batch_size"])
            measured.append(measure(1, False, [*extra, "--batch-size", small], Path(workdir), " (control)"))
            print(json.dumps(measured[-1]), flush=True)
    cpu = re.sub(r"\s+", " ", subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip())
    results = {"date": str(date.today()), "kind": "real" if args.real else "simulated",
               "machine": f"{os.cpu_count()}-core {cpu} CPU" if not args.real else "accelerators",
               "command": ["python -m tlkit.train", *extra], "runs": measured,
               "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    write_json(RESULTS, results)
    write_doc(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
