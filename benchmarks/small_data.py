"""Small datasets: the `cpu` preset against raw-pixel baselines, side by side (docs/small-data.md).

    python -m benchmarks.small_data                       # Fashion-MNIST 1,000 and 5,000 + digits, jax
    python -m benchmarks.small_data --only fmnist-1000 --backend torch
    python -m benchmarks.small_data --ablation            # also the recipe without its small-data rules
    python -m benchmarks.small_data --render benchmarks/results/small_data.json

Each dataset is trained three ways on the same training images and scored on the same test set:
- `tlkit --preset cpu` through the CLI in a fresh process (ImageNet ResNet50 from the local weights
  file), which holds out its validation split from those images as usual;
- scikit-learn's `LogisticRegression` and `SVC` (RBF kernel, defaults) on the raw pixels scaled to
  [0, 1], fit on all the training images (the validation split included).

Datasets:
- `fmnist-1000`, `fmnist-5000`: stratified subsets of Fashion-MNIST's training set (tlkit's own
  `--train-limit`, so the baselines see exactly the images tlkit does), official 10,000-image test set;
- `digits`: scikit-learn's 1,797 8×8 grayscale digits (10 classes, gray levels 0–16 scaled to
  0–255), a seeded stratified 80/20 split written as an `.npz` source.

`--ablation` adds a run of the recipe with its small-data rules off (`min_steps`, `warmup_steps` and
`early_stopping` at 0): what those rules buy. Results go to benchmarks/results/small_data.json and
the measured section of docs/small-data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.common import DATA_DIR, REPO_ROOT, SEED, WEIGHTS, missing_inputs, replace_marked_section
from tlkit.runs import list_runs, write_json

RESULTS = REPO_ROOT / "benchmarks" / "results" / "small_data.json"
DOC = REPO_ROOT / "docs" / "small-data.md"
MARKERS = ("<!-- small-data:start -->", "<!-- small-data:end -->")
DATASETS = ("fmnist-1000", "fmnist-5000", "digits")
RULES_OFF = ["--head-min-steps", "0", "--finetune-min-steps", "0", "--head-warmup-steps", "0",
             "--finetune-warmup-steps", "0", "--head-early-stopping", "0", "--finetune-early-stopping", "0"]


def digits_npz(path: Path) -> Path:
    """scikit-learn's digits as an `.npz` source: uint8 0–255, seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype("uint8")
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=0.2,
                                                        stratify=digits.target, random_state=SEED)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array([str(digit) for digit in range(10)]))
    return path


def source_flags(name: str, workdir: Path) -> list[str]:
    """The train flags that select dataset `name`."""
    if name == "digits":
        return ["--data", str(digits_npz(workdir / "digits.npz"))]
    size = name.split("-")[1]
    return ["--data", "fashion_mnist", "--data-dir", str(DATA_DIR), "--train-limit", size]


