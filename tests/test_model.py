import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import tlkit
from tlkit import environment
from tlkit.backbones import BackboneError, block_names, build_backbone, list_blocks, select_layers
from tlkit.config import BACKBONE_BLOCKS, AugmentConfig, Config, ModelConfig, StageConfig
from tlkit.data import load_splits
from tlkit.layers import ImageNormalization, ImagePreparation
from tlkit.model import (
    Classifier,
    GraphSplitError,
    build_classifier,
    convolve_small_maps_as_matmul,
    release_intermediates,
    split_graph,
)
from tlkit.schedules import StageSchedule
from tlkit.stages import TrainingError, prepare_stage, run_stage

from .helpers import smoke_config

FASHION = {"num_classes": 10, "input_shape": (28, 28, 1)}


def snapshot(layers):
    return {f"{layer.name}/{i}": np.array(ops.convert_to_numpy(w)) for layer in layers
            for i, w in enumerate(layer.weights)}


def changed(before, after):
    return {key for key in before if not np.array_equal(before[key], after[key])}


@pytest.fixture(scope="module")
def tiny_splits(synthetic_data_dir):
    config = Config.from_preset("smoke", {"data": {"data_dir": str(synthetic_data_dir),
                                                    "train_limit": None, "test_limit": None}})
    return load_splits(config.data, seed=0)


def train_one_epoch(classifier, stage, splits, unfreeze=""):
    prepare_stage(classifier, stage, unfreeze)
    run_stage(classifier.model, StageConfig(epochs=1, learning_rate=1e-2), (splits.train.images, splits.train.labels),
              stage=stage, batch_size=32, verbose=0)


def mini_classifier(**augment):
    return build_classifier(ModelConfig(backbone="mini_resnet", weights="none", image_size=32),
                            AugmentConfig(**augment), seed=1, **FASHION)


def test_head_stage_leaves_every_backbone_weight_bit_identical(tiny_splits):
    classifier = mini_classifier()
    backbone_before = snapshot(classifier.backbone.layers)
    head = [layer for layer in classifier.head if layer.weights]
    head_before = snapshot(head)
    train_one_epoch(classifier, "head", tiny_splits)
    assert changed(backbone_before, snapshot(classifier.backbone.layers)) == set()
    assert changed(head_before, snapshot(head)) == set(head_before)


@pytest.mark.parametrize("spec", ["conv3", "conv4_block1", "30"])
def test_finetune_trains_exactly_the_chosen_layers_and_keeps_batchnorm_frozen(tiny_splits, spec):
    classifier = mini_classifier()
    backbone = classifier.backbone
    chosen = classifier.unfreeze(spec)
    before = snapshot(backbone.layers)
    train_one_epoch(classifier, "finetune", tiny_splits, unfreeze=spec)
    after = snapshot(backbone.layers)
    batchnorm = {layer.name for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)}
    expected = {key for key in before if key.split("/")[0] in chosen}
    assert chosen and not set(chosen) & batchnorm
    assert changed(before, after) == expected
    # moving mean/variance (and gamma/beta) of every BatchNormalization layer stay as they were.
    assert not any(key.split("/")[0] in batchnorm for key in changed(before, after))


def test_unfreeze_last_n_layers_means_the_seed_s_last_n():
    backbone = build_backbone("resnet50", "none", 32).model
    selected = select_layers(backbone, "16")
    assert [layer.name for layer in selected] == [layer.name for layer in backbone.layers[-16:]]
    assert selected[-1].name == "conv5_block3_out" and selected[0].name == "conv5_block2_2_bn"


def test_unfreeze_by_block_or_stage_name_means_that_depth_and_above_on_resnet50():
    backbone = build_backbone("resnet50", "none", 32).model
    names = lambda spec: {layer.name for layer in select_layers(backbone, spec) if layer.weights}  # noqa: E731
    assert names("conv5_block3") == {f"conv5_block3_{k}_{t}" for k in (1, 2, 3) for t in ("conv", "bn")}
    conv5 = names("conv5")
    assert len(conv5) == 2 * (1 + 3 * 3) and all(n.startswith("conv5_") for n in conv5)
    conv4 = names("conv4")
    assert conv5 < conv4 and {n for n in conv4 if n.startswith("conv4_")} == {
        layer.name for layer in backbone.layers if layer.name.startswith("conv4_") and layer.weights}
    assert not any(n.startswith(("conv1", "conv2", "conv3")) for n in conv4)
    assert names("conv4_block6") == names("conv5") | {n for n in conv4 if n.startswith("conv4_block6_")}
    with pytest.raises(BackboneError, match="valid blocks: conv1, conv2, conv2_block1"):
        select_layers(backbone, "conv9")


