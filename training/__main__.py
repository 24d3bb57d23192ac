"""Command line: `python -m training {train,evaluate,export}`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides our own log

from training.data import DEFAULT_DATA_ROOT  # noqa: E402
from training.export import DEFAULT_MODEL_BASE  # noqa: E402
from training.ferplus import DEFAULT_FERPLUS_ROOT  # noqa: E402
from training.models import ARCHITECTURES  # noqa: E402
from training.train import BEST_CHECKPOINT, LABEL_SOURCES, TrainConfig  # noqa: E402

DEFAULT_RUN = "var/training/run"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    defaults = TrainConfig()
    train = commands.add_parser("train", help="train a model on <data>/train, validating on <data>/val")
    train.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="root of <split>/<class>/*.jpg")
    train.add_argument(
        "--labels",
        choices=LABEL_SOURCES,
        default=defaults.labels,
        help="fer2013: the class folders; ferplus: the FER+ vote shares, val scored against their plurality",
    )
    train.add_argument("--ferplus", type=Path, default=DEFAULT_FERPLUS_ROOT, help="folder of the FER+ CSVs")
    train.add_argument("--out", type=Path, default=Path(DEFAULT_RUN), help="checkpoints, state and CSV log")
    train.add_argument("--arch", choices=sorted(ARCHITECTURES), default=defaults.arch)
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.learning_rate, help="peak learning rate")
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs)
    train.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    train.add_argument(
        "--patience", type=int, default=defaults.patience, help="early stopping on val accuracy"
    )
    train.add_argument("--mixup", type=float, default=defaults.mixup_alpha, help="mixup alpha (0: off)")
    train.add_argument(
        "--limit", type=int, help="use about this many train images (stratified), for quick runs"
    )
    train.add_argument("--val-limit", type=int, help="use about this many val images")
    train.add_argument("--steps-per-epoch", type=int, help="cap the steps per epoch, for smoke tests")
    train.add_argument(
        "--keep-snapshots",
        type=int,
        default=defaults.keep_snapshots,
        help="epoch snapshots kept, the newest (for export --average-last)",
    )
    train.add_argument(
        "--mixed-precision", action="store_true", help="compute in bfloat16 (weights and export stay float32)"
    )
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    train.add_argument(
        "--init-from",
        type=Path,
        metavar="VERSION_DIR",
        help="start from the weights of an exported model (a version folder) of the same --arch",
    )

    evaluate = commands.add_parser("evaluate", help="metrics, confusion matrix and duplicate-free accuracy")
    evaluate.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument(
        "--model",
        type=Path,
        nargs="+",
        default=[],
        help="a SavedModel folder, or .keras checkpoints (weights averaged); default: the shipped model",
    )
    evaluate.add_argument("--out", type=Path, default=Path("var/training/eval"), help="where reports go")
    evaluate.add_argument("--limit", type=int)
    evaluate.add_argument("--no-dedup", action="store_true", help="skip the search for train duplicates")
    evaluate.add_argument(
        "--frames",
        type=Path,
        help="also evaluate on photos labelled by folder "
        "(<frames>/<class>/*.jpg), cropped with common.face_crop",
    )
    evaluate.add_argument(
        "--flip-average",
        action="store_true",
        help="for a .keras checkpoint: average with "
        "the mirrored face, as an export with --flip-average would",
    )
    evaluate.add_argument(
        "--recalibrate-bn",
        action="store_true",
        help="for .keras checkpoints: measure BatchNorm statistics afresh on <data>/train, as export does",
    )
    evaluate.add_argument("--no-throughput", action="store_true", help="skip the faces/s measurement")
    evaluate.add_argument(
        "--ferplus",
        type=Path,
        default=DEFAULT_FERPLUS_ROOT,
        help="folder of the FER+ CSVs: agreement with their plurality is the figure of record",
    )

    export = commands.add_parser("export", help="write model_server/models/emotion/<version>/ (SavedModel)")
    export.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        default=[Path(DEFAULT_RUN) / BEST_CHECKPOINT],
        help=".keras checkpoints; with several, their weights are averaged",
    )
    export.add_argument(
        "--average-last",
        type=int,
        metavar="N",
        help="average the last N epoch snapshots of --run instead (train keeps the last 10)",
    )
    export.add_argument("--run", type=Path, default=Path(DEFAULT_RUN), help="the run for --average-last")
    export.add_argument("--model-base", type=Path, default=DEFAULT_MODEL_BASE)
    export.add_argument("--version", type=int, help="integer version folder (default: next free)")
    export.add_argument("--flip-average", action="store_true", help="average with the mirrored face inside")
    export.add_argument(
        "--recalibrate-bn",
        action="store_true",
        help="measure BatchNorm statistics afresh on <data>/train (after averaging, or for one checkpoint)",
    )
    export.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="for --recalibrate-bn")
    export.add_argument(
        "--ensemble-with",
        type=Path,
        nargs="+",
        default=[],
        metavar="VERSION_DIR",
        help="exported models (version folders) averaged in, each weighted as much as the model",
    )
    export.add_argument(
        "--ensemble-weights-from",
        type=Path,
        nargs="+",
        default=[],
        metavar="VERSION_DIR",
        help="exported models of the checkpoint's architecture read back as nets (their own flip averaging "
        "and class bias left behind) and served beside it, under this export's flip averaging and class bias",
    )
    export.add_argument("--keep-other-versions", action="store_true")
    export.add_argument(
        "--average-with",
        type=Path,
        nargs="+",
        default=[],
        metavar="VERSION_DIR",
        help="exported models of the same architecture whose weights are averaged in, each as one checkpoint",
    )
    export.add_argument(
        "--class-bias",
        metavar="CLASS=BIAS,...",
        help="multiply these classes' probabilities by exp(bias) inside the model (see `class-bias`)",
    )

    bias = commands.add_parser(
        "class-bias", help="the per-class bias that lifts every class but disgust to a recall floor on val"
    )
    bias.add_argument("--model", type=Path, help="a SavedModel folder (default: the shipped model)")
    bias.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    bias.add_argument("--ferplus", type=Path, default=DEFAULT_FERPLUS_ROOT)
    bias.add_argument("--floor", type=float, default=0.55, help="the recall each class should reach")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        from training.train import train

        config = TrainConfig(
            data=str(args.data),
            labels=args.labels,
            ferplus=str(args.ferplus),
            out=str(args.out),
            arch=args.arch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            label_smoothing=args.label_smoothing,
            patience=args.patience,
            limit=args.limit,
            val_limit=args.val_limit,
            steps_per_epoch=args.steps_per_epoch,
            mixup_alpha=args.mixup,
            mixed_precision=args.mixed_precision,
            keep_snapshots=args.keep_snapshots,
            seed=args.seed,
            init_from=str(args.init_from) if args.init_from else None,
        )
        train(config, resume=args.resume)
    elif args.command == "evaluate":
        from training.evaluate import evaluate

        evaluate(
            data=args.data,
            split=args.split,
            model_paths=args.model,
            out=args.out,
            limit=args.limit,
            dedup=not args.no_dedup,
            frames=args.frames,
            flip_average=args.flip_average,
            throughput=not args.no_throughput,
            recalibrate_bn=args.recalibrate_bn,
            ferplus=args.ferplus,
        )
    elif args.command == "export":
        import keras

        from training.checkpoints import (
            average_weights,
            last_snapshots,
            load_checkpoints,
            load_exported_weights,
            recalibrate_batch_norm,
        )
        from training.class_bias import parse_bias
        from training.data import list_split, load_images
        from training.export import export_model, load_member

        paths = last_snapshots(args.run, args.average_last) if args.average_last else args.checkpoint
        bn_images = load_images(list_split(args.data, "train")) if args.recalibrate_bn else None
        if args.average_with:
            # Exported models of the same architecture (e.g. the run's starting point, `train --init-from`)
            # averaged in weight by weight, then BatchNorm measured afresh if asked.
            model = load_checkpoints(paths)
            others = [load_exported_weights(keras.models.clone_model(model), p) for p in args.average_with]
            model = average_weights([model, *others], [*map(str, paths), *map(str, args.average_with)])
            if bn_images is not None:
                recalibrate_batch_norm(model, bn_images)
        else:
            model = load_checkpoints(paths, bn_images)
        # Loaded before the export, which removes the other version folders (the members' among them).
        members = [load_member(path) for path in args.ensemble_with]
        nets = [model]
        for version_dir in args.ensemble_weights_from:
            nets.append(load_exported_weights(keras.models.clone_model(model), version_dir))
        export_model(
            nets,
            model_base=args.model_base,
            version=args.version,
            flip_average=args.flip_average,
            keep_other_versions=args.keep_other_versions,
            members=members,
            class_bias=parse_bias(args.class_bias) if args.class_bias else None,
        )
    elif args.command == "class-bias":
        import json

        from training.class_bias import report

        print(json.dumps(report(args.model, args.data, args.ferplus, args.floor), indent=2))


if __name__ == "__main__":
    main()
