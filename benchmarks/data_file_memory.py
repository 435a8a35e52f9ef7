"""The data file's build, in memory and streamed: seconds and peak memory of decoding Fashion-MNIST's 60,000
training images into a search's data file (``nbtl.data.arrayfile.ensure_splits``).

Each build runs in a fresh process (its peak RSS is its own): ``stream`` is what a search does (a large dataset
decoded into a mapped file, copied into the data file a chunk at a time, pages dropped as it goes); ``memory`` the
earlier path (every image decoded into memory, split, then written). Writes one JSON line per build to
``results/data_file_memory.jsonl`` with the commit.

    python benchmarks/data_file_memory.py                         # 112 px, both ways: ~1 minute
    python benchmarks/data_file_memory.py --sizes 224 --modes stream   # 8.4 GB decoded: ~3 minutes, 17 GB of disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
import measured_at  # noqa: E402

OUT = BENCHMARKS / "results" / "data_file_memory.jsonl"

CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from nbtl.data.arrayfile import decode_splits, ensure_splits
from nbtl.data.settings import DataSettings
mode, size, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
settings = DataSettings(image_size=size)
started = time.perf_counter()
build = None if mode == "stream" else (lambda: decode_splits("fashion-mnist", settings))
folder, _ = ensure_splits("fashion-mnist", settings, root, build)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": round(seconds, 1), "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                  "file_gb": round((folder / "images.npy").stat().st_size / 2**30, 2)}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="112", help="image sizes, comma-separated (default 112)")
    parser.add_argument("--modes", default="stream,memory", help="stream, memory or both (default both)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    sha, dirty = measured_at.commit()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for size in [int(s) for s in args.sizes.split(",")]:
        for mode in args.modes.split(","):
            root = Path(tempfile.mkdtemp(prefix="nbtl-data-file-"))
            try:
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, mode, str(size), str(root), str(REPO)],
                    capture_output=True, text=True, env={**os.environ, "NBTL_DECODE_WORKERS": "1"},
                )  # fmt: skip
            finally:
                shutil.rmtree(root, ignore_errors=True)
            if done.returncode != 0:
                print(f"{mode} at {size}px failed: {done.stderr.strip().splitlines()[-1:]}")
                return 1
            row = {
                "mode": mode,
                "image_size": size,
                "images": 60000,
                **json.loads(done.stdout.strip().splitlines()[-1]),
                "commit": sha,
                "dirty": dirty,
                "cpus": os.cpu_count(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                f"{mode:6s} {size}px: {row['seconds']:6.1f}s, peak RSS {row['peak_rss_gb']:.2f} GB, "
                f"data file {row['file_gb']:.2f} GB"
            )
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
