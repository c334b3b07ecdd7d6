import json

import pytest

from tlkit.config import PRESET_NOTES, PRESETS, Config, ConfigError, UnfreezeSpec, field_named_in, field_specs

pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_resolve_and_validate(preset):
    config = Config.from_preset(preset).validate()
    assert config.preset == preset


def test_seed_preset_is_the_seed_recipe():
    config = Config.from_preset("seed")
    assert config.model.image_size == 224 and config.model.backbone == "resnet50"
    assert config.model.weights == "imagenet"
    assert (config.augment.flip, config.augment.rotation > 0, config.augment.zoom > 0) == (True, True, True)
    assert (config.head.epochs, config.head.optimizer, config.head.schedule) == (10, "adam", "exponential")
    assert (config.finetune.epochs, config.finetune.learning_rate, config.finetune.unfreeze) == (5, 1e-5, "16")
    assert config.model.dropout > 0 and config.model.l2 > 0 and config.precision == "auto"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": {"dropout": 1.5}}, "model.dropout: 1.5 is outside the allowed range [0, 0.9]"),
        ({"model": {"image_size": 16}}, "model.image_size: 16 is outside the allowed range [32, 512]"),
        ({"head": {"schedule": "linear"}}, "head.schedule: 'linear' is not one of constant, exponential, cosine"),
        ({"precision": "fp8"}, "precision: 'fp8' is not one of auto"),
        ({"batch_size": 0}, "batch_size: 0 is outside the allowed range"),
        ({"finetune": {"unfreeze": "conv5 block3"}}, "finetune.unfreeze: 'conv5 block3' is not a layer count"),
        ({"head": {"weight_decay": 0.01}}, "head.weight_decay: decoupled weight decay needs head.optimizer='adamw'"),
        ({"head": {"epochs": 0}, "finetune": {"epochs": 0}}, "nothing to train"),
        ({"model": {"weights": "/no/such/file.h5"}}, "model.weights: '/no/such/file.h5' is not 'imagenet'"),
        ({"model": {"backbone": "vgg"}}, "model.backbone: 'vgg' is not one of"),
        ({"data": {"data_dir": "/no/such/dir"}}, "data.data_dir: '/no/such/dir' is not a directory"),
        ({"head": {"warmup_epochs": 10}}, "head.warmup_epochs: 10.0 must be shorter than head.epochs"),
        ({"data": {"validation_split": 0.0}, "finetune": {"early_stopping": 2}},
         "finetune.early_stopping: early stopping needs a validation split (data.validation_split > 0); to train "
         "on every training image, also set it to 0 (--finetune-early-stopping 0)"),
        ({"data": {"validation_split": 0.0}, "head": {"early_stopping": 5}, "finetune": {"early_stopping": 2}},
         "head.early_stopping / finetune.early_stopping: early stopping needs a validation split "
         "(data.validation_split > 0); to train on every training image, also set them to 0 "
         "(--head-early-stopping 0 --finetune-early-stopping 0)"),
    ],
)
def test_invalid_values_are_rejected_with_field_and_allowed_values(overrides, message):
    with pytest.raises(ConfigError) as error:
        Config.from_preset("seed", overrides).validate()
    assert message in str(error.value)


def test_stages_sized_in_steps_grow_on_small_training_sets_only():
    config = Config.from_dict({"batch_size": 64, "head": {"epochs": 10, "min_steps": 2000},
                               "finetune": {"epochs": 3, "min_steps": 600, "warmup_steps": 100}})
    full = config.sized_for(54_000)  # 844 steps per epoch: the epochs already give more steps
    assert (full.head.epochs, full.finetune.epochs) == (10, 3)
    assert full.finetune.warmup_epochs == pytest.approx(100 / 844, abs=1e-6)
    small = config.sized_for(1_260)  # 20 steps per epoch
    assert (small.head.epochs, small.finetune.epochs) == (100, 30)
    assert small.finetune.warmup_epochs == 5.0  # 100 warm-up steps
    tiny = config.sized_for(10)  # 1 step per epoch: warm-up is capped at half the stage
    assert (tiny.finetune.epochs, tiny.finetune.warmup_epochs) == (600, 100.0)
    off = Config.from_dict({"head": {"epochs": 0, "min_steps": 500}, "finetune": {"epochs": 2}}).sized_for(100)
    assert off.head.epochs == 0  # min_steps lengthens a stage, never turns one on
    assert config.sized_for(1_260).model == config.model  # nothing else changes


