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


def load_checkpoints(paths: Sequence[Path]) -> keras.Model:
    """One .keras checkpoint, or the average of the weights of several of the same architecture.

    Averaging the last few epochs of a cosine schedule lands nearer the middle of the minimum than any one
    of them (as in stochastic weight averaging); BatchNorm statistics are averaged along with the weights.
    """
    if not paths:
        raise ValueError("no checkpoint given")
    models = [_as_float32(keras.models.load_model(path, compile=False)) for path in paths]
    if len(models) == 1:
        return models[0]
    names = {model.name for model in models}
    if len(names) != 1:
        raise ValueError(f"cannot average checkpoints of different architectures: {sorted(names)}")
    averaged = [np.mean(weights, axis=0) for weights in zip(*(m.get_weights() for m in models), strict=True)]
    models[0].set_weights(averaged)
    log.info("averaged the weights of %d checkpoints: %s", len(paths), ", ".join(Path(p).name for p in paths))
    return models[0]


def _as_float32(model: keras.Model) -> keras.Model:
    """The same model computing in float32: a run trained in mixed precision serves and evaluates in float32,
    which every CPU and TF Serving run at full speed and which is at least as exact."""
    config = model.get_config()
    if "bfloat16" not in str(config) and "float16" not in str(config):
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


def last_snapshots(run: Path, count: int) -> list[Path]:
    """The snapshots of the last `count` epochs of a run, oldest first."""
    snapshots = sorted((Path(run) / SNAPSHOT_DIR).glob("epoch_*.keras"))
    if not snapshots:
        raise FileNotFoundError(f"no epoch snapshots in {Path(run) / SNAPSHOT_DIR}")
    return snapshots[-count:]
