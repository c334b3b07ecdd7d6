"""One typed config for a tlkit run.

`Config` is the single source of truth: CLI flags (`tlkit.cli`), config files
(JSON or TOML), presets, the explorer's widgets and what a run directory
records (`config.json`) are all derived from the dataclasses below. Each field
carries its help text, allowed choices or numeric range and CLI flag in its
metadata, so adding a field here adds it everywhere.

Example:

```python
from tlkit.config import Config

config = Config.from_preset("cpu", overrides={"model": {"dropout": 0.3}})
config.validate()
config.to_dict()["model"]["dropout"]  # 0.3
```
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

import tomllib

# The training stages, in the order they run.
STAGES = ("head", "finetune")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is allowed."""


def option(default, help, *, choices=None, min=None, max=None, flag=None, bare=False, scale="linear"):
    """A dataclass field with the metadata that CLI, explorer and validation use.

    Args:
        default: the default value.
        help: one sentence shown by `--help` and in the explorer.
        choices: allowed values, if the field is an enumeration.
        min: inclusive lower bound for numbers.
        max: inclusive upper bound for numbers.
        flag: CLI flag name without dashes; defaults to the field name with
            dashes. The group's `flag_prefix` is put in front unless `bare`.
        bare: use the flag without the group prefix (`--unfreeze`).
        scale: `"log"` for values that span decades (learning rates, penalties): the explorer
            offers them on a log scale.
    """
    metadata = {"help": help, "choices": choices, "min": min, "max": max, "flag": flag, "bare": bare,
                "scale": scale}
    return dataclasses.field(default=default, metadata=metadata)


BACKBONE_CHOICES_HELP = (
    "'resnet50' (keras.applications), 'mini_resnet' (tiny, random init, for smoke tests) "
    "or 'keras_hub:<preset name or local preset dir>'"
)
KERAS_HUB_PREFIX = "keras_hub:"


def _resnet_blocks(blocks_per_stage: tuple[int, ...]) -> tuple[str, ...]:
    names = ["conv1"]
    for stage, blocks in enumerate(blocks_per_stage, start=2):
        names += [f"conv{stage}", *(f"conv{stage}_block{block}" for block in range(1, blocks + 1))]
    return tuple(names)


# The built-in backbones and their block names in layer order, as a static table so that the
# config (and the explorer, which must not import Keras) knows them without building a model;
# tests/test_model.py checks it against the built backbones.
BACKBONE_BLOCKS: dict[str, tuple[str, ...]] = {
    "resnet50": _resnet_blocks((3, 4, 6, 3)),
    "mini_resnet": _resnet_blocks((1, 1, 1)),
}
LOCAL_BACKBONES = tuple(BACKBONE_BLOCKS)


@dataclasses.dataclass(frozen=True)
class UnfreezeSpec:
    """What the finetune stage unfreezes: the last `count` layers, or `block` and every layer after it.

    The one parser of the `--unfreeze` text (`"16"`, `"conv5"`, `"conv5_block3"`).

    Example:

    ```python
    UnfreezeSpec.parse("16").count            # 16
    UnfreezeSpec.parse("conv4").describe()    # 'conv4 and every layer after it'
    ```
    """

    count: int | None = None
    block: str | None = None

    PATTERN: typing.ClassVar[re.Pattern] = re.compile(r"^(\d+|[A-Za-z]\w*)$")

    @classmethod
    def parse(cls, text: str) -> UnfreezeSpec:
        """Raises ConfigError for anything but a layer count or one block/stage name."""
        text = str(text).strip()
        if not cls.PATTERN.match(text):
            raise ConfigError(
                f"finetune.unfreeze: {text!r} is not a layer count ('16') or one block/stage name "
                "('conv5', 'conv5_block3')"
            )
        return cls(count=int(text)) if text.isdigit() else cls(block=text)

    @property
    def is_count(self) -> bool:
        return self.count is not None

    def describe(self) -> str:
        """Words for reports: `last 16 layers`, `conv4 and every layer after it`."""
        if self.is_count:
            return f"last {self.count} layers"
        return f"{self.block} and every layer after it"

    def __str__(self) -> str:
        return str(self.count) if self.is_count else self.block


