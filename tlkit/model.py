"""The classifier: its parts, the models derived from them, and the freezing rules.

uint8 images → `ImagePreparation` (cast, resize, gray→RGB) → augmentation
(training only) → the backbone's normalisation → backbone → global average
pooling → head (Dense(relu, L2) → Dropout → Dense(classes) → float32 softmax).

`Classifier` holds these parts. Everything that needs one piece of the graph
(the head alone on pooled features, the backbone up to pooling, the frozen
prefix and trainable suffix of a fine-tuning split) is derived here, so no
other module looks layers up by name.

BatchNormalization layers of the backbone are never trainable: Keras runs a
non-trainable BatchNormalization in inference mode, so its moving statistics
stay the ImageNet ones in both stages (fine-tuning with batch statistics from
small batches is the classic transfer-learning trap).

Example:

```python
from tlkit.config import Config
from tlkit.model import build_classifier

config = Config.from_preset("smoke")
classifier = build_classifier(config.model, config.augment, num_classes=10, input_shape=(28, 28, 1))
classifier.freeze_backbone()
head = classifier.head_model()                    # pooled features → probabilities, shared weights
split = classifier.split_at("conv3_block1_1_conv")  # frozen prefix / trainable suffix
```
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import keras

from tlkit import environment
from tlkit.backbones import Backbone, build_backbone, select_layers
from tlkit.config import AugmentConfig, ModelConfig, UnfreezeSpec
from tlkit.layers import ImagePreparation

# The classifier's part names: written when it is built, read back when a saved model is reloaded.
BACKBONE, PREPARATION, AUGMENTATION, NORMALIZATION, POOLING = (
    "backbone", "prepare", "augmentation", "preprocessing", "head_pool")
HEAD = ("head_dense", "head_dropout", "head_logits", "probabilities")


@dataclasses.dataclass
class BoundarySplit:
    """The classifier cut in front of the first unfrozen backbone layer.

    Attributes:
        frozen_model: uint8 images → the boundary tensors (inference path).
        train_model: boundary tensors → probabilities: the unfrozen layers and the head.
        features_model: boundary tensors → pooled features (the head stage's input).
        first_unfrozen: the backbone layer the split is in front of.
    """

    frozen_model: keras.Model
    train_model: keras.Model
    features_model: keras.Model
    first_unfrozen: str

    @property
    def boundary_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(tensor.shape[1:]) for tensor in self.frozen_model.outputs]


@dataclasses.dataclass
class Classifier:
    """The full model and the parts it is made of (all share their weights with `model`).

    Attributes:
        model: uint8 images → class probabilities; what `model.keras` holds.
        backbone: the backbone, a layer of `model`.
        preparation: cast, resize and gray→RGB.
        augmentation: training-only augmentation, or None.
        normalization: the backbone's preprocessing.
        pooling: global average pooling of the backbone's feature map.
        head: the layers after pooling, in order.
        weights_id: what the backbone weights are (`imagenet`, `none`, a file hash); None
            when unknown (a reloaded model).
    """

    model: keras.Model
    backbone: keras.Model
    preparation: keras.layers.Layer
    augmentation: keras.layers.Layer | None
    normalization: keras.layers.Layer
    pooling: keras.layers.Layer
    head: list[keras.layers.Layer]
    weights_id: str | None = None

    def __post_init__(self):
        release_intermediates(self.model)
        convolve_small_maps_as_matmul(self.model)

    @classmethod
    def from_model(cls, model: keras.Model, weights_id: str | None = None) -> Classifier:
        """The parts of a classifier built by `build_classifier` (e.g. reloaded from `model.keras`)."""
        names = {layer.name for layer in model.layers}
        return cls(model=model, backbone=model.get_layer(BACKBONE), preparation=model.get_layer(PREPARATION),
                   augmentation=model.get_layer(AUGMENTATION) if AUGMENTATION in names else None,
                   normalization=model.get_layer(NORMALIZATION), pooling=model.get_layer(POOLING),
                   head=[model.get_layer(name) for name in HEAD], weights_id=weights_id)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.input.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.model.output.shape[-1])

    # ---- freezing ---------------------------------------------------------------

    def freeze_backbone(self) -> list[str]:
        """Stage `head`: the whole backbone frozen (and so in inference mode); returns []."""
        self.backbone.trainable = False
        return []

    def unfreeze(self, spec: str | UnfreezeSpec) -> list[str]:
        """Stage `finetune`: unfreezes the layers `spec` selects, BatchNorm excluded.

        Returns:
            The names of the backbone layers that are now trainable and have weights.
        """
        chosen = {id(layer) for layer in select_layers(self.backbone, spec)}
        self.backbone.trainable = True
        trainable = []
        for layer in self.backbone.layers:
            unfrozen = id(layer) in chosen and not isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = unfrozen
            if unfrozen and layer.weights:
                trainable.append(layer.name)
        return trainable

    def first_unfrozen(self, spec: str | UnfreezeSpec) -> str | None:
        """The first backbone layer `spec` unfreezes (where a boundary split goes); None if none."""
        selected = select_layers(self.backbone, spec)
        return selected[0].name if selected else None

    # ---- derived models (sharing the classifier's weights) -----------------------

    def head_model(self) -> keras.Model:
        """Pooled features → probabilities."""
        pooled = keras.Input(self.pooling.output.shape[1:], name="pooled_features")
        return keras.Model(pooled, self._apply_head(pooled), name="head")

    def feature_model(self) -> keras.Model:
        """uint8 images → pooled backbone features (the inference path: no augmentation)."""
        images = keras.Input(self.input_shape, dtype="uint8", name="image")
        pooled = self.pooling(self.backbone(self._prepare(images)))
        return release_intermediates(keras.Model(images, pooled, name="pooled_features"))

    def split_at(self, first_unfrozen: str) -> BoundarySplit:
        """Cuts the classifier in front of backbone layer `first_unfrozen`."""
        prefix, boundary_inputs, backbone_output = split_graph(self.backbone, first_unfrozen)
        images = keras.Input(self.input_shape, dtype="uint8", name="image")
        frozen_model = release_intermediates(keras.Model(images, prefix(self._prepare(images)), name="frozen_part"))
        pooled = self.pooling(backbone_output)
        return BoundarySplit(frozen_model,
                             keras.Model(boundary_inputs, self._apply_head(pooled), name="unfrozen_part"),
                             keras.Model(boundary_inputs, pooled, name="unfrozen_part_features"),
                             first_unfrozen)

    def _prepare(self, images):
        # Same path as the classifier in inference mode (augmentation is inactive there).
        return self.normalization(self.preparation(images))

    def _apply_head(self, pooled):
        x = pooled
        for layer in self.head:
            x = layer(x)
        return x


# ---- building -----------------------------------------------------------------------


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
    return keras.Sequential(layers, name=AUGMENTATION) if layers else None


def build_head(model_config: ModelConfig, num_classes: int) -> list[keras.layers.Layer]:
    """Dense(relu, L2) → Dropout → Dense(num_classes) → float32 softmax (float32 under mixed precision)."""
    regularizer = keras.regularizers.L2(model_config.l2) if model_config.l2 else None
    return [keras.layers.Dense(model_config.head_units, activation="relu", kernel_regularizer=regularizer,
                               name=HEAD[0]),
            keras.layers.Dropout(model_config.dropout, name=HEAD[1]),
            keras.layers.Dense(num_classes, name=HEAD[2]),
            keras.layers.Activation("softmax", dtype="float32", name=HEAD[3])]


def build_classifier(model_config: ModelConfig, augment_config: AugmentConfig | None = None,
                     seed: int | None = None, *, num_classes: int, input_shape: tuple[int, ...]) -> Classifier:
    """Builds the classifier from uint8 images of `input_shape` to `num_classes` probabilities.

    Args:
        model_config: backbone, weights, image size and head.
        augment_config: training-only augmentation (None: off).
        seed: seeds the augmentation layers.
        num_classes: classes of the dataset (from `tlkit.data`).
        input_shape: `(height, width, channels)` of the uint8 images (from `tlkit.data`).
    """
    backbone: Backbone = build_backbone(model_config.backbone, model_config.weights, model_config.image_size)
    backbone.model.name = BACKBONE
    backbone.normalization.name = NORMALIZATION
    images = keras.Input(input_shape, dtype="uint8", name="image")
    preparation = ImagePreparation(model_config.image_size, name=PREPARATION)
    x = preparation(images)
    augmentation = build_augmentation(augment_config or AugmentConfig(), seed)
    if augmentation is not None:
        x = augmentation(x)
    pooling = keras.layers.GlobalAveragePooling2D(name=POOLING)
    x = pooling(backbone.model(backbone.normalization(x)))
    head = build_head(model_config, num_classes)
    for layer in head:
        x = layer(x)
    model = keras.Model(images, x, name="tlkit_classifier")
    classifier = Classifier(model, backbone.model, preparation, augmentation,
                            backbone.normalization, pooling, head, backbone.weights_id)
    classifier.freeze_backbone()
    return classifier


# ---- graph surgery --------------------------------------------------------------------


def release_intermediates(model: keras.Model) -> keras.Model:
    """Makes `model` and the functional models inside it free each intermediate tensor after its last use.

    A Keras functional model keeps every intermediate output of a call until the call returns
    (keras-team/keras#19500). Traced or compiled (tensorflow, jax) that costs nothing, but run eagerly
    (torch) a frozen ResNet50 at 224 px holds all its activations at once: 5.3 GB process peak for a
    forward pass on a batch of 32, 2.4 GB when each is freed after its last reader (with glibc keeping
    freed blocks for reuse, `environment.tune_torch_allocator`, at the same speed). Outputs and gradients are unchanged
    (autograd keeps what the backward pass needs itself). A no-op on the other backends and with
    `TLKIT_TORCH_MEMORY_TUNING=0` (`tlkit.environment.torch_memory_tuning`).

    Returns:
        `model`, changed in place (the change is not saved with it: a reloaded model is built by
        `Classifier.from_model`, which applies it again).
    """
    if keras.backend.backend() != "torch" or not environment.torch_memory_tuning():
        return model
    for graph in _functional_models(model):
        if "_run_through_graph" not in vars(graph):
            graph._run_through_graph = _freeing_runner(graph)
    return model


def _functional_models(model: keras.layers.Layer):
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        yield model
    for layer in getattr(model, "layers", []) if isinstance(model, keras.Model) else []:
        yield from _functional_models(layer)


def _freeing_runner(graph: keras.Model):
    """Keras' `Function._run_through_graph` (ops/function.py) for `graph`, plus: an intermediate is
    dropped after its last reader. The node order and reader counts are worked out once, here."""
    nodes = [node for depth in sorted(graph._nodes_by_depth, reverse=True) for node in graph._nodes_by_depth[depth]
             if node.operation and not node.is_input]
    readers = collections.Counter(id(x) for node in nodes for x in node.input_tensors)
    outputs = {id(x) for x in graph.outputs}

    def run(inputs, operation_fn=lambda op: op, call_fn=None):
        if call_fn is not None:  # symbolic runs keep Keras' own path
            return type(graph)._run_through_graph(graph, inputs, operation_fn, call_fn)
        unread = readers.copy()
        tensors = {id(x): y for x, y in zip(graph.inputs, keras.tree.flatten(inputs))}
        for node in nodes:
            if any(id(x) not in tensors for x in node.input_tensors):
                continue  # not computable from these inputs (Keras skips it too)
            args, kwargs = node.arguments.fill_in(tensors)
            results = operation_fn(node.operation)(*args, **kwargs)
            del args, kwargs
            for x in node.input_tensors:
                unread[id(x)] -= 1
                if unread[id(x)] == 0 and id(x) not in outputs:
                    tensors.pop(id(x), None)
            tensors.update((id(x), y) for x, y in zip(node.outputs, keras.tree.flatten(results)))
        return keras.tree.pack_sequence_as(graph._outputs_struct, [tensors[id(x)] for x in graph.outputs])

    return run


# XLA's CPU convolutions (jaxlib 0.10) are pathological on feature maps of at most 2x2: a 3x3
# convolution with 512 channels over a batch of 64 2x2 maps took 0.81 s, against 12.5 ms as one matmul
# of the 3x3 patches with the kernel (TensorFlow's own convolution: 9.4 ms); its gradient 1.64 s vs
# 29 ms. On 3x3 maps the two are equal and from 4x4 the convolution is faster. ResNet50 meets such maps
# at 64 px and below (conv5 at 2x2 from 33 to 64 px; conv4 at 2x2 and conv5 at 1x1 from 17 to 32 px).
SMALL_MAP_SIDE = 2


def convolve_small_maps_as_matmul(model: keras.Model) -> list[str]:
    """Under jax, makes each stride-1 `Conv2D` in `model` whose output map is at most 2×2 compute as
    one matmul of its input's patches with its kernel (`SMALL_MAP_SIDE`; the same sums, float rounding
    aside).

    A no-op on the other backends and with `TLKIT_XLA_CPU_TUNING=0`
    (`tlkit.environment.xla_cpu_tuning`). The layers stay `Conv2D` with the same weights, so a saved
    model is plain Keras; `tlkit.load_model` applies this again to what it loads.

    Returns:
        The names of the layers changed (in place; none when it does not apply).

    Example:

    ```python
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    convolve_small_maps_as_matmul(backbone)  # under jax: conv5's three 3×3 convolutions (2×2 maps)
    ```
    """
    if not environment.xla_cpu_tuning():
        return []
    changed = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if _is_small_map_convolution(layer) and "convolution_op" not in vars(layer):
            layer.convolution_op = functools.partial(_patches_times_kernel, layer)
            changed.append(layer.name)
    return changed


def _is_small_map_convolution(layer) -> bool:
    if not (isinstance(layer, keras.layers.Conv2D) and layer.groups == 1 and layer.data_format == "channels_last"
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
            and layer.padding in ("same", "valid") and tuple(layer.kernel_size) != (1, 1)):
        return False
    try:
        height, width = layer.output.shape[1:3]  # as built; a layer called more than once has no one output
    except (AttributeError, ValueError):
        return False
    return height is not None and width is not None and max(height, width) <= SMALL_MAP_SIDE


def _patches_times_kernel(layer: keras.layers.Conv2D, inputs, kernel):
    """`layer`'s convolution as (every kernel position's input slice, side by side) @ kernel."""
    kernel_height, kernel_width, channels, filters = kernel.shape
    if layer.padding == "same":  # stride 1: the output keeps the input's size; an even kernel pads one more below/right
        pads = [(0, 0), ((kernel_height - 1) // 2, kernel_height // 2), ((kernel_width - 1) // 2, kernel_width // 2),
                (0, 0)]
        inputs = keras.ops.pad(inputs, pads)
    height, width = inputs.shape[1] - kernel_height + 1, inputs.shape[2] - kernel_width + 1
    patches = keras.ops.concatenate([inputs[:, row:row + height, column:column + width, :]
                                     for row in range(kernel_height) for column in range(kernel_width)], axis=-1)
    return keras.ops.matmul(patches, keras.ops.reshape(kernel, (kernel_height * kernel_width * channels, filters)))


class GraphSplitError(RuntimeError):
    """The functional graph could not be split (e.g. a Keras release changed its internals)."""


def split_graph(graph: keras.Model, first_suffix_layer: str):
    """Splits a functional model in front of layer `first_suffix_layer` (in layer order).

    The suffix is every layer from `first_suffix_layer` on; the boundary is every
    tensor made by an earlier layer and read by the suffix (unfreezing mid-block
    also needs the block's shortcut input). This is the one place in tlkit that
    reads Keras' private graph API (`_inbound_nodes`, `_keras_history`,
    `Node.arguments`; `release_intermediates` reads it too); `tests/test_model.py` checks it on every Keras version CI
    installs and fails loudly when a release changes it.

    Returns:
        `(prefix, boundary_inputs, output)`: a model from `graph.input` to the
        boundary tensors, new `keras.Input`s standing for them, and the graph's
        output recomputed from those inputs by the suffix layers (same weights).

    Raises:
        GraphSplitError: when Keras' graph internals are not as expected.
    """
    names = [layer.name for layer in graph.layers]
    if first_suffix_layer not in names:
        raise GraphSplitError(f"{graph.name} has no layer {first_suffix_layer!r}")
    suffix = graph.layers[names.index(first_suffix_layer):]
    suffix_ids = {id(layer) for layer in suffix}
    try:
        # A layer's first inbound node is the call that built the graph; later nodes come from
        # earlier splits and would point at their inputs.
        boundary: dict[int, keras.KerasTensor] = {}
        for layer in suffix:
            for tensor in layer._inbound_nodes[0].input_tensors:
                if id(tensor._keras_history.operation) not in suffix_ids:
                    boundary.setdefault(id(tensor), tensor)
        prefix = keras.Model(graph.input, list(boundary.values()), name=f"{graph.name}_prefix")
        inputs = [keras.Input(tensor.shape[1:], name=f"boundary_{i}") for i, tensor in enumerate(boundary.values())]
        produced = dict(zip(boundary, inputs))
        for layer in suffix:  # topological: the graph's layer order
            node = layer._inbound_nodes[0]
            args, kwargs = node.arguments.fill_in(produced)
            for old, new in zip(node.output_tensors, keras.tree.flatten(layer(*args, **kwargs))):
                produced[id(old)] = new
        output = produced[id(graph.output)]
    except (AttributeError, KeyError, TypeError) as error:
        raise GraphSplitError(
            f"cannot split {graph.name} at {first_suffix_layer!r}: Keras {keras.__version__}'s graph internals "
            f"differ from what tlkit.model.split_graph expects ({type(error).__name__}: {error}). "
            "Train with --no-boundary-cache and report this"
        ) from error
    return prefix, inputs, output