def test_unfreeze_excludes_batchnorm_and_reports_trainable_layers():
    classifier = build_classifier(ModelConfig(backbone="resnet50", weights="none", image_size=32), **FASHION)
    trainable = classifier.unfreeze("conv5_block3")
    assert trainable == ["conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"]
    backbone = classifier.backbone
    assert all(not layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert sum(int(np.prod(w.shape)) for w in backbone.trainable_weights) == sum(
        int(np.prod(w.shape)) for name in trainable for w in backbone.get_layer(name).weights)


def test_block_listing():
    blocks = list_blocks("resnet50")
    assert blocks[:3] == ["conv1", "conv2", "conv2_block1"]
    assert {"conv5", "conv5_block3", "conv4_block6"} <= set(blocks)
    assert block_names(build_backbone("mini_resnet", "none", 32).model) == [
        "conv1", "conv2", "conv2_block1", "conv3", "conv3_block1", "conv4", "conv4_block1"]


def test_caffe_normalization_matches_keras_resnet50_preprocess_input():
    rgb = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(rgb.copy())
    got = ops.convert_to_numpy(ImageNormalization.caffe()(rgb))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_image_preparation_resizes_in_graph_and_repeats_gray():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8)
    out = ops.convert_to_numpy(ImagePreparation(56)(images))
    assert out.shape == (2, 56, 56, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert 0 <= out.min() and out.max() <= 255


def test_custom_layers_round_trip_their_config():
    for layer in (ImagePreparation(64, interpolation="nearest"), ImageNormalization.caffe(),
                  StageSchedule(1e-3, 10, 5, "cosine", 1.0)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_augmentation_is_active_only_in_training():
    classifier = mini_classifier(flip=True, rotation=0.2, zoom=0.2, translation=0.1, contrast=0.3)
    model = classifier.model
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28, 1), dtype=np.uint8)
    augmentation = classifier.augmentation
    prepared = classifier.preparation(images)
    np.testing.assert_array_equal(ops.convert_to_numpy(augmentation(prepared, training=False)),
                                  ops.convert_to_numpy(prepared))
    assert not np.allclose(ops.convert_to_numpy(augmentation(prepared, training=True)),
                           ops.convert_to_numpy(prepared))
    np.testing.assert_array_equal(ops.convert_to_numpy(model(images, training=False)),
                                  ops.convert_to_numpy(model(images, training=False)))


def test_schedule_warmup_cosine_and_exponential():
    cosine = StageSchedule(1e-3, steps_per_epoch=10, epochs=5, kind="cosine", warmup_epochs=1)
    assert float(cosine(0)) == 0.0
    assert float(cosine(5)) == pytest.approx(5e-4)
    assert float(cosine(10)) == pytest.approx(1e-3)
    assert float(cosine(50)) == pytest.approx(0.0, abs=1e-9)
    exponential = StageSchedule(1e-3, steps_per_epoch=10, epochs=5, kind="exponential", decay_rate=0.5)
    assert float(exponential(20)) == pytest.approx(2.5e-4)
    assert float(StageSchedule(1e-3, 10, 5)(37)) == pytest.approx(1e-3)


def test_nan_loss_stops_with_a_clear_error(tiny_splits, monkeypatch, tmp_path):
    import tlkit.stages as stages

    def nan_compile(model, config, steps_per_epoch, label_smoothing=0.0):
        model.compile(optimizer="adam", loss=lambda y, p: ops.mean(p) * float("nan"))

    monkeypatch.setattr(stages, "compile_for_stage", nan_compile)
    with pytest.raises(TrainingError, match="loss became NaN/inf in stage head, epoch 1, batch 1; lower"):
        train_one_epoch(mini_classifier(), "head", tiny_splits)


def test_smoke_config_helper_builds(synthetic_data_dir, tmp_path):
    assert smoke_config(synthetic_data_dir, tmp_path).validate().model.backbone == "mini_resnet"


