"""How long LogME takes on features of a realistic size: 10,000 samples x 1,280 features, 10 classes.

1,280 is the width of EfficientNet-Lite0's last block; 10,000 images is a mid-sized target dataset.
Prints the median wall time of a few repeats (after one warm-up), and the score.

    python benchmarks/logme_speed.py                 # 10000 x 1280, 10 classes, 3 repeats
    python benchmarks/logme_speed.py --samples 2000 --features 512 --repeats 5
    python benchmarks/logme_speed.py --threads 1     # cap BLAS threads (threadpoolctl)

On a machine whose CPUs other jobs share, multithreaded BLAS can be several times slower than one
thread (its threads wait for each other); compare ``--threads 1`` with the default there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=1_280)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="cap BLAS threads to this many (default: the BLAS library's own choice)",
    )
    args = parser.parse_args()

    from nbtl.fit.measures import logme

    rng = np.random.default_rng(args.seed)
    labels = rng.integers(0, args.classes, args.samples)
    # Random features with a little class signal, float32 as block_features stores them.
    features = (
        rng.normal(size=(args.samples, args.features)) + 0.1 * rng.normal(size=(args.classes, args.features))[labels]
    ).astype(np.float32)

    if args.threads is None:
        limit = contextlib.nullcontext()
    else:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(args.threads)
    times, score = [], None
    with limit:
        logme(features[: min(500, args.samples)], labels[: min(500, args.samples)])  # warm-up: BLAS init
        for _ in range(args.repeats):
            start = time.perf_counter()
            score = logme(features, labels)
            times.append(time.perf_counter() - start)
    threads = "BLAS default threads" if args.threads is None else f"{args.threads} BLAS thread(s)"
    print(
        f"LogME on {args.samples} x {args.features} features, {args.classes} classes: "
        f"median {statistics.median(times):.2f} s over {args.repeats} runs "
        f"(min {min(times):.2f} s, max {max(times):.2f} s); score {score:.4f}; "
        f"{threads}, {os.cpu_count()} CPUs visible"
    )


if __name__ == "__main__":
    main()