@dataclasses.dataclass
class DataConfig:
    """Where the images come from and how they are split (formats: docs/data.md)."""

    flag_prefix: typing.ClassVar[str] = ""
    # The datasets `source` can name; everything else is a folder or an .npz path.
    BUILTINS: typing.ClassVar[tuple[str, ...]] = ("fashion_mnist", "mnist", "cifar10", "cifar100")
    SOURCE_FORMS: typing.ClassVar[str] = (
        "a built-in dataset (fashion_mnist, mnist, cifar10, cifar100), a folder of images "
        "(DIR/<class>/* or DIR/train|test[|val]/<class>/*) or an .npz file (x_train, y_train, x_test, y_test)"
    )

    source: str = option(
        "fashion_mnist",
        "The images: a built-in dataset (fashion_mnist, mnist, cifar10, cifar100; downloaded through "
        "keras.datasets unless --data-dir), a folder (DIR/<class>/* or DIR/train|test[|val]/<class>/*) "
        "or an .npz file (x_train, y_train, x_test, y_test, optional class_names).",
        flag="data",
    )
    data_dir: str | None = option(
        None,
        "Local copy of the built-in dataset: the four IDX files (.gz or raw) for fashion_mnist/mnist, "
        "Keras' cifar-10-batches-py / cifar-100-python folder (or its .tar.gz) for cifar10/cifar100; "
        "default: download through keras.datasets.",
    )
    validation_split: float = option(
        0.1, "Fraction of the training set held out (stratified) for validation.",
        min=0.0, max=0.5,
    )
    test_split: float = option(
        0.2, "Folder with one subfolder per class only: fraction of each class held out (stratified, "
        "seeded) as the test set.",
        min=0.05, max=0.5,
    )
    train_limit: int | None = option(
        None, "Use a stratified subset of this many training images (before the split).",
        min=20,
    )
    test_limit: int | None = option(
        None, "Evaluate on a stratified subset of this many test images.", min=10
    )
    image_size: int | None = option(
        None, "Folder sources: side of the square size images are decoded to once and stored at "
        "(default: model.image_size).",
        min=8, max=1024, flag="data-image-size",
    )
    strict: bool = option(
        False, "Folder sources: unreadable image files are an error instead of being skipped with a warning.",
        flag="strict-data",
    )

    def source_kind(self) -> str | None:
        """'builtin', 'folder' or 'npz' for what `source` names; None when it names nothing usable."""
        if self.source in self.BUILTINS:
            return "builtin"
        path = Path(self.source).expanduser()
        if path.is_dir():
            return "folder"
        if path.is_file() and path.suffix.lower() == ".npz":
            return "npz"
        return None

    def check_source(self) -> None:
        """Raises ConfigError unless `source` names something loadable and `data_dir` fits it.

        Only paths are checked here (before any compute); `tlkit.data` reads the files.
        """
        kind = self.source_kind()
        if kind is None:
            raise ConfigError(
                f"data.source: {self.source!r} is neither a built-in name nor an existing folder or .npz file; "
                f"use {self.SOURCE_FORMS}"
            )
        if not self.data_dir:
            return
        if kind != "builtin":
            raise ConfigError(
                f"data.data_dir: only for the built-in datasets, but data.source {self.source!r} is a {kind}"
            )
        path = Path(self.data_dir).expanduser()
        if self.source.startswith("cifar"):
            if not (path.is_dir() or (path.is_file() and path.name.endswith(".tar.gz"))):
                raise ConfigError(f"data.data_dir: {self.data_dir!r} is not a directory or a .tar.gz archive")
        elif not path.is_dir():
            raise ConfigError(f"data.data_dir: {self.data_dir!r} is not a directory")


