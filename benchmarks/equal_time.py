"""Equal-time benchmark: the same wall-clock budget per (task, seed) for five ways to transfer a network.

Methods (each a subprocess with its own MLflow store, results folder and feature cache, timed from outside):

  probe      linear probe: every block of efficientnet_lite0 transferred and frozen, a linear head trained
             to convergence (``nbtl train`` on a config written here)
  binary     ``nbtl search search_spaces/binary.yaml --time-budget B``: the conventional recipe, searched
  random     the non-binary space (default.yaml) sampled at random: no start points, no prior, no recommend
  recommend  ``nbtl recommend`` then ``nbtl train`` of its first config (timed together)
  default    ``nbtl search search_spaces/default.yaml --time-budget B``

A search's chosen config is its trial with the best validation accuracy (ties: lower val_loss); its test
accuracy and macro-F1 are reported. Tasks come in two disjoint lists: TUNING_TASKS, used to tune rules,
spaces and priors, and REPORTING_TASKS, used only here to report on.

    python benchmarks/equal_time.py --smoke-test                  # tiny: one task, one seed, ~5 min on 2 CPUs
    python benchmarks/equal_time.py --tasks reporting --budget 15m --out equal_time.json --plot best_so_far.png

The full run takes methods x tasks x seeds x budget (probe and recommend end early): about 10 h on 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
from build_meta_dataset import TASKS as META_TASKS  # noqa: E402  (the meta-dataset's tasks are tuning tasks)
from compare_spaces import prepare_space  # noqa: E402

SPACES = {"binary": REPO / "search_spaces" / "binary.yaml", "default": REPO / "search_spaces" / "default.yaml"}
METHODS = ("probe", "binary", "random", "recommend", "default")
PROBE_BACKBONE, PROBE_EPOCHS, PROBE_HEAD_LR = "efficientnet_lite0", 30, 0.1
NAN = float("nan")


@dataclass(frozen=True)
class Task:
    name: str
    data: str
    per_class: int | None
    classes: str | None
    image_size: int

    def flags(self) -> list[str]:
        flags = ["--image-size", str(self.image_size)]
        flags += ["--per-class", str(self.per_class)] if self.per_class else []
        return flags + (["--classes", self.classes] if self.classes else [])


def _meta_task(name: str, data: str, flags: list[str]) -> Task:
    value = dict(zip(flags[::2], flags[1::2]))
    return Task(
        name,
        data,
        int(value["--per-class"]) if "--per-class" in value else None,
        value.get("--classes"),
        int(value.get("--image-size", 64)),
    )


#: Used to tune rules, spaces and priors: the meta-dataset's tasks (benchmarks/build_meta_dataset.py), digits,
#: Fashion-MNIST subsets and colour photos (scikit-image's).
TUNING_TASKS = [_meta_task(*task) for task in META_TASKS]
#: Never used for tuning: other digit / Fashion-MNIST class subsets and sizes, and colour sources of other kinds.
REPORTING_TASKS = [
    Task("digits-odd-pc50-40", "digits", 50, "1,3,5,7,9", 40),
    Task("fmnist-mixed-pc80-40", "fashion-mnist", 80, "1,3,6,7,8", 40),
    Task("emoji-pc80-48", "emoji", 80, None, 48),
    Task("icons-pc70-48", "icons", 70, None, 48),
]
SMOKE_TASK = Task("smoke-photo-patches", "photo-patches", 12, "0,1,2,3", 32)
SMOKE = {"budget": 40.0, "epochs": 2, "probe_epochs": 3}
assert not {t.name for t in TUNING_TASKS} & {t.name for t in REPORTING_TASKS}


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 900, 90s, 15m or 1.5h, got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def task_facts(task: Task, seed: int) -> tuple[int, int]:
    """(classes, training images) of ``task`` under ``seed``: checks the data is there before anything runs."""
    from nbtl.data import load_dataset, split_dataset

    dataset = load_dataset(task.data, image_size=8, per_class=task.per_class, seed=seed, classes=task.classes)
    return len(dataset.classes), len(split_dataset(dataset, seed=seed).train)


# ---------------------------------------------------------------------------------------------- running methods
def run_logged(command: list[str], log, env: dict, timeout: float) -> int:
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    # Its own process group, so that a run past the hard limit is stopped with its Ray workers.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        return process.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.write(f"\n[equal_time] stopped after {timeout:.0f}s (the budget plus grace)\n")
        return 124


def run_method(method: str, task: Task, seed: int, args, folder: Path) -> dict:
    """Run one method on one (task, seed) in ``folder``; return its row (metrics, wall time, curve)."""
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        "NBTL_CACHE_DIR": str(folder / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    nbtl = [sys.executable, "-m", "nbtl"]
    common = ["--seed", str(seed), *task.flags()]
    hard_limit = args.budget + max(120.0, 0.25 * args.budget)  # a search may finish its last epoch after the budget
    row = {"task": task.name, "method": method, "seed": seed, "exit": 0, "trials": 0, "at_chance": 0}
    started_wall, started = time.time(), time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        if method in ("probe", "recommend"):
            config = folder / f"{method}.yaml"
            if method == "probe":
                write_probe(config, task, seed, args)
            else:
                row["exit"] = run_logged(
                    nbtl + ["recommend", task.data, *common, "--out", str(config)], log, env, hard_limit
                )
            if row["exit"] == 0:
                remaining = hard_limit - (time.perf_counter() - started)
                row["exit"] = run_logged(
                    nbtl
                    + [
                        "train",
                        str(config),
                        "--data",
                        task.data,
                        *common,
                        "--tracking-uri",
                        uri,
                        "--name",
                        f"{method}-{task.name}",
                    ],
                    log,
                    env,
                    remaining,
                )
            row["wall_s"] = time.perf_counter() - started
            row.update(read_train_run(uri, started_wall))
        else:
            space = prepare_method_space(method, args, folder)
            command = nbtl + [
                "search",
                str(space),
                "--data",
                task.data,
                *common,
                "--time-budget",
                f"{args.budget:g}s",
                "--name",
                f"{method}-{task.name}",
                "--tracking-uri",
                uri,
                "--storage-path",
                str(folder / "results"),
            ]
            row["exit"] = run_logged(command + (["--no-recommend"] if method == "random" else []), log, env, hard_limit)
            row["wall_s"] = time.perf_counter() - started
            row.update(read_search(folder / "results", uri, started_wall, args.n_classes[task.name]))
    if row["exit"] != 0:
        tail = (folder / "log.txt").read_text().splitlines()[-12:]
        print(f"    {method} exited {row['exit']}; last lines of {folder / 'log.txt'}:\n      " + "\n      ".join(tail))
    return row


def write_probe(path: Path, task: Task, seed: int, args) -> None:
    """The linear probe as an ``nbtl recommend`` file, so ``nbtl train`` reads its data settings too."""
    from nbtl.backbones import get_spec
    from nbtl.search.space import auto_batch_size

    blocks = get_spec(PROBE_BACKBONE).num_blocks
    config = {
        "backbone": PROBE_BACKBONE,
        "pretrained": True,
        "transfer_blocks": blocks,
        "freeze_blocks": blocks,
        "head": "linear",
        "head_dropout": 0.0,
        "lr": PROBE_HEAD_LR,
        "head_lr": PROBE_HEAD_LR,
        "lr_decay": 1.0,
        "l2sp_alpha": 0.0,
        "l2_beta": 0.0,
        "l2_head": 1.0e-4,
        "head_warmup_epochs": 0,
        "optimizer": "sgd",
        "momentum": 0.9,
        "epochs": args.probe_epochs,
        "batch_size": auto_batch_size(args.n_train[task.name, seed]),
        "seed": seed,
    }
    document = {
        "format": "nbtl-recommendation",
        "version": 1,
        "data": {
            "spec": task.data,
            "image_size": task.image_size,
            "per_class": task.per_class,
            "classes": task.classes,
            "seed": seed,
        },
        "configs": [{"source": "linear probe (benchmarks/equal_time.py)", "config": config, "reasons": {}}],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def prepare_method_space(method: str, args, folder: Path) -> Path:
    """binary / default: the space as it is (epochs fixed in a copy under --epochs); random: default.yaml with
    a random sampler and no start points, points_to_evaluate or learned prior."""
    source = SPACES["binary" if method == "binary" else "default"]
    space, document = prepare_space(source, args.epochs, folder)
    if method != "random":
        return space
    search = document.setdefault("search", {})
    search.pop("points_to_evaluate", None)
    search.update({"sampler": {"type": "random"}, "start_points": [], "prior": {"enabled": False}})
    document["name"] = "random"
    copy = folder / "random.yaml"
    copy.write_text(
        f"# {source} sampled at random (written by benchmarks/equal_time.py)\n"
        + yaml.safe_dump(document, sort_keys=False)
    )
    return copy


# ---------------------------------------------------------------------------------------------- reading outcomes
def read_train_run(uri: str, started_wall: float) -> dict:
    """Test metrics of the one ``nbtl train`` run in the store, and its test accuracy (of the best-val epoch
    so far) against seconds since the method started."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
    if not runs:
        return {"test_accuracy": NAN, "test_macro_f1": NAN, "curve": []}
    run = runs[0]
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    curve = [(m.timestamp / 1000.0 - started_wall, m.value) for m in sorted(history, key=lambda m: m.timestamp)]
    metrics = run.data.metrics
    return {
        "test_accuracy": metrics.get("test_accuracy", NAN),
        "test_macro_f1": metrics.get("test_macro_f1", NAN),
        "best_val_accuracy": metrics.get("best_val_accuracy", NAN),
        "trials": 1,
        "curve": curve,
    }


