"""``nbtl predict MODEL IMAGES...``: classify images with a logged or registered nbtl model.

The parser; what the command does is :mod:`nbtl.cli.predict_run`, imported when it runs."""

from __future__ import annotations

from nbtl.cli.common import TRACKING_HELP, command


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify images with a model a search logged or registered",
        description="Classify images with a model nbtl logged (the best trial of a search, or an ensemble): "
        "prints one row per image, in the order given, with its most probable class and probability and "
        "the next ones (class_2/probability_2 ... up to --top-k). An image that cannot be read gets a "
        "warning naming it and a row with an error column; the others go on.",
        epilog="exit status: 0 every image classified, 1 some could not be read (listed with an error), "
        "2 bad input (a path or model that is not there). "
        "examples: nbtl predict digits photos/;  nbtl predict models:/digits/2 a.png b.jpg --top-k 1;  "
        "nbtl predict runs:/RUN_ID/model images.csv --out predictions.csv",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-ID, runs:/RUN_ID/model), "
        "a local MLflow model folder, or a search's name: its registered model's newest version, else the "
        "model its newest finished run logged",
    )
    p.add_argument(
        "images",
        metavar="IMAGES",
        nargs="+",
        help="image files, folders (searched recursively for image files, sorted) or CSV files listing image "
        "paths (column path, image, file or filename, else the first; relative to the CSV's folder)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=3,
        metavar="K",
        help="columns for the K most probable classes per image: class, probability, class_2, probability_2, "
        "... class_K, probability_K (default: 3; at most the model's number of classes)",
    )
    p.add_argument(
        "--out",
        metavar="CSV",
        help="also write the table to this CSV file: the same columns, plus error (empty for a classified image)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images sent to the model at once (default: 64)"
    )
    p.add_argument(
        "--allow-foreign-models",
        action="store_true",
        help="also load a model nbtl did not log, with mlflow.pyfunc.load_model: that RUNS the model's code and "
        "unpickles its objects, so only for a model whose every writer you trust (default: such a model is "
        "refused, and an nbtl model is rebuilt from its weights without running anything stored with it)",
    )
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    p.set_defaults(func=command("nbtl.cli.predict_run:run"))
