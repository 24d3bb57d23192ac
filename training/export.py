"""Export a trained model as a SavedModel that TF Serving loads unchanged (the serving contract)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from common.classes import NUM_CLASSES
from training.class_bias import format_bias

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_BASE = REPO_ROOT / "model_server" / "models" / "emotion"
SIGNATURE_NAME = "serving_default"
INPUT_KEY = "faces"
OUTPUT_KEY = "probabilities"
FACE_SHAPE = (48, 48, 1)


def serving_function(
    nets: Sequence[keras.Model],
    flip_average: bool,
    members: Sequence[keras.layers.Layer] = (),
    class_bias: Sequence[float] | None = None,
):
    """uint8 faces [N, 48, 48, 1] -> {"probabilities": float32 [N, 7]}; scaling and flip averaging inside.

    One net, or several as an ensemble: each runs on the faces (and their mirror images), their probabilities
    averaged. `members` are earlier exported models (see `load_member`) whose served probabilities are
    averaged in the same way, each with the weight of one net. `class_bias` multiplies each class's
    probability by exp(bias) and renormalises (`training/class_bias.py`)."""
    weights = (
        None if class_bias is None or not np.any(class_bias) else np.exp(np.asarray(class_bias, np.float32))
    )

    def serve(faces: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(faces, tf.float32)  # the model itself scales 0..255 to its own range
        count = tf.shape(pixels)[0]
        if flip_average:
            # The faces and their mirror images in one run of each net: one face (a live frame) costs one
            # pass of each layer, not two.
            pixels = tf.concat([pixels, tf.reverse(pixels, axis=[2])], axis=0)
        answers = []
        for net in nets:
            probabilities = tf.cast(net(pixels, training=False), tf.float32)
            if flip_average:
                probabilities = (probabilities[:count] + probabilities[count:]) / 2.0
            answers.append(probabilities)
        answers += [member(faces)[OUTPUT_KEY] for member in members]
        averaged = tf.add_n(answers) / float(len(answers))
        if weights is not None:
            weighted = averaged * tf.constant(weights[None, :])
            averaged = weighted / tf.reduce_sum(weighted, axis=1, keepdims=True)
        return {OUTPUT_KEY: averaged}

    return serve


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """The same function with every BatchNormalization that directly follows a convolution folded into it.

    In inference BatchNorm is a per-channel scale and shift, which the convolution before it can apply to
    its own kernel and bias: the served graph then skips two passes over every activation. TF Serving runs
    the graph as exported (no Keras, and its optimiser does not fold Keras's BatchNorm ops), so the export
    does it. Probabilities agree with the unfolded model's to float rounding (tests/test_training.py)."""
    norms = {
        norm.name: conv.name
        for conv, norm in conv_batch_norm_pairs(model)
        if _plain_convolution(conv) and _only_consumer(model, conv, norm)
    }
    if not norms:
        return model
    folded_convs = set(norms.values())

    def clone(layer):
        if layer.name in norms:
            return _FoldedAway(name=layer.name)
        if layer.name in folded_convs:
            return _ConvWithBias(layer)
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        target = folded.get_layer(layer.name)
        if layer.name in norms or layer.name in folded_convs:
            continue
        target.set_weights(layer.get_weights())
    for norm_name, conv_name in norms.items():
        norm, conv = model.get_layer(norm_name), model.get_layer(conv_name)
        scale = norm.gamma.numpy() / np.sqrt(norm.moving_variance.numpy() + norm.epsilon)
        kernel = conv.kernel.numpy() * scale  # the output channels are the kernel's last axis
        bias = conv.bias.numpy() if conv.use_bias else np.zeros_like(scale)
        shift = norm.beta.numpy() + (bias - norm.moving_mean.numpy()) * scale
        folded.get_layer(conv_name).set_weights([kernel, shift])
    log.info("folded %d BatchNorm layers into the convolutions before them", len(norms))
    return folded


class _ConvWithBias(keras.layers.Layer):
    """A folded convolution as the plain TensorFlow ops Conv2D then BiasAdd (Keras adds a bias with AddV2),
    which TensorFlow's graph optimiser fuses with the ReLU after them into one op on CPU."""

    def __init__(self, conv: keras.layers.Conv2D):
        super().__init__(name=conv.name)
        self.strides = (1, *conv.strides, 1)
        self.padding = conv.padding.upper()
        self.dilations = (1, *conv.dilation_rate, 1)
        self.kernel_shape = tuple(conv.kernel.shape)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=self.kernel_shape, name="kernel", initializer="zeros")
        self.bias = self.add_weight(shape=self.kernel_shape[-1:], name="bias", initializer="zeros")

    def call(self, inputs):
        convolved = tf.nn.conv2d(inputs, self.kernel, self.strides, self.padding, dilations=self.dilations)
        return tf.nn.bias_add(convolved, self.bias)

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv2D(
            self.kernel_shape[-1],
            self.kernel_shape[:2],
            strides=self.strides[1:3],
            padding=self.padding.lower(),
        ).compute_output_shape(input_shape)


