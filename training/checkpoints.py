"""Loading checkpoints, one or the weight average of several (the last epochs of a run)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

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
    model = models[0] if len(models) == 1 else _average(models, paths)
    if bn_images is not None:
        recalibrate_batch_norm(model, bn_images)
    return model


def _average(models: list[keras.Model], paths: Sequence[Path]) -> keras.Model:
    names = {model.name for model in models}
    if len(names) != 1:
        raise ValueError(f"cannot average checkpoints of different architectures: {sorted(names)}")
    averaged = [np.mean(weights, axis=0) for weights in zip(*(m.get_weights() for m in models), strict=True)]
    models[0].set_weights(averaged)
    log.info("averaged the weights of %d checkpoints: %s", len(paths), ", ".join(Path(p).name for p in paths))
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
