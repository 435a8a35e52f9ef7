"""What ``nbtl ensemble`` gains: a time-budgeted ``default`` search per (task, seed), then the average of its
K best trials' probabilities, scored on the same test split against the best single trial (the search's
chosen one: best validation accuracy, ties to the lower validation loss).

The search is equal_time.py's ``default`` method (same tasks, same flags, its own MLflow store and feature
cache); the ensemble runs after it (``nbtl ensemble NAME --top K --no-register``), its wall time reported apart.

    python benchmarks/ensemble_gain.py --smoke-test                       # one small task, ~2 min
    python benchmarks/ensemble_gain.py --budget 2m --seeds 0,1 --out results/ensemble_2m.json
"""

from __future__ import annotations

import argparse
import json
import os
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
from equal_time import DATA_ROOT, SMOKE, parse_duration, provenance, run_method, task_facts  # noqa: E402
from tasks import REPORTING_TASKS, SMOKE_TASK, TUNING_TASKS  # noqa: E402

# a time-budgeted search of the smoke task (it needs 2 finished trials; a loaded machine finished none in 90 s)
SMOKE_BUDGET = 180.0


def ensemble(folder: Path, task, top: int) -> dict:
    """Run ``nbtl ensemble`` on the search in ``folder``; its metrics and wall time."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    kept = sum(
        len(client.search_runs([e.experiment_id], filter_string="tags.`nbtl.weights_kept` = 'true'"))
        for e in client.search_experiments()
    )
    if kept < 2:  # a short budget on a loaded machine may finish fewer than 2 trials
        print(f"    {kept} trial(s) kept weights: no ensemble", flush=True)
        return {"ensemble_exit": None, "kept": kept}
    top = min(top, kept)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    name = f"default-{task.name}"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nbtl", "ensemble", name, "--top", str(top), "--tracking-uri", uri, "--no-register"],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
    )
    row = {"ensemble_exit": done.returncode, "ensemble_wall_s": time.perf_counter() - started, "kept": kept, "top": top}
    (folder / "ensemble.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        print(f"    ensemble exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return row
    [run] = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], filter_string="tags.`nbtl.role` = 'ensemble'")
    ]
    metrics = run.data.metrics
    row.update(
        {
            "ensemble_test_accuracy": metrics["test_accuracy"],
            "ensemble_test_macro_f1": metrics["test_macro_f1"],
            "single_test_accuracy": metrics["best_single_test_accuracy"],
            "single_test_macro_f1": metrics["best_single_test_macro_f1"],
            "gain": metrics["test_accuracy_gain"],
        }
    )
    return row


def summarise(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([r for r in rows if r.get("ensemble_exit") == 0])
    if frame.empty:
        return frame
    table = frame.groupby("task").agg(
        seeds=("seed", "count"),
        top=("top", "mean"),
        single=("single_test_accuracy", "mean"),
        ensemble=("ensemble_test_accuracy", "mean"),
        gain=("gain", "mean"),
        gain_min=("gain", "min"),
        gain_max=("gain", "max"),
        ensemble_s=("ensemble_wall_s", "mean"),
    )
    table.loc["mean"] = table.mean(numeric_only=True)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="reporting", help="'reporting' (default), 'tuning', or task names")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--budget", type=parse_duration, default=parse_duration("2m"), help="search budget (default 2m)")
    p.add_argument("--top", type=int, default=3, help="trials averaged (default 3, what a search keeps)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the space's)")
    p.add_argument("--out", type=Path, help="write the rows and the summary to this JSON file")
    p.add_argument("--summarise", type=Path, help="run nothing: summarise the rows of an earlier --out")
    p.add_argument("--trials", type=int, help="end each search after this many trials (default: the space's)")
    p.add_argument("--smoke-test", action="store_true", help=f"{SMOKE_TASK.name}, seed 0, {SMOKE_BUDGET:g}s")
    args = p.parse_args(argv)
    if args.summarise:
        rows = json.loads(args.summarise.read_text())["runs"]
        print(summarise(rows).to_string(float_format=lambda v: f"{v:.3f}"))
        return 0
    every = {t.name: t for t in TUNING_TASKS + REPORTING_TASKS}
    if args.smoke_test:
        tasks, seeds, args.budget, args.epochs = [SMOKE_TASK], [0], SMOKE_BUDGET, args.epochs or SMOKE["epochs"]
    else:
        groups = {"reporting": REPORTING_TASKS, "tuning": TUNING_TASKS}
        tasks = [t for n in args.tasks.split(",") for t in groups.get(n.strip(), [every.get(n.strip())])]
        if None in tasks:
            p.error(f"--tasks: use reporting, tuning or: {', '.join(every)}")
        seeds = [int(s) for s in args.seeds.split(",")]
    args.probe_epochs = 1  # equal_time.run_method reads it; the probe method does not run here
    args.n_classes, args.n_train = {}, {}
    data = {task.name: task.data(DATA_ROOT.expanduser()) for task in tasks}
    for task in tasks:
        for seed in seeds:
            args.n_classes[task.name], args.n_train[task.name, seed] = task_facts(task, data[task.name], seed)
    workdir = Path(tempfile.mkdtemp(prefix="nbtl-ensemble-gain-"))
    print(f"ensemble_gain: {len(tasks)} task(s) x {len(seeds)} seed(s), {args.budget:g}s searches; {workdir}")
    stamp = {**provenance(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # as equal_time's rows
    rows = []
    for seed in seeds:
        for task in tasks:
            folder = workdir / f"{task.name}-s{seed}"
            row = run_method("default", task, data[task.name], seed, args.budget, args, folder)
            row.update(ensemble(folder, task, args.top))
            row["budget_s"] = args.budget
            rows.append(row)
            print(
                f"  {task.name} seed {seed}: search {row.get('trials', 0)} trials, chosen test "
                f"{row.get('test_accuracy', float('nan')):.3f}; best single {row.get('single_test_accuracy', float('nan')):.3f}"
                f" -> ensemble of {args.top} {row.get('ensemble_test_accuracy', float('nan')):.3f} "
                f"({row.get('ensemble_wall_s', 0):.0f}s)",
                flush=True,
            )
            if args.out:
                args.out.write_text(json.dumps({**stamp, "runs": rows}, indent=1, default=str))
    summary = summarise(rows)
    print("\n" + summary.to_string(float_format=lambda v: f"{v:.3f}"))
    if args.out:
        args.out.write_text(
            json.dumps(
                {**stamp, "runs": rows, "summary": summary.reset_index().to_dict("records")}, indent=1, default=str
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
