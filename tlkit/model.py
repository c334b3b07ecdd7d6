"""The classifier graph and its freezing rules.

uint8 (28, 28, 1) → resize + gray→RGB → augmentation (training only) →
backbone preprocessing → backbone → GAP → Dense(units, relu, L2) → Dropout →
Dense(10) → softmax (float32 even under mixed precision).

BatchNormalization layers of the backbone are never trainable: Keras runs a
non-trainable BatchNormalization in inference mode, so its moving statistics
stay the ImageNet ones in both stages (fine-tuning with batch statistics from
small Fashion-MNIST batches is the classic transfer-learning trap).

Example:

```python
from tlkit.config import Config
from tlkit.model import build_classifier, freeze_backbone

config = Config.from_preset("smoke")
classifier = build_classifier(config.model, config.augment)
freeze_backbone(classifier.model)
```
"""

from __future__ import annotations

import dataclasses

import keras

from tlkit.backbones import Backbone, build_backbone, select_layers
from tlkit.config import AugmentConfig, ModelConfig
from tlkit.layers import ImagePreparation

NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)
BACKBONE_LAYER = "backbone"
PREPARE_LAYER = "prepare"
NORMALIZATION_LAYER = "preprocessing"


@dataclasses.dataclass
class Classifier:
    model: keras.Model
    backbone: Backbone


def build_augmentation(config: AugmentConfig, seed: int | None = None) -> keras.Sequential | None:
    """The training-only augmentation layers for `config` (None when all are off).

    Runs on 0..255 RGB images, before the backbone's normalisation, so the
    contrast layer's value range and the fill values are in pixel units.
    """
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="constant", seed=seed,
                                                  name="aug_rotation"))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="constant", seed=seed, name="aug_zoom"))
    if config.translation:
        layers.append(keras.layers.RandomTranslation(config.translation, config.translation,
                                                     fill_mode="constant", seed=seed, name="aug_translation"))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed,
                                                  name="aug_contrast"))
    return keras.Sequential(layers, name="augmentation") if layers else None


def build_classifier(model_config: ModelConfig, augment_config: AugmentConfig | None = None,
                     seed: int | None = None) -> Classifier:
    """Builds the full model from uint8 images to class probabilities."""
    backbone = build_backbone(model_config.backbone, model_config.weights, model_config.image_size)
    backbone.model.name = BACKBONE_LAYER
    inputs = keras.Input(INPUT_SHAPE, dtype="uint8", name="image")
    x = ImagePreparation(model_config.image_size, name=PREPARE_LAYER)(inputs)
    augmentation = build_augmentation(augment_config or AugmentConfig(), seed)
    if augmentation is not None:
        x = augmentation(x)
    backbone.normalization.name = NORMALIZATION_LAYER
    x = backbone.normalization(x)
    features = backbone.model(x)
    outputs = build_head(model_config, features)
    model = keras.Model(inputs, outputs, name="tlkit_classifier")
    freeze_backbone(model)
    return Classifier(model, backbone)


def build_head(model_config: ModelConfig, features):
    """GAP → Dense(relu, L2) → Dropout → Dense(10) → float32 softmax, on `features`."""
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    return build_head_from_pooled(model_config, x)


def build_head_from_pooled(model_config: ModelConfig, pooled):
    regularizer = keras.regularizers.L2(model_config.l2) if model_config.l2 else None
    x = keras.layers.Dense(model_config.head_units, activation="relu", kernel_regularizer=regularizer,
                           name="head_dense")(pooled)
    x = keras.layers.Dropout(model_config.dropout, name="head_dropout")(x)
    x = keras.layers.Dense(NUM_CLASSES, name="head_logits")(x)
    return keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_LAYER)


def freeze_backbone(model: keras.Model) -> None:
    """Stage `head`: the whole backbone frozen (and so in inference mode)."""
    backbone_of(model).trainable = False


def unfreeze_backbone(model: keras.Model, spec: str) -> list[str]:
    """Stage `finetune`: unfreezes the layers `spec` selects, BatchNorm excluded.

    Returns:
        The names of the backbone layers that are now trainable and have weights.
    """
    backbone = backbone_of(model)
    chosen = {id(layer) for layer in select_layers(backbone, spec)}
    backbone.trainable = True
    trainable = []
    for layer in backbone.layers:
        unfrozen = id(layer) in chosen and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = unfrozen
        if unfrozen and layer.weights:
            trainable.append(layer.name)
    return trainable
