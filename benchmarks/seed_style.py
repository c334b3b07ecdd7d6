"""The seed write-up's pipeline, kept as a faithful reference to measure tlkit against.

Deliberately NOT how tlkit works: every image is resized on the host to the
backbone resolution, duplicated to three channels and normalised with
`keras.applications.resnet50.preprocess_input`, and the whole training set is
materialised as one float32 array before `model.fit`. At 224 px that is
224·224·3·4 = 602,112 bytes per image (36 GB for Fashion-MNIST's 60,000
training images) against 784 bytes as uint8.

The model is the same as tlkit's: ResNet50 (ImageNet weights, frozen) →
GlobalAveragePooling → Dense(relu, L2) → Dropout → Dense(10, softmax), built
here from plain Keras layers.

Example:

```python
from benchmarks import seed_style

x = seed_style.prepare_images(x_uint8, image_size=96)          # (N, 96, 96, 3) float32
model = seed_style.build_model(96, "resnet50_imagenet_notop.weights.h5")
seed_style.train(model, x, y, epochs=2, batch_size=64)
```
"""

from __future__ import annotations

import keras
import numpy as np


def prepare_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (N, 28, 28[, 1]) → float32 (N, size, size, 3), ResNet50-preprocessed, all in host memory."""
    if images.ndim == 3:
        images = images[..., None]
    # The seed resizes the whole array at once (tf.image.resize in the notebook).
    resized = keras.ops.image.resize(images.astype("float32"), (image_size, image_size), interpolation="bilinear")
    resized = keras.ops.convert_to_numpy(resized)
    rgb = np.repeat(resized, 3, axis=-1)  # gray → RGB by duplication
    del resized
    # RGB → BGR and ImageNet mean subtraction; works in place on float input.
    return keras.applications.resnet50.preprocess_input(rgb)


def build_model(image_size: int, weights: str, head_units: int = 256, dropout: float = 0.5,
                l2: float = 1e-4) -> keras.Model:
    """ResNet50 without top, frozen, plus the seed's head; takes preprocessed float images."""
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    base.load_weights(weights)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(head_units, activation="relu",
                           kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(10)(x)
    outputs = keras.layers.Activation("softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="seed_style_classifier")


def train(model: keras.Model, images: np.ndarray, labels: np.ndarray, epochs: int, batch_size: int,
          learning_rate: float = 1e-3, steps_per_epoch: int | None = None, callbacks=None,
          verbose=0) -> keras.callbacks.History:
    """Trains the head on the preprocessed float array (Adam, sparse cross-entropy)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model.fit(images, labels, batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
                     callbacks=callbacks, verbose=verbose, shuffle=True)
