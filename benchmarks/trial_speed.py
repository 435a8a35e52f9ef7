"""How long one trial takes with and without the frozen-prefix cache, by how many blocks it freezes.

Trains EfficientNet-Lite0 on scikit-learn's digits (64 px, 2 epochs, one CPU thread) with
``freeze_blocks`` 0 (full fine-tune), 7, 8 and 9 (the linear probe), each uncached
(``cache_prefix=False``: every block runs on every step) and cached (a fresh in-memory
``PrefixStore``; the time to compute the entry, ``build_s``, is shown on its own and included in
``total_s``). Prints the table, the speed-up of cached over uncached for ``freeze_blocks >= 7``
both with the entry already built (as for every trial of a search but the first with that prefix)
and including its build, the probe's time as a share of a full fine-tune, and cached vs uncached
test accuracy.

    python benchmarks/trial_speed.py                   # all 1,797 images, about 5 min on one core
    python benchmarks/trial_speed.py --per-class 30 --epochs 1     # a quick look
    python benchmarks/trial_speed.py --augment         # crop + flip, 4 cached views per image

The cached probe makes at least 600 optimizer steps on pooled features (``PROBE_MIN_STEPS``), the
uncached probe one pass per epoch, so their accuracies differ by design.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from equal_time import provenance  # noqa: E402

OUT = BENCHMARKS / "results" / "trial_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=None, help="at most this many images per class")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--freeze", default="0,7,8,9", help="comma-separated freeze_blocks values")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--augment", action="store_true", help="hflip + crop_padding 4, 4 cached views")
    parser.add_argument(
        "--out", type=Path, default=OUT, help=f"results JSON that benchmarks/report.py renders (default {OUT})"
    )
    args = parser.parse_args()

    import torch

    from nbtl.backbones import load_pretrained_state_dict
    from nbtl.config import TrialConfig
    from nbtl.data import load_dataset, split_dataset
    from nbtl.features import PrefixStore
    from nbtl.train import train_trial
    from nbtl.transfer import build_transfer

    torch.set_num_threads(args.threads)
    dataset = load_dataset("digits", image_size=args.image_size, per_class=args.per_class, seed=0)
    splits = split_dataset(dataset, val_fraction=0.15, test_fraction=0.15, seed=0)
    weights = load_pretrained_state_dict("efficientnet_lite0")
    augmentation = {"hflip": True, "crop_padding": 4} if args.augment else None
    print(
        f"digits {args.image_size}px: train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)}; "
        f"efficientnet_lite0, {args.epochs} epochs, batch {args.batch_size}, {args.threads} thread(s), "
        f"augmentation {augmentation or 'none'}"
    )

    def trial(freeze: int, cached: bool) -> dict[str, float]:
        config = TrialConfig(
            backbone="efficientnet_lite0",
            freeze_blocks=freeze,
            lr=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=0,
        )
        store, build_s = PrefixStore(views=4), 0.0
        if cached and freeze:
            model = build_transfer(config, len(splits.train.classes), state_dict=weights).model
            started = time.perf_counter()
            store.get(model, splits, freeze, augmentation=augmentation, state_dict=weights)
            build_s = time.perf_counter() - started
        started = time.perf_counter()
        result = train_trial(
            config,
            splits,
            augmentation=augmentation,
            state_dict=weights,
            device="cpu",
            prefix_store=store,
            cache_prefix=cached,
        )
        train_s = time.perf_counter() - started
        return {
            "build_s": build_s,
            "train_s": train_s,
            "total_s": build_s + train_s,
            "val": result.final["best_val_accuracy"],
            "test": result.final["test_accuracy"],
            "prefix": result.final["prefix_blocks"],
        }

    rows: dict[tuple[int, bool], dict[str, float]] = {}
    print(
        f"\n{'freeze':>6}  {'mode':<8} {'prefix':>6} {'build_s':>8} {'train_s':>8} {'total_s':>8} "
        f"{'val_acc':>8} {'test_acc':>8}"
    )
    for freeze in [int(v) for v in args.freeze.split(",")]:
        for cached in (False,) if freeze == 0 else (False, True):
            row = rows[freeze, cached] = trial(freeze, cached)
            print(
                f"{freeze:>6}  {'cached' if cached else 'uncached':<8} {row['prefix']:>6} {row['build_s']:>8.1f} "
                f"{row['train_s']:>8.1f} {row['total_s']:>8.1f} {row['val']:>8.4f} {row['test']:>8.4f}",
                flush=True,
            )

    print()
    for freeze in sorted({f for f, _ in rows if f >= 7}):
        if (freeze, True) in rows:
            slow, fast = rows[freeze, False], rows[freeze, True]
            print(
                f"freeze_blocks={freeze}: uncached {slow['total_s']:.1f}s; cached {fast['train_s']:.1f}s with the "
                f"entry shared = {slow['total_s'] / fast['train_s']:.1f}x faster (target >= 5x), "
                f"{fast['total_s']:.1f}s building it too = {slow['total_s'] / fast['total_s']:.1f}x; "
                f"test accuracy cached {fast['test']:.4f} vs uncached {slow['test']:.4f}"
            )
    probe = max((f for f, cached in rows if cached), default=None)
    if (0, False) in rows and probe is not None:
        share = rows[probe, True]["total_s"] / rows[0, False]["total_s"]
        print(
            f"probe (freeze_blocks={probe}, cached): {rows[probe, True]['total_s']:.1f}s = {100 * share:.1f}% of a "
            f"full fine-tune's {rows[0, False]['total_s']:.1f}s (target < 5%)"
        )
    options = {k: getattr(args, k) for k in ("image_size", "per_class", "epochs", "batch_size", "lr", "threads")}
    document = {
        **provenance(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {**options, "augment": args.augment, "data": "digits", "backbone": "efficientnet_lite0"},
        "rows": [{"freeze": f, "mode": "cached" if c else "uncached", **row} for (f, c), row in rows.items()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
