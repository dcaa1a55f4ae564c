"""AppPreprocess: a Keras application's own `preprocess_input`, as a serializable layer."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import keras
import numpy as np
from keras import ops

from ..suggest import did_you_mean


def _applications() -> dict[str, Callable]:
    import inspect

    return {name: obj for name, obj in vars(keras.applications).items()
            if not name.startswith("_") and callable(obj) and not inspect.ismodule(obj)}


@lru_cache(maxsize=None)
def preprocess_function(application: str) -> Callable:
    """`keras.applications.<module>.preprocess_input` of `application` ("MobileNetV2" ->
    `keras.applications.mobilenet_v2.preprocess_input`), found from the application function's module."""
    apps = _applications()
    if application not in apps:
        raise ValueError(f"AppPreprocess: unknown application {application!r}{did_you_mean(application, apps)}")
    module_name = apps[application].__module__                 # keras.src.applications.mobilenet_v2
    short = module_name.rsplit(".", 1)[-1]
    module = getattr(keras.applications, short, None)           # the public keras.applications.mobilenet_v2
    function = getattr(module, "preprocess_input", None)
    if function is None:
        from ..keras_compat import application_module

        function = getattr(application_module(apps[application]), "preprocess_input", None)
    if function is None:
        raise ValueError(f"AppPreprocess: the application {application!r} has no preprocess_input "
                         f"(looked in {module_name})")
    return function


@lru_cache(maxsize=None)
def is_identity(application: str) -> bool:
    """True when the application's preprocess_input leaves its input as it is (EfficientNet,
    ConvNeXt, MobileNetV3...: those models rescale their inputs themselves)."""
    probe = np.linspace(0.0, 255.0, 2 * 2 * 3, dtype="float32").reshape(1, 2, 2, 3)
    out = preprocess_function(application)(probe.copy())
    return np.array_equal(np.asarray(out), probe)


@keras.saving.register_keras_serializable(package="kspec")
class AppPreprocess(keras.layers.Layer):
    """The input preprocessing of a `keras.applications` model, inside the model.

    Applies `keras.applications.<module>.preprocess_input` of `application` to
    raw pixels (0..255, RGB): "tf" mode models (MobileNetV2, ResNet50V2,
    Xception...) scale to -1..1, "torch" mode models (DenseNet) scale to 0..1
    and normalise each channel, "caffe" mode models (ResNet50, VGG16) flip to
    BGR and subtract the ImageNet means. The output has the input's shape;
    integer inputs are cast to the layer's float dtype first. Unlike a Lambda,
    the layer is saved by name (`kspec>AppPreprocess`) and loads without
    `safe_mode=False`.

    In a spec, `Backbone: {application: MobileNetV2, preprocess: true}` adds it
    in front of the backbone; it can also be written by hand:

        - AppPreprocess: {application: MobileNetV2}

    In Python:

        >>> x = keras.Input((32, 32, 3))
        >>> AppPreprocess(application="MobileNetV2")(x).shape
        (None, 32, 32, 3)

    Saved models load in plain Keras once `compiler.layers` has been imported.
    """

    def __init__(self, application: str, data_format: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(application, str):
            raise ValueError(f"AppPreprocess's `application` must be a name such as 'MobileNetV2'. "
                             f"Received: application={application!r}")
        if data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(f"AppPreprocess's `data_format` must be None, 'channels_first' or 'channels_last'. "
                             f"Received: data_format={data_format!r}")
        self._function = preprocess_function(application)     # fails early on an unknown name
        self.application = application
        self.data_format = data_format

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        out = self._function(x, data_format=self.data_format)
        if out is x:                       # an identity preprocess_input: still a new tensor
            out = ops.copy(x)
        return out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "application": self.application, "data_format": self.data_format}