@dataclasses.dataclass
class ModelConfig:
    """Backbone, input resolution and the classification head."""

    flag_prefix: typing.ClassVar[str] = ""

    backbone: str = option("resnet50", f"Backbone: {BACKBONE_CHOICES_HELP}.")
    weights: str = option(
        "imagenet",
        "Backbone weights: 'imagenet' (download), 'none' (random init) or a path to a "
        "Keras .weights.h5 file.",
    )
    image_size: int = option(224, "Side of the square image fed to the backbone (px).", min=32, max=512)
    head_units: int = option(256, "Units of the head's hidden Dense layer.", min=8, max=4096)
    dropout: float = option(0.5, "Dropout rate before the output layer.", min=0.0, max=0.9)
    l2: float = option(1e-4, "L2 penalty on the head's hidden Dense kernel.", min=0.0, max=1.0, scale="log")
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy loss.", min=0.0, max=0.5)


@dataclasses.dataclass
class AugmentConfig:
    """Training-only augmentation; a strength of 0 turns a transform off."""

    flag_prefix: typing.ClassVar[str] = "aug"

    flip: bool = option(False, "Random horizontal flip.")
    rotation: float = option(0.0, "Random rotation, as a fraction of a full turn.", min=0.0, max=0.5)
    zoom: float = option(0.0, "Random zoom, as a fraction of the image size.", min=0.0, max=0.5)
    translation: float = option(0.0, "Random shift, as a fraction of the image size.", min=0.0, max=0.5)
    contrast: float = option(0.0, "Random contrast change factor.", min=0.0, max=1.0)

    @property
    def enabled(self) -> bool:
        return self.flip or self.beyond_flip

    @property
    def beyond_flip(self) -> bool:
        """Any transform besides the flip is on. A flip alone keeps the caches usable: they then hold
        every training image and its mirror image, the only two versions a flip can show."""
        return any((self.rotation, self.zoom, self.translation, self.contrast))


@dataclasses.dataclass
class StageConfig:
    """One training stage (optimizer, schedule, length)."""

    epochs: int = option(0, "Epochs of this stage (0 skips it).", min=0, max=1000)
    learning_rate: float = option(1e-3, "Peak learning rate.", min=1e-8, max=1.0, flag="lr", scale="log")
    optimizer: str = option("adam", "Optimizer.", choices=("adam", "adamw"))
    weight_decay: float = option(
        0.0, "Decoupled weight decay (AdamW only).", min=0.0, max=1.0, scale="log"
    )
    schedule: str = option(
        "constant", "Learning-rate schedule over the stage.",
        choices=("constant", "exponential", "cosine"),
    )
    decay_rate: float = option(
        0.9, "Exponential schedule: LR multiplier per epoch.", min=0.01, max=1.0
    )
    warmup_epochs: float = option(0.0, "Linear warm-up length in epochs.", min=0.0, max=100.0)
    min_steps: int = option(
        0, "At least this many optimizer steps: on a small training set the stage runs more epochs than "
        "`epochs` asks for (0: off; a stage with 0 epochs stays off). Setting a stage's epochs without "
        "its min_steps turns the floor off: the stage runs exactly those epochs.", min=0, max=1_000_000,
    )
    warmup_steps: int = option(
        0, "At least this many linear warm-up steps (the longer of this and warmup_epochs; at most half "
        "the stage).", min=0, max=1_000_000,
    )
    early_stopping: int = option(
        0, "Stop after this many epochs without improvement of early_stopping_metric, counted from the end "
        "of warm-up; the stage ends on its best epoch's weights (0: off).", min=0, max=1000,
    )
    early_stopping_metric: str = option(
        "val_loss", "What early stopping watches and keeps the best epoch of.",
        choices=("val_loss", "val_accuracy"),
    )


    def sized_for(self, steps_per_epoch: int) -> StageConfig:
        """This stage as it runs at `steps_per_epoch`: `min_steps` and `warmup_steps` turned into epochs.

        Example: `epochs=10, min_steps=2000` runs 10 epochs at 844 steps per epoch (60,000 images
        in batches of 64) and 100 epochs at 20 (1,260 images).
        """
        if not self.epochs:
            return self
        steps_per_epoch = max(int(steps_per_epoch), 1)
        epochs = max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))
        warmup = min(max(self.warmup_epochs, self.warmup_steps / steps_per_epoch), epochs / 2)
        if self.warmup_epochs >= self.epochs:  # validated away; kept as asked rather than shortened here
            warmup = self.warmup_epochs
        return dataclasses.replace(self, epochs=epochs, warmup_epochs=round(warmup, 6))


