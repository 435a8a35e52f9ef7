"""What ``nbtl fit`` does (its parser is :mod:`nbtl.cli.fit`): measure the fit of every block of every backbone,
print the table, save it as CSV and log it on one MLflow run."""

from __future__ import annotations

import argparse

import pandas as pd

from nbtl.backbones import get_spec, parse_weights
from nbtl.cli.common import check_name, log
from nbtl.cli.run_common import settings_overrides
from nbtl.data import load_dataset, training_part
from nbtl.data.settings import DataSettings
from nbtl.errors import ConfigError
from nbtl.fit import block_features, fit_table, meta_features
from nbtl.tracking import check_tracking_uri, log_fit, name_slug


def run(args: argparse.Namespace) -> int:
    settings = DataSettings().with_overrides(settings_overrides(args))
    check_name(args.name)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if not backbones:
        raise ConfigError("--backbones needs at least one backbone name, e.g. efficientnet_lite0; see nbtl backbones")
    if len(set(backbones)) != len(backbones):
        raise ConfigError(f"--backbones names a backbone twice: {args.backbones}")
    for name in backbones:
        get_spec(name)  # an unknown backbone fails here, before any data is loaded
    weights = parse_weights(args.weights, backbones)
    check_tracking_uri(args.tracking_uri)
    dataset = training_part(load_dataset(args.data, **settings.load_kwargs()))  # never the official test images
    meta = meta_features(dataset)
    tables = []
    for name in backbones:
        features = block_features(dataset, name, weights_path=weights.get(name), use_cache=not args.no_cache)
        log.info(
            "%s: %d blocks, features %s", name, features.num_blocks, "cache" if features.from_cache else "extracted"
        )
        tables.append(fit_table(features, random_state=settings.split_seed))
    table = pd.concat(tables, ignore_index=True)

    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    print()
    metrics: dict[str, float] = {}
    for name in backbones:
        rows = table[table["backbone"] == name]
        if rows["logme"].notna().any():
            best = rows.loc[rows["logme"].idxmax()]
            metrics[f"{name}.best_logme"] = float(best["logme"])
            metrics[f"{name}.best_block"] = int(best["block"])
            print(
                f"{name}: best block by LogME is {int(best['block'])} (logme={best['logme']:.4g}, "
                f"feature_dim={int(best['feature_dim'])})"
            )
        else:
            print(f"{name}: no finite LogME on any block")
    print("\nDataset meta-features:")
    for key, value in meta.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")

    dataset_slug = name_slug(meta["name"])
    out = args.out or f"nbtl_fit_{dataset_slug}.csv"
    try:
        table.to_csv(out, index=False)
    except OSError as error:
        raise ConfigError(f"cannot write --out {out}: {error.strerror or error}") from error
    params = {
        "data": args.data,
        "backbones": ",".join(backbones),
        "image_size": settings.image_size,
        "per_class": settings.per_class,
        "classes": settings.classes,
        "split_seed": settings.split_seed,
        **{f"meta.{k}": v for k, v in meta.items()},
    }
    uri, experiment_id, run_id = log_fit(
        args.tracking_uri, args.name or f"fit-{dataset_slug}", params, {"nbtl.data": args.data}, table, metrics
    )
    print(f"\nTable: {out}")
    print(f"MLflow: {uri} experiment {experiment_id}, run {run_id}")
    return 0
