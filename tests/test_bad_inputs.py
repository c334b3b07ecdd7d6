"""Damaged files and bad inputs give one clear line (or a tolerant read), never a traceback."""

import json

import numpy as np
import pytest

from tlkit import runs
from tlkit.cli import main
from tlkit.config import ConfigError, DataConfig, read_config_file
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