@dataclasses.dataclass
class HeadStageConfig(StageConfig):
    """Stage 1: frozen backbone (inference mode), head only."""

    flag_prefix: typing.ClassVar[str] = "head"


@dataclasses.dataclass
class FinetuneStageConfig(StageConfig):
    """Stage 2: unfreeze a chosen depth of the backbone; BatchNorm stays frozen."""

    flag_prefix: typing.ClassVar[str] = "finetune"

    unfreeze: str = option(
        "16",
        "What to unfreeze: the last N layers ('16') or a depth by block/stage name: that block and "
        "every layer after it ('conv5_block3', 'conv5', 'conv4' = conv4 and conv5).",
        bare=True,
    )


@dataclasses.dataclass
class DistributionConfig:
    """One run on several devices or hosts through `keras.distribution` (JAX backend)."""

    flag_prefix: typing.ClassVar[str] = ""

    mode: str = option(
        "none", "Devices one run trains on: 'data_parallel' replicates the model on every local device "
        "(and host) and splits each batch across them; 'auto' does so when more than one accelerator is "
        "visible. JAX backend only.",
        choices=("none", "data_parallel", "auto"), flag="distribution",
    )
    lr_scaling: str = option(
        "none", "Learning-rate rule: 'linear' multiplies each stage's learning rate by "
        "batch_size / lr_reference_batch (the global batch over the batch the rates were tuned at).",
        choices=("none", "linear"),
    )
    lr_reference_batch: int = option(
        64, "The global batch size the learning rates were tuned at (for lr_scaling='linear').",
        min=1, max=65536,
    )
    coordinator_address: str = option(
        "", "Several hosts: 'host:port' of process 0, which every process connects to "
        "(default: $KERAS_DISTRIBUTION_JOB_ADDRESSES' first entry).",
    )
    num_processes: int = option(
        0, "Several hosts: how many processes take part (0: $KERAS_DISTRIBUTION_NUM_PROCESSES, else 1).",
        min=0, max=4096,
    )
    process_id: int = option(
        -1, "Several hosts: this process's index, 0 to num_processes - 1 "
        "(-1: $KERAS_DISTRIBUTION_PROCESS_ID, else 0).", min=-1, max=4095,
    )


