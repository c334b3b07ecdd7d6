"""keras-hub image backbones from a local preset directory, with the preset's own normalisation."""

import numpy as np
import pytest

import tlkit
from tlkit.backbones import build_backbone, list_blocks

keras_hub = pytest.importorskip("keras_hub")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    """A small keras-hub ResNet saved as a local preset (keras-hub's own format)."""
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(None, None, 3))
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(32, 32), scale=list(1 / (255 * IMAGENET_STD)), offset=list(-IMAGENET_MEAN / IMAGENET_STD))
    path = tmp_path_factory.mktemp("preset") / "tiny_resnet"
    backbone.save_to_preset(str(path))
    converter.save_to_preset(str(path))
    return path


def test_local_preset_loads_with_its_weights_and_normalisation(tiny_preset):
    built = build_backbone(f"keras_hub:{tiny_preset}", "imagenet", 32)
    saved = keras_hub.models.Backbone.from_preset(str(tiny_preset))
    for ours, theirs in zip(built.model.weights, saved.weights):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    rgb = np.full((1, 2, 2, 3), 255.0, dtype="float32")
    expected = (1.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(np.asarray(built.normalization(rgb))[0, 0, 0], expected, rtol=1e-5)
    assert list_blocks(f"keras_hub:{tiny_preset}") == ["conv1", "stack0", "stack0_block0", "stack1", "stack1_block0"]


def test_training_run_with_a_keras_hub_backbone(tiny_preset, synthetic_data_dir, tmp_path):
    config = tlkit.Config.from_preset("smoke", {
        "data": {"data_dir": str(synthetic_data_dir), "train_limit": None, "test_limit": None},
        "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "model": {"backbone": f"keras_hub:{tiny_preset}", "weights": "imagenet"},
        "finetune": {"unfreeze": "stack1"},
    })
    run = tlkit.fit(config, verbose=0)
    metrics = run.metrics()
    assert run.status()["state"] == "completed"
    assert metrics["stages"]["finetune"]["trainable_backbone_layers"][0].startswith("stack1_block0")
    assert metrics["boundary_cache"]["used"] and metrics["feature_cache"]["used"]
    predicted = run.load_model().predict(np.zeros((2, 28, 28, 1), np.uint8), verbose=0)
    assert predicted.shape == (2, 10)


def test_unknown_preset_fails_with_guidance():
    from tlkit.backbones import BackboneError

    with pytest.raises(BackboneError, match="cannot load keras-hub preset '/no/such/preset'"):
        build_backbone("keras_hub:/no/such/preset", "imagenet", 32)
