"""Damaged files and bad inputs give one clear line (or a tolerant read), never a traceback."""

import json
import math
import os

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from tlkit import runs
from tlkit.cli import main
from tlkit.config import Config, ConfigError, DataConfig, flatten_dict, read_config_file
from tlkit.data import IDX_FILES, DataError, load_splits, read_idx, write_idx

from .conftest import make_images


def test_damaged_history_reads_the_rows_before_the_damage(tmp_path):
    run = runs.create_run(tmp_path)
    good = "stage,epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\nhead,1,0.5,0.8,,,0.001,2.0\n"
    run.file(runs.HISTORY_FILE).write_bytes(good.encode() + b"head,2,\xff\xfe,0.9,,,0.001,2.0\n")
    assert [row["epoch"] for row in run.history()] == [1]  # the undecodable row is skipped
    run.file(runs.HISTORY_FILE).write_text(good + "head,2," + "9" * 200_000 + ",0.9,,,0.001,2.0\n")
    assert [row["epoch"] for row in run.history()] == [1]  # a field over csv's limit ends the read


@pytest.mark.parametrize("name, content, message", [
    ("run.toml", b"[model]\ndropout = 0.2\n# \xff\xfe\n", "is not UTF-8 text"),
    ("run.json", b"[1, 2, 3]", "must hold an object of config fields at the top level"),
    ("run.json", b'"cpu"', "not a str"),
    ("run.yaml", b"model: {}", "use a .json or .toml file"),
])
def test_bad_config_files_are_config_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_config_file(path)
    assert main(["--config", str(path), "--dry-run"]) == 2


def test_a_preset_key_that_is_not_a_name_is_refused(tmp_path, capsys):
    # Found by the fuzzing below: it was a TypeError traceback.
    path = tmp_path / "run.json"
    path.write_text('{"preset": [0]}')
    assert main(["--config", str(path), "--dry-run"]) == 2
    assert "preset: unknown preset [0]" in capsys.readouterr().err


def test_a_forged_idx_header_is_a_clear_error(tmp_path):
    path = tmp_path / "forged-idx3-ubyte"
    header = bytes([0, 0, 8, 3]) + b"".join((2 ** 31).to_bytes(4, "big") for _ in range(3))
    path.write_bytes(header + bytes(100))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)


def write_idx_set(directory, train_labels, test_labels):
    directory.mkdir(parents=True, exist_ok=True)
    for part, labels in (("train", train_labels), ("test", test_labels)):
        write_idx(directory / f"{IDX_FILES[f'{part}_images']}.gz", make_images(labels))
        write_idx(directory / f"{IDX_FILES[f'{part}_labels']}.gz", labels.astype(np.uint8))
    return directory


def test_a_single_class_training_set_is_refused(tmp_path):
    data = write_idx_set(tmp_path / "one-class", np.zeros(50, int), np.arange(20) % 10)
    with pytest.raises(DataError, match="holds only class 0; a classifier needs images of at least 2 classes"):
        load_splits(DataConfig(data_dir=str(data)))


def test_an_empty_test_set_is_refused_before_training(tmp_path):
    np.savez(tmp_path / "no-test.npz", x_train=np.zeros((30, 8, 8), np.uint8), y_train=np.arange(30) % 3,
             x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, int))
    with pytest.raises(DataError, match="test"):
        load_splits(DataConfig(source=str(tmp_path / "no-test.npz")))


def test_a_runs_dir_that_is_a_file_is_refused_before_keras(tmp_path, capsys):
    not_a_dir = tmp_path / "runs"
    not_a_dir.write_text("oops")
    assert main(["--preset", "smoke", "--runs-dir", str(not_a_dir)]) == 2
    assert f"runs_dir: {str(not_a_dir)!r} is a file, not a directory" in capsys.readouterr().err
    with pytest.raises(runs.RunsDirError):
        runs.create_run(not_a_dir)


def test_config_files_json_top_level_object_still_works(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"model": {"dropout": 0.2}}))
    assert read_config_file(path) == {"model": {"dropout": 0.2}}