@dataclasses.dataclass
class Config:
    """Everything that defines a run. See the module docstring."""

    flag_prefix: typing.ClassVar[str] = ""

    name: str = option("", "Run name (part of the run id).")
    preset: str = option("", "Preset this config started from (recorded for reference).")
    seed: int = option(42, "Random seed (data split, init, augmentation).", min=0)
    batch_size: int = option(
        64, "Global batch size (split evenly across devices under a distribution).", min=1, max=4096
    )
    precision: str = option(
        "auto", "Numeric precision; 'auto' picks mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native "
        "bf16 (tensorflow, torch), else float32.",
        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    )
    runs_dir: str = option(
        "", "Where run directories go (default: $TLKIT_RUNS_DIR or ./runs)."
    )
    tta_flip: bool = option(
        False, "Test-time augmentation: average the test predictions of each image and its mirror image.",
    )
    feature_cache: bool = option(
        True, "Head stage without augmentation: compute the frozen backbone's features once (cached on "
        "disk) and train the head on them; same model, much faster. Boundary activations are kept there too.",
    )
    boundary_cache: bool = option(
        True, "Finetune stage without augmentation: keep the frozen part's output (the activations at the "
        "freeze boundary, in 16-bit floats) in memory and run only the unfrozen layers each epoch; the head "
        "stage then derives its features from them, so the frozen part runs once per image.",
    )
    cache_memory_gb: float = option(
        8.0, "Host memory budget for the boundary cache (GB); larger caches are refused with a message.",
        min=0.001, max=1024.0,
    )
    cache_dir: str = option("", "Feature cache directory (default: $TLKIT_CACHE_DIR or ~/.cache/tlkit).")
    tensorboard: bool = option(
        False, "Write TensorBoard event files to RUN_DIR/tensorboard/: loss, accuracy and learning rate "
        "per epoch, both stages on one epoch axis (needs the tensorboard package).",
    )
    mlflow_uri: str = option(
        "", "Log the run to MLflow while it trains (params, per-epoch metrics, test metrics, files) at this "
        "tracking URI ('sqlite:///mlflow.db', 'http://host:5000'); needs the mlflow package.",
    )
    mlflow_experiment: str = option("tlkit", "MLflow experiment the run is logged under.")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    distribution: DistributionConfig = dataclasses.field(default_factory=DistributionConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    head: HeadStageConfig = dataclasses.field(
        default_factory=lambda: HeadStageConfig(epochs=10, learning_rate=1e-3)
    )
    finetune: FinetuneStageConfig = dataclasses.field(
        default_factory=lambda: FinetuneStageConfig(epochs=5, learning_rate=1e-5)
    )

    # ---- construction ----------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Builds a config from a (possibly partial) nested dict over the defaults."""
        return apply_overrides(cls(), values)

    @classmethod
    def from_preset(cls, preset: str, overrides: dict[str, Any] | None = None) -> Config:
        """Builds a preset, then applies nested `overrides` on top."""
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(
                f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}"
            )
        config = apply_overrides(cls(), PRESETS[preset])
        config.preset = preset
        return apply_overrides(config, overrides or {})

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Reads a `.json` or `.toml` config; a `preset` key there is applied first."""
        values = read_config_file(path)
        preset = values.pop("preset", "") or ""
        return cls.from_preset(preset, values) if preset else cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **overrides) -> Config:
        """A copy with nested overrides, e.g. `replace(model={"dropout": 0.2})`."""
        return apply_overrides(self, overrides)

    def sized_for(self, train_size: int) -> Config:
        """The config as it trains on `train_size` images: each stage's `min_steps` and
        `warmup_steps` turned into epochs (`StageConfig.sized_for`); nothing else changes."""
        steps_per_epoch = math.ceil(train_size / self.batch_size)
        return dataclasses.replace(self, head=self.head.sized_for(steps_per_epoch),
                                   finetune=self.finetune.sized_for(steps_per_epoch))

    # ---- validation ------------------------------------------------------

    def validate(self) -> Config:
        """Checks every field against its metadata and cross-field rules.

        Raises:
            ConfigError: naming the first invalid field and what is allowed.
        """
        for spec in field_specs(type(self)):
            check_value(spec, spec.get(self))
        if self.finetune.epochs:
            self._check_unfreeze()
        if self.head.epochs == 0 and self.finetune.epochs == 0:
            raise ConfigError("head.epochs / finetune.epochs: both stages have 0 epochs; nothing to train")
        for stage in (self.head, self.finetune):
            name = stage.flag_prefix
            if stage.weight_decay and stage.optimizer != "adamw":
                raise ConfigError(
                    f"{name}.weight_decay: decoupled weight decay needs {name}.optimizer='adamw'"
                )
            if stage.epochs and stage.warmup_epochs >= stage.epochs:
                raise ConfigError(
                    f"{name}.warmup_epochs: {stage.warmup_epochs} must be shorter than "
                    f"{name}.epochs ({stage.epochs})"
                )
        self._check_early_stopping_has_validation()
        weights = self.model.weights
        if weights not in ("imagenet", "none") and not Path(weights).expanduser().is_file():
            raise ConfigError(
                f"model.weights: {weights!r} is not 'imagenet', 'none' or an existing weights file"
            )
        self.data.check_source()
        backbone = self.model.backbone
        if backbone not in LOCAL_BACKBONES and not backbone.startswith(KERAS_HUB_PREFIX):
            raise ConfigError(f"model.backbone: {backbone!r} is not one of {BACKBONE_CHOICES_HELP}")
        return self

    def _check_early_stopping_has_validation(self) -> None:
        """Early stopping watches the validation split; one message names every stage that needs it,
        so that training on all images (a preset with early stopping, validation_split 0) takes one fix."""
        if self.data.validation_split:
            return
        names = [stage.flag_prefix for stage in (self.head, self.finetune) if stage.early_stopping]
        if names:
            fields = " / ".join(f"{name}.early_stopping" for name in names)
            flags = " ".join(f"--{name}-early-stopping 0" for name in names)
            raise ConfigError(f"{fields}: early stopping needs a validation split (data.validation_split > 0); "
                              f"to train on every training image, also set {'them' if len(names) > 1 else 'it'} "
                              f"to 0 ({flags})")

    def _check_unfreeze(self) -> None:
        """A block name must exist in a built-in backbone (keras-hub names are checked when built)."""
        spec = UnfreezeSpec.parse(self.finetune.unfreeze)
        blocks = BACKBONE_BLOCKS.get(self.model.backbone)
        if spec.block and blocks and spec.block not in blocks:
            raise ConfigError(
                f"finetune.unfreeze: {spec.block!r} is not a block of {self.model.backbone}; "
                f"valid blocks: {', '.join(blocks)}"
            )


# ---- field introspection (used by the CLI, the explorer and validation) -----


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """Describes one leaf field of `Config`: where it lives and what it allows."""

    path: tuple[str, ...]
    type: type
    optional: bool
    default: Any
    help: str
    choices: tuple | None
    min: float | None
    max: float | None
    flag: str
    scale: str = "linear"

    @property
    def key(self) -> str:
        return ".".join(self.path)

    def get(self, config: Config) -> Any:
        value = config
        for part in self.path:
            value = getattr(value, part)
        return value


def field_specs(config_cls: type = Config) -> list[FieldSpec]:
    """All leaf fields of `config_cls` in declaration order, groups flattened."""
    specs = []
    hints = typing.get_type_hints(config_cls)
    instance = config_cls()
    for field in dataclasses.fields(config_cls):
        value = getattr(instance, field.name)
        if dataclasses.is_dataclass(value):
            for inner in field_specs(type(value)):
                default = getattr(value, inner.path[-1])
                specs.append(dataclasses.replace(inner, path=(field.name, *inner.path), default=default))
            continue
        leaf_type, optional = _unwrap_optional(hints[field.name])
        meta = field.metadata
        flag = meta.get("flag") or field.name.replace("_", "-")
        if config_cls.flag_prefix and not meta.get("bare"):
            flag = f"{config_cls.flag_prefix}-{flag}"
        specs.append(
            FieldSpec(
                path=(field.name,), type=leaf_type, optional=optional, default=value,
                help=meta.get("help", ""), choices=meta.get("choices"),
                min=meta.get("min"), max=meta.get("max"), flag=flag, scale=meta.get("scale", "linear"),
            )
        )
    return specs


def field_named_in(message: str) -> str | None:
    """The config field an error message is about: its key leading the message
    (`model.dropout: ...`), else the first field whose CLI flag it names (`--data-dir`); None if
    neither. The explorer points at the form field with it (status.json's `error_field`)."""
    specs = field_specs()
    head = message.split(":", 1)[0].strip()
    for spec in specs:
        if spec.key == head:
            return spec.key
    named = [(match.start(), spec.key) for spec in specs
             if (match := re.search(rf"--{re.escape(spec.flag)}(?![\w-])", message))]
    return min(named)[1] if named else None


def _unwrap_optional(hint) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


def check_value(spec: FieldSpec, value: Any) -> None:
    """Raises ConfigError if `value` is not allowed for `spec`."""
    if value is None:
        if spec.optional:
            return
        raise ConfigError(f"{spec.key}: a value is required")
    if spec.type is bool:
        ok = isinstance(value, bool)
    elif spec.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif spec.type is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec.type)
    if not ok:
        raise ConfigError(f"{spec.key}: expected {spec.type.__name__}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{spec.key}: {value!r} is not one of {', '.join(map(str, spec.choices))}")
    if spec.type in (int, float):
        if value != value:  # NaN
            raise ConfigError(f"{spec.key}: NaN is not allowed")
        low = spec.min if spec.min is not None else float("-inf")
        high = spec.max if spec.max is not None else float("inf")
        if not low <= value <= high:
            raise ConfigError(f"{spec.key}: {value} is outside the allowed range [{_fmt(low)}, {_fmt(high)}]")


