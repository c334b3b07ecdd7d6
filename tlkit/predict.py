"""Predictions for new images: `python -m tlkit.predict RUN PATH...` and `tlkit.classify`.

Image files are decoded exactly like a folder of training images
(`tlkit.data.decode_images`) to the trained model's uint8 input shape; resizing
to the backbone's input size happens inside the model, as in training. Files
that cannot be read are reported and the rest are still predicted.

Example:

```python
import tlkit

result = tlkit.classify("runs/20261129-101500-cpu-1a2b", ["photos/", "shoe.png"], top_k=3)
for item in result.items:
    print(item.source, item.classes[0], f"{item.probabilities[0]:.1%}")
result.failed           # [(path, reason), ...] of unreadable files
```

```
python -m tlkit.predict runs/20261129-101500-cpu-1a2b photos/ shoe.png --top-k 3 --format csv
```
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tlkit import environment, runs
from tlkit.batches import ArrayBatches, keras_input

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


class PredictError(ValueError):
    """The run, the model or the inputs cannot be used; the message says what to do."""


@dataclasses.dataclass
class Prediction:
    """The top classes of one image, most likely first."""

    source: str
    classes: list[str]
    probabilities: list[float]


@dataclasses.dataclass
class Predictions:
    """What `classify` returns.

    Attributes:
        items: one `Prediction` per image that could be read, in input order.
        failed: `(path, reason)` for each file that could not be read.
        probabilities: `(N, K)` class probabilities of the items.
        class_names: the K class names.
    """

    items: list[Prediction]
    failed: list[tuple[str, str]]
    probabilities: np.ndarray
    class_names: list[str]


def classify(run_or_path, images_or_paths, top_k: int = 3, batch_size: int = 64) -> Predictions:
    """Classifies images with a trained run's model.

    Args:
        run_or_path: a `tlkit.runs.Run`, a run directory, or a `model.keras` file.
        images_or_paths: a uint8 array `(N, H, W[, C])` in the model's input shape, or
            image files and folders (searched recursively), as one path or a list.
        top_k: how many classes each `Prediction` lists.
        batch_size: images per inference batch.

    Raises:
        PredictError: no such run or model, an array of the wrong shape, or no images found.
    """
    model_path, class_names = _model_and_classes(run_or_path)
    model = runs.load_model(model_path)
    input_shape = tuple(int(size) for size in model.input.shape[1:])
    class_names = class_names or [str(index) for index in range(int(model.output.shape[-1]))]
    images, sources, failed = _inputs(images_or_paths, input_shape)
    if len(images):
        batches = keras_input(ArrayBatches(images, batch_size=batch_size))
        probabilities = np.asarray(model.predict(batches, verbose=0), np.float64)
    else:
        probabilities = np.zeros((0, len(class_names)))
    top_k = max(1, min(int(top_k), len(class_names)))
    order = np.argsort(-probabilities, axis=1)[:, :top_k]
    items = [Prediction(source, [class_names[i] for i in ranked], [float(row[i]) for i in ranked])
             for source, ranked, row in zip(sources, order, probabilities)]
    return Predictions(items, failed, probabilities, list(class_names))


def find_images(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files among `paths` (folders searched recursively, sorted); missing paths as failures."""
    from tlkit.data import IMAGE_EXTENSIONS

    suffixes = {f".{ext.lower().lstrip('.')}" for ext in IMAGE_EXTENSIONS}
    found, missing = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        elif path.is_file():
            found.append(path)
        else:
            missing.append((str(path), "no such file or folder"))
    return found, missing


def _model_and_classes(run_or_path) -> tuple[Path, list[str] | None]:
    if isinstance(run_or_path, runs.Run):
        run = run_or_path
    else:
        path = Path(run_or_path).expanduser()
        if path.is_file() and path.suffix == ".keras":
            return path, None
        if not path.is_dir():
            raise PredictError(f"{str(path)!r} is neither a run directory nor a .keras file")
        run = runs.Run(path)
    if not run.model_path.is_file():
        raise PredictError(f"run {run.run_id} has no model.keras yet (state: {run.status().get('state')}); "
                           "predict with a run that finished at least one stage")
    return run.model_path, run.class_names()


def _inputs(images_or_paths, input_shape: tuple[int, ...]):
    """uint8 images in the model's input shape, a name for each, and the failures."""
    if isinstance(images_or_paths, np.ndarray):
        images = images_or_paths[..., None] if images_or_paths.ndim == len(input_shape) else images_or_paths
        if images.shape[1:] != input_shape or images.dtype != np.uint8:
            raise PredictError(f"images must be uint8 of shape (N, {', '.join(map(str, input_shape))}) like the "
                               f"training data; got {images.dtype} {images.shape} (pass image files to have "
                               "them decoded and resized like the training data)")
        return images, [f"[{index}]" for index in range(len(images))], []
    paths = [images_or_paths] if isinstance(images_or_paths, (str, os.PathLike)) else list(images_or_paths)
    files, failed = find_images(paths)
    if not files and not failed:
        raise PredictError(f"no image files found in {', '.join(map(str, paths))}")
    from tlkit.data import decode_images

    images, decode_failures = decode_images([str(f) for f in files], input_shape)
    bad = {path for path, _ in decode_failures}
    sources = [str(f) for f in files if str(f) not in bad]
    return images, sources, failed + list(decode_failures)


# ---- command line -------------------------------------------------------------------------


def format_predictions(result: Predictions, fmt: str = "table") -> str:
    """The predictions as an aligned table, CSV (one row per image and rank) or JSON."""
    if fmt == "json":
        return json.dumps({"class_names": result.class_names,
                           "predictions": [dataclasses.asdict(item) for item in result.items],
                           "failed": [{"source": path, "error": reason} for path, reason in result.failed]},
                          indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["source", "rank", "class", "probability"])
        for item in result.items:
            for rank, (name, probability) in enumerate(zip(item.classes, item.probabilities), start=1):
                writer.writerow([item.source, rank, name, f"{probability:.6f}"])
        return buffer.getvalue().rstrip("\n")
    rows = [(item.source, "  ".join(f"{name} {probability:.1%}" for name, probability
                                    in zip(item.classes, item.probabilities))) for item in result.items]
    width = max((len(source) for source, _ in rows), default=4)
    lines = [f"{'file':<{width}}  top classes", *(f"{source:<{width}}  {top}" for source, top in rows)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tlkit.predict",
                                     description="Classify image files with a trained run's model.")
    parser.add_argument("run", help="A run directory (or a model.keras file).")
    parser.add_argument("paths", nargs="+", help="Image files and/or folders (searched recursively).")
    parser.add_argument("--top-k", type=int, default=3, help="Classes listed per image (default 3).")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="Output format (default table).")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per inference batch (default 64).")
    return parser


@environment.quiet_native_startup()  # TensorFlow's C++ start-up lines off stderr
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        print("error: --top-k and --batch-size must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = classify(args.run, args.paths, top_k=args.top_k, batch_size=args.batch_size)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(format_predictions(result, args.format))
    for path, reason in result.failed:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} of {len(result.failed) + len(result.items)} inputs could not be read",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