class _FoldedAway(keras.layers.Layer):
    """Stands where a folded BatchNorm was: passes its input on (taking the calls' BatchNorm arguments)."""

    def call(self, inputs, training=None, mask=None):
        return inputs


def conv_batch_norm_pairs(model: keras.Model) -> list[tuple[keras.layers.Conv2D, keras.layers.Layer]]:
    """(convolution, the BatchNormalization reading its output) for each BatchNorm right after a conv."""
    pairs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            source = layer.input._keras_history.operation
            if isinstance(source, keras.layers.Conv2D):
                pairs.append((source, layer))
    return pairs


def _plain_convolution(conv: keras.layers.Conv2D) -> bool:
    """What `_ConvWithBias` can stand for: channels last, one group, no activation of its own."""
    return conv.data_format == "channels_last" and conv.groups == 1 and conv.activation.__name__ == "linear"


def _only_consumer(model: keras.Model, producer: keras.layers.Layer, consumer: keras.layers.Layer) -> bool:
    """Whether `consumer` is the one layer of `model` reading `producer`'s output."""
    readers = [
        layer
        for layer in model.layers
        if layer is not producer and any(node_input is producer.output for node_input in _inputs_of(layer))
    ]
    return readers == [consumer]


def _inputs_of(layer: keras.layers.Layer) -> list:
    inputs = layer.input
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def load_member(saved_model_dir: Path) -> keras.layers.Layer:
    """An exported model (a version folder) as a layer taking uint8 faces, to be ensembled by an export."""
    check_contract(saved_model_dir)
    return keras.layers.TFSMLayer(str(saved_model_dir), call_endpoint=SIGNATURE_NAME)


def next_version(model_base: Path) -> int:
    """One more than the highest integer version folder (1 when there is none)."""
    versions = [int(p.name) for p in model_base.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_model(
    model: keras.Model | Sequence[keras.Model],
    model_base: Path = DEFAULT_MODEL_BASE,
    version: int | None = None,
    flip_average: bool = False,
    keep_other_versions: bool = False,
    members: Sequence[keras.layers.Layer] = (),
    class_bias: Sequence[float] | None = None,
) -> Path:
    """Write `<model_base>/<version>/` (saved_model.pb, variables/); by default the only version left.
    Several models are served as an ensemble (see `serving_function`)."""
    nets = [model] if isinstance(model, keras.Model) else list(model)
    model_base = Path(model_base)
    version = version or next_version(model_base)
    target = model_base / str(version)
    staging = model_base / f".{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model_base.mkdir(parents=True, exist_ok=True)

    # No archive.track(model): the endpoint tracks the variables it uses, and tracking the model as well
    # would store every weight twice.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=serving_function([fold_batch_norm(net) for net in nets], flip_average, members, class_bias),
        input_signature=[tf.TensorSpec([None, *FACE_SHAPE], tf.uint8, name=INPUT_KEY)],
    )
    archive.write_out(str(staging), verbose=False)
    # TF Serving polls the folder: a version must appear complete, so write aside and rename.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    if not keep_other_versions:
        for other in model_base.iterdir():
            if other.is_dir() and other.name.isdigit() and other != target:
                shutil.rmtree(other)
    check_contract(target)
    log.info(
        "exported %s (flip averaging %s, %d ensemble members, class bias %s) to %s",
        " + ".join(net.name for net in nets),
        "on" if flip_average else "off",
        len(members),
        "none" if class_bias is None else format_bias(np.asarray(class_bias)) or "none",
        target,
    )
    return target


def check_contract(saved_model_dir: Path) -> None:
    """Load the SavedModel as TF Serving would and check the signature's names, dtypes and shapes."""
    loaded = tf.saved_model.load(str(saved_model_dir))
    if SIGNATURE_NAME not in loaded.signatures:
        raise ValueError(
            f"{saved_model_dir}: no signature {SIGNATURE_NAME!r}, found {list(loaded.signatures)}"
        )
    signature = loaded.signatures[SIGNATURE_NAME]
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    spec_in, spec_out = inputs.get(INPUT_KEY), outputs.get(OUTPUT_KEY)
    if (
        list(inputs) != [INPUT_KEY]
        or spec_in.dtype != tf.uint8
        or spec_in.shape.as_list() != [None, *FACE_SHAPE]
    ):
        raise ValueError(
            f"{saved_model_dir}: expected input {INPUT_KEY!r} uint8 [None, 48, 48, 1], got {inputs}"
        )
    expected_out = [None, NUM_CLASSES]
    if (
        list(outputs) != [OUTPUT_KEY]
        or spec_out.dtype != tf.float32
        or spec_out.shape.as_list() != expected_out
    ):
        raise ValueError(
            f"{saved_model_dir}: expected output {OUTPUT_KEY!r} float32 [None, 7], got {outputs}"
        )
