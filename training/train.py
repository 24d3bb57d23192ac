"""Training with checkpoints every epoch, resume, early stopping on val and a CSV log of the curves."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras

from training.checkpoints import SNAPSHOT_DIR, SNAPSHOT_PATTERN, load_exported_weights, prune_snapshots
from training.data import DEFAULT_DATA_ROOT, AugmentConfig, Split, list_split, make_dataset
from training.ferplus import DEFAULT_FERPLUS_ROOT, load_ferplus_split
from training.models import build_model

log = logging.getLogger(__name__)

LABEL_SOURCES = ("fer2013", "ferplus")
LAST_CHECKPOINT = "last.keras"
BEST_CHECKPOINT = "best.keras"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; written next to the checkpoints so a resume uses the same values."""

    data: str = str(DEFAULT_DATA_ROOT)
    # "fer2013": the class folders; "ferplus": the FER+ vote shares (val scored against their plurality).
    labels: str = "fer2013"
    ferplus: str = str(DEFAULT_FERPLUS_ROOT)
    out: str = "var/training/run"
    arch: str = "emonet"
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    patience: int = 15
    limit: int | None = None
    val_limit: int | None = None
    steps_per_epoch: int | None = None  # cap, for smoke tests
    mixup_alpha: float = 0.0
    # bfloat16 compute with float32 weights: about 1.2x faster on CPUs with AVX512-BF16; export is float32.
    mixed_precision: bool = False
    # Epoch snapshots kept (the newest), for `export --average-last`.
    keep_snapshots: int = 10
    seed: int = 0
    # An exported version folder whose weights the run starts from instead of random ones (a second cycle
    # of the schedule for the served model, when its checkpoints are gone).
    init_from: str | None = None


class _EpochStats(keras.callbacks.Callback):
    """Adds seconds per epoch and the learning rate to the logs (before the CSV logger writes them)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["seconds"] = round(time.monotonic() - self._start, 1)
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class _PruneSnapshots(keras.callbacks.Callback):
    """Keeps only the newest snapshots once each epoch's is written."""

    def __init__(self, run: Path, keep: int):
        super().__init__()
        self.run = run
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        prune_snapshots(self.run, self.keep)


class _RunState(keras.callbacks.Callback):
    """Records the finished epoch and best val accuracy after the checkpoint is written, for --resume."""

    def __init__(self, path: Path, best: float):
        super().__init__()
        self.path = path
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        val_accuracy = float((logs or {}).get("val_accuracy", 0.0))
        self.best = max(self.best, val_accuracy)
        state = {"epochs_done": epoch + 1, "best_val_accuracy": self.best}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.path)
        log.info("epoch %d: val_accuracy %.4f (best %.4f)", epoch + 1, val_accuracy, self.best)


def _schedule(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up to the peak learning rate, then cosine decay to 1% of it at the last epoch."""
    total_steps = max(1, config.epochs * steps_per_epoch)
    warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 20,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=0.01,
        warmup_target=config.learning_rate,
        warmup_steps=warmup_steps,
    )


def _compile(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    optimizer = keras.optimizers.AdamW(
        learning_rate=_schedule(config, steps_per_epoch), weight_decay=config.weight_decay
    )
    # Decay only the weights of convolutions and dense layers, not BatchNorm scales and shifts or biases.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train (or continue training) a model; returns the folder holding `best.keras` and `last.keras`."""
    out = Path(config.out)
    (out / SNAPSHOT_DIR).mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    state_path = out / STATE_FILE
    previous_epochs = None
    if resume and state_path.exists():
        saved = json.loads((out / "config.json").read_text())
        previous_epochs = saved["epochs"]
        # The run's own values win, except how many epochs to run in all.
        config = TrainConfig(**{**saved, "epochs": config.epochs})
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    # The policy is global in Keras: set it for this run only, so later models in the process are float32.
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if config.mixed_precision else "float32")
    try:
        _fit(config, out, resume, state_path, previous_epochs)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return out


