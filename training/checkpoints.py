"""Loading checkpoints, one or the weight average of several (the last epochs of a run)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from training.class_bias import apply_bias

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"
SNAPSHOT_PATTERN = "epoch_{epoch:02d}.keras"


def load_checkpoints(paths: Sequence[Path], bn_images: np.ndarray | None = None) -> keras.Model:
    """One .keras checkpoint, or the average of the weights of several of the same architecture.

    Averaging the last few epochs of a cosine schedule lands nearer the middle of the minimum than any one
    of them (as in stochastic weight averaging). With `bn_images` (training faces, uint8 or float pixels),
    BatchNorm's statistics are then measured afresh for the weights as loaded (`recalibrate_batch_norm`).
    """
    if not paths:
        raise ValueError("no checkpoint given")
    models = [_as_float32(keras.models.load_model(path, compile=False)) for path in paths]
    model = models[0] if len(models) == 1 else average_weights(models, [str(p) for p in paths])
    if bn_images is not None:
        recalibrate_batch_norm(model, bn_images)
    return model


def average_weights(models: list[keras.Model], names: Sequence[str]) -> keras.Model:
    """The first model, its weights set to the mean of all the models' (one architecture)."""
    names = {model.name for model in models}
    if len(names) != 1:
        raise ValueError(f"cannot average checkpoints of different architectures: {sorted(names)}")
    averaged = [np.mean(weights, axis=0) for weights in zip(*(m.get_weights() for m in models), strict=True)]
    models[0].set_weights(averaged)
    log.info("averaged the weights of %d models: %s", len(names), ", ".join(names))
    return models[0]


def recalibrate_batch_norm(
    model: keras.Model, images: np.ndarray, batches: int = 100, batch_size: int = 256, seed: int = 0
) -> None:
    """Set every BatchNorm layer's moving mean and variance to the plain average over `batches` batches of
    `images` (half of them mirrored), instead of the exponential average kept while training.

    The kept averages lag behind the weights (they mix statistics of earlier steps), and averaged weights
    have statistics of their own that no checkpoint measured. Measured on FER2013 val (docs/model_card.md):
    +0.1 points for the best epoch of a finished run, +1.4 for weights averaged over epochs mid-run.
    """
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return
    rng = np.random.default_rng(seed)
    saved_momentum = [norm.momentum for norm in norms]
    for step in range(batches):
        for norm in norms:
            norm.momentum = step / (step + 1)  # step 0 takes the batch as is; then a running plain mean
        chosen = rng.choice(len(images), size=min(batch_size, len(images)), replace=False)
        batch = np.asarray(images[chosen], np.float32)
        mirrored = rng.random(len(batch)) < 0.5
        batch[mirrored] = batch[mirrored][:, :, ::-1]
        model(batch, training=True)
    for norm, momentum in zip(norms, saved_momentum, strict=True):
        norm.momentum = momentum
    log.info("BatchNorm statistics measured over %d batches of %d training faces", batches, batch_size)


def _as_float32(model: keras.Model) -> keras.Model:
    """The same model computing in float32: a run trained in mixed precision serves and evaluates in float32,
    which every CPU and TF Serving run at full speed and which is at least as exact."""
    config = model.get_config()
    if "float16" not in str(config):  # neither float16 nor bfloat16 anywhere
        return model
    clean = keras.Model.from_config(_float32_config(config))
    clean.set_weights(model.get_weights())
    return clean


def _float32_config(value):
    """A layer config with every dtype policy replaced by float32."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy":
            return "float32"
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return value


def _snapshots(run: Path) -> list[Path]:
    """A run's epoch snapshots, oldest first, by epoch number ("epoch_100" is before "epoch_99" as text)."""
    return sorted(
        (Path(run) / SNAPSHOT_DIR).glob("epoch_*.keras"), key=lambda path: int(path.stem.split("_")[1])
    )


def last_snapshots(run: Path, count: int) -> list[Path]:
    """The snapshots of the last `count` epochs of a run, oldest first."""
    snapshots = _snapshots(run)
    if not snapshots:
        raise FileNotFoundError(f"no epoch snapshots in {Path(run) / SNAPSHOT_DIR}")
    return snapshots[-count:]