def choose(trials: pd.DataFrame) -> pd.Series | None:
    """The trial with the best validation accuracy, ties broken by the lower validation loss."""
    ok = trials[(trials["status"] != "FAILED") & trials["best_val_accuracy"].notna()]
    if ok.empty:
        return None
    return ok.sort_values(["best_val_accuracy", "val_loss"], ascending=[False, True], na_position="last").iloc[0]


def read_search(storage: Path, uri: str, started_wall: float, n_classes: int) -> dict:
    """Chosen trial's test metrics, trial counts and the best-so-far curve from ``results.csv`` under ``storage``."""
    tables = sorted(storage.glob("*/results.csv"))
    if not tables or tables[-1].stat().st_size < 2:
        return {"test_accuracy": NAN, "test_macro_f1": NAN, "curve": []}
    table = pd.read_csv(tables[-1])
    outcome = {"trials": len(table), "failed": int((table["status"] == "FAILED").sum())}
    scored = table["best_val_accuracy"].dropna()
    outcome["at_chance"] = int((scored <= 1.0 / n_classes + 0.05).sum())
    outcome["scored_trials"] = len(scored)
    chosen = choose(table)
    if chosen is not None:
        outcome.update(
            {
                "test_accuracy": float(chosen["test_accuracy"]),
                "test_macro_f1": float(chosen["test_macro_f1"]),
                "best_val_accuracy": float(chosen["best_val_accuracy"]),
                "chosen_trial": chosen["trial_id"],
            }
        )
    offset = search_start_offset(tables[-1].parent, uri, started_wall)
    curve = []
    if "finished_at_s" in table:
        done = table[table["finished_at_s"].notna()].sort_values("finished_at_s")
        for end in done["finished_at_s"].unique():
            best = choose(done[done["finished_at_s"] <= end])
            if best is not None:
                curve.append((float(end) + offset, float(best["test_accuracy"])))
    outcome["curve"] = curve
    return outcome