def test_unknown_fields_and_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="model.dropuot: unknown config field"):
        Config.from_dict({"model": {"dropuot": 0.1}})
    with pytest.raises(ConfigError, match="model.image_size: cannot read 'big' as int"):
        Config.from_dict({"model.image_size": "big"})
    with pytest.raises(ConfigError, match="augment.flip: expected bool"):
        Config.from_dict({"augment": {"flip": 3}}).validate()


def test_config_files_json_and_toml_round_trip(tmp_path):
    config = Config.from_preset("cpu", {"model": {"dropout": 0.25}, "finetune": {"unfreeze": "conv5_block3"}})
    json_path = tmp_path / "run.json"
    json_path.write_text(config.to_json())
    assert Config.from_file(json_path) == config
    toml_path = tmp_path / "run.toml"
    toml_path.write_text('preset = "cpu"\n[model]\ndropout = 0.25\n[finetune]\nunfreeze = "conv5_block3"\n')
    assert Config.from_file(toml_path) == config
    assert json.loads(config.to_json())["finetune"]["unfreeze"] == "conv5_block3"


def test_bad_config_file_says_what_is_wrong(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        Config.from_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_file(tmp_path / "missing.toml")


def test_every_field_has_help_and_a_unique_flag():
    specs = field_specs()
    flags = [spec.flag for spec in specs]
    assert len(flags) == len(set(flags))
    assert all(spec.help for spec in specs)
    assert {"data-dir", "weights", "unfreeze", "head-lr", "finetune-lr", "aug-flip", "train-limit"} <= set(flags)
    # What the explorer draws from the config: a log scale for values spanning decades, a line per preset.
    assert {spec.key for spec in specs if spec.scale == "log"} == {
        "model.l2", "head.learning_rate", "head.weight_decay", "finetune.learning_rate", "finetune.weight_decay"}
    assert set(PRESET_NOTES) == set(PRESETS) and all(PRESET_NOTES.values())


@pytest.mark.parametrize("message, field", [
    ("model.dropout: 3.0 is outside the allowed range [0, 0.9]", "model.dropout"),
    ("train-images-idx3-ubyte(.gz) not found in '/x'; --data-dir needs the four IDX files", "data.data_dir"),
    ("the loss became NaN/inf in stage head; lower the learning rate (--head-lr 0.1 now) or use --precision float32",
     "head.learning_rate"),
    ("cannot load weights '/w.h5' into mini_resnet", None),
])
def test_an_error_message_names_its_config_field(message, field):
    assert field_named_in(message) == field


def test_unfreeze_spec_is_parsed_in_one_place():
    assert UnfreezeSpec.parse(" 16 ") == UnfreezeSpec(count=16) and str(UnfreezeSpec.parse("16")) == "16"
    assert UnfreezeSpec.parse("conv5_block3").block == "conv5_block3"
    assert UnfreezeSpec.parse("16").describe() == "last 16 layers"
    assert UnfreezeSpec.parse("conv4").describe() == "conv4 and every layer after it"
    for bad in ("conv5 conv4", "-3", "", "5x"):
        with pytest.raises(ConfigError, match="finetune.unfreeze"):
            UnfreezeSpec.parse(bad)


def test_unknown_block_of_a_built_in_backbone_is_a_config_error_before_any_compute():
    with pytest.raises(ConfigError, match="'conv9' is not a block of resnet50; valid blocks: conv1, conv2, "):
        Config.from_preset("cpu", {"finetune": {"unfreeze": "conv9"}}).validate()
    with pytest.raises(ConfigError, match="'conv5' is not a block of mini_resnet"):
        Config.from_preset("smoke", {"finetune": {"unfreeze": "conv5"}}).validate()
    # keras-hub backbones have their own names: checked when the backbone is built.
    Config.from_preset("smoke", {"model": {"backbone": "keras_hub:x"}, "finetune": {"unfreeze": "stack3"}}).validate()