def _fmt(bound: float) -> str:
    return {float("inf"): "inf", float("-inf"): "-inf"}.get(bound, f"{bound:g}")


def coerce(spec: FieldSpec, value: Any) -> Any:
    """Converts text (CLI, TOML ints for floats) into the field's type."""
    if value is None or (spec.optional and isinstance(value, str) and value.lower() in ("", "none")):
        return None
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or spec.type is str:
        return value
    try:
        if spec.type is bool:
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(value)
            return lowered in ("true", "1", "yes", "on")
        return spec.type(value)
    except ValueError:
        raise ConfigError(f"{spec.key}: cannot read {value!r} as {spec.type.__name__}") from None


def apply_overrides(config: Config, *overrides: dict[str, Any]) -> Config:
    """Returns a copy of `config` with nested `overrides` applied (unknown keys rejected).

    Keys may be nested dicts (`{"model": {"dropout": 0.2}}`) or dotted
    (`{"model.dropout": 0.2}`); of several overrides (a file, then flags) the later wins. A stage's
    `epochs` given without its `min_steps` in any of them means exactly that many epochs: the step
    floor a preset set for that stage is turned off (`min_steps` 0).

    Example: `apply_overrides(Config.from_preset("cpu"), {"head.epochs": 5})` runs the head stage
    for 5 epochs on any dataset size; `{"head.epochs": 5, "head.min_steps": 2000}` keeps the floor.
    """
    specs = {spec.key: spec for spec in field_specs(type(config))}
    groups = {key.split(".")[0] for key in specs if "." in key}
    values = config.to_dict()
    flat = {key: value for override in overrides for key, value in flatten_dict(override).items()}
    for stage in STAGES:
        if f"{stage}.epochs" in flat and f"{stage}.min_steps" not in flat:
            flat[f"{stage}.min_steps"] = 0
    for key, value in flat.items():
        if key not in specs:
            hint = f"; groups are {', '.join(sorted(groups))}" if key.split(".")[0] not in groups else ""
            raise ConfigError(f"{key}: unknown config field{hint}")
        *parents, leaf = key.split(".")
        target = values
        for parent in parents:
            target = target[parent]
        target[leaf] = coerce(specs[key], value)
    return _build(type(config), values)


