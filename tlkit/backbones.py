"""Backbone registry: building a backbone, its weights and its preprocessing.

A backbone is a `keras.Model` from an RGB image to a feature map, paired with
the `ImageNormalization` its weights expect. Supported names:

- `resnet50`: `keras.applications.ResNet50(include_top=False)`; weights
  `imagenet` (downloaded by Keras), `none`, or a local `.weights.h5` file.
  Caffe-style preprocessing (RGB→BGR, ImageNet mean subtraction).
- `mini_resnet`: a tiny ResNet with the same layer naming (`conv1`, `conv2_block1`,
  …), random init; for smoke runs and tests.
- `keras_hub:<preset>`: any keras-hub image backbone by preset name or local
  preset directory, normalised with the preset's own image converter.

Example:

```python
from tlkit.backbones import build_backbone, list_blocks

backbone = build_backbone("resnet50", weights="none", image_size=64)
backbone.model.output.shape                    # (None, 2, 2, 2048)
list_blocks("resnet50")[:3]                    # ['conv1', 'conv2', 'conv2_block1']
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import keras

from tlkit.config import BACKBONE_BLOCKS, KERAS_HUB_PREFIX, LOCAL_BACKBONES, UnfreezeSpec
from tlkit.layers import ImageNormalization

_BLOCK_PATTERN = re.compile(r"^([a-z]+\d+)(?:_(block\d+))?")


class BackboneError(RuntimeError):
    """A backbone or its weights could not be built or loaded; says what to do."""


@dataclasses.dataclass
class Backbone:
    """A feature extractor and the preprocessing its weights need.

    Attributes:
        name: the registry name (`resnet50`, `keras_hub:…`).
        model: RGB image (after `normalization`) → feature map.
        normalization: the in-graph preprocessing layer.
        weights_id: what the weights are (`none`, `imagenet`, a file's sha256 prefix).
    """

    name: str
    model: keras.Model
    normalization: ImageNormalization
    weights_id: str


def build_backbone(name: str, weights: str = "imagenet", image_size: int = 224) -> Backbone:
    """Builds the backbone `name` for square `image_size` inputs.

    Args:
        name: `resnet50`, `mini_resnet` or `keras_hub:<preset or dir>`.
        weights: `imagenet`, `none` or a path to a Keras `.weights.h5` file.
        image_size: input side in pixels.
    """
    if name == "resnet50":
        return _resnet50(weights, image_size)
    if name == "mini_resnet":
        return _mini_resnet(weights, image_size)
    if name.startswith(KERAS_HUB_PREFIX):
        return _keras_hub(name[len(KERAS_HUB_PREFIX):], weights, image_size)
    raise BackboneError(f"unknown backbone {name!r}; use resnet50, mini_resnet or keras_hub:<preset>")


def list_backbones() -> list[str]:
    """Backbone names `build_backbone` knows without a preset (keras-hub presets come on top)."""
    return list(LOCAL_BACKBONES)


def _resnet50(weights: str, image_size: int) -> Backbone:
    input_shape = (image_size, image_size, 3)
    if weights == "imagenet":
        try:
            model = keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=input_shape)
        except Exception as error:  # urllib/HTTP/SSL errors differ per platform
            raise BackboneError(
                f"downloading the ImageNet ResNet50 weights failed ({type(error).__name__}: {error}). "
                "Put resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 or a Keras .weights.h5 file "
                "on this machine and pass it with --weights PATH"
            ) from None
        return Backbone("resnet50", model, ImageNormalization.caffe(name="preprocessing"), "imagenet")
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    weights_id = _load_weights_file(model, weights)
    return Backbone("resnet50", model, ImageNormalization.caffe(name="preprocessing"), weights_id)


def _mini_resnet(weights: str, image_size: int) -> Backbone:
    if weights == "imagenet":
        raise BackboneError("mini_resnet has no ImageNet weights; use --weights none or a weights file")
    model = mini_resnet((image_size, image_size, 3))
    weights_id = _load_weights_file(model, weights)
    normalization = ImageNormalization(scale=1 / 127.5, offset=-1.0, name="preprocessing")
    return Backbone("mini_resnet", model, normalization, weights_id)


def _load_weights_file(model: keras.Model, weights: str) -> str:
    if weights == "none":
        return "none"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(f"weights file {str(path)!r} does not exist")
    try:
        model.load_weights(path)
    except Exception as error:  # h5py/OSError/ValueError for corrupt or mismatched files
        raise BackboneError(
            f"cannot load weights {str(path)!r} into {model.name} ({type(error).__name__}: {error}). "
            "It must be a Keras .weights.h5 saved from the same architecture without top"
        ) from None
    return f"sha256:{file_sha256(path)[:16]}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mini_resnet(input_shape=(32, 32, 3), filters=(16, 32, 64), name="mini_resnet") -> keras.Model:
    """A 3-stage basic-block ResNet named like keras.applications' ResNets.

    Stages are `conv2`, `conv3`, … with one block each (`conv2_block1_…`), so
    every `--unfreeze` form works on it exactly as on ResNet50.
    """
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(filters[0], 3, padding="same", name="conv1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    for stage, width in enumerate(filters, start=2):
        prefix = f"conv{stage}_block1"
        strides = 1 if stage == 2 else 2
        shortcut = keras.layers.Conv2D(width, 1, strides=strides, name=f"{prefix}_0_conv")(x)
        shortcut = keras.layers.BatchNormalization(name=f"{prefix}_0_bn")(shortcut)
        y = keras.layers.Conv2D(width, 3, strides=strides, padding="same", name=f"{prefix}_1_conv")(x)
        y = keras.layers.BatchNormalization(name=f"{prefix}_1_bn")(y)
        y = keras.layers.Activation("relu", name=f"{prefix}_1_relu")(y)
        y = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}_2_conv")(y)
        y = keras.layers.BatchNormalization(name=f"{prefix}_2_bn")(y)
        x = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
        x = keras.layers.Activation("relu", name=f"{prefix}_out")(x)
    return keras.Model(inputs, x, name=name)


def _keras_hub(preset: str, weights: str, image_size: int) -> Backbone:
    try:
        import keras_hub
    except ImportError:
        raise BackboneError("keras_hub backbones need the keras-hub package: pip install keras-hub") from None
    load_weights = weights != "none"
    try:
        model = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as error:  # downloads, missing files and unknown names all end here
        raise BackboneError(
            f"cannot load keras-hub preset {preset!r} ({type(error).__name__}: {error}). Pass a preset "
            "name keras-hub knows (it downloads once) or a local preset directory"
        ) from None
    if weights not in ("imagenet", "none"):
        weights_id = _load_weights_file(model, weights)
    else:
        weights_id = f"{preset}:{weights}" if load_weights else "none"
    # keras-hub converters expect 0..255 pixels: y = x * scale + offset.
    normalization = ImageNormalization(scale=converter.scale, offset=converter.offset, name="preprocessing")
    del image_size  # keras-hub image backbones take any input size
    return Backbone(f"{KERAS_HUB_PREFIX}{preset}", model, normalization, weights_id)


# ---- layer selection (unfreezing) -------------------------------------------------


def block_names(model: keras.Model) -> list[str]:
    """Stage and block name prefixes in layer order: `conv2`, `conv2_block1`, …

    Works for keras.applications-style names (`conv5_block3_2_conv`) and
    keras-hub-style names (`stack3_block2_1_conv`).
    """
    names: list[str] = []
    for layer in model.layers:
        match = _BLOCK_PATTERN.match(layer.name)
        if not match or not layer.weights:  # skip weightless groups such as `pool1`
            continue
        stage = match.group(1)
        for candidate in (stage, f"{stage}_{match.group(2)}" if match.group(2) else None):
            if candidate and candidate not in names:
                names.append(candidate)
    return names


def list_blocks(name: str = "resnet50") -> list[str]:
    """Block names of a backbone, for pickers: the static table for built-in backbones
    (`tlkit.config.BACKBONE_BLOCKS`), else read off a backbone built without weights."""
    if name in BACKBONE_BLOCKS:
        return list(BACKBONE_BLOCKS[name])
    return block_names(build_backbone(name, "none", 64).model)


def select_layers(model: keras.Model, spec: str | UnfreezeSpec) -> list[keras.layers.Layer]:
    """The backbone layers `spec` unfreezes: the last N (`"16"`) or a depth by name.

    Args:
        model: the backbone model.
        spec: an `UnfreezeSpec` or its text: a layer count, or a stage/block name
            (`"conv4"`, `"conv5_block3"`): that block's first layer and every layer
            after it, so `conv4` unfreezes conv4 and conv5.

    Raises:
        BackboneError: if the name matches no layer (the message lists valid names).
    """
    spec = spec if isinstance(spec, UnfreezeSpec) else UnfreezeSpec.parse(spec)
    layers = model.layers[1:] if isinstance(model.layers[0], keras.layers.InputLayer) else model.layers
    if spec.is_count:
        return layers[-spec.count:] if spec.count else []
    for position, layer in enumerate(layers):
        if layer.name == spec.block or layer.name.startswith(f"{spec.block}_"):
            return layers[position:]
    raise BackboneError(
        f"--unfreeze {spec.block!r} matches no layer of {model.name}; valid blocks: {', '.join(block_names(model))}"
    )
