"""Export a run's model for serving: `python -m tlkit.export RUN --format ...` and `tlkit.export_model`.

Formats: `keras` (a float32 `.keras` file), `tf_saved_model` and `onnx`, written by
Keras' own `model.export`. A mixed-precision model is rebuilt in float32 first
(same weights). After writing, the artefact is loaded back with its own runtime
(Keras, TensorFlow, onnxruntime) and its probabilities on a batch of the run's
test images are compared with the Keras model's: the export fails when the
largest difference is above the tolerance (1e-4).

Example:

```python
import tlkit

report = tlkit.export_model("runs/20261129-101500-cpu-1a2b", "onnx")
report["path"], report["max_abs_difference"]
```

```
python -m tlkit.export runs/20261129-101500-cpu-1a2b --format tf_saved_model --out exported/
```
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tlkit import environment, runs

FORMATS = ("keras", "tf_saved_model", "onnx")
SUFFIXES = {"keras": ".keras", "tf_saved_model": "", "onnx": ".onnx"}
TOLERANCE = 1e-4
CHECK_IMAGES = 64


class ExportError(RuntimeError):
    """The model could not be exported or the artefact does not match; the message says what to do."""


def export_model(run_or_path, format: str = "keras", out: str | Path | None = None,
                 tolerance: float = TOLERANCE) -> dict:
    """Exports a run's model and checks the artefact against it.

    Args:
        run_or_path: a `tlkit.runs.Run` or a run directory.
        format: `keras`, `tf_saved_model` or `onnx`.
        out: where to write (default: `<run>/export/model<suffix>`).
        tolerance: the largest allowed difference of probabilities (artefact vs Keras).

    Returns:
        `{"path", "format", "backend", "max_abs_difference", "images_checked", "rebuilt_float32"}`.

    Raises:
        ExportError: unknown format, a backend that cannot write it, a missing runtime, or a
            difference above `tolerance` (the artefact is kept for inspection).
    """
    import keras

    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    run = run_or_path if isinstance(run_or_path, runs.Run) else runs.Run(run_or_path)
    if not run.model_path.is_file():
        raise ExportError(f"run {run.run_id} has no model.keras (state: {run.status().get('state')})")
    model, rebuilt = _float32_model(runs.load_model(run.model_path))
    out = Path(out) if out else run.file("export") / f"model{SUFFIXES[format]}"
    if SUFFIXES[format] and out.suffix != SUFFIXES[format]:
        out = out.with_name(out.name + SUFFIXES[format])  # Keras and onnxruntime go by the suffix
    out.parent.mkdir(parents=True, exist_ok=True)
    images = _check_images(run, model)
    expected = np.asarray(model.predict(images, verbose=0), np.float64)
    model(images[:1])  # some exporters need a model that has been called directly
    backend = keras.backend.backend()
    if format == "keras":
        model.save(out)
        got = runs.load_model(out).predict(images, verbose=0)
    else:
        try:
            model.export(str(out), format=format, verbose=False)
        except ImportError as error:
            raise ExportError(f"exporting {format} under {backend} needs a package that is missing ({error}); "
                              "install it, or export with KERAS_BACKEND=tensorflow (tlkit's dev extra has what "
                              "that needs)") from None
        except Exception as error:  # exporters fail in backend-specific ways (jax shape polymorphism, torch.export)
            raise ExportError(f"the {backend} backend could not export {format} ({type(error).__name__}: "
                              f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); try "
                              "KERAS_BACKEND=tensorflow, which exports every format") from None
        got = _run_artefact(format, out, images)
    difference = float(np.max(np.abs(np.asarray(got, np.float64) - expected)))
    report = {"path": str(out), "format": format, "backend": backend, "max_abs_difference": difference,
              "images_checked": int(len(images)), "rebuilt_float32": rebuilt}
    if not difference <= tolerance:
        raise ExportError(f"the exported {format} model differs from the Keras model by {difference:.3g} "
                          f"(> {tolerance:g}) on {len(images)} test images; kept at {out} for inspection")
    return report


def _float32_model(model):
    """`model` itself when it computes in float32, else a float32 copy with the same weights."""
    import keras

    if all(layer.dtype_policy.compute_dtype == "float32" for layer in _all_layers(model)):
        return model, False
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        config = model.get_config()
        for layer_config in _layer_configs(config):
            layer_config.get("config", {}).pop("dtype", None)  # back to the float32 global policy
        copy = model.__class__.from_config(config)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy, True


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _layer_configs(config: dict):
    for layer in config.get("layers", []):
        yield layer
        yield from _layer_configs(layer.get("config", {}))


def _check_images(run: runs.Run, model) -> np.ndarray:
    """A batch of the run's test images, or seeded random uint8 images when the data is not at hand."""
    from tlkit.config import Config, ConfigError
    from tlkit.data import DataError, load_splits

    shape = tuple(int(size) for size in model.input.shape[1:])
    try:
        config = Config.from_dict(run.config() or {})
        splits = load_splits(config.data, config.seed, image_size=config.model.image_size)
        images = splits.test.images[:CHECK_IMAGES]
        if images.shape[1:] == shape and len(images):
            return images
    except (ConfigError, DataError, OSError):
        pass
    print("note: the run's test images are not at hand; checking on random images", file=sys.stderr)
    return np.random.default_rng(0).integers(0, 256, size=(CHECK_IMAGES, *shape), dtype=np.uint8)


def _run_artefact(format: str, path: Path, images: np.ndarray) -> np.ndarray:
    if format == "tf_saved_model":
        try:
            import tensorflow as tf  # backend-specific helper: TensorFlow is the SavedModel runtime
        except ImportError:
            raise ExportError("checking a SavedModel needs tensorflow: pip install tensorflow") from None
        artefact = tf.saved_model.load(str(path))  # held: its variables die with it
        return np.asarray(artefact.serve(images))
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("checking an ONNX model needs onnxruntime: pip install onnxruntime") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inputs,) = session.get_inputs()
    return np.asarray(session.run(None, {inputs.name: images})[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tlkit.export",
                                     description="Export a run's model and check the artefact against it.")
    parser.add_argument("run", help="A run directory.")
    parser.add_argument("--format", choices=FORMATS, default="keras", help="Export format (default keras).")
    parser.add_argument("--out", help="Output path (default: RUN/export/model[.keras|.onnx]).")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"Largest allowed difference of probabilities (default {TOLERANCE:g}).")
    return parser


@environment.quiet_native_startup()  # TensorFlow's C++ start-up lines off stderr
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = export_model(args.run, args.format, args.out, args.tolerance)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rebuilt = " (rebuilt in float32)" if report["rebuilt_float32"] else ""
    print(f"exported {report['format']}{rebuilt} to {report['path']} on {report['backend']}; max abs difference "
          f"of probabilities vs the Keras model on {report['images_checked']} images: "
          f"{report['max_abs_difference']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
