"""A trained run's model after training: predictions for image files, and exports that match it."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

import tlkit
from tlkit.export import ExportError, export_model
from tlkit.predict import PredictError

from .helpers import run_cli, smoke_config


@pytest.fixture(scope="module")
def trained_run(synthetic_data_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
    return tlkit.fit(smoke_config(synthetic_data_dir, tmp_path, head={"epochs": 2, "learning_rate": 3e-2},
                                  finetune={"epochs": 1}), verbose=0)


@pytest.fixture(scope="module")
def test_images(trained_run):
    from tlkit.data import load_splits

    config = tlkit.Config.from_dict(trained_run.config())
    return load_splits(config.data, config.seed).test.images[:12]


def write_pngs(images, folder):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"image{index:02d}.png"
        Image.fromarray(image[..., 0]).save(path)
        paths.append(path)
    return paths


def test_predict_cli_classifies_files_and_folders_and_reports_unreadable_ones(trained_run, test_images, tmp_path):
    paths = write_pngs(test_images, tmp_path / "photos" / "nested")
    corrupt = tmp_path / "photos" / "broken.png"
    corrupt.write_bytes(b"\x89PNG not really")
    result = run_cli(trained_run.path, tmp_path / "photos", paths[0], tmp_path / "missing.png",
                     "--format", "json", "--top-k", "2", module="tlkit.predict")
    assert result.returncode == 1, result.stderr  # some inputs failed, the rest were predicted
    output = json.loads(result.stdout)
    assert [item["source"] for item in output["predictions"]] == [str(p) for p in paths] + [str(paths[0])]
    assert {entry["source"] for entry in output["failed"]} == {str(corrupt), str(tmp_path / "missing.png")}
    assert "2 of 15 inputs could not be read" in result.stderr
    model = trained_run.load_model()
    expected = model.predict(test_images, verbose=0)
    class_names = trained_run.class_names()
    for item, row in zip(output["predictions"], expected):
        assert len(item["classes"]) == 2 and item["classes"][0] == class_names[int(row.argmax())]
        assert item["probabilities"][0] == pytest.approx(float(row.max()), abs=1e-5)


def test_classify_takes_arrays_and_names_classes(trained_run, test_images):
    result = tlkit.classify(trained_run, test_images, top_k=3)
    np.testing.assert_allclose(result.probabilities, trained_run.load_model().predict(test_images, verbose=0),
                               atol=1e-6)
    assert result.class_names[0] == "T-shirt/top" and len(result.items[0].classes) == 3
    assert result.items[0].source == "[0]" and not result.failed
    with pytest.raises(PredictError, match=r"uint8 of shape \(N, 28, 28, 1\)"):
        tlkit.classify(trained_run, np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(PredictError, match="neither a run directory nor a .keras file"):
        tlkit.classify(trained_run.path / "nope", test_images)


@pytest.mark.parametrize("fmt", ["keras", "tf_saved_model", "onnx"])
def test_export_reloads_with_its_own_runtime_and_matches_the_model(trained_run, tmp_path, fmt):
    try:
        report = export_model(trained_run, fmt, tmp_path / f"model-{fmt}")
    except ExportError as error:  # a backend that cannot write this format must say which can
        assert "KERAS_BACKEND=tensorflow" in str(error), error
        pytest.skip(f"{keras.backend.backend()} cannot export {fmt}: {error}")
    assert report["max_abs_difference"] <= 1e-4 and report["images_checked"] > 0
    assert report["format"] == fmt and not report["rebuilt_float32"]


def test_mixed_precision_runs_are_exported_in_float32(synthetic_data_dir, tmp_path):
    run = tlkit.fit(smoke_config(synthetic_data_dir, tmp_path, precision="mixed_bfloat16", head={"epochs": 1},
                                 finetune={"epochs": 0}), verbose=0)
    result = run_cli(run.path, "--format", "keras", "--out", tmp_path / "float32.keras", module="tlkit.export")
    assert result.returncode == 0, result.stderr
    assert "(rebuilt in float32)" in result.stdout and "max abs difference" in result.stdout
    exported = tlkit.load_model(tmp_path / "float32.keras")
    assert exported.get_layer("head_dense").compute_dtype == "float32"


def test_load_model_takes_a_run_directory_and_names_a_missing_model(trained_run, tmp_path):
    images = np.zeros((2, *trained_run.load_model().input_shape[1:]), np.uint8)
    np.testing.assert_allclose(tlkit.load_model(trained_run.path).predict(images, verbose=0),
                               trained_run.load_model().predict(images, verbose=0), rtol=1e-6)
    empty = tlkit.runs.create_run(tmp_path / "runs", state="queued")
    with pytest.raises(FileNotFoundError, match="a directory without a model.keras"):
        tlkit.load_model(empty.path)


def test_export_refuses_an_unknown_format_and_a_run_without_model(trained_run, tmp_path):
    assert run_cli(trained_run.path, "--format", "pickle", module="tlkit.export").returncode == 2
    empty = tlkit.runs.create_run(tmp_path / "runs", state="queued")
    with pytest.raises(ExportError, match="has no model.keras"):
        export_model(empty, "keras")


def write_colour_folder(root, per_class=14, seed=0):
    """Three classes told apart by colour; mixed sizes, PNG and JPEG, one grayscale image."""
    rng = np.random.default_rng(seed)
    colours = {"blue": (30, 40, 220), "green": (40, 200, 60), "red": (220, 40, 30)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            side = int(rng.integers(20, 60))
            pixels = np.clip(rng.normal(colour, 25, size=(side, side + 7, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            if name == "green" and index == 0:
                image = image.convert("L")
            image.save(root / name / f"{index}.{'png' if index % 2 else 'jpg'}")
    return sorted(colours)


def test_your_own_images_folder_to_model_to_predictions(tmp_path):
    names = write_colour_folder(tmp_path / "photos")
    runs_dir = tmp_path / "runs"
    result = run_cli("--preset", "smoke", "--data", tmp_path / "photos", "--runs-dir", runs_dir,
                     "--cache-dir", tmp_path / "cache", "--head-epochs", "4", "--head-lr", "0.03",
                     "--finetune-epochs", "1")
    assert result.returncode == 0, result.stderr
    (run,) = tlkit.runs.list_runs(runs_dir)
    metrics = run.metrics()
    assert metrics["class_names"] == names and np.array(metrics["confusion_matrix"]).shape == (3, 3)
    assert run.data_info()["input_shape"] == [32, 32, 3] and run.class_names() == names
    assert run.load_model().output.shape[-1] == 3
    wrong = run.misclassified()
    assert wrong["images"].shape[1:] == (32, 32, 3)  # colour images stay colour for the gallery
    new = tmp_path / "new"
    write_colour_folder(new, per_class=2, seed=1)
    predicted = tlkit.classify(run, new, top_k=1)
    assert len(predicted.items) == 6 and {item.classes[0] for item in predicted.items} <= set(names)