def prune_snapshots(run: Path, keep: int) -> None:
    """Delete all but the last `keep` snapshots: each holds the optimizer's state too (32 MB for
    emonet_deep), and only the last few are ever averaged."""
    if keep < 1:
        raise ValueError(f"keep at least one snapshot, got {keep}")
    for old in _snapshots(run)[:-keep]:
        old.unlink()


def load_exported_weights(model: keras.Model, saved_model_dir: Path) -> keras.Model:
    """Set `model`'s weights to those of an exported version folder of the same architecture, so that a run
    can start from the served model (`train --init-from`) when its checkpoints are gone.

    A SavedModel keeps its variables without their Keras paths; the serving function still reads each one
    through an op named after its layer ("emonet/conv2d_3/convolution/ReadVariableOp"). Layers of one kind
    are matched in the order Keras numbered them, and the result is checked: the model must give the served
    probabilities (with or without flip averaging and a class bias) or nothing is changed."""
    import tensorflow as tf

    from training.export import INPUT_KEY, OUTPUT_KEY, SIGNATURE_NAME

    loaded = tf.saved_model.load(str(saved_model_dir))
    serve = loaded.signatures[SIGNATURE_NAME]
    exported = _exported_variables(serve)
    ours: dict[str, list[keras.layers.Layer]] = {}
    # model.layers is in the graph's order; Keras numbered the names in the order the layers were made.
    for layer in sorted(model.layers, key=lambda layer: _layer_order(layer.name)):
        if layer.weights:
            ours.setdefault(_layer_kind(layer.name), []).append(layer)
    saved = model.get_weights()
    faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 1), dtype=np.uint8)
    served = serve(**{INPUT_KEY: tf.constant(faces)})[OUTPUT_KEY].numpy()
    # The graph's name scopes may carry a suffix of their own ("conv2d_1" for the layer "conv2d", when the
    # model was called inside a scope that had it): try reading the names both ways, keep what reproduces.
    for scope_suffix in (True, False):
        by_kind: dict[str, list[str]] = {}
        for name in sorted(exported, key=lambda n: _layer_order(_layer_name(n, scope_suffix))):
            by_kind.setdefault(_layer_kind(_layer_name(name, scope_suffix)), []).append(name)
        counts = {k: len(v) for k, v in ours.items()}
        if "batch_normalization" not in by_kind:  # exported with each BatchNorm folded into its convolution
            counts.pop("batch_normalization", None)
        if {k: len(v) for k, v in by_kind.items()} != counts:
            continue
        try:
            for kind, names in by_kind.items():
                for layer, name in zip(ours[kind], names, strict=True):
                    layer.set_weights([_weight_value(exported[name], w.name) for w in layer.weights])
            if "batch_normalization" not in by_kind:
                convs = [exported[name] for name in by_kind.get("conv2d", [])]
                _unfold_batch_norm(model, ours.get("conv2d", []), convs)
        except ValueError:  # a weight of another shape: another architecture of as many layers
            model.set_weights(saved)
            continue
        if _reproduces(model, faces, served):
            break
        model.set_weights(saved)
    else:
        raise ValueError(
            f"the weights of {saved_model_dir} did not reproduce its probabilities in a {model.name}"
        )
    log.info("weights of %s loaded from %s", model.name, saved_model_dir)
    return model


def _unfold_batch_norm(model: keras.Model, convs: list, reads: list[dict[str, np.ndarray]]) -> None:
    """Each convolution's folded kernel and bias back as the convolution and the BatchNorm after it: the
    kernel as is, and a BatchNorm that only adds the bias (scale 1, mean 0, variance 1 - epsilon). The
    same function in inference; in training BatchNorm relearns the scales from the batches."""
    from training.export import conv_batch_norm_pairs

    after = {conv.name: norm for conv, norm in conv_batch_norm_pairs(model)}
    for conv, conv_reads in zip(convs, reads, strict=True):
        conv.set_weights([_weight_value(conv_reads, "kernel")])
        norm = after[conv.name]
        bias = _weight_value(conv_reads, "bias")
        norm.set_weights(
            [np.ones_like(bias), bias, np.zeros_like(bias), np.full_like(bias, 1 - norm.epsilon)]
        )