def flatten_dict(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts (a config dict) as dotted keys: `{"model": {"dropout": 0.3}}` → `{"model.dropout": 0.3}`."""
    flat = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_dict(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def _build(cls: type, values: dict[str, Any]):
    kwargs = {}
    for field in dataclasses.fields(cls):
        value = values[field.name]
        default = getattr(cls(), field.name) if field.default is dataclasses.MISSING else None
        kwargs[field.name] = _build(type(default), value) if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a JSON or TOML config file into a nested dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {str(path)!r}: use a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold an object of config fields at the top level "
                          f"(like config.json), not a {type(values).__name__}")
    return values


# ---- presets ----------------------------------------------------------------

# One line per preset: what it is for (the explorer shows it next to the preset picker).
PRESET_NOTES = {
    "smoke": "Plumbing check in seconds: a tiny random-init backbone on 1,000 images.",
    "cpu": "Best recipe for a 2-core CPU: ResNet50 at 72 px, head then conv5 fine-tuned "
           "(93.3-93.5 % trained on all 60,000 images; 26-27 min on an AVX-512 bf16 CPU, 34-44 on AVX2).",
    "seed": "The seed write-up's recipe as written: 224 px, augmentation, last 16 layers (GPU).",
    "best": "Strongest GPU recipe: 224 px, conv3 and up with AdamW, warm-up + cosine, TTA.",
}

PRESETS: dict[str, dict[str, Any]] = {
    # The seed write-up's recipe as written: 224 px, flip/rotation/zoom, head 10
    # epochs (Adam, exponential decay), then the last 16 layers at 1e-5 for 5.
    "seed": {
        "batch_size": 64,
        "precision": "auto",
        "model": {"backbone": "resnet50", "weights": "imagenet", "image_size": 224,
                  "head_units": 256, "dropout": 0.5, "l2": 1e-4},
        "augment": {"flip": True, "rotation": 0.1, "zoom": 0.1},
        "head": {"epochs": 10, "learning_rate": 1e-3, "schedule": "exponential", "decay_rate": 0.9},
        "finetune": {"epochs": 5, "learning_rate": 1e-5, "unfreeze": "16", "schedule": "constant"},
    },
    # The best recipe a 2-core CPU finishes in under 30 minutes on the full training set
    # (docs/results.md): 72 px (jax's XLA is pathologically slow at 64), both caches, so the
    # frozen prefix runs once, and conv5 fine-tuned for 3 epochs. Stage lengths have a floor in
    # optimizer steps, fine-tuning warms up, and early stopping keeps each stage's best epoch,
    # so the same recipe suits 1,000 images and 60,000 (docs/small-data.md). bf16 where the
    # backend gains from it ("auto": tensorflow and torch; jax stays float32).
    "cpu": {
        "batch_size": 64,
        "precision": "auto",
        "model": {"backbone": "resnet50", "weights": "imagenet", "image_size": 72,
                  "head_units": 256, "dropout": 0.3, "l2": 1e-4, "label_smoothing": 0.1},
        "head": {"epochs": 10, "learning_rate": 1e-3, "schedule": "cosine", "min_steps": 2000,
                 "early_stopping": 5, "early_stopping_metric": "val_accuracy"},
        "finetune": {"epochs": 3, "learning_rate": 1e-4, "unfreeze": "conv5", "schedule": "cosine",
                     "min_steps": 500, "warmup_steps": 100, "early_stopping": 3,
                     "early_stopping_metric": "val_accuracy"},
    },
    # The strongest GPU recipe we can justify (not yet run: no GPU was lent; docs/results.md):
    # full resolution, the seed's augmentation made milder where it destroys Fashion-MNIST
    # detail, three stages of the backbone fine-tuned with AdamW on a warm-up + cosine schedule,
    # label smoothing, and test-time flip averaging (mirror-symmetric classes).
    "best": {
        "batch_size": 64,
        "precision": "auto",
        "tta_flip": True,
        "model": {"backbone": "resnet50", "weights": "imagenet", "image_size": 224,
                  "head_units": 256, "dropout": 0.3, "l2": 0.0, "label_smoothing": 0.1},
        "augment": {"flip": True, "translation": 0.1, "zoom": 0.1},
        "head": {"epochs": 3, "learning_rate": 1e-3, "schedule": "cosine"},
        "finetune": {"epochs": 12, "learning_rate": 1e-4, "unfreeze": "conv3", "optimizer": "adamw",
                     "weight_decay": 0.05, "schedule": "cosine", "warmup_epochs": 1.0},
    },
    # Seconds: a tiny random-init backbone on a small subset, to try the plumbing.
    "smoke": {
        "batch_size": 32,
        "precision": "float32",
        "data": {"train_limit": 1000, "test_limit": 500},
        "model": {"backbone": "mini_resnet", "weights": "none", "image_size": 32,
                  "head_units": 64, "dropout": 0.2},
        "head": {"epochs": 1, "learning_rate": 3e-3, "schedule": "constant"},
        "finetune": {"epochs": 1, "learning_rate": 1e-3, "unfreeze": "conv3"},
    },
}
