"""The training package: data mapping, augmentation, checkpoint and resume, export, and the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common.classes import EMOTION_INDEX, EMOTIONS, NUM_CLASSES
from training.checkpoints import (
    SNAPSHOT_DIR,
    last_snapshots,
    load_checkpoints,
    load_exported_weights,
    prune_snapshots,
    recalibrate_batch_norm,
)
from training.data import (
    DEFAULT_DATA_ROOT,
    AugmentConfig,
    augment_batch,
    list_split,
    load_images,
    make_dataset,
)
from training.evaluate import load_frames, load_predictor, metrics, shipped_model_dir
from training.export import (
    DEFAULT_MODEL_BASE,
    INPUT_KEY,
    OUTPUT_KEY,
    SIGNATURE_NAME,
    check_contract,
    export_model,
    fold_batch_norm,
    load_member,
)
from training.train import BEST_CHECKPOINT, HISTORY_FILE, LAST_CHECKPOINT, STATE_FILE, TrainConfig, train

SHARED_DATA = DEFAULT_DATA_ROOT
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "val").is_dir(), reason=f"FER2013 not found at {SHARED_DATA} (the shared data folder)"
)


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_jpeg(tf.constant(image)).numpy())


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A Kaggle-layout folder of synthetic 48x48 faces: 4 train and 2 val images per class."""
    root = tmp_path_factory.mktemp("fer")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for name in sorted(EMOTIONS):  # alphabetical, like the real folders
            for i in range(count):
                # Each class a different brightness, so the folder's label is recoverable from the pixels.
                level = 30 * EMOTION_INDEX[name] + 20
                image = np.clip(rng.normal(level, 10, (48, 48, 1)), 0, 255).astype(np.uint8)
                _write_jpeg(root / split / name / f"{split}_{i}.jpg", image)
    return root


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory) -> Path:
    """Two epochs of two steps on the tiny dataset, then resumed for a third; two snapshots kept."""
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        data=str(tiny_dataset),
        out=str(out),
        epochs=2,
        batch_size=8,
        steps_per_epoch=2,
        patience=5,
        keep_snapshots=2,
    )
    train(config)
    train(TrainConfig(**{**config.__dict__, "epochs": 3}), resume=True)
    return out


def test_folders_map_to_the_fixed_class_order_not_alphabetical(tiny_dataset):
    split = list_split(tiny_dataset, "train")
    for path, label in zip(split.paths, split.labels, strict=True):
        assert EMOTIONS[label] == Path(path).parent.name
    assert sorted(set(split.labels.tolist())) == list(range(NUM_CLASSES))
    # Alphabetically "neutral" is the fifth folder; in the project's order it is the last class.
    assert EMOTION_INDEX["neutral"] == 6


def test_limit_keeps_every_class(tiny_dataset):
    split = list_split(tiny_dataset, "train", limit=10)
    assert len(split) <= 10 + NUM_CLASSES
    assert set(split.labels.tolist()) == set(range(NUM_CLASSES))


def test_unknown_class_folder_is_refused(tmp_path):
    _write_jpeg(tmp_path / "train" / "contempt" / "a.jpg", np.zeros((48, 48, 1), np.uint8))
    with pytest.raises(ValueError, match="contempt"):
        list_split(tmp_path, "train")


