"""Data sources at the public API: folders of images, .npz files, the built-in datasets (no network)."""

import os
import pickle
import tarfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tlkit import data
from tlkit.config import Config, ConfigError, DataConfig, field_specs
from tlkit.data import IMAGE_EXTENSIONS, DataError, decode_images, load_splits

from .conftest import write_synthetic_dataset

CLASSES = ("dog", "cat", "bird")  # written in this order; class_names come back sorted
EXTENSIONS = "png, jpg, jpeg, bmp, gif, webp"
FORMATS = ("png", "jpg", "bmp", "gif", "PNG", "jpeg", "webp", "png", "jpg")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test decodes into its own cache."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(directory))
    return directory


def save_image(path: Path, height: int, width: int, level: int, gray: bool, seed: int = 0) -> Path:
    """A noisy image around brightness `level` (RGB or grayscale), in the format its suffix names."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(level + rng.integers(-8, 9, size=(height, width, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if gray else pixels).save(path)
    return path


def write_class_folder(root: Path, classes=CLASSES, per_class: int = 9, gray: bool | None = None,
                       broken: bool = True) -> Path:
    """One subfolder per class; class k is brightness 40 + 80k; sizes, modes and formats mixed.

    With `broken`, cat/ gets a truncated PNG (its header reads, its pixels do not) and dog/
    a file of random bytes named .jpg.
    """
    for k, name in enumerate(classes):
        for i in range(per_class):
            is_gray = (i % 2 == 0) if gray is None else gray
            suffix = FORMATS[i % len(FORMATS)]
            suffix = "png" if is_gray and suffix == "webp" else suffix  # WebP stores gray as RGB
            save_image(root / name / f"img{i}.{suffix}", 20 + 5 * i, 40 - 3 * i,
                       40 + 80 * k, is_gray, seed=10 * k + i)
    (root / CLASSES[0] / "notes.txt").write_text("not an image: ignored")
    (root / CLASSES[0] / ".hidden.png").write_bytes(b"ignored")
    if broken:
        whole = (root / "cat" / "img1.jpg").read_bytes()
        png = save_image(root / "cat" / "broken.png", 30, 30, 100, False)
        png.write_bytes(png.read_bytes()[:80])
        (root / "dog" / "garbage.jpg").write_bytes(np.random.default_rng(1).bytes(len(whole)))
    return root


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_class_folder(tmp_path / "photos")


def brightness_by_label(split) -> list[float]:
    return [float(split.images[split.labels == label].mean()) for label in np.unique(split.labels)]


# ---- a folder with one subfolder per class ------------------------------------------------


def test_class_folder_gives_seeded_stratified_splits_and_skips_the_broken_files(photos, capsys):
    splits = load_splits(DataConfig(source=str(photos)), seed=0, image_size=24)
    assert splits.class_names == ("bird", "cat", "dog")
    assert splits.input_shape == (24, 24, 3)
    for split in (splits.train, splits.val, splits.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
        assert split.images.shape[1:] == (24, 24, 3)
    # 9 readable images per class: test 20 % (2 each), val 10 % of the other 7 (1 each).
    assert [np.bincount(s.labels).tolist() for s in (splits.train, splits.val, splits.test)] == [
        [6, 6, 6], [1, 1, 1], [2, 2, 2]]
    indices = [set(s.indices.tolist()) for s in (splits.train, splits.val, splits.test)]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    for split in (splits.train, splits.val, splits.test):  # indices point into the sorted file list
        assert [splits.files[i].split("/")[0] for i in split.indices] == [splits.class_names[k] for k in split.labels]
    assert list(splits.files) == sorted(splits.files) and "dog/notes.txt" not in splits.files
    # bird was written darkest, dog brightest: the labels follow the folders.
    assert brightness_by_label(splits.train) == sorted(brightness_by_label(splits.train), reverse=True)

    assert dict(splits.skipped).keys() == {"cat/broken.png", "dog/garbage.jpg"}
    assert "truncated" in dict(splits.skipped)["cat/broken.png"]
    err = capsys.readouterr().err
    assert "skipping 2 unreadable image file(s)" in err and "cat/broken.png" in err and "dog/garbage.jpg" in err
    assert splits.identity == {"kind": "folder", "source": str(photos.resolve()), "layout": "classes",
                               "files": splits.identity["files"], "shape": [24, 24, 3], "channels": 3}

    again = load_splits(DataConfig(source=str(photos)), seed=0, image_size=24)
    assert again.fingerprint() == splits.fingerprint()
    other = load_splits(DataConfig(source=str(photos)), seed=1, image_size=24)
    assert not np.array_equal(other.test.indices, splits.test.indices)
    assert other.identity == splits.identity


def test_storage_size_comes_from_the_config_before_the_model(photos):
    assert load_splits(DataConfig(source=str(photos), image_size=12), image_size=24).input_shape == (12, 12, 3)
    assert load_splits(DataConfig(source=str(photos)), image_size=20).input_shape == (20, 20, 3)


def test_limits_apply_to_folders(photos):
    splits = load_splits(DataConfig(source=str(photos), train_limit=20, test_limit=10, validation_split=0.0),
                         image_size=16)
    assert splits.sizes() == {"train": 20, "val": 0, "test": 6}  # 20 of 21; test 6 < 10
    small = load_splits(DataConfig(source=str(photos), test_split=0.5, test_limit=10, validation_split=0.0),
                        image_size=16)
    assert len(small.test) == 10 and np.bincount(small.test.labels).max() - np.bincount(small.test.labels).min() <= 1


def test_strict_turns_unreadable_files_into_an_error(photos):
    with pytest.raises(DataError) as error:
        load_splits(DataConfig(source=str(photos), strict=True), image_size=16)
    message = str(error.value)
    assert f"{photos.resolve()}: 2 unreadable image file(s): cat/broken.png (" in message
    assert "dog/garbage.jpg (" in message and "--strict-data" in message


def test_skip_warning_names_the_first_few_then_a_count(tmp_path, capsys):
    root = write_class_folder(tmp_path / "many", broken=False, per_class=9)
    for i in range(8):
        (root / "cat" / f"bad{i}.png").write_bytes(b"not a png")
    for i in range(7):  # keep cat above the minimum of 7 readable images
        save_image(root / "cat" / f"extra{i}.png", 10, 10, 90, False)
    splits = load_splits(DataConfig(source=str(root)), image_size=16)
    err = capsys.readouterr().err
    assert len(splits.skipped) == 8
    assert "skipping 8 unreadable image file(s)" in err and "cat/bad4.png" in err and "and 3 more" in err
    assert "cat/bad5.png" not in err


def test_an_all_gray_folder_has_one_channel(tmp_path):
    root = write_class_folder(tmp_path / "gray", gray=True, broken=False)
    splits = load_splits(DataConfig(source=str(root)), image_size=16)
    assert splits.input_shape == (16, 16, 1) and splits.identity["channels"] == 1


def test_a_broken_colour_file_does_not_make_a_gray_folder_rgb(tmp_path):
    root = write_class_folder(tmp_path / "gray", gray=True, broken=False)
    png = save_image(root / "cat" / "colour.png", 30, 30, 100, gray=False)
    png.write_bytes(png.read_bytes()[:80])  # header says RGB, pixels are cut off
    splits = load_splits(DataConfig(source=str(root)), image_size=16)
    assert splits.input_shape == (16, 16, 1) and [path for path, _ in splits.skipped] == ["cat/colour.png"]


# ---- the split layout ---------------------------------------------------------------------


def write_split_layout(root: Path, parts=("train", "test"), counts=None) -> Path:
    counts = counts or {"train": 10, "test": 4, "val": 3}
    for part in parts:
        for k, name in enumerate(("apple", "pear")):
            for i in range(counts[part]):
                save_image(root / part / name / f"{i}.png", 16 + i, 20, 60 + 100 * k, gray=False, seed=i)
    return root


def test_split_layout_uses_the_test_folder_and_splits_val_from_train(tmp_path):
    root = write_split_layout(tmp_path / "fruit")
    splits = load_splits(DataConfig(source=str(root), validation_split=0.2), image_size=16)
    assert splits.class_names == ("apple", "pear") and splits.identity["layout"] == "split"
    assert splits.sizes() == {"train": 16, "val": 4, "test": 8}
    assert all(splits.files[i].startswith("test/") for i in splits.test.indices)
    assert all(splits.files[i].startswith("train/") for i in np.concatenate([splits.train.indices,
                                                                             splits.val.indices]))
    assert np.bincount(splits.test.labels).tolist() == [4, 4]


def test_split_layout_with_a_val_folder_keeps_all_of_train(tmp_path):
    root = write_split_layout(tmp_path / "fruit", parts=("train", "test", "val"))
    splits = load_splits(DataConfig(source=str(root), validation_split=0.2), image_size=16)
    assert splits.sizes() == {"train": 20, "val": 6, "test": 8}
    assert all(splits.files[i].startswith("val/") for i in splits.val.indices)


# ---- the decode cache ---------------------------------------------------------------------


@pytest.fixture
def image_opens(monkeypatch) -> list:
    """Records every image file Pillow opens."""
    opened = []
    original = Image.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def test_second_load_reads_the_decode_cache_and_changes_invalidate_it(photos, cache_dir, image_opens, monkeypatch):
    config = DataConfig(source=str(photos))
    first = load_splits(config, seed=3, image_size=16)
    assert image_opens and list((cache_dir / "decoded").glob("*.npy"))

    def no_decoding(path, *args, **kwargs):
        raise AssertionError(f"decoded {path} although the cache holds it")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_decoding)
        second = load_splits(config, seed=3, image_size=16)
    assert second.fingerprint() == first.fingerprint() and second.skipped == first.skipped

    image_opens.clear()
    os.utime(photos / "bird" / "img0.png", ns=(1_000_000_000, 1_000_000_000))  # touched
    touched = load_splits(config, seed=3, image_size=16)
    assert image_opens and touched.identity["files"] != first.identity["files"]

    image_opens.clear()
    save_image(photos / "bird" / "new.png", 12, 12, 40, gray=False)
    added = load_splits(config, seed=3, image_size=16)
    assert image_opens and len(added.files) == len(first.files) + 1

    image_opens.clear()
    load_splits(config, seed=3, image_size=20)  # another storage size is another entry
    assert image_opens


def test_a_corrupt_cache_entry_is_decoded_again(photos, cache_dir, image_opens):
    first = load_splits(DataConfig(source=str(photos)), image_size=16)
    for entry in (cache_dir / "decoded").glob("*.npy"):
        entry.write_bytes(b"garbage")
    image_opens.clear()
    assert load_splits(DataConfig(source=str(photos)), image_size=16).fingerprint() == first.fingerprint()
    assert image_opens


# ---- bad folders ------------------------------------------------------------------------


def test_folder_errors_name_the_folder_and_the_problem(tmp_path):
    def error_of(root, **fields):
        with pytest.raises(DataError) as error:
            load_splits(DataConfig(source=str(root), **fields), image_size=16)
        return str(error.value)

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    assert error_of(empty).startswith(f"{empty}: no images found; expected one subfolder per class")

    loose = tmp_path / "loose"
    save_image(loose / "x.png", 8, 8, 10, True)
    assert "1 image files lie directly in it" in error_of(loose)

    one = write_class_folder(tmp_path / "one", classes=("dog",), broken=False)
    assert error_of(one) == f"{one}: only one class folder ('dog'); a classifier needs at least 2 classes"

    hollow = write_class_folder(tmp_path / "hollow", classes=("dog", "cat"), broken=False)
    (hollow / "owl").mkdir()
    (hollow / "owl" / "readme.txt").write_text("no images here")
    assert error_of(hollow) == f"{hollow}: class folder(s) 'owl' hold no image files ({EXTENSIONS})"

    few = write_class_folder(tmp_path / "few", classes=("dog", "cat"), broken=False)
    for path in sorted((few / "cat").glob("img*"))[3:]:
        path.unlink()
    assert error_of(few) == (f"{few / 'cat'}: 3 images are too few to split with test_split 0.2 and "
                             "validation_split 0.1; each class needs at least 7 (lower the splits or add images)")
    assert load_splits(DataConfig(source=str(few), test_split=0.4, validation_split=0.0), image_size=8)

    mixed = write_split_layout(tmp_path / "mixed")
    save_image(mixed / "test" / "plum" / "0.png", 8, 8, 10, False)
    assert error_of(mixed) == f"{mixed / 'test'}: its class folders differ from train/'s (extra plum)"
    (mixed / "test" / "plum" / "0.png").unlink()
    (mixed / "test" / "plum").rmdir()
    for path in (mixed / "test" / "pear").iterdir():
        path.unlink()
    (mixed / "test" / "pear").rmdir()
    assert error_of(mixed) == f"{mixed / 'test'}: its class folders differ from train/'s (missing pear)"

    val = write_split_layout(tmp_path / "val", parts=("train", "test", "val"))
    for path in (val / "val" / "pear").iterdir():
        path.rename(val / "val" / "pear" / f"{path.stem}.tiff")
    assert error_of(val) == f"{val / 'val'}: class folder(s) 'pear' hold no image files ({EXTENSIONS})"

    extra = write_split_layout(tmp_path / "extra")
    (extra / "misc").mkdir()
    assert "has train/ and test/ (the split layout) but also misc/" in error_of(extra)

    unreadable = write_split_layout(tmp_path / "unreadable")
    for path in (unreadable / "test" / "pear").iterdir():
        path.write_bytes(b"broken")
    assert error_of(unreadable) == f"{unreadable / 'test' / 'pear'}: no readable images"


def test_missing_sources_fail_in_config_validation_and_in_load_splits(tmp_path):
    text = tmp_path / "labels.txt"
    text.write_text("x")
    for source in (str(tmp_path / "nowhere"), str(text), "imagenet"):
        with pytest.raises(ConfigError, match=r"data\.source: .* is neither a built-in name nor an existing folder "
                                              r"or \.npz file; use a built-in dataset \(fashion_mnist, mnist"):
            Config.from_preset("smoke", {"data": {"source": source}}).validate()
        with pytest.raises(DataError, match="is neither a built-in name nor an existing folder or .npz file"):
            load_splits(DataConfig(source=source))


def test_config_accepts_every_source_form_and_rejects_data_dir_beside_a_path(photos, tmp_path):
    archive = tmp_path / "set.NPZ"
    archive.write_bytes(b"")
    for source in ("cifar100", str(photos), str(archive)):
        Config.from_preset("cpu", {"data": {"source": source}}).validate()
    with pytest.raises(ConfigError, match=r"data\.data_dir: only for the built-in datasets, but data\.source .* is "
                                          r"a folder"):
        Config.from_preset("cpu", {"data": {"source": str(photos), "data_dir": str(tmp_path)}}).validate()
    with pytest.raises(ConfigError, match=r"data\.data_dir: '.*' is not a directory or a \.tar\.gz archive"):
        Config.from_preset("cpu", {"data": {"source": "cifar10", "data_dir": str(archive)}}).validate()
    with pytest.raises(ConfigError, match=r"data\.test_split: 0\.9 is outside the allowed range \[0\.05, 0\.5\]"):
        Config.from_preset("cpu", {"data": {"test_split": 0.9}}).validate()
    with pytest.raises(ConfigError, match=r"data\.image_size: 4 is outside the allowed range \[8, 1024\]"):
        Config.from_preset("cpu", {"data": {"image_size": 4}}).validate()


def test_data_flags_and_python_form(photos):
    from tlkit.cli import build_parser, resolve_config

    flags = {spec.key: spec.flag for spec in field_specs()}
    assert flags["data.source"] == "data" and flags["data.strict"] == "strict-data"
    assert flags["data.image_size"] == "data-image-size" and flags["data.test_split"] == "test-split"
    config = resolve_config(build_parser().parse_args(
        ["--preset", "cpu", "--data", str(photos), "--strict-data", "--data-image-size", "64", "--test-split", "0.3"]))
    assert (config.data.source, config.data.strict, config.data.image_size, config.data.test_split) == (
        str(photos), True, 64, 0.3)
    assert Config.from_preset("cpu", {"data": {"source": str(photos)}}).validate().data.source == str(photos)


# ---- decode_images ----------------------------------------------------------------------


def test_decode_images_converts_modes_and_stretches(tmp_path):
    left_dark = np.zeros((20, 40, 3), dtype=np.uint8)
    left_dark[:, 20:] = 255
    Image.fromarray(left_dark).save(tmp_path / "wide.png")
    Image.new("RGBA", (8, 8), (10, 200, 30, 0)).save(tmp_path / "transparent.png")
    Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "palette.gif")
    Image.new("L", (5, 9), 77).save(tmp_path / "gray.JPG", quality=100)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n")
    paths = [tmp_path / name for name in ("wide.png", "transparent.png", "sixteen.png", "broken.png",
                                          "palette.gif", "gray.JPG", "missing.webp")]

    images, failures = decode_images(paths, (16, 16, 3), workers=2)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    wide = images[0]  # stretched, not cropped or padded: the left half stays dark, the right bright
    assert wide[:, :7].max() < 10 and wide[:, 9:].min() > 245
    assert (images[1] == 255).all()  # fully transparent on white
    assert (images[2] == 128).all()  # 16-bit scaled to 8 bits
    assert (images[3] == [200, 100, 50]).all()  # palette expanded
    assert np.abs(images[4].astype(int) - 77).max() <= 1  # gray JPEG as RGB
    assert [Path(path).name for path, _ in failures] == ["broken.png", "missing.webp"]
    assert all(reason for _, reason in failures)

    gray, _ = decode_images(paths[:3], (4, 6, 1), workers=1)
    assert gray.shape == (3, 4, 6, 1) and (gray[1] == 255).all() and (gray[2] == 128).all()
    with pytest.raises(ValueError, match="shape must be"):
        decode_images(paths, (8, 8, 2))


def test_image_extensions_are_the_documented_ones():
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


# ---- .npz files -------------------------------------------------------------------------


def make_arrays(shape=(12, 10), classes=3, n_train=60, n_test=30, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
            "y_train": np.arange(n_train) % classes,
            "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
            "y_test": np.arange(n_test) % classes}


@pytest.mark.parametrize("shape, names", [((12, 10), None), ((12, 10, 3), ("ant", "bee", "cow"))])
def test_npz_round_trip(tmp_path, shape, names):
    arrays = make_arrays(shape)
    if names:
        arrays["class_names"] = np.array(names)
    path = tmp_path / "set.npz"
    np.savez(path, **arrays)
    splits = load_splits(DataConfig(source=str(path), train_limit=30, test_limit=15), seed=5)
    channels = shape[2] if len(shape) == 3 else 1
    assert splits.input_shape == (12, 10, channels)
    assert splits.class_names == (names or ("0", "1", "2"))
    assert splits.sizes() == {"train": 27, "val": 3, "test": 15}
    for split, part in ((splits.train, "train"), (splits.val, "train"), (splits.test, "test")):
        expected = arrays[f"x_{part}"][split.indices].reshape(len(split), 12, 10, channels)
        np.testing.assert_array_equal(split.images, expected)
        np.testing.assert_array_equal(split.labels, arrays[f"y_{part}"][split.indices])
    assert splits.identity["kind"] == "npz" and splits.identity["source"] == str(path.resolve())
    assert splits.identity["channels"] == channels


def test_npz_accepts_integer_pixels_and_column_labels(tmp_path):
    arrays = make_arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.int64)
    arrays["y_train"] = arrays["y_train"].reshape(-1, 1)
    np.savez(tmp_path / "set.npz", **arrays)
    splits = load_splits(DataConfig(source=str(tmp_path / "set.npz")))
    assert splits.train.images.dtype == np.uint8 and splits.train.labels.ndim == 1


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("y_test"), "missing y_test; an .npz source holds x_train, y_train, x_test, y_test"),
    (lambda a: a.update(x_train=a["x_train"] / 255.0),
     "x_train is float64 with values 0.0..1.0; store uint8 pixels 0..255 (floats in 0..1: x = np.rint(x * 255)"),
    (lambda a: a.update(x_test=a["x_test"].astype(np.int32) * 2), "x_test is int32 with values 0..510"),
    (lambda a: a.update(x_train=np.zeros((60, 12, 10, 2), np.uint8)), "x_train has shape (60, 12, 10, 2); expected"),
    (lambda a: a.update(x_test=np.zeros((30, 12, 11), np.uint8)), "x_train images are (12, 10, 1) but x_test"),
    (lambda a: a.update(y_train=a["y_train"] - 1), "y_train holds negative label -1; labels must be 0..K-1"),
    (lambda a: a.update(y_train=a["y_train"] * 2), "class(es) 1, 3 have no images in y_train"),
    (lambda a: a.update(y_test=a["y_test"][:-1]), "30 images but 29 labels in y_test"),
    (lambda a: a.update(y_train=a["y_train"].astype(float)), "y_train must be integer class labels 0..K-1"),
    (lambda a: a.update(y_train=a["y_train"] * 0, y_test=a["y_test"] * 0), "labels hold only one class ('0')"),
    (lambda a: a.update(class_names=np.array(["ant", "bee"])),
     "class_names has 2 names but the labels go up to 2; give one name per class 0..K-1"),
    (lambda a: a.update(class_names=np.array(["ant", "bee", "cow", "dog"])), "class(es) 3 have no images in y_train"),
    (lambda a: a.update(class_names=np.array(["ant", "ant", "cow"])), "class_names has duplicates"),
    (lambda a: a.update(class_names=np.array([["ant"], ["bee"], ["cow"]])), "class_names must be a 1-D array"),
    (lambda a: a.update(class_names=np.array(["ant", "bee", "cow"], dtype=object)), "cannot read class_names without"),
])
def test_bad_npz_files_say_what_is_wrong(tmp_path, change, message):
    arrays = make_arrays()
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as error:
        load_splits(DataConfig(source=str(path)))
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_file_that_is_not_an_npz_archive(tmp_path):
    path = tmp_path / "fake.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="fake.npz: cannot read it as an .npz file"):
        load_splits(DataConfig(source=str(path)))


# ---- built-in datasets from local copies --------------------------------------------------


def test_mnist_from_idx_files(tmp_path):
    data_dir = write_synthetic_dataset(tmp_path / "mnist", n_train=200, n_test=50, gz=False)
    splits = load_splits(DataConfig(source="mnist", data_dir=str(data_dir), test_limit=20), seed=2)
    assert splits.class_names == tuple("0123456789") and splits.input_shape == (28, 28, 1)
    assert splits.sizes() == {"train": 180, "val": 20, "test": 20}
    assert splits.identity == {"kind": "builtin", "source": "mnist", "shape": [28, 28, 1], "channels": 1}
    with pytest.raises(DataError, match="--data-dir needs the four MNIST IDX files"):
        load_splits(DataConfig(source="mnist", data_dir=str(tmp_path)))


def cifar_batch(count: int, offset: int, label_key: str, classes: int) -> dict:
    """A batch in the format of Keras' cached CIFAR files: rows of R, G, B planes; bytes keys."""
    data = np.empty((count, 3, 32, 32), dtype=np.uint8)
    data[:, 0], data[:, 1], data[:, 2] = 10, 20, 30
    data[:, 0, 0, 0] = np.arange(offset, offset + count) % 256  # tells the images apart
    labels = [(offset + i) % classes for i in range(count)]
    batch = {b"batch_label": b"fake", b"data": data.reshape(count, 3072), label_key.encode(): labels}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [label // 5 for label in labels]
    return batch


def write_cifar10(directory: Path, per_batch: int = 20) -> Path:
    directory.mkdir(parents=True)
    for i in range(1, 6):
        with open(directory / f"data_batch_{i}", "wb") as handle:
            pickle.dump(cifar_batch(per_batch, (i - 1) * per_batch, "labels", 10), handle, protocol=2)
    with open(directory / "test_batch", "wb") as handle:
        pickle.dump(cifar_batch(per_batch, 1000, "labels", 10), handle, protocol=4)
    return directory


def test_cifar10_from_keras_cache_folder_and_archive(tmp_path):
    cache = tmp_path / "datasets"
    folder = write_cifar10(cache / "cifar-10-batches-py-target" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    loaded = []
    for data_dir in (folder, folder.parent, cache / "cifar-10-batches-py-target", archive):
        splits = load_splits(DataConfig(source="cifar10", data_dir=str(data_dir), validation_split=0.2), seed=0)
        loaded.append(splits.fingerprint())
    assert len(set(loaded)) == 1
    assert splits.input_shape == (32, 32, 3) and splits.sizes() == {"train": 80, "val": 20, "test": 20}
    assert splits.class_names[:3] == ("airplane", "automobile", "bird") and len(splits.class_names) == 10
    image = splits.train.images[0]
    assert (image[1:, 1:] == [10, 20, 30]).all()  # channels last, planes in R, G, B order
    assert image[0, 0, 0] == splits.train.indices[0] % 256 and (splits.train.labels == splits.train.indices % 10).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no cifar10 batches .* --data-dir takes Keras' cached cifar-10-batches-py"):
        load_splits(DataConfig(source="cifar10", data_dir=str(tmp_path / "empty")))


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, count, offset in (("train", 400, 0), ("test", 200, 0)):
        with open(folder / name, "wb") as handle:
            pickle.dump(cifar_batch(count, offset, "fine_labels", 100), handle, protocol=2)
    splits = load_splits(DataConfig(source="cifar100", data_dir=str(tmp_path), validation_split=0.25))
    assert len(splits.class_names) == 100 and splits.class_names[:2] == ("apple", "aquarium_fish")
    assert splits.sizes() == {"train": 300, "val": 100, "test": 200} and splits.train.labels.max() == 99


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_batches_cannot_run_code(tmp_path):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": _Exploit(), b"labels": []}, handle)
    with pytest.raises(DataError, match="test_batch is not a CIFAR python batch .*refusing to load"):
        load_splits(DataConfig(source="cifar10", data_dir=str(folder)))


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10", "cifar100"])
def test_failed_download_points_to_data_dir(monkeypatch, name):
    import keras

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(getattr(keras.datasets, name), "load_data", offline)
    with pytest.raises(DataError, match=r"downloading .* through keras.datasets failed \(OSError: network is "
                                        r"unreachable\)\. .* with --data-dir"):
        load_splits(DataConfig(source=name))


def test_a_copy_under_tlkit_data_dir_is_used_instead_of_a_download(synthetic_data_dir, tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    (root / "fashion-mnist").mkdir(parents=True)
    for file in synthetic_data_dir.iterdir():
        (root / "fashion-mnist" / file.name).write_bytes(file.read_bytes())
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: pytest.fail("downloaded"))
    assert data.find_local_copy("fashion_mnist") == root / "fashion-mnist"
    assert data.find_local_copy("cifar10") is None
    (x_train, _), _ = data.load_builtin("fashion_mnist")
    assert x_train.shape == (300, 28, 28, 1)