def search_start_offset(experiment: Path, uri: str, started_wall: float) -> float:
    """Seconds from the subprocess's start to the search's start (its MLflow parent run); 0 if unknown."""
    try:
        from mlflow import MlflowClient

        state = json.loads((experiment / "nbtl_search.json").read_text())
        if "started_wall" in state:  # the zero of finished_at_s (searches from before it: the parent run's start)
            return max(0.0, float(state["started_wall"]) - started_wall)
        run = MlflowClient(tracking_uri=uri).get_run(state["parent_run_id"])
        return max(0.0, run.info.start_time / 1000.0 - started_wall)
    except Exception:  # noqa: BLE001  (the curve then starts at the search's own clock)
        return 0.0


def time_to_within(curve: list, final: float, points: float = 0.01) -> float:
    """First time the best-so-far curve is within ``points`` of ``final``."""
    return next((t for t, value in curve if value >= final - points), NAN)


# ---------------------------------------------------------------------------------------------- summarising
def summarise(rows: list[dict]) -> pd.DataFrame:
    """One line per (task, method): mean and sd over seeds."""
    frame = pd.DataFrame(rows)
    frame["to_within_1pt_s"] = [time_to_within(r["curve"], r["test_accuracy"]) if r["curve"] else NAN for r in rows]
    lines = []
    for (task, method), group in frame.groupby(["task", "method"], sort=False):
        line = {"task": task, "method": method, "seeds": len(group)}
        for column in ("test_accuracy", "test_macro_f1", "wall_s", "to_within_1pt_s"):
            values = group[column].astype(float)
            line[column], line[column + "_sd"] = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
        line["trials"], line["at_chance"] = int(group["trials"].sum()), int(group["at_chance"].sum())
        line["scored_trials"] = int(group.get("scored_trials", group["trials"]).fillna(group["trials"]).sum())
        line["failed_runs"] = int((group["exit"] != 0).sum())
        lines.append(line)
    return pd.DataFrame(lines)