def test_test_time_flip_averages_the_image_and_its_mirror(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, tta_flip=True, head={"epochs": 1}, finetune={"epochs": 1})
    run = tlkit.fit(config, verbose=0)
    splits = load_splits(config.data, config.seed)
    model = run.load_model()
    images = splits.test.images
    averaged = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    expected = float(np.mean(averaged.argmax(axis=1) == splits.test.labels))
    assert run.metrics()["test_accuracy"] == pytest.approx(expected, abs=1.5 / len(images))


@pytest.mark.parametrize("name", sorted(BACKBONE_BLOCKS))
def test_static_block_table_matches_the_built_backbones(name):
    assert list(BACKBONE_BLOCKS[name]) == block_names(build_backbone(name, "none", 32).model)


@pytest.mark.parametrize("first_suffix_layer, boundary_tensors", [
    ("conv3_block1_1_conv", 1),   # a stage boundary (first in layer order): one tensor feeds the suffix
    ("conv3_block1_0_conv", 2),   # mid-block: the residual branch's activation is needed too
])
def test_graph_split_recomposes_the_backbone_exactly(first_suffix_layer, boundary_tensors):
    # Uses Keras' private graph API (tlkit.model.split_graph); a Keras release that changes it fails here.
    backbone = build_backbone("mini_resnet", "none", 32).model
    prefix, inputs, output = split_graph(backbone, first_suffix_layer)
    assert len(inputs) == boundary_tensors == len(prefix.outputs)
    suffix = keras.Model(inputs, output)
    images = np.random.default_rng(0).uniform(-1, 1, size=(3, 32, 32, 3)).astype("float32")
    boundary = prefix.predict(images, verbose=0)
    recomposed = suffix.predict(boundary if isinstance(boundary, list) else [boundary], verbose=0)
    np.testing.assert_allclose(recomposed, backbone.predict(images, verbose=0), rtol=1e-5, atol=1e-5)
    assert {w.path for w in suffix.weights} <= {w.path for w in backbone.weights}  # shared, not copied
    with pytest.raises(GraphSplitError, match="has no layer 'conv9_block1'"):
        split_graph(backbone, "conv9_block1")


def test_an_eager_call_frees_each_intermediate_after_its_last_reader():
    # Keras keeps every intermediate of a functional call until the call returns (keras-team/keras#19500):
    # run eagerly (torch), a frozen ResNet50 at 224 px then holds all its activations at once.
    if keras.backend.backend() != "torch":
        pytest.skip("tensorflow and jax trace the graph, which frees intermediates itself; only torch runs eagerly")
    import weakref

    made, freed_when_read = [], []

    class Remember(keras.layers.Layer):
        def call(self, x):
            y = x * 2.0
            made.append(weakref.ref(y))
            return y

    class Look(keras.layers.Layer):
        def call(self, x):
            freed_when_read.append(made[-1]() is None)
            return x

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Look()(keras.layers.Dense(4)(Remember()(inputs))))  # Dense is Remember's only reader
    freed_when_read.clear()  # building the graph ran the layers on placeholder tensors
    images = np.ones((2, 4), "float32")
    model.predict(images, verbose=0)  # inference (no autograd graph holds the tensor either)
    release_intermediates(model).predict(images, verbose=0)
    assert freed_when_read == [False, True]

    # The same outputs as Keras' own run, on a whole classifier (backbone nested in it).
    classifier = mini_classifier(flip=False)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)
    ours = classifier.model.predict(images, verbose=0)
    for graph in (classifier.model, classifier.backbone):
        del vars(graph)["_run_through_graph"]
    np.testing.assert_array_equal(ours, classifier.model.predict(images, verbose=0))


