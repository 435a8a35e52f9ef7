"""A trial's images/s against a bare PyTorch loop of the same model and batch: what nbtl's trial costs on top.

One epoch of a fully fine-tuned EfficientNet-Lite0 (``freeze_blocks`` 0, so nothing is cached) on scikit-learn's
digits, timed two ways on the same splits, threads and batch:

  bare    a plain loop: the network nbtl builds for the config (``build_transfer``, which normalises uint8 images
          itself), SGD with momentum, shuffled batches, cross-entropy, backward, step; then one forward pass over
          the validation and test images
  trial   ``nbtl.train.train_trial`` for the same config: what a search's trial runs (its augmentation off,
          its per-epoch validation, test scoring and metrics), its ``epoch_time_s``

Prints images/s of each (training images per second of the epoch) and their ratio, and writes
``results/trial_throughput.json`` with the commit it ran at. Issue 18's target on CPU: the trial at least 0.9 x the
bare loop.

    python benchmarks/trial_throughput.py                    # 64 px, all 1,797 digits, 2 epochs each: ~2 min
    python benchmarks/trial_throughput.py --image-size 128 --threads 2
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

OUT = BENCHMARKS / "results" / "trial_throughput.json"


def bare_epoch(model, splits, batch_size: int, lr: float, seed: int) -> float:
    """Seconds of one plain PyTorch epoch (train, then forward over val and test)."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    images, labels = splits.train.images, splits.train.labels
    started = time.perf_counter()
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = order[start : start + batch_size]
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])  # the model normalises uint8
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        for part in (splits.val, splits.test):
            for start in range(0, len(part), 256):
                model(part.images[start : start + 256])
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each; the first is a warm-up (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a trial on that many CPUs sets")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import torch

    from nbtl.backbones import load_pretrained_state_dict
    from nbtl.config import TrialConfig
    from nbtl.data import load_dataset, split_dataset
    from nbtl.train import train_trial
    from nbtl.transfer import build_transfer

    torch.set_num_threads(args.threads)
    splits = split_dataset(load_dataset("digits", image_size=args.image_size), seed=0)
    weights = load_pretrained_state_dict("efficientnet_lite0")
    config = TrialConfig.from_dict(
        {
            "backbone": "efficientnet_lite0",
            "freeze_blocks": 0,
            "lr": 0.03,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": 0,
        }  # fmt: skip
    )
    model = build_transfer(config, len(splits.train.classes), state_dict=weights).model
    bare = [bare_epoch(model, splits, args.batch_size, config.lr, epoch) for epoch in range(args.epochs)]
    result = train_trial(config, splits, state_dict=weights, device="cpu", cache_prefix=False)
    trial = [m["epoch_time_s"] for m in result.history]
    n = len(splits.train)
    rows = {
        "bare_images_per_s": round(n / min(bare[1:] or bare), 1),
        "trial_images_per_s": round(n / min(trial[1:] or trial), 1),
    }
    rows["ratio"] = round(rows["trial_images_per_s"] / rows["bare_images_per_s"], 3)
    document = {
        "rows": rows,
        "epochs": {"bare_s": [round(t, 2) for t in bare], "trial_s": [round(t, 2) for t in trial]},
        "options": {
            **vars(args),
            "out": str(args.out),
            "n_train": n,
            "n_val": len(splits.val),
            "n_test": len(splits.test),
        },
        **provenance(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"{n} training images at {args.image_size}px, batch {args.batch_size}, {args.threads} thread(s):")
    print(f"  bare loop  {rows['bare_images_per_s']:8.1f} images/s  (epochs {document['epochs']['bare_s']} s)")
    print(f"  nbtl trial {rows['trial_images_per_s']:8.1f} images/s  (epochs {document['epochs']['trial_s']} s)")
    print(f"  trial / bare = {rows['ratio']:.3f} (target >= 0.9); written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
