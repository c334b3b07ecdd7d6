"""In-graph image layers: uint8 28×28 grayscale in, backbone-ready RGB out.

They run inside the compiled model on the device, so the host only ever holds
uint8 images. Both layers are registered for `.keras` saving.

Example:

```python
import keras
from tlkit.layers import ImageNormalization, ImagePreparation

inputs = keras.Input((28, 28, 1), dtype="uint8")
rgb = ImagePreparation(image_size=64)(inputs)            # (None, 64, 64, 3), 0..255 floats
x = ImageNormalization.caffe()(rgb)                       # BGR, ImageNet means subtracted
```
"""

from __future__ import annotations

import keras
from keras import ops

# keras.applications ResNet50 ("caffe" mode): BGR channel means of ImageNet.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tlkit")
class ImagePreparation(keras.layers.Layer):
    """Casts uint8 images to float, resizes them and repeats gray to RGB.

    Args:
        image_size: side of the square output image.
        interpolation: resize interpolation (`"bilinear"`, `"nearest"`, `"bicubic"`).
    """

    def __init__(self, image_size: int, interpolation: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.interpolation = interpolation

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if x.shape[1] != self.image_size or x.shape[2] != self.image_size:
            x = ops.image.resize(x, (self.image_size, self.image_size), interpolation=self.interpolation)
        if x.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="tlkit")
class ImageNormalization(keras.layers.Layer):
    """`x[..., ::-1 if reverse_channels] * scale + offset` on 0..255 RGB input.

    Covers Caffe-style preprocessing (RGB→BGR, mean subtraction) as well as
    keras-hub image converters (per-channel scale and offset).

    Args:
        scale: a float or one float per channel (after any channel reversal).
        offset: a float or one float per channel (after any channel reversal).
        reverse_channels: turn RGB into BGR first.
    """

    def __init__(self, scale=1.0, offset=0.0, reverse_channels=False, **kwargs):
        super().__init__(**kwargs)
        self.scale = _as_list(scale, default=1.0)
        self.offset = _as_list(offset, default=0.0)
        self.reverse_channels = bool(reverse_channels)

    @classmethod
    def caffe(cls, **kwargs) -> ImageNormalization:
        """The preprocessing of `keras.applications.resnet50.preprocess_input`."""
        return cls(scale=1.0, offset=[-m for m in CAFFE_BGR_MEANS], reverse_channels=True, **kwargs)

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.reverse_channels:
            x = ops.flip(x, axis=-1)
        scale = ops.convert_to_tensor(self.scale, dtype=self.compute_dtype)
        offset = ops.convert_to_tensor(self.offset, dtype=self.compute_dtype)
        return x * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset,
                "reverse_channels": self.reverse_channels}


def _as_list(value, default: float) -> list[float]:
    if value is None:
        return [default]
    if isinstance(value, (int, float)):
        return [float(value)]
    return [float(v) for v in value]