def test_pipeline_and_augmentation_shapes(tiny_dataset):
    split = list_split(tiny_dataset, "train")
    images, labels = next(iter(make_dataset(split, 8, training=True)))
    assert images.shape == (8, 48, 48, 1) and images.dtype == tf.float32
    assert labels.shape == (8, NUM_CLASSES)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0)
    mixed, mixed_labels = augment_batch(images, labels, AugmentConfig(mixup_alpha=0.4))
    assert mixed.shape == images.shape
    np.testing.assert_allclose(mixed_labels.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_validation_pipeline_is_not_augmented(tiny_dataset):
    split = list_split(tiny_dataset, "val")
    first = np.concatenate([x.numpy() for x, _ in make_dataset(split, 4, training=False)])
    np.testing.assert_array_equal(first, load_images(split).astype(np.float32))


def test_training_writes_checkpoints_log_and_resumes(trained_run):
    for name in (BEST_CHECKPOINT, LAST_CHECKPOINT, STATE_FILE, HISTORY_FILE):
        assert (trained_run / name).is_file(), name
    assert json.loads((trained_run / STATE_FILE).read_text())["epochs_done"] == 3
    rows = (trained_run / HISTORY_FILE).read_text().strip().splitlines()
    assert rows[0].startswith("epoch") and [row.split(",")[0] for row in rows[1:]] == ["0", "1", "2"]
    newest = ["epoch_02.keras", "epoch_03.keras"]
    assert [p.name for p in last_snapshots(trained_run, 2)] == newest
    assert sorted(p.name for p in (trained_run / SNAPSHOT_DIR).iterdir()) == newest  # epoch 1's pruned


def test_snapshots_go_by_epoch_number_and_only_the_newest_are_kept(tmp_path):
    folder = tmp_path / SNAPSHOT_DIR
    folder.mkdir()
    for epoch in (9, 10, 99, 100, 101):
        (folder / f"epoch_{epoch:02d}.keras").write_bytes(b"")
    assert [p.name for p in last_snapshots(tmp_path, 2)] == ["epoch_100.keras", "epoch_101.keras"]
    prune_snapshots(tmp_path, keep=3)
    kept = sorted(p.name for p in folder.iterdir())
    assert kept == ["epoch_100.keras", "epoch_101.keras", "epoch_99.keras"]
    with pytest.raises(ValueError):
        prune_snapshots(tmp_path, keep=0)


def test_averaging_checkpoints_averages_the_weights(trained_run):
    first, last = last_snapshots(trained_run, 2)
    averaged = load_checkpoints([first, last]).get_weights()
    expected = [
        (a + b) / 2
        for a, b in zip(
            load_checkpoints([first]).get_weights(), load_checkpoints([last]).get_weights(), strict=True
        )
    ]
    for got, want in zip(averaged, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_batch_norm_recalibration_sets_the_plain_mean_of_the_training_faces(trained_run):
    import keras

    model = load_checkpoints([trained_run / LAST_CHECKPOINT])
    faces = np.random.default_rng(3).uniform(0, 255, (32, 48, 48, 1)).astype(np.float32)
    faces = (faces + faces[:, :, ::-1]) / 2  # mirror-symmetric, so the random mirroring changes nothing
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    before = norm.moving_mean.numpy().copy()
    # Each batch holds all 32 faces, so every batch mean, and their plain mean, is the mean over the faces.
    recalibrate_batch_norm(model, faces, batches=3, batch_size=32)
    expected = keras.Model(model.inputs, norm.input).predict(faces, verbose=0).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(norm.moving_mean.numpy(), expected, rtol=1e-3, atol=1e-4)
    assert not np.allclose(before, expected, atol=1e-3)
    assert norm.momentum == pytest.approx(0.99)  # the training value is put back


def test_mixed_precision_run_loads_and_exports_in_float32(tiny_dataset, tmp_path):
    import keras

    config = TrainConfig(
        data=str(tiny_dataset),
        out=str(tmp_path / "run"),
        arch="emonet_deep",
        epochs=1,
        batch_size=8,
        steps_per_epoch=2,
        mixed_precision=True,
    )
    train(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # the run's policy does not leak
    trained = keras.models.load_model(tmp_path / "run" / LAST_CHECKPOINT)
    assert trained.get_layer(index=3).dtype_policy.name == "mixed_bfloat16"
    loaded = load_checkpoints([tmp_path / "run" / LAST_CHECKPOINT])
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    faces = np.random.default_rng(2).uniform(0, 255, (6, 48, 48, 1)).astype(np.float32)
    # Same weights, float32 arithmetic: close to the bfloat16 model's answers, not bit-identical.
    np.testing.assert_allclose(loaded.predict(faces, verbose=0), trained.predict(faces, verbose=0), atol=0.03)
    target = export_model(loaded, model_base=tmp_path / "models")
    check_contract(target)


@pytest.mark.parametrize("flip_average", [False, True])
def test_export_follows_the_serving_contract(trained_run, tmp_path, flip_average):
    import keras

    model = keras.models.load_model(trained_run / BEST_CHECKPOINT)
    target = export_model(model, model_base=tmp_path, flip_average=flip_average)
    assert target == tmp_path / "1"
    check_contract(target)
    signature = tf.saved_model.load(str(target)).signatures[SIGNATURE_NAME]
    faces = np.random.default_rng(1).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)
    probabilities = signature(**{INPUT_KEY: tf.constant(faces)})[OUTPUT_KEY].numpy()
    assert probabilities.shape == (5, NUM_CLASSES) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    expected = model.predict(faces.astype(np.float32), verbose=0)
    if flip_average:  # the mean of the face's and its mirror image's answers
        expected = (expected + model.predict(faces[:, :, ::-1].astype(np.float32), verbose=0)) / 2
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    # A second export replaces the first: exactly one version is served.
    assert export_model(model, model_base=tmp_path).name == "2"
    assert [p.name for p in tmp_path.iterdir() if p.name.isdigit()] == ["2"]


def _with_batch_norm_statistics(model, seed: int = 3):
    """The model with BatchNorm statistics and scales far from their start (a few training steps leave them
    near mean 0, variance 1, where folding them in would change next to nothing)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, size),  # gamma
                    rng.normal(0, 0.5, size),  # beta
                    rng.normal(0, 0.5, size),  # moving mean
                    rng.uniform(0.2, 3.0, size),  # moving variance
                ]
            )
    return model


def test_batch_norm_is_folded_into_the_convolutions_at_export(trained_run, tmp_path):
    import keras

    model = _with_batch_norm_statistics(load_checkpoints([trained_run / BEST_CHECKPOINT]))
    faces = np.random.default_rng(6).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)
    expected = model.predict(faces.astype(np.float32), verbose=0)
    folded = fold_batch_norm(model)
    assert not [layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    np.testing.assert_allclose(folded.predict(faces.astype(np.float32), verbose=0), expected, atol=1e-5)

    target = export_model(model, model_base=tmp_path)
    signature = tf.saved_model.load(str(target)).signatures[SIGNATURE_NAME]
    np.testing.assert_allclose(
        signature(**{INPUT_KEY: tf.constant(faces)})[OUTPUT_KEY].numpy(), expected, atol=1e-5
    )
    graph = signature.graph.as_graph_def()
    op_names = [node.name for function in graph.library.function for node in function.node_def]
    assert op_names and not [name for name in op_names if "batch_normalization" in name]


def test_export_applies_the_class_bias(trained_run, tmp_path):
    from training.class_bias import apply_bias, parse_bias

    model = load_checkpoints([trained_run / BEST_CHECKPOINT])
    bias = parse_bias("fear=0.7,sad=-0.2")
    target = export_model(model, model_base=tmp_path, class_bias=bias)
    faces = np.random.default_rng(8).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)
    served = tf.saved_model.load(str(target)).signatures[SIGNATURE_NAME](**{INPUT_KEY: tf.constant(faces)})
    expected = apply_bias(model.predict(faces.astype(np.float32), verbose=0), bias)
    np.testing.assert_allclose(served[OUTPUT_KEY].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(("flip_average", "class_bias"), [(False, None), (True, None), (True, "fear=0.4")])
def test_a_run_can_start_from_an_exported_models_weights(trained_run, tmp_path, flip_average, class_bias):
    from training.class_bias import parse_bias
    from training.models import build_model

    model = _with_batch_norm_statistics(load_checkpoints([trained_run / BEST_CHECKPOINT]))
    bias = parse_bias(class_bias) if class_bias else None
    target = export_model(model, model_base=tmp_path, flip_average=flip_average, class_bias=bias)
    build_model("vgg16")  # made first, so Keras numbers the next model's layers on from its own
    fresh = build_model("emonet")
    load_exported_weights(fresh, target)
    # The export folded BatchNorm into the convolutions: the weights differ, the function must not.
    faces = np.random.default_rng(7).integers(0, 256, (5, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(
        fresh.predict(faces, verbose=0), model.predict(faces, verbose=0), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="did not reproduce"):
        load_exported_weights(build_model("emonet_s"), target)


def test_export_with_an_ensemble_member_averages_the_probabilities(trained_run, tmp_path):
    model = load_checkpoints([trained_run / BEST_CHECKPOINT])
    first = export_model(model, model_base=tmp_path / "first")
    other = load_checkpoints([trained_run / BEST_CHECKPOINT])
    head = other.get_layer("probabilities")  # a different head, so the two models clearly disagree
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(5).normal(0, 50, kernel.shape).astype(np.float32), bias])
    ensemble = export_model(other, model_base=tmp_path / "ensemble", members=[load_member(first)])
    check_contract(ensemble)
    faces = np.random.default_rng(4).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)

    def run(folder):
        signature = tf.saved_model.load(str(folder)).signatures[SIGNATURE_NAME]
        return signature(**{INPUT_KEY: tf.constant(faces)})[OUTPUT_KEY].numpy()

    expected = (run(first) + other.predict(faces.astype(np.float32), verbose=0)) / 2
    np.testing.assert_allclose(run(ensemble), expected, atol=1e-5)
    assert not np.allclose(run(first), run(ensemble), atol=1e-4)  # the member really is only half of it


def test_export_of_several_nets_averages_them_under_one_flip_and_bias(trained_run, tmp_path):
    from training.class_bias import apply_bias, parse_bias

    first = load_checkpoints([trained_run / BEST_CHECKPOINT])
    second = load_checkpoints([trained_run / BEST_CHECKPOINT])
    head = second.get_layer("probabilities")  # a different head, so the two nets clearly disagree
    kernel, head_bias = head.get_weights()
    head.set_weights([np.random.default_rng(6).normal(0, 50, kernel.shape).astype(np.float32), head_bias])
    bias = parse_bias("fear=0.5")
    target = export_model([first, second], model_base=tmp_path, flip_average=True, class_bias=bias)
    faces = np.random.default_rng(3).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)
    served = tf.saved_model.load(str(target)).signatures[SIGNATURE_NAME](**{INPUT_KEY: tf.constant(faces)})

    def flip_averaged(net):
        pixels = faces.astype(np.float32)
        return (net.predict(pixels, verbose=0) + net.predict(pixels[:, :, ::-1], verbose=0)) / 2

    expected = apply_bias((flip_averaged(first) + flip_averaged(second)) / 2, bias)
    np.testing.assert_allclose(served[OUTPUT_KEY].numpy(), expected, atol=1e-5)
    assert not np.allclose(expected, apply_bias(flip_averaged(first), bias), atol=1e-3)


def test_export_command_serves_an_exported_models_net_beside_the_checkpoint(trained_run, tmp_path):
    from training.__main__ import main

    other = _with_batch_norm_statistics(load_checkpoints([trained_run / BEST_CHECKPOINT]))
    head = other.get_layer("probabilities")  # another net of the same architecture, clearly different
    kernel, head_bias = head.get_weights()
    head.set_weights([np.random.default_rng(9).normal(0, 50, kernel.shape).astype(np.float32), head_bias])
    # Exported with its own flip averaging and bias, which the ensemble must leave behind.
    member = export_model(
        other, model_base=tmp_path / "member", flip_average=True, class_bias=[0, 0, 1, 0, 0, 0, 0]
    )
    checkpoint = trained_run / BEST_CHECKPOINT
    main(
        ["export", "--checkpoint", str(checkpoint), "--ensemble-weights-from", str(member)]
        + ["--model-base", str(tmp_path / "ensemble"), "--version", "1"]
    )
    faces = np.random.default_rng(2).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)
    served = tf.saved_model.load(str(tmp_path / "ensemble" / "1")).signatures[SIGNATURE_NAME]
    pixels = faces.astype(np.float32)
    own = load_checkpoints([checkpoint]).predict(pixels, verbose=0)
    expected = (own + other.predict(pixels, verbose=0)) / 2  # no flip, no bias: this export's settings
    np.testing.assert_allclose(
        served(**{INPUT_KEY: tf.constant(faces)})[OUTPUT_KEY].numpy(), expected, atol=1e-5
    )
    assert not np.allclose(expected, own, atol=1e-3)


SHARED_PHOTO = SHARED_DATA.parent / "media" / "pyfeat_multi_face.jpg"


@pytest.mark.skipif(not SHARED_PHOTO.is_file(), reason=f"shared photo {SHARED_PHOTO} not found")
def test_photos_are_cropped_as_at_serving_time(tmp_path):
    (tmp_path / "happy").mkdir()
    (tmp_path / "happy" / SHARED_PHOTO.name).symlink_to(SHARED_PHOTO)
    faces, labels = load_frames(tmp_path)
    assert faces.shape == (1, 48, 48, 1) and faces.dtype == np.uint8
    assert labels.tolist() == [EMOTION_INDEX["happy"]]


def test_metrics_and_confusion_matrix():
    labels = np.array([0, 0, 3, 3, 6])
    predictions = np.array([0, 3, 3, 3, 6])
    report = metrics(labels, predictions)
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["per_class"]["angry"]["recall"] == 0.5
    assert report["per_class"]["happy"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["confusion_matrix"]["rows_true_cols_predicted"][0][3] == 1


@pytest.fixture(scope="module")
def shipped_signature():
    return tf.saved_model.load(str(shipped_model_dir(DEFAULT_MODEL_BASE))).signatures[SIGNATURE_NAME]


def test_exactly_one_shipped_version_that_follows_the_contract():
    versions = [p for p in DEFAULT_MODEL_BASE.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(versions) == 1 and versions[0].name.isdigit()
    check_contract(versions[0])


def test_exported_models_refuse_options_fixed_at_export():
    with pytest.raises(ValueError, match="fixed at export"):
        load_predictor([shipped_model_dir(DEFAULT_MODEL_BASE)], flip_average=True)
    with pytest.raises(ValueError, match="fixed at export"):
        load_predictor([shipped_model_dir(DEFAULT_MODEL_BASE)], bn_data=DEFAULT_DATA_ROOT)


def test_shipped_model_is_small(shipped_signature):
    folder = shipped_model_dir(DEFAULT_MODEL_BASE)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 25 * 2**20
    # Every stored number, BatchNorm statistics and all ensemble members included: the budget is 5 M.
    stored = tf.train.list_variables(str(folder / "variables" / "variables"))
    parameters = sum(int(np.prod(shape)) for name, shape in stored if "OBJECT_GRAPH" not in name)
    assert 100_000 < parameters <= 5_000_000


def test_shipped_model_probabilities_sum_to_one(shipped_signature):
    faces = np.random.default_rng(2).integers(0, 256, (3, 48, 48, 1), dtype=np.uint8)
    probabilities = shipped_signature(faces=tf.constant(faces))["probabilities"].numpy()
    assert probabilities.shape == (3, NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@needs_shared_data
@pytest.mark.parametrize("folder", ["happy", "surprise"])
def test_shipped_model_uses_the_fixed_class_order(shipped_signature, folder):
    # happy is index 3 in the alphabetical order too; surprise (5, alphabetically 6) tells the orders apart.
    files = sorted((SHARED_DATA / "val" / folder).glob("*.jpg"))[:24]
    faces = np.stack([tf.io.decode_jpeg(f.read_bytes(), channels=1).numpy() for f in files])
    predicted = shipped_signature(faces=tf.constant(faces))["probabilities"].numpy().argmax(axis=1)
    assert np.bincount(predicted, minlength=NUM_CLASSES).argmax() == EMOTION_INDEX[folder]
    if folder == "happy":
        assert predicted[0] == 3
