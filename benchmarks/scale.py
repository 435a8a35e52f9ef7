"""The scale run: a search on many images at a real resolution, and what it costs the machine.

Runs ``nbtl search SPACE --data DATA --image-size S --time-budget B`` (default: Fashion-MNIST's 60,000 training
images at 224 px, ``default.yaml``, 30 minutes) as a subprocess with its own embedded Ray, MLflow store and storage
path, samples the memory of its whole process tree (driver, GCS, raylet, Ray's agents, trial workers), and prints
and appends to ``results/scale.jsonl`` (one row per run, with the commit it ran at and the machine's speed):

  decode_s            seconds the search's data line reports for decoding (0 when it reused a data file)
  first_trial_s       seconds from the start until the first trial finished (None: none did)
  peak_pss_mb         peak of the summed PSS of the process tree (shared pages split among the processes)
  peak_pss_anon_mb    peak of the summed anonymous PSS: what the processes allocated (not the page cache's pages)
  pss_at_peak_mb      the peak PSS's parts: anon, file (mapped files: libraries, the data file; the kernel drops
                      and re-reads them as memory is needed) and shmem (Ray's object store)
  peak_rss_mb         the same with RSS (shared pages counted once per process: an over-estimate)
  disk_mb             what the storage path holds on disk at the end (data file, prefix store, Ray Tune's results;
                      allocated blocks, from 2026-12-07's second run on: before, apparent sizes)
  wall_s, budget_kept wall time of the whole command, and whether it ended within the budget plus 60 s
  trials, finished    trials that started (rows of results.csv) and that finished their epochs
  exit                the command's exit status

    python benchmarks/scale.py                                   # 60,000 images at 224 px, 30 minutes (~35 min)
    python benchmarks/scale.py --per-class 300 --image-size 112 --budget 5m --label quick   # a quick look
    python benchmarks/scale.py --smoke-test                      # digits at 32 px for 60 s: checks it all runs

Issue 18's target: the 60,000-image run at 224 px finishes its 30-minute budget on a 24 GB machine with a peak PSS
of at most 6 GB and at least one finished trial.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
from compare_spaces import ProcessTreeMonitor  # noqa: E402
from equal_time import parse_duration, provenance  # noqa: E402

MB = 2**20
DECODED = re.compile(r"decoded once in ([0-9.]+)s")
FINISHED = re.compile(r"trial \S+ finished \[")
RESULTS = BENCHMARKS / "results" / "scale.jsonl"
SMOKE = {"data": "digits", "image_size": 32, "budget": "60s", "space": "tiny", "per_class": 20}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist", help="the dataset source (default fashion-mnist: 60,000 images)")
    p.add_argument("--image-size", type=int, default=224, help="pixels (default 224)")
    p.add_argument("--budget", default="30m", help="the search's time budget (default 30m)")
    p.add_argument("--space", default="default", help="search space: a shipped name or a YAML file (default default)")
    p.add_argument("--per-class", type=int, help="images per class (default: all)")
    p.add_argument("--label", default="", help="a name for this run's row, e.g. the path it measures")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSONL to append to")
    p.add_argument("--work-dir", type=Path, help="storage path, store and log (default: a temporary folder, removed)")
    p.add_argument("--sample-interval", type=float, default=1.0, help="seconds between memory samples (default 1)")
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="use the user's nbtl cache (~/.cache/nbtl: fit features of earlier runs); default: a new one",
    )
    p.add_argument("--smoke-test", action="store_true", help="digits, 32 px, tiny space, 60 s; results in the work dir")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.data, args.image_size, args.budget = SMOKE["data"], SMOKE["image_size"], SMOKE["budget"]
        args.space, args.per_class, args.label = SMOKE["space"], SMOKE["per_class"], args.label or "smoke"
    try:
        args.budget_s = parse_duration(args.budget)
    except argparse.ArgumentTypeError as error:
        p.error(f"--budget: {error}")
    return args


def disk_used(folder: Path) -> int:
    """Bytes the files under ``folder`` occupy on disk (allocated blocks: a memory-mapped file is created at its full
    size and filled as it goes, so its apparent size says more than it holds)."""
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def run(args, work: Path) -> dict:
    storage, log_path = work / "results", work / "search.log"
    command = [
        sys.executable, "-m", "nbtl", "search", args.space, "--data", args.data, "--image-size", str(args.image_size),
        "--time-budget", f"{args.budget_s:g}s", "--name", "scale", "--storage-path", str(storage),
        "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--keep-weights", "0",
    ]  # fmt: skip
    if args.per_class:
        command += ["--per-class", str(args.per_class)]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    if not args.warm_cache:  # a first search: recommend's fit computes its features (the cache of an earlier run would
        env["NBTL_CACHE_DIR"] = str(work / "cache")  # serve them: the 2026-12-07 06:50 run's fit took 19 s, not 275)
    seen: dict[str, float] = {}
    started = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        with ProcessTreeMonitor(process.pid, args.sample_interval) as monitor:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if (match := DECODED.search(line)) and "decode_s" not in seen:
                    seen["decode_s"] = float(match[1])
                if FINISHED.search(line) and "first_trial_s" not in seen:
                    seen["first_trial_s"] = round(time.perf_counter() - started, 1)
            code = process.wait()
        monitor.sample()
    wall = time.perf_counter() - started
    tables = list(storage.glob("scale*/results.csv"))
    table = pd.read_csv(tables[0]) if tables else pd.DataFrame(columns=["status"])
    return {
        "label": args.label,
        "data": args.data,
        "per_class": args.per_class,
        "image_size": args.image_size,
        "space": args.space,
        "budget_s": args.budget_s,
        "decode_s": seen.get("decode_s", 0.0),
        "first_trial_s": seen.get("first_trial_s"),
        "peak_pss_mb": round(monitor.peak_pss / MB),
        "peak_pss_anon_mb": round(monitor.peak_pss_anon / MB),
        "pss_at_peak_mb": {kind: round(value / MB) for kind, value in monitor.pss_at_peak.items()},
        "peak_rss_mb": round(monitor.peak_rss / MB),
        "peak_at_s": monitor.peak_at_s,
        "top_at_peak_mb": [
            {
                "name": p["name"],
                **{k: round(p[k] / MB) for k in ("pss", "anon", "file")},
                **({"mappings": [(m["what"], round(m["pss"] / MB)) for m in p["mappings"]]} if "mappings" in p else {}),
            }
            for p in monitor.top_at_peak
        ],
        "processes": monitor.peak_processes,
        "disk_mb": round(disk_used(storage) / MB) if storage.exists() else 0,
        "wall_s": round(wall, 1),
        "budget_kept": wall <= args.budget_s + 60,
        "trials": len(table),
        "finished": int((table["status"] == "FINISHED").sum()) if len(table) else 0,
        "exit": code,
        "log": str(log_path),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="nbtl-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = provenance()
    print(f"scale: {args.data} at {args.image_size}px, {args.space}, budget {args.budget_s:g}s, in {work}", flush=True)
    row = {**run(args, work), **stamp, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results = work / "scale.jsonl" if args.smoke_test and args.results == RESULTS else args.results
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    for key in ("decode_s", "first_trial_s", "peak_pss_mb", "peak_pss_anon_mb", "pss_at_peak_mb", "peak_rss_mb",
                "peak_at_s", "top_at_peak_mb", "disk_mb", "wall_s", "budget_kept", "trials", "finished", "exit"):  # fmt: skip
        print(f"  {key:<16} {row[key]}")
    print(f"appended to {results}")
    if not args.work_dir and row["exit"] == 0:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if row["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