def baselines(flags: list[str]) -> dict:
    """Test accuracy of logistic regression and an RBF SVM on the raw pixels of the same split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    from tlkit.cli import build_parser, resolve_config
    from tlkit.data import load_splits

    config = resolve_config(build_parser().parse_args(["--preset", "cpu", "--weights", str(WEIGHTS), *flags]))
    splits = load_splits(config.data, config.seed, image_size=config.model.image_size)

    def pixels(*parts):
        images = np.concatenate([part.images for part in parts])
        return images.reshape(len(images), -1).astype("float32") / 255.0

    x_train, y_train = pixels(splits.train, splits.val), np.concatenate([splits.train.labels, splits.val.labels])
    x_test, y_test = pixels(splits.test), splits.test.labels
    scores = {"train_images": len(y_train), "test_images": len(y_test)}
    for name, model in (("logistic_regression", LogisticRegression(max_iter=2000)), ("rbf_svm", SVC())):
        start = time.perf_counter()
        model.fit(x_train, y_train)
        scores[name] = {"test_accuracy": float(np.mean(model.predict(x_test) == y_test)),
                        "seconds": round(time.perf_counter() - start, 2)}
    return scores


def recipe(flags: list[str], backend: str, workdir: Path, label: str) -> dict:
    """One `--preset cpu` run through the CLI; what metrics.json says of it."""
    runs_dir = workdir / "runs" / label
    command = [sys.executable, "-m", "tlkit.train", "--preset", "cpu", *flags, "--weights", str(WEIGHTS),
               "--runs-dir", str(runs_dir), "--cache-dir", str(workdir / "cache"), "--name", label, "--verbose", "0"]
    result = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "KERAS_BACKEND": backend},
                            capture_output=True, text=True, timeout=3 * 3600)
    if result.returncode:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
    (run,) = list_runs(runs_dir)
    metrics = run.metrics()
    history = run.history()
    best_val = {stage: max((row["val_accuracy"] for row in history if row["stage"] == stage), default=None)
                for stage in ("head", "finetune")}
    return {"test_accuracy": metrics["test_accuracy"], "seconds": metrics["seconds"]["total"],
            "stages": metrics["stages"], "best_val_accuracy": best_val,
            "data_sizes": metrics["data_sizes"]}


def render(results: dict) -> str:
    rows = []
    for entry in results["datasets"]:
        base = entry["baselines"]
        now = entry["recipe"]
        off = entry.get("rules_off") or {}

        def acc(result):
            return f"{100 * result['test_accuracy']:.2f}" if result and "test_accuracy" in result else "—"

        def plan(result):
            stages = (result or {}).get("stages") or {}
            return " + ".join(f"{s['epochs']}/{s['planned_epochs']}" for s in stages.values()) or "—"

        margin = (now.get("test_accuracy", float("nan")) - base["rbf_svm"]["test_accuracy"]) * 100
        rows.append(f"| {entry['name']} | {base['train_images']:,} | {base['test_images']:,} | "
                    f"{acc(base['logistic_regression'])} | {acc(base['rbf_svm'])} | **{acc(now)}** | {margin:+.2f} | "
                    f"{plan(now)} | {now.get('seconds', 0) / 60:.1f} | {acc(off)} |")
    flag = " --ablation" if results["ablation"] else ""
    return "\n".join([
        f"Measured {results['date']} with `python -m benchmarks.small_data{flag}` "
        f"(KERAS_BACKEND={results['backend']}, {results['machine']}; load average {results['load_average'][0]} "
        f"before, {results['load_average'][1]} after).",
        "",
        "| dataset | training images | test images | logistic regression (%) | RBF SVM (%) | "
        "tlkit `cpu` preset (%) | preset − SVM (points) | epochs run/planned (head + finetune) | minutes | "
        "preset without min_steps, warm-up, early stopping (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        *rows,
        "",
        "Baselines are scikit-learn defaults on the raw pixels scaled to [0, 1], fit on all the training "
        "images; tlkit holds 10 % of them out for validation and early stopping. Test accuracy is on the "
        "official 10,000-image Fashion-MNIST test set, and on a seeded stratified 20 % of digits (360 "
        "images: one image is 0.28 points). The recipe: "
        f"`{' '.join(results.get('recipe_flags', []))}`; its ablation adds "
        f"`{' '.join(results.get('rules_off_flags', []))}`.",
    ])


def write_doc(results: dict) -> None:
    replace_marked_section(DOC, MARKERS, render(results))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.small_data", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(DATASETS), help=f"datasets, comma-separated: {DATASETS}")
    parser.add_argument("--backend", default="jax", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--ablation", action="store_true", help="also run the recipe with the small-data rules off")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="measure nothing: render docs from a results file")
    args = parser.parse_args(argv)
    if args.render:
        write_doc(json.loads(Path(args.render).read_text()))
        return 0
    if missing_inputs():
        sys.exit(f"benchmarks.small_data: missing {', '.join(missing_inputs())}")
    load_before = os.getloadavg()[0]
    entries = []
    with tempfile.TemporaryDirectory(prefix="tlkit-small-data-") as tmp:
        workdir = Path(tmp)
        for name in args.only.split(","):
            flags = source_flags(name, workdir)
            entry = {"name": name, "baselines": baselines(flags), "recipe": recipe(flags, args.backend, workdir, name)}
            if args.ablation:
                entry["rules_off"] = recipe([*flags, *RULES_OFF], args.backend, workdir, f"{name}-rules-off")
            print(json.dumps(entry), flush=True)
            entries.append(entry)
    results = {"date": str(date.today()), "backend": args.backend, "ablation": args.ablation,
               "recipe_flags": ["--preset", "cpu"], "rules_off_flags": RULES_OFF,
               "machine": f"{os.cpu_count()}-core CPU", "datasets": entries,
               "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    write_json(RESULTS, results)
    write_doc(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