def small_map_model() -> keras.Model:
    """Convolutions on 2×2 and 1×1 maps (odd and even kernels, same and valid padding), then one on 4×4."""
    inputs = keras.Input((2, 2, 8))
    x = keras.layers.Conv2D(6, 3, padding="same", name="same_3x3_on_2x2")(inputs)
    x = keras.layers.Conv2D(6, 2, padding="same", name="same_2x2_on_2x2")(x)
    y = keras.layers.Conv2D(5, 2, padding="valid", name="valid_2x2_to_1x1")(x)
    y = keras.layers.Conv2D(5, (1, 3), padding="same", name="same_1x3_on_1x1")(y)
    z = keras.layers.UpSampling2D(2)(x)
    z = keras.layers.Conv2D(5, 3, padding="same", name="same_3x3_on_4x4")(z)
    z = keras.layers.Conv2D(5, 1, name="pointwise_on_4x4")(z)
    outputs = keras.layers.Concatenate()([keras.layers.Flatten()(y), keras.layers.GlobalAveragePooling2D()(z)])
    return keras.Model(inputs, keras.layers.Dense(3)(outputs))


SMALL_MAP_LAYERS = ["same_3x3_on_2x2", "same_2x2_on_2x2", "valid_2x2_to_1x1", "same_1x3_on_1x1"]


def test_small_maps_convolved_as_a_matmul_give_the_same_outputs_and_training_steps(monkeypatch):
    # XLA's CPU convolutions are ~80x slow on 2x2 maps, so under jax tlkit computes them as a matmul;
    # the arithmetic is checked here on every backend (the switch is forced on).
    monkeypatch.setattr(environment, "xla_cpu_tuning", lambda: True)
    keras.utils.set_random_seed(0)
    stock, ours = small_map_model(), small_map_model()
    ours.set_weights(stock.get_weights())
    assert convolve_small_maps_as_matmul(ours) == SMALL_MAP_LAYERS  # never the 4×4 map or a 1×1 kernel
    assert convolve_small_maps_as_matmul(ours) == []  # once only
    x = np.random.default_rng(0).standard_normal((16, 2, 2, 8)).astype("float32")
    y = np.random.default_rng(1).standard_normal((16, 3)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0), stock.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    for model in (stock, ours):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for got, expected in zip(ours.get_weights(), stock.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_small_maps_are_convolved_as_a_matmul_only_under_jax_and_again_after_a_reload(tmp_path):
    model = small_map_model()
    changed = convolve_small_maps_as_matmul(model)
    assert changed == (SMALL_MAP_LAYERS if keras.backend.backend() == "jax" else [])
    assert environment.xla_cpu_tuning({"KERAS_BACKEND": "jax"})
    assert not environment.xla_cpu_tuning({"KERAS_BACKEND": "jax", "TLKIT_XLA_CPU_TUNING": "0"})
    assert not environment.xla_cpu_tuning({"KERAS_BACKEND": "torch"})
    # A saved model is plain Keras; tlkit.load_model in a fresh process applies the change again.
    path = tmp_path / "model.keras"
    model.save(path)
    script = ("import sys, tlkit; model = tlkit.load_model(sys.argv[1]); "
              "print([layer.name for layer in model.layers if 'convolution_op' in vars(layer)])")
    for backend in sorted({"jax", keras.backend.backend()}):
        loaded = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "KERAS_BACKEND": backend})
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        assert loaded.stdout.strip().splitlines()[-1] == str(SMALL_MAP_LAYERS if backend == "jax" else [])


def test_classifier_parts_survive_a_save_and_reload(tmp_path):
    classifier = mini_classifier(flip=True)
    path = tmp_path / "model.keras"
    classifier.model.save(path)
    reloaded = Classifier.from_model(keras.saving.load_model(path))
    assert reloaded.augmentation is not None and reloaded.num_classes == 10
    assert reloaded.input_shape == (28, 28, 1) and reloaded.weights_id is None
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)
    features = reloaded.feature_model().predict(images, verbose=0)
    np.testing.assert_allclose(reloaded.head_model().predict(features, verbose=0),
                               classifier.model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    split = reloaded.split_at(reloaded.first_unfrozen("conv3"))
    boundary = split.frozen_model.predict(images, verbose=0)
    np.testing.assert_allclose(split.train_model.predict([boundary], verbose=0),
                               classifier.model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)


def test_classifier_takes_its_class_count_and_input_shape_from_the_data():
    classifier = build_classifier(ModelConfig(backbone="mini_resnet", weights="none", image_size=32),
                                  num_classes=3, input_shape=(20, 24, 3))
    assert classifier.num_classes == 3 and classifier.input_shape == (20, 24, 3)
    images = np.zeros((2, 20, 24, 3), np.uint8)
    assert classifier.model.predict(images, verbose=0).shape == (2, 3)