def test_a_tiny_training_set_trains_with_a_warning_recorded_in_the_run(tmp_path, capsys):
    # 15 images of 10 classes: it trains, but says what to expect.
    np.savez(tmp_path / "tiny.npz", x_train=make_images(np.arange(15) % 10), y_train=np.arange(15) % 10,
             x_test=make_images(np.arange(20) % 10), y_test=np.arange(20) % 10)
    runs_dir = tmp_path / "runs"
    assert main(["--preset", "smoke", "--data", str(tmp_path / "tiny.npz"), "--validation-split", "0",
                 "--runs-dir", str(runs_dir), "--head-epochs", "1", "--finetune-epochs", "0"]) == 0
    warning = "only 15 training images for 10 classes (fewer than 5 per class): expect a noisy, unreliable model"
    assert warning in capsys.readouterr().err
    (run,) = runs.list_runs(runs_dir)
    assert len(run.data_info()["warnings"]) == 1 and warning in run.data_info()["warnings"][0]


def test_classes_without_training_images_are_named_in_a_warning(tmp_path, capsys):
    data = write_idx_set(tmp_path / "eight", np.arange(400) % 8, np.arange(20) % 10)
    splits = load_splits(DataConfig(data_dir=str(data)))
    assert "no training images for 2 of 10 classes (Bag, Ankle boot): the model can never predict them" in (
        splits.warnings[0])
    assert "no training images for 2 of 10 classes" in capsys.readouterr().err


# ---- fuzzing: whatever a config file or an IDX header holds, the answer is a clear error or a run ----

# 60 examples each in CI; benchmarks/reliability.py runs thousands (TLKIT_FUZZ_EXAMPLES).
SETTINGS = hypothesis.settings(max_examples=int(os.environ.get("TLKIT_FUZZ_EXAMPLES", 60)), deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
CONFIG_KEYS = sorted(flatten_dict(Config().to_dict()))
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                                           st.integers(), max_size=2))


@SETTINGS
@hypothesis.given(fields=st.dictionaries(st.sampled_from(CONFIG_KEYS + ["bogus", "model.bogus"]), VALUES, max_size=4),
                  as_toml=st.booleans())
def test_fuzzed_config_files_are_accepted_or_refused_with_exit_2(tmp_path, capsys, fields, as_toml):
    nested: dict = {}
    for key, value in fields.items():
        *parents, leaf = key.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {}) if isinstance(target.get(parent, {}), dict) else {}
        target[leaf] = value
    path = tmp_path / ("fuzz.toml" if as_toml else "fuzz.json")
    if as_toml:
        path.write_text("\n".join(f"{key} = {json.dumps(value)}" for key, value in fields.items()))
    else:
        path.write_text(json.dumps(nested))
    assert main(["--config", str(path), "--dry-run"]) in (0, 2)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err


@SETTINGS
@hypothesis.given(content=st.binary(max_size=200), suffix=st.sampled_from([".toml", ".json"]))
def test_fuzzed_config_bytes_are_accepted_or_refused_with_exit_2(tmp_path, capsys, content, suffix):
    path = tmp_path / f"bytes{suffix}"
    path.write_bytes(content)
    assert main(["--config", str(path), "--dry-run"]) in (0, 2)


SHAPES = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


@SETTINGS
@hypothesis.given(train_images=SHAPES, train_labels=SHAPES, test_images=SHAPES, test_labels=SHAPES,
                  damage=st.sampled_from(["none", "magic", "ndim", "truncate", "extend"]))
def test_fuzzed_idx_headers_load_or_raise_a_data_error(tmp_path, train_images, train_labels, test_images,
                                                       test_labels, damage):
    shapes = {"train_images": train_images, "train_labels": train_labels,
              "test_images": test_images, "test_labels": test_labels}
    for name, shape in shapes.items():
        array = (np.arange(math.prod(shape)) % 3).astype(np.uint8).reshape(shape)
        path = tmp_path / IDX_FILES[name]
        write_idx(path, array)
        if name == "train_images" and damage != "none":
            raw = bytearray(path.read_bytes())
            if damage == "magic":
                raw[2] = 0x0D
            elif damage == "ndim":
                raw[3] = 200
            elif damage == "truncate":
                raw = raw[:-1] if len(raw) > 4 else raw[:2]
            else:
                raw += b"\0"
            path.write_bytes(bytes(raw))
    try:
        splits = load_splits(DataConfig(data_dir=str(tmp_path), validation_split=0.0))
    except DataError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert splits.train.images.ndim == 4 and len(splits.train.images) == len(splits.train.labels)
