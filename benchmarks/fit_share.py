"""How much of each shipped budget ``recommend``'s fit measures would take on each benchmark task, on this machine.

Issue 18 bounds the fit measures under a time budget (``nbtl.search.start.fit_images``: at most
``nbtl.search.cost.FIT_SHARE`` of it by the cost model ``fit_seconds``, on each backbone's forward pass timed by
``measure_speed``). ``benchmarks/inert_changes.yaml`` says that bound is never reached by the benchmark runs. This
script times the forward pass of the default space's backbones at each task's size, with nothing else running, and
writes ``results/fit_share.json``: the speeds, and per (task, budget) the predicted seconds, the share and their ratio.
``tests/test_inert_changes.py`` checks the ratios from that file (a timing taken in CI, beside other tests, would say
how busy CI was), so measure it again when the tasks, the budgets, the backbones or the cost model change:

    python benchmarks/fit_share.py            # ~1 minute on 2 CPUs
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
from equal_time import provenance  # noqa: E402
from tasks import HIGH_RES_TASKS, REPORTING_TASKS, TUNING_TASKS  # noqa: E402

RESULTS = BENCHMARKS / "results" / "fit_share.json"
#: Budgets of the shipped tables (README, benchmarks/README.md): 2 and 5 minutes on the reporting tasks, 15 minutes on
#: the 15-minute table's tasks (two at 224 px, and fmnist-t10k at 32).
BUDGETS = {120.0: REPORTING_TASKS, 300.0: REPORTING_TASKS, 900.0: HIGH_RES_TASKS + REPORTING_TASKS[:1]}


def task_classes(task) -> int:
    """The number of classes of a benchmark task."""
    from nbtl.data import load_dataset
    from nbtl.data.packaged import native_images

    if task.classes:
        return len(task.classes.split(","))
    if task.origin:
        return len(native_images(task.origin).classes)
    return len(load_dataset(task.builtin, image_size=8, per_class=1).classes)


def train_images(task) -> int:
    """At most how many training images a task's searches train on: its images per class times its classes (its
    validation images are among them)."""
    return int((task.per_class or task.pool) * task_classes(task))


def every_task():
    return TUNING_TASKS + REPORTING_TASKS + HIGH_RES_TASKS


def measure() -> dict:
    from nbtl.search import cost
    from nbtl.search.cost import FIT_SHARE, fit_seconds, measure_speed
    from nbtl.search.space import load_space

    backbones = load_space(REPO / "search_spaces" / "default.yaml").backbones()
    sizes = sorted({task.image_size for tasks in BUDGETS.values() for task in tasks})
    speeds = {f"{b}@{s}": measure_speed(b, s, 1).forward_s for b in backbones for s in sizes}
    rows = []
    for budget, tasks in BUDGETS.items():
        for task in tasks:
            n_train = train_images(task)
            predicted = fit_seconds([measure_speed(b, task.image_size, 1) for b in backbones], n_train)
            share = FIT_SHARE * budget
            rows.append(
                {"task": task.name, "budget_s": budget, "n_train": n_train, "predicted_s": round(predicted, 2),
                 "share_s": share, "ratio": round(predicted / share, 3)}
            )  # fmt: skip
    model = {name: getattr(cost, name) for name in ("FIT_SHARE", "FIT_FORWARD_FACTOR", "FIT_TABLE_S", "FIT_LOAD_S")}
    return {"backbones": backbones, "forward_s": speeds, "model": model, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON to write (default {RESULTS})")
    args = parser.parse_args(argv)
    document = {**provenance(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **measure()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    for row in sorted(document["rows"], key=lambda r: -r["ratio"])[:5]:
        print(f"{row['task']:<28} {row['budget_s']:>5.0f}s  fit ~{row['predicted_s']:.1f}s of {row['share_s']:.0f}s"
              f"  ({row['ratio']:.2f})")  # fmt: skip
    print(f"machine speed {document['cpu_images_per_s']} training images/s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
