"""What glibc's malloc arenas cost a trial on CPUs: one fine-tuning trial at 224 px run in a thread, as Ray Tune runs a
trial in its worker, with ``MALLOC_ARENA_MAX`` unset (glibc's default: an arena per thread that allocates) and set to 1
(what nbtl's trial workers start with: ``nbtl.search.cluster.WORKER_ENV``); prints its peak anonymous memory and its
images/s.

Each setting runs in a fresh Python process (glibc reads the variable when the process starts): EfficientNet-Lite1,
every block trained, batch 64 (micro-batches under ``nbtl.feeds.STEP_MEMORY_MB``), one CPU thread, on scikit-learn's
digits at 224 px (a tuning source: this is a systems measurement). Peak anonymous memory is sampled from
``/proc/self/smaps_rollup`` every 0.2 s while the trial runs (Linux only); the trial is run twice in the same process,
each in a new thread, as a reused Ray worker runs its next trial, and the memory left between them is printed too.
Results: ``results/trial_memory.json``.

    python benchmarks/trial_memory.py                       # about 6 minutes on one core
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from equal_time import provenance  # noqa: E402

OUT = BENCHMARKS / "results" / "trial_memory.json"

ONE = """
import json, sys, threading, time, torch
from nbtl.backbones import load_pretrained_state_dict
from nbtl.config import TrialConfig
from nbtl.data import load_dataset, split_dataset
from nbtl.train import train_trial
backbone, size, per_class, batch, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

def anonymous_mb():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024

torch.set_num_threads(1)
splits = split_dataset(load_dataset("digits", image_size=size, per_class=per_class, seed=0), 0.2, 0.2, seed=0)
config = TrialConfig(backbone=backbone, freeze_blocks=0, lr=0.01, l2sp_alpha=0.01, epochs=1, batch_size=batch, seed=0)
weights = load_pretrained_state_dict(backbone)
peak, done = [0.0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anonymous_mb())
        done.wait(0.2)

rows, start = [], anonymous_mb()
for run in range(runs):
    result = []
    peak[0], done = 0.0, threading.Event()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    trial = threading.Thread(target=lambda: result.append(train_trial(config, splits, state_dict=weights,
                                                                      device=torch.device("cpu"))))
    trial.start()
    trial.join()
    done.set()
    sampler.join()
    epoch = result[0].history[-1]
    rows.append({"peak_anon_mb": round(peak[0]), "after_anon_mb": round(anonymous_mb()),
                 "images_per_s": round(len(splits.train) / epoch["epoch_time_s"], 2)})
print(json.dumps({"start_anon_mb": round(start), "train": len(splits.train), "runs": rows}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite1")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--per-class", type=int, default=100, help="digits images per class (default 100: 600 train)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2, help="trials one after another in the same process")
    parser.add_argument("--arena-max", default="default,1", help="MALLOC_ARENA_MAX values; 'default': unset")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    rows = []
    print(f"{'MALLOC_ARENA_MAX':>16} {'run':>4} {'peak anon MB':>13} {'after MB':>9} {'images/s':>9}")
    for arenas in args.arena_max.split(","):
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        if arenas != "default":
            env["MALLOC_ARENA_MAX"] = arenas
        command = [sys.executable, "-c", ONE, args.backbone, str(args.image_size), str(args.per_class),
                   str(args.batch_size), str(args.runs)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"MALLOC_ARENA_MAX={arenas} failed:\n{done.stderr[-3000:]}")
        row = {"arena_max": arenas, **json.loads(done.stdout.strip().splitlines()[-1])}
        rows.append(row)
        for number, run in enumerate(row["runs"], 1):
            print(
                f"{arenas:>16} {number:>4} {run['peak_anon_mb']:13} {run['after_anon_mb']:9} {run['images_per_s']:9.2f}"
            )
    record = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "per_class": args.per_class,
        "rows": rows,
        **provenance(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
