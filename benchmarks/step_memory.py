"""What the cap on a trial's activations (``nbtl.feeds.STEP_MEMORY_MB``) costs and saves on CPUs: one trial, every
block trained, at each cap, in a process of its own; prints its peak RSS and its images/s.

Trains EfficientNet-Lite0 and Lite1 on scikit-learn's digits at 224 px (one epoch, one CPU thread, batch 32 by
default) through ``nbtl.train.train_trial`` with ``step_memory_mb`` none (whole batches), the default and a smaller
cap, each in a fresh Python process (its peak RSS is ``ru_maxrss``). Images/s is the training split over the
epoch's time (its steps and its validation pass). Results: ``results/step_memory.json``.

    python benchmarks/step_memory.py                       # about 4 minutes on one core
    python benchmarks/step_memory.py --image-size 112 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from equal_time import provenance  # noqa: E402

OUT = BENCHMARKS / "results" / "step_memory.json"

ONE = """
import json, logging, resource, sys, torch
from nbtl.backbones import load_pretrained_state_dict
from nbtl.config import TrialConfig
from nbtl.data import load_dataset, split_dataset
from nbtl.train import train_trial
backbone, size, per_class, batch, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(1)
splits = split_dataset(load_dataset("digits", image_size=size, per_class=per_class, seed=0), 0.2, 0.2, seed=0)
config = TrialConfig(backbone=backbone, freeze_blocks=0, lr=0.01, epochs=1, batch_size=batch, seed=0)
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("nbtl.train").addHandler(Keep())
logging.getLogger("nbtl.train").setLevel(logging.INFO)
kwargs = {} if cap == "default" else {"step_memory_mb": None if cap == "none" else float(cap)}
result = train_trial(config, splits, state_dict=load_pretrained_state_dict(backbone), device=torch.device("cpu"),
                     **kwargs)
epoch = result.history[-1]
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "train": len(splits.train),
                  "epoch_s": epoch["epoch_time_s"], "images_per_s": len(splits.train) / epoch["epoch_time_s"],
                  "train_loss": epoch["train_loss"], "micro": [line for line in lines if "micro-batches" in line]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=16, help="digits images per class (default 16: 96 train)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--caps", default="none,default,256", help="MiB, 'none' (whole batches) or 'default'")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    from nbtl.feeds import STEP_MEMORY_MB

    rows = []
    print(f"{'backbone':20} {'cap':>8} {'peak RSS MB':>12} {'images/s':>9} {'train loss':>10}  micro-batches")
    for backbone in args.backbones.split(","):
        for cap in args.caps.split(","):
            command = [sys.executable, "-c", ONE, backbone, str(args.image_size), str(args.per_class),
                       str(args.batch_size), cap]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{backbone} cap {cap} failed:\n{done.stderr[-3000:]}")
            row = {"backbone": backbone, "cap": cap, **json.loads(done.stdout.strip().splitlines()[-1])}
            if cap == "default":
                row["cap_mb"] = STEP_MEMORY_MB["cpu"]
            rows.append(row)
            micro = row["micro"][0].split(":")[0] if row["micro"] else "whole batches"
            print(
                f"{backbone:20} {cap:>8} {row['peak_rss_mb']:12.0f} {row['images_per_s']:9.2f} {row['train_loss']:10.3f}"
                f"  {micro}",
                flush=True,
            )
    document = {
        **provenance(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