def _splits(config: TrainConfig) -> tuple[Split, Split]:
    """Train and val; with FER+ labels, train learns the vote shares and val keeps the images that have a
    plurality, one-hot, so that val accuracy (early stopping, best checkpoint) is agreement with it."""
    data = Path(config.data)
    if config.labels == "fer2013":
        return (
            list_split(data, "train", config.limit, config.seed),
            list_split(data, "val", config.val_limit, config.seed),
        )
    if config.labels != "ferplus":
        raise ValueError(f"unknown label source {config.labels!r}; expected one of {LABEL_SOURCES}")
    ferplus = Path(config.ferplus)
    train_split = load_ferplus_split(data, "train", ferplus, config.limit, config.seed).split
    val = load_ferplus_split(data, "val", ferplus, config.val_limit, config.seed).scored().split
    return train_split, Split(val.paths, val.labels)


def _fit(config: TrainConfig, out: Path, resume: bool, state_path: Path, previous_epochs: int | None) -> None:
    train_split, val_split = _splits(config)
    log.info(
        "train %d images, val %d images, from %s (%s labels)",
        len(train_split),
        len(val_split),
        config.data,
        config.labels,
    )
    augment = AugmentConfig(mixup_alpha=config.mixup_alpha)
    train_data = make_dataset(
        train_split, config.batch_size, training=True, seed=config.seed, augment_config=augment
    )
    val_data = make_dataset(val_split, 256, training=False)
    steps_per_epoch = max(1, len(train_split) // config.batch_size)
    if config.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
        train_data = train_data.repeat()

    initial_epoch, best = 0, 0.0
    if resume and state_path.exists():
        state = json.loads(state_path.read_text())
        initial_epoch, best = state["epochs_done"], state["best_val_accuracy"]
        model = keras.models.load_model(out / LAST_CHECKPOINT)
        if previous_epochs != config.epochs:
            # A resume may shorten or lengthen the run: the cosine decay is stretched to the new end.
            model.optimizer.learning_rate = _schedule(config, steps_per_epoch)
            log.info(
                "learning-rate schedule now ends after epoch %d (was %d)", config.epochs, previous_epochs
            )
        log.info("resuming %s after epoch %d (best val accuracy %.4f)", out, initial_epoch, best)
    else:
        if resume:
            log.warning("nothing to resume in %s; starting afresh", out)
        model = build_model(config.arch)
        if config.init_from:
            load_exported_weights(model, Path(config.init_from))
        _compile(model, config, steps_per_epoch)
    log.info("model %s: %d parameters", model.name, model.count_params())
    if initial_epoch >= config.epochs:
        log.info("already trained %d of %d epochs", initial_epoch, config.epochs)
        return

    best_checkpoint = keras.callbacks.ModelCheckpoint(
        out / BEST_CHECKPOINT, monitor="val_accuracy", mode="max", save_best_only=True
    )
    best_checkpoint.best = best if best > 0 else best_checkpoint.best
    callbacks = [
        _EpochStats(),
        keras.callbacks.CSVLogger(str(out / HISTORY_FILE), append=initial_epoch > 0),
        best_checkpoint,
        keras.callbacks.ModelCheckpoint(out / LAST_CHECKPOINT),
        # Every epoch kept, for averaging the last few at export (`export --average-last`).
        keras.callbacks.ModelCheckpoint(str(out / SNAPSHOT_DIR / SNAPSHOT_PATTERN)),
        _PruneSnapshots(out, config.keep_snapshots),
        _RunState(state_path, best),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience),
    ]
    started = time.monotonic()
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself; Keras cannot shuffle a tf.data.Dataset
        # A live progress bar on a terminal; one line per epoch in a log file.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    log.info("trained in %.0f s; checkpoints in %s", time.monotonic() - started, out)
