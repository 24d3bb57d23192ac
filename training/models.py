"""The model architectures: our compact net (default) and the customer's from-scratch VGG16 for comparison."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from common.classes import NUM_CLASSES

FACE_SHAPE = (48, 48, 1)


def _conv_bn(x, filters: int, strides: int = 1, name: str | None = None):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _residual_block(x, filters: int, strides: int = 1):
    """A basic ResNet block (two 3x3 convolutions); a 1x1 projection when the shape changes."""
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(gamma_initializer="zeros")(y)  # each block starts as the identity
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.Add()([shortcut, y]))


def _inputs_scaled():
    """Inputs are float pixels 0..255; scaling to -1..1 is part of the model, so serving sends raw pixels."""
    inputs = keras.Input(FACE_SHAPE, name="faces")
    return inputs, layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)


def _head(x, dropout: float):
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    # float32 even under a mixed-precision policy: the probabilities must be exact enough to sum to 1.
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="probabilities")(x)


def emonet(
    stem: int = 32, stages: tuple[tuple[int, int], ...] = ((64, 2), (128, 3)), dropout: float = 0.4
) -> keras.Model:
    """Compact ResNet for 48x48 faces: little work above 12x12, residual stages from 12x12 down."""
    inputs, x = _inputs_scaled()
    x = _conv_bn(x, stem)  # 48x48: edges only, few channels
    x = _conv_bn(x, stem, strides=2)  # 24x24
    for filters, blocks in stages:  # each stage halves the resolution: 12x12, 6x6 (, 3x3)
        x = _residual_block(x, filters, strides=2)
        for _ in range(blocks - 1):
            x = _residual_block(x, filters)
    name = "emonet_" + "_".join(f"{f}x{b}" for f, b in stages)
    return keras.Model(inputs, _head(x, dropout), name=name)


def vgg16(dropout: float = 0.5) -> keras.Model:
    """VGG16's 13 convolutions from scratch on 48x48 grayscale (the customer's model), plus BatchNorm."""
    inputs, x = _inputs_scaled()
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            x = _conv_bn(x, filters)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="vgg16")


ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {
    "emonet": emonet,
    "emonet_s": lambda: emonet(stem=24, stages=((48, 2), (96, 3))),
    "emonet_l": lambda: emonet(stem=32, stages=((96, 2), (192, 3))),
    # A third stage at 3x3: 2.9x the parameters of emonet for 1.2x its compute (most weights see 9 pixels).
    "emonet_deep": lambda: emonet(stem=32, stages=((64, 2), (128, 2), (256, 2))),
    "vgg16": vgg16,
}


def build_model(arch: str) -> keras.Model:
    """A fresh, untrained model of the named architecture."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}") from None
    return factory()