# The read op of each weight in the serving graph: BatchNormalization casts its four in this order.
_BATCH_NORM_READS = {
    "moving_mean": "Cast/ReadVariableOp",
    "moving_variance": "Cast_1/ReadVariableOp",
    "gamma": "Cast_2/ReadVariableOp",
    "beta": "Cast_3/ReadVariableOp",
}


def _weight_value(reads: dict[str, np.ndarray], weight: str) -> np.ndarray:
    """One weight of a layer among its read ops: a bias is read by BiasAdd, a kernel by the layer's other
    read (convolution, MatMul or a cast under a dtype policy)."""
    if weight in _BATCH_NORM_READS:
        return reads[_BATCH_NORM_READS[weight]]
    bias = [op for op in reads if op.startswith("BiasAdd/")]
    if weight == "bias":
        return reads[bias[0]]
    (kernel,) = [op for op in reads if op not in bias]
    return reads[kernel]


def _reproduces(model: keras.Model, faces: np.ndarray, served: np.ndarray) -> bool:
    """Whether the model gives the served probabilities, alone or averaged with the mirrored faces, and with
    or without a class bias (`export --class-bias`: each class scaled by one factor, rows renormalised)."""
    pixels = faces.astype(np.float32)
    plain = model(pixels, training=False).numpy()
    mirrored = model(pixels[:, :, ::-1], training=False).numpy()
    for probabilities in (plain, (plain + mirrored) / 2):
        for candidate in (probabilities, apply_bias(probabilities, _implied_bias(probabilities, served))):
            if np.abs(served - candidate).max() < 1e-4:
                return True
    return False


def _implied_bias(probabilities: np.ndarray, served: np.ndarray) -> np.ndarray:
    """The per-class bias that best turns `probabilities` into `served`: log served - log p is the bias
    less each row's log normaliser, so it is read off the rows centred on their mean."""
    difference = np.log(np.maximum(served, 1e-12)) - np.log(np.maximum(probabilities, 1e-12))
    return np.mean(difference - difference.mean(axis=1, keepdims=True), axis=0)


def _layer_name(scope: str, scope_suffix: bool) -> str:
    """A layer's name from its name scope, with or without the scope's own "_N" suffix."""
    base, _, number = scope.rpartition("_")
    return base if scope_suffix and number.isdigit() and base else scope


def _layer_kind(name: str) -> str:
    """ "conv2d_12" -> "conv2d"; the output layer ("probabilities") is the one dense layer."""
    if name == "probabilities":
        return "dense"
    base, _, number = name.rpartition("_")
    return base if number.isdigit() else name


def _layer_order(name: str) -> int:
    """Keras numbers a kind's layers as it makes them: "conv2d" first, then "conv2d_1", "conv2d_2"..."""
    _, _, number = name.rpartition("_")
    return int(number) if number.isdigit() else 0


def _exported_variables(serve) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {read op name within the layer: value}} from a loaded serving function."""
    import tensorflow as tf

    graph_def = serve.graph.as_graph_def()
    library = {function.signature.name: function for function in graph_def.library.function}
    call = next(node for node in graph_def.node if node.op == "StatefulPartitionedCall")
    function = library[call.attr["f"].func.name]
    arguments = [argument.name for argument in function.signature.input_arg]
    # The call's first input is the faces; the rest are the captured variables, in the argument order.
    handles = serve.captured_inputs  # resource handles: read them as the graph does
    read = [tf.raw_ops.ReadVariableOp(resource=handle, dtype=tf.float32).numpy() for handle in handles]
    values = dict(zip(arguments[1:], read, strict=True))
    found: dict[str, dict[str, np.ndarray]] = {}
    for node in function.node_def:
        if node.op != "ReadVariableOp" or node.input[0] not in values:
            continue
        # "<model>/<layer>/<op path>/ReadVariableOp"
        _, layer, read = node.name.split("/", 2)
        found.setdefault(layer, {})[read] = values[node.input[0]]
    return found
