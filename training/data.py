"""FER2013 in Kaggle folder form (`<root>/<split>/<class>/*.jpg`) as tf.data pipelines, with augmentation."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.classes import EMOTION_INDEX, NUM_CLASSES

log = logging.getLogger(__name__)

FACE_SIZE = 48
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The shared data lives beside the repository, not in it: <repo>/../shared/data/fer2013.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"


@dataclass(frozen=True)
class Split:
    """The image files of one split and their labels in the project's class order.

    `targets`, when given, are what training learns instead of the one-hot labels: a distribution over the
    classes per image (the FER+ vote shares, `training/ferplus.py`)."""

    paths: tuple[str, ...]
    labels: np.ndarray
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)


def list_split(root: Path, split: str, limit: int | None = None, seed: int = 0) -> Split:
    """Every image under `<root>/<split>/<class>/`, labelled by folder name (not folder order).

    `limit` keeps a random but class-stratified subset of about that many images, for quick runs and tests.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no split folder {split_dir} (expected <root>/{split}/<class>/*.jpg)")
    paths: list[str] = []
    labels: list[int] = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name not in EMOTION_INDEX:
            raise ValueError(f"unknown class folder {class_dir}; expected one of {sorted(EMOTION_INDEX)}")
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(p) for p in files]
        labels += [EMOTION_INDEX[class_dir.name]] * len(files)
    if not paths:
        raise FileNotFoundError(f"no images under {split_dir}")
    label_array = np.asarray(labels, np.int32)
    if limit is not None and limit < len(paths):
        keep = _stratified_subset(label_array, limit, seed)
        paths = [paths[i] for i in keep]
        label_array = label_array[keep]
    return Split(tuple(paths), label_array)


def _stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of about `limit` items keeping every class (at least one each) in proportion."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, math.floor(limit * len(members) / len(labels)))
        keep.append(rng.choice(members, size=min(count, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def decode_image(path: tf.Tensor) -> tf.Tensor:
    """One file as uint8 [48, 48, 1] grayscale (resized only if the file is not already 48x48)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=1, expand_animations=False)
    image.set_shape([None, None, 1])
    if image.shape[0] != FACE_SIZE:
        image = tf.cast(tf.image.resize(image, [FACE_SIZE, FACE_SIZE], antialias=True), tf.uint8)
    return tf.ensure_shape(tf.cast(image, tf.uint8), [FACE_SIZE, FACE_SIZE, 1])


def load_images(split: Split) -> np.ndarray:
    """All images of a split decoded into one uint8 array [N, 48, 48, 1]."""
    dataset = tf.data.Dataset.from_tensor_slices(list(split.paths)).map(
        decode_image, num_parallel_calls=tf.data.AUTOTUNE
    )
    return np.concatenate([batch.numpy() for batch in dataset.batch(1024)], axis=0)


def pixel_hashes(images: np.ndarray) -> list[str]:
    """A digest of each decoded image's pixels, to find exact duplicates across splits."""
    return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]


def make_dataset(
    split: Split,
    batch_size: int,
    training: bool,
    seed: int = 0,
    augment_config: AugmentConfig | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 pixels 0..255 [B, 48, 48, 1], targets [B, 7]), augmented when training; the
    targets are the split's own distributions if it has them, else its labels one-hot."""
    if split.targets is not None:
        targets = np.asarray(split.targets, np.float32)
    else:
        targets = np.eye(NUM_CLASSES, dtype=np.float32)[split.labels]
    dataset = tf.data.Dataset.from_tensor_slices((list(split.paths), targets))
    dataset = dataset.map(
        lambda path, target: (decode_image(path), target), num_parallel_calls=tf.data.AUTOTUNE
    ).cache()
    if training:
        dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=training and len(split) >= batch_size)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        config = augment_config or AugmentConfig()
        dataset = dataset.map(lambda x, y: augment_batch(x, y, config), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class AugmentConfig:
    """How strongly training batches are perturbed."""

    rotation_deg: float = 12.0
    shift: float = 0.1  # fraction of the side
    zoom: float = 0.12  # scale in [1 - zoom, 1 + zoom]
    brightness: float = 0.25  # additive, fraction of 255
    contrast: float = 0.3  # factor in [1 - contrast, 1 + contrast]
    erase_probability: float = 0.4
    erase_max_fraction: float = 0.35  # side of the erased square, fraction of 48
    mixup_alpha: float = 0.0  # 0 turns mixup off


def augment_batch(images: tf.Tensor, labels: tf.Tensor, config: AugmentConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flip, rotation, shift, zoom, brightness, contrast, erasing (and mixup) of float pixels."""
    batch = tf.shape(images)[0]
    size = float(FACE_SIZE)
    # One projective transform per image combines flip, rotation, zoom and shift (a single resampling).
    flip = tf.where(tf.random.uniform([batch]) < 0.5, -1.0, 1.0)
    angle = tf.random.uniform([batch], -1.0, 1.0) * config.rotation_deg * math.pi / 180.0
    scale = tf.random.uniform([batch], 1.0 - config.zoom, 1.0 + config.zoom)
    shift_x = tf.random.uniform([batch], -1.0, 1.0) * config.shift * size
    shift_y = tf.random.uniform([batch], -1.0, 1.0) * config.shift * size
    # The transform maps output pixel coordinates to input ones: inverse of scale*rotate about the centre.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre = (size - 1.0) / 2.0
    a0, a1 = cos * flip, -sin
    b0, b1 = sin * flip, cos
    a2 = centre - a0 * centre - a1 * centre + shift_x
    b2 = centre - b0 * centre - b1 * centre + shift_y
    zeros = tf.zeros([batch])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant([FACE_SIZE, FACE_SIZE]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.uniform([batch, 1, 1, 1], 1.0 - config.contrast, 1.0 + config.contrast)
    brightness = tf.random.uniform([batch, 1, 1, 1], -1.0, 1.0) * config.brightness * 255.0
    images = tf.clip_by_value((images - mean) * contrast + mean + brightness, 0.0, 255.0)
    if config.erase_probability > 0:
        images = _random_erase(images, config)
    if config.mixup_alpha > 0:
        images, labels = _mixup(images, labels, config.mixup_alpha)
    return images, labels


def _random_erase(images: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Fill a random square of some images with noise, so the model cannot rely on one facial region."""
    batch = tf.shape(images)[0]
    side = tf.random.uniform([batch, 1, 1, 1], 0.1, config.erase_max_fraction) * FACE_SIZE
    cy = tf.random.uniform([batch, 1, 1, 1], 0.0, FACE_SIZE)
    cx = tf.random.uniform([batch, 1, 1, 1], 0.0, FACE_SIZE)
    grid = tf.range(FACE_SIZE, dtype=tf.float32)
    inside_y = tf.abs(tf.reshape(grid, [1, FACE_SIZE, 1, 1]) - cy) < side / 2
    inside_x = tf.abs(tf.reshape(grid, [1, 1, FACE_SIZE, 1]) - cx) < side / 2
    chosen = tf.random.uniform([batch, 1, 1, 1]) < config.erase_probability
    mask = tf.logical_and(tf.logical_and(inside_y, inside_x), chosen)
    noise = tf.random.uniform(tf.shape(images), 0.0, 255.0)
    return tf.where(mask, noise, images)


def _mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Blend each image and its label with another one from the batch."""
    batch = tf.shape(images)[0]
    gamma_a = tf.random.gamma([batch], alpha)
    gamma_b = tf.random.gamma([batch], alpha)
    weight = gamma_a / (gamma_a + gamma_b)
    weight = tf.maximum(weight, 1.0 - weight)  # the original image stays dominant
    order = tf.random.shuffle(tf.range(batch))
    w_img = tf.reshape(weight, [-1, 1, 1, 1])
    w_lab = tf.reshape(weight, [-1, 1])
    images = w_img * images + (1.0 - w_img) * tf.gather(images, order)
    labels = w_lab * labels + (1.0 - w_lab) * tf.gather(labels, order)
    return images, labels