def targets(summary: pd.DataFrame, reporting: set[str]) -> list[str]:
    """The issue's targets, each as a PASS / FAIL / info / n/a line (tasks where a method has no result are left out)."""
    acc = summary.pivot(index="task", columns="method", values="test_accuracy") * 100
    wall = summary.pivot(index="task", columns="method", values="wall_s")
    out = []
    if {"default", "probe", "binary"} <= set(acc.columns):
        both = acc[["default", "probe", "binary"]].dropna()
        rep = both.loc[[t for t in both.index if t in reporting]]
        if len(rep):
            margin = rep["default"].mean() - max(rep["probe"].mean(), rep["binary"].mean())
            out.append(
                f"{_verdict(margin >= 2)} default's mean test accuracy on the {len(rep)} reporting task(s) is "
                f"{margin:+.1f} points over max(probe, binary) (target >= +2)"
            )
        else:
            out.append("n/a  default vs max(probe, binary) + 2 points: no reporting task with all three results")
        worst = both["default"] - both[["probe", "binary"]].max(axis=1)
        if len(worst):
            out.append(
                f"{_verdict(worst.min() >= -1)} default is never more than 1 point below max(probe, binary) "
                f"on a task (worst {worst.min():+.1f} on {worst.idxmin()})"
            )
    searches = summary[summary["method"].isin(["default", "binary", "random"])]
    for method, group in searches.groupby("method"):
        scored, chance = group["scored_trials"].sum(), group["at_chance"].sum()
        if scored:
            out.append(
                f"{_verdict(chance * 12 <= scored) if method == 'default' else 'info'} {method}: {chance} of "
                f"{scored} trials at chance (target for default: at most 1 in 12)"
            )
    if {"default", "recommend"} <= set(acc.columns):
        gap = (acc["default"] - acc["recommend"]).dropna()
        share = (wall["recommend"] / wall["default"]).loc[gap.index]
        if len(gap):
            ok = bool(((gap <= 2) & (share <= 0.10)).all())
            out.append(
                f"{_verdict(ok)} recommend->train within 2 points of default in <= 10% of its time (worst gap "
                f"{gap.max():+.1f} points, largest time share {share.max():.0%})"
            )
    return out or ["n/a  no target can be checked with the methods and results at hand"]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def markdown(summary: pd.DataFrame, budget: float) -> str:
    head = (
        "| task | method | test accuracy | macro-F1 | wall time (s) | to within 1 pt (s) | trials at chance |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    shown = f"{budget / 60:g} min" if budget >= 60 else f"{budget:g} s"
    lines = [f"Budget {shown} per method, task and seed; mean ± sd over seeds.", "", head]
    for r in summary.itertuples():
        chance = f"{r.at_chance}/{r.scored_trials}" if r.method in ("binary", "random", "default") else "-"
        lines.append(
            f"| {r.task} | {r.method} | {_pm(100 * r.test_accuracy, 100 * r.test_accuracy_sd)} | "
            f"{_pm(100 * r.test_macro_f1, 100 * r.test_macro_f1_sd)} | {_pm(r.wall_s, r.wall_s_sd, 0)} | "
            f"{_pm(r.to_within_1pt_s, r.to_within_1pt_s_sd, 0)} | {chance} |"
        )
    return "\n".join(lines)


def _pm(mean: float, sd: float, digits: int = 1) -> str:
    return "n/a" if mean != mean else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def plot(rows: list[dict], path: Path, budget: float) -> None:
    """Best-so-far test accuracy of the chosen config against wall time: one panel per task, one line per
    method (the mean over seeds of each seed's step curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    columns = min(2, len(tasks))
    figure, axes = plt.subplots(
        math.ceil(len(tasks) / columns),
        columns,
        squeeze=False,
        figsize=(6 * columns, 4 * math.ceil(len(tasks) / columns)),
    )
    horizon = max([budget] + [t for r in rows for t, _ in r["curve"]])
    grid = np.linspace(0, horizon, 400)
    for axis, task in zip(axes.flat, tasks):
        for method in METHODS:
            curves = [r["curve"] for r in rows if r["task"] == task and r["method"] == method and r["curve"]]
            if not curves:
                continue
            steps = []
            for curve in curves:
                times, values = np.array([t for t, _ in curve]), np.array([v for _, v in curve])
                index = np.searchsorted(times, grid, side="right") - 1
                steps.append(np.where(index >= 0, values[np.clip(index, 0, None)], np.nan))
            with warnings.catch_warnings():  # before a seed's first trial ends its curve is empty (NaN)
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.array(steps), axis=0)
            axis.step(grid, 100 * mean, where="post", label=f"{method} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        axis.set(title=task, xlabel="wall time (s)", ylabel="test accuracy of chosen config (%)")
        axis.axvline(budget, color="grey", linestyle=":", linewidth=1)
        axis.set_xlim(0, horizon)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, loc="lower right")
    for axis in list(axes.flat)[len(tasks) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"written {path}")


# ---------------------------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
        epilog="example: python benchmarks/equal_time.py --smoke-test",
    )
    p.add_argument(
        "--tasks",
        default="reporting",
        help="'reporting' (default), 'tuning', 'all', or task names, comma-separated:\n  "
        + "\n  ".join(
            f"{t.name} ({'reporting' if t in REPORTING_TASKS else 'tuning'})" for t in REPORTING_TASKS + TUNING_TASKS
        ),
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (split, search and training); default 0,1,2")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument(
        "--budget",
        type=parse_duration,
        default=parse_duration("15m"),
        help="wall-clock budget per method, task and seed: 900, 90s, 15m, 1.5h (default 15m)",
    )
    p.add_argument("--epochs", type=int, help="epochs per search trial (default: the spaces' own)")
    p.add_argument(
        "--probe-epochs", type=int, default=PROBE_EPOCHS, help=f"epochs of the linear probe (default {PROBE_EPOCHS})"
    )
    p.add_argument("--out", type=Path, help="write every run and the summary to this JSON file")
    p.add_argument("--plot", type=Path, help="write the best-so-far figure to this PNG")
    p.add_argument("--keep", action="store_true", help="keep the working folder (logs, MLflow stores, results)")
    p.add_argument(
        "--summarise",
        nargs="+",
        type=Path,
        metavar="ROWS.jsonl",
        help="run nothing: report the runs saved in these files (OUT.rows.jsonl of earlier runs, e.g. one "
        "per seed), with --out / --plot as usual",
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help=f"{SMOKE_TASK.name}, seed 0, {SMOKE['budget']:g}s budget, {SMOKE['epochs']}-epoch trials: "
        "checks that everything runs end to end",
    )
    args = p.parse_args(argv)
    every = {t.name: t for t in TUNING_TASKS + REPORTING_TASKS + [SMOKE_TASK]}
    if args.smoke_test:
        args.tasks, args.seeds = [SMOKE_TASK], [0]
        args.budget, args.epochs, args.probe_epochs = (
            SMOKE["budget"],
            args.epochs or SMOKE["epochs"],
            SMOKE["probe_epochs"],
        )
    else:
        groups = {"reporting": REPORTING_TASKS, "tuning": TUNING_TASKS, "all": REPORTING_TASKS + TUNING_TASKS}
        names = [n.strip() for n in args.tasks.split(",") if n.strip()]
        unknown = [n for n in names if n not in every and n not in groups]
        if unknown or not names:
            p.error(
                f"--tasks: unknown {', '.join(unknown) or 'empty list'}; use reporting, tuning, all or: {', '.join(every)}"
            )
        args.tasks = list(dict.fromkeys(t for n in names for t in groups.get(n, [every.get(n)])))
        try:
            args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods or set(args.methods) - set(METHODS):
        p.error(f"--methods: choose from {', '.join(METHODS)}, got {args.methods}")
    if args.out and args.out.suffix != ".json":
        p.error(f"--out {args.out}: must end in .json")
    return args


def report(rows: list[dict], args, budget: float) -> None:
    """The summary table, the targets, and the JSON / plot files of ``rows``."""
    reporting = {t.name for t in REPORTING_TASKS}
    summary = summarise(rows)
    print("\n" + markdown(summary, budget) + "\n\nTargets:")
    for line in targets(summary, reporting):
        print("  " + line)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "budget_s": budget,
                    "seeds": sorted({r["seed"] for r in rows}),
                    "tasks": sorted({r["task"] for r in rows}),
                    "runs": rows,
                    "summary": summary.to_dict(orient="records"),
                },
                indent=1,
                default=str,
            )
        )
        print(f"written {args.out}")
    if args.plot:
        plot(rows, args.plot, budget)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarise:
        rows = [json.loads(line) for path in args.summarise for line in path.read_text().splitlines() if line.strip()]
        budgets = {float(r["budget_s"]) for r in rows if "budget_s" in r} or {args.budget}
        report(rows, args, max(budgets))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="nbtl-equal-time-"))
    args.n_classes, args.n_train = {}, {}
    for task in args.tasks:
        for seed in args.seeds:
            args.n_classes[task.name], args.n_train[task.name, seed] = task_facts(task, seed)
    reporting = {t.name for t in REPORTING_TASKS}
    print(
        f"equal_time: {len(args.tasks)} task(s) x {len(args.seeds)} seed(s) x {len(args.methods)} method(s), "
        f"{args.budget:g}s each; working folder {workdir}",
        flush=True,
    )
    rows = []
    # Seeds outermost: a run cut short still has every task at its first seeds.
    for seed in args.seeds:
        for task in args.tasks:
            kind = "reporting" if task.name in reporting else "tuning" if task in TUNING_TASKS else "smoke"
            print(
                f"\n== {task.name} ({kind}, seed {seed}): {task.data}, {args.n_classes[task.name]} classes, "
                f"{task.per_class} per class, {task.image_size}px",
                flush=True,
            )
            for method in args.methods:
                row = run_method(method, task, seed, args, workdir / task.name / f"seed{seed}" / method)
                rows.append(row)
                if args.out:  # every run as it ends, so a run cut short keeps what it measured
                    with open(f"{args.out}.rows.jsonl", "a") as handle:
                        handle.write(json.dumps(row, default=str) + "\n")
                print(
                    f"  seed {seed} {method:<9} test acc {_pct(row.get('test_accuracy'))}  macro-F1 "
                    f"{_pct(row.get('test_macro_f1'))}  wall {row.get('wall_s', float('nan')):.0f}s  "
                    f"trials {row.get('trials', 0)}  at chance {row.get('at_chance', 0)}",
                    flush=True,
                )
    report(rows, args, args.budget)
    failed = any(row["exit"] != 0 for row in rows)
    if args.keep or failed:
        print(f"kept {workdir} (a log.txt and an MLflow store per run)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
