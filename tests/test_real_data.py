"""Real Fashion-MNIST and real ImageNet weights (from ../shared; CI fails instead of skipping).

The accuracy check is a short head-only run (2,000 training images, 32 px, 3 epochs, cached
features) with the ImageNet weights, held to a floor; a control run with random weights shows the
floor tells the two apart. Calibration on this 2-core machine with Keras' array feeding: correct
preprocessing 0.764 (jax), 0.792 (tensorflow), 0.767 (torch); random weights 0.44-0.53; ImageNet
weights with pixels/255 0.527 and with torchvision mean/std normalisation 0.721 (torch). Again
after the switch to `ArrayBatches` (a new batch order): correct 0.757 (tensorflow), 0.768 (jax),
0.769 (torch); random 0.608, 0.557, 0.593. The floor of 0.745 passes correct preprocessing and
rejects both wrong ones; random weights must stay 0.10 below it, room for the batch-order noise of
the random baseline.
"""

import keras
import numpy as np
import pytest

import tlkit
from tlkit.data import load_fashion_mnist, load_splits

pytestmark = pytest.mark.real_data


def test_loader_returns_the_full_dataset_with_balanced_classes(real_data_dir):
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(real_data_dir)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert x_train.mean() == pytest.approx(72.9404, abs=1e-3)  # SOURCE.md's checksum-verified figure


def test_default_split_holds_out_a_stratified_tenth(real_data_dir):
    splits = load_splits(tlkit.Config(data=tlkit.config.DataConfig(data_dir=str(real_data_dir))).data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert np.bincount(splits.val.labels).tolist() == [600] * 10


def short_real_run(data_dir, weights, tmp_path):
    config = tlkit.Config.from_dict({
        "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "precision": "float32",
        "batch_size": 64, "seed": 42,
        "data": {"data_dir": str(data_dir), "train_limit": 2000, "test_limit": 1000},
        "model": {"backbone": "resnet50", "weights": str(weights), "image_size": 32, "dropout": 0.2},
        "head": {"epochs": 3, "learning_rate": 1e-3},
        "finetune": {"epochs": 0},
    })
    return tlkit.fit(config, verbose=0)


ACCURACY_FLOOR = 0.745
RANDOM_WEIGHTS_MARGIN = 0.10


def test_imagenet_weights_reach_the_calibrated_accuracy_on_real_data(real_data_dir, real_weights, tmp_path):
    pretrained = short_real_run(real_data_dir, real_weights, tmp_path)
    accuracy = pretrained.metrics()["test_accuracy"]
    print(f"ImageNet weights: {accuracy:.4f}")
    assert pretrained.metrics()["feature_cache"]["used"]
    assert accuracy >= ACCURACY_FLOOR, accuracy


# The control checks the floor, not a backend: random weights scored 0.56-0.61 on all three.
@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the random-weights control of the accuracy floor runs in the tensorflow pass")
def test_random_weights_stay_well_below_the_accuracy_floor(real_data_dir, tmp_path):
    random_init = short_real_run(real_data_dir, "none", tmp_path)
    baseline = random_init.metrics()["test_accuracy"]
    print(f"random weights: {baseline:.4f}")
    assert baseline <= ACCURACY_FLOOR - RANDOM_WEIGHTS_MARGIN, baseline
