import gzip

import numpy as np
import pytest

from tlkit.config import DataConfig
from tlkit.data import (
    DataError,
    load_fashion_mnist,
    load_splits,
    read_idx,
    stratified_split,
    stratified_subset,
    write_idx,
)

from .conftest import write_synthetic_dataset

pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip_gz_and_raw(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    path = tmp_path / f"images-idx3-ubyte{suffix}"
    write_idx(path, array)
    np.testing.assert_array_equal(read_idx(path), array)
    if suffix:
        assert gzip.decompress(path.read_bytes())[:4] == bytes([0, 0, 8, 3])


def test_corrupt_idx_files_raise_clear_errors(tmp_path):
    truncated = tmp_path / "t-idx1-ubyte"
    write_idx(truncated, np.arange(10, dtype=np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(truncated)
    bad_magic = tmp_path / "m-idx1-ubyte"
    bad_magic.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(bad_magic)
    not_gzip = tmp_path / "n-idx1-ubyte.gz"
    not_gzip.write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(not_gzip)


def test_missing_file_names_the_expected_files(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path)


def test_raw_and_gz_directories_load_the_same(tmp_path):
    gz = write_synthetic_dataset(tmp_path / "gz", gz=True)
    raw = write_synthetic_dataset(tmp_path / "raw", gz=False)
    for from_gz, from_raw in zip(load_fashion_mnist(gz), load_fashion_mnist(raw)):
        np.testing.assert_array_equal(from_gz[0], from_raw[0])
        np.testing.assert_array_equal(from_gz[1], from_raw[1])


def test_failed_download_points_to_data_dir(monkeypatch):
    import keras

    def offline():
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(DataError, match="--data-dir"):
        load_fashion_mnist(None)


def test_stratified_split_is_proportional_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), 100)
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert len(held) == 100 and len(keep) == 900
    assert np.bincount(labels[held]).tolist() == [10] * 10
    assert not set(keep) & set(held)
    np.testing.assert_array_equal(held, stratified_split(labels, 0.1, seed=3)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.1, seed=4)[1])


def test_stratified_subset_respects_limit_and_class_balance():
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 50, 50, 50, 50, 40])
    subset = stratified_subset(labels, 97, seed=0)
    assert len(subset) == 97 and len(set(subset)) == 97
    counts = np.bincount(labels[subset], minlength=10)
    assert counts.max() - counts.min() <= 2
    assert len(stratified_subset(labels, None, seed=0)) == len(labels)


def test_load_splits_limits_and_keeps_uint8(synthetic_data_dir):
    splits = load_splits(DataConfig(data_dir=str(synthetic_data_dir), train_limit=200, test_limit=50,
                                    validation_split=0.2), seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (160, 40, 50)
    assert splits.train.images.dtype == np.uint8 and splits.train.images.shape[1:] == (28, 28, 1)
    assert np.bincount(splits.val.labels).tolist() == [4] * 10
    assert not set(splits.train.indices) & set(splits.val.indices)
    assert len(splits.class_names) == 10 and splits.class_names[0] == "T-shirt/top"
