"""Equal-time benchmark: the same wall-clock budget per (task, seed) for each way to transfer a network.

Methods (each a subprocess with its own MLflow store, results folder and feature cache, timed from outside):

  probe      linear probe: every block of efficientnet_lite0 transferred and frozen, a linear head trained
             to convergence (``nbtl train`` on a config written here)
  binary     ``nbtl search search_spaces/binary.yaml --time-budget B``: the conventional recipe, searched
  random     the non-binary space (default.yaml) sampled at random: no start points, no prior, no recommend
  recommend  ``nbtl recommend`` then ``nbtl train`` of its first config (timed together)
  default    ``nbtl search search_spaces/default.yaml --time-budget B``

and ablations of ``default``, each changing one thing in a copy of default.yaml: no-start (search.start_points: []),
no-cache (search.prefix_cache: false), batch64 (parameters.batch_size: 64), no-warmup
(parameters.head_warmup_epochs: 0), no-l2sp-blocks (parameters.l2sp_blocks removed); and additions:
with-prior (search.prior.enabled: true), cost-aware (the prior on, ranked by expected gain per second), val-25
(data.val_fraction: 0.25: more validation images to choose the best trial by), reevaluate (search.reevaluate:
{top: 3}: the 3 best trained again with another seed before the best is named) and resplit (the same on another
train / validation partition, search.reevaluate: {top: 3, resplit: true}). no-prior
(search.prior.enabled: false) was an ablation while default.yaml had the prior on; it now equals default and is
kept for the results measured then (not in ``--methods ablations``).

A search's chosen config is its best trial by the one ranking (nbtl.ranking, as its results.csv), an
``nbtl train``'s the run it tagged nbtl.chosen; their test accuracy and macro-F1 are the result. Tasks come from
benchmarks/tasks.py. Every finished run is appended at once to the budget's results file
(benchmarks/results/equal_time_<budget>.jsonl) with the commit it ran at; a run already there is skipped, so a
killed benchmark resumes. benchmarks/report.py renders the tables from those files.

    python benchmarks/equal_time.py --smoke-test                     # one tiny task, probe and a 2-trial default search: ~3 min on 2 CPUs
    python benchmarks/equal_time.py --budget 2m                      # reporting tasks, seeds 0-4, every method
    python benchmarks/equal_time.py --budget 2m,5m,15m --methods probe,binary,random,recommend,default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
import measured_at  # noqa: E402
from compare_spaces import prepare_space  # noqa: E402
from report import ABLATIONS, BASELINE, MAIN_METHODS, RETIRED, budget_label, render_methods  # noqa: E402
from selection_noise import selection_row  # noqa: E402
from tasks import (  # noqa: E402
    DEFAULT_ROOT,
    HIGH_RES_TASKS,
    REPORTING_TASKS,
    SMOKE_TASK,
    TUNING_TASKS,
    Task,
    check_disjoint,
)

SPACES = {"binary": REPO / "search_spaces" / "binary.yaml", "default": REPO / "search_spaces" / "default.yaml"}
METHODS = (*MAIN_METHODS, *ABLATIONS)
SEARCHES = {"binary", "random", "default", *ABLATIONS}
PROBE_BACKBONE, PROBE_EPOCHS = "efficientnet_lite0", 2  # the probe is fitted once; its epochs only repeat its scores
# probe (an nbtl train run, read by its nbtl.chosen tag) and default (a search, read by the one ranking)
# A smoke search ends after its 2 start points, within a 5-minute ceiling: at a fixed 60 s, then 90 s, a loaded CI
# machine (two test processes, 27 training images/s) started two trials and saw no epoch before the end (51eabf1,
# e4c3125); a trial count ends it as soon as a fast machine is done, the ceiling only bounds a slow one
SMOKE = {"budget": 300.0, "trials": 2, "epochs": 2, "probe_epochs": 2, "methods": ["probe", "default"]}
DATA_ROOT = DEFAULT_ROOT  # tasks.py's: ~/.cache/nbtl/tasks, or $NBTL_TASKS_DIR
NAN = float("nan")


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 900, 90s, 15m or 1.5h, got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def provenance() -> dict:
    """The commit the benchmark runs at, whether tracked files differ from it (``measured_at``), and the CPUs."""
    sha, dirty = measured_at.commit()
    return {"commit": sha, "dirty": dirty, "cpus": os.cpu_count(), "cpu_images_per_s": machine_speed()}


def machine_speed(repeats: int = 5) -> float:
    """Training images/s of a fixed workload on this machine: forward and backward of efficientnet_lite0 on a
    batch of 32 random 64 px images, every CPU's thread, the best of ``repeats`` steps after one warm-up.

    Equal-time rows are wall-clock results: measured on a faster machine a method runs more trials in the same
    budget. Rows of one (task, seed) block are measured together, so their paired differences hold; this figure
    says how fast the machine of each row was, so that blocks from different machines can be told apart.
    """
    import torch

    from nbtl.backbones import create_backbone

    torch.manual_seed(0)
    model = create_backbone("efficientnet_lite0", pretrained=False)
    images = torch.randn(32, 3, 64, 64)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        model.zero_grad()
        model(images).sum().backward()
        times.append(time.perf_counter() - started)
    return round(len(images) / min(times[1:]), 1)


def task_facts(task: Task, data: str, seed: int) -> tuple[int, int]:
    """(classes, training images) of ``task`` under ``seed``: checks the data is there before anything runs."""
    from nbtl.data import load_dataset, split_dataset

    dataset = load_dataset(data, image_size=8, per_class=task.per_class, seed=seed, classes=task.classes)
    return len(dataset.classes), len(split_dataset(dataset, seed=seed).train)


# ---------------------------------------------------------------------------------------------- results file
def done_keys(path: Path) -> set[tuple]:
    """(task, seed, method, budget_s) of every run already in the results file ``path``."""
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that run runs again
            keys.add((row["task"], int(row["seed"]), row["method"], float(row["budget_s"])))
    return keys


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- running methods
def run_logged(command: list[str], log, env: dict, timeout: float) -> int:
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    # Its own process group, so that a run past the hard limit, or one this script is interrupted in, is stopped
    # with its Ray workers.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        return process.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        stop_group(process, signal.SIGTERM)
        log.write(f"\n[equal_time] stopped after {timeout:.0f}s (the budget plus grace)\n")
        return 124
    except BaseException:  # Ctrl-C (or a kill) of this script: the run gets nbtl's own Ctrl-C, then is killed
        stop_group(process, signal.SIGINT)
        raise


def stop_group(process: subprocess.Popen, first: signal.Signals, grace: float = 30.0) -> None:
    """``first`` to the process group ``process`` leads, then SIGKILL to what is left of it after ``grace`` s."""
    try:
        os.killpg(process.pid, first)
        process.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):  # the leader, or workers that outlived it
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_method(method: str, task: Task, data: str, seed: int, budget: float, args, folder: Path) -> dict:
    """Run one method on one (task, seed) in ``folder``; return its row (metrics, wall time, curve)."""
    shutil.rmtree(folder, ignore_errors=True)  # a killed run's leftovers
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
    name = f"{method}-{task.name}"  # the search's or training's name (ensemble_gain.py looks searches up by it)
    hard_limit = budget + max(120.0, 0.25 * budget)  # a search may finish its last epoch after the budget
    row = {"task": task.name, "role": task.role, "method": method, "seed": seed, "budget_s": budget, "exit": 0}
    row.update({"trials": 0, "at_chance": 0})
    started_wall, started = time.time(), time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        if method in ("probe", "recommend"):
            config = folder / f"{method}.yaml"
            if method == "probe":
                write_probe(config, task, data, seed, args)
            else:
                row["exit"] = run_logged(
                    nbtl + ["recommend", data, *common, "--out", str(config)], log, env, hard_limit
                )
            if row["exit"] == 0:
                remaining = hard_limit - (time.perf_counter() - started)
                train = ["train", str(config), "--data", data, *common, "--tracking-uri", uri, "--name", name]
                if method == "recommend" and args.epochs:  # the search trials' epochs, as the searches get
                    train += ["--epochs", str(args.epochs)]
                row["exit"] = run_logged(nbtl + train, log, env, remaining)
            row["wall_s"] = time.perf_counter() - started
            row.update(read_train_run(uri, row["wall_s"]))
        else:
            space = prepare_method_space(method, args, folder)
            command = nbtl + ["search", str(space), "--data", data, *common, "--time-budget", f"{budget:g}s"]
            command += ["--name", name, "--tracking-uri", uri, "--storage-path", str(folder / "results")]
            command += ["--trials", str(args.trials)] if args.trials else []
            row["exit"] = run_logged(command + (["--no-recommend"] if method == "random" else []), log, env, hard_limit)
            row["wall_s"] = time.perf_counter() - started
            row.update(read_search(folder / "results", uri, started_wall, args.n_classes[task.name]))
    if row["exit"] != 0:
        tail = (folder / "log.txt").read_text().splitlines()[-12:]
        print(f"    {method} exited {row['exit']}; last lines of {folder / 'log.txt'}:\n      " + "\n      ".join(tail))
    return row


def write_probe(path: Path, task: Task, data: str, seed: int, args) -> None:
    """The linear probe as an ``nbtl recommend`` file, so ``nbtl train`` reads its data settings too: the probe
    start point of every search (nbtl.search.start.probe_config: fitted by L-BFGS, its L2 strength
    cross-validated), on ``PROBE_BACKBONE``."""
    from nbtl.heuristics.recipes import probe_config
    from nbtl.search.space import auto_batch_size

    config = {
        **probe_config(PROBE_BACKBONE),
        "epochs": args.probe_epochs,
        "batch_size": auto_batch_size(args.n_train[task.name, seed]),
        "seed": seed,
    }
    settings = {"spec": data, "image_size": task.image_size, "per_class": task.per_class, "classes": task.classes}
    document = {
        "format": "nbtl-recommendation",
        "version": 1,
        "data": {**settings, "split_seed": seed},
        "configs": [{"source": "linear probe (benchmarks/equal_time.py)", "config": config, "reasons": {}}],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def method_space(method: str, document: dict) -> dict:
    """default.yaml's ``document`` changed as ``method`` changes it (random and the ablations), in place."""
    search, parameters = document.setdefault("search", {}), document.setdefault("parameters", {})
    if method == "random":
        search.pop("points_to_evaluate", None)
        prior = {**(search.get("prior") or {}), "enabled": False}
        search.update({"sampler": {"type": "random"}, "start_points": [], "prior": prior})
    elif method == "no-start":
        search.pop("points_to_evaluate", None)
        search["start_points"] = []
    elif method == "no-prior":  # default.yaml's prior was on until the tuning-task ablation; now the same as default
        search["prior"] = {**(search.get("prior") or {}), "enabled": False}
    elif method == "with-prior":
        search["prior"] = {**(search.get("prior") or {}), "enabled": True}
    elif method == "no-cache":
        search["prefix_cache"] = False
    elif method == "batch64":
        parameters["batch_size"] = 64
    elif method == "no-warmup":
        parameters["head_warmup_epochs"] = 0
    elif method == "no-l2sp-blocks":
        parameters.pop("l2sp_blocks", None)
    elif method == "cost-aware":
        search["prior"] = {**(search.get("prior") or {}), "enabled": True, "cost_aware": True}
    elif method == "val-25":  # more validation images to choose by, fewer to train on
        document.setdefault("data", {})["val_fraction"] = 0.25
    elif method == "reevaluate":  # the 3 best trained again with another seed before the best is named
        search["reevaluate"] = {"top": 3}
    elif method == "resplit":  # ... and on another train / validation partition: new validation images
        search["reevaluate"] = {"top": 3, "resplit": True}
    document["name"] = method
    return document


def prepare_method_space(method: str, args, folder: Path) -> Path:
    """binary / default: the space as it is (epochs fixed in a copy under --epochs); random and the ablations:
    a copy of default.yaml in ``folder`` with their one change."""
    source = SPACES["binary" if method == "binary" else "default"]
    space, document = prepare_space(source, args.epochs, folder)
    if method in ("binary", "default"):
        return space
    copy = folder / f"{method}.yaml"
    copy.write_text(
        f"# {source} for the {method} method (written by benchmarks/equal_time.py)\n"
        + yaml.safe_dump(method_space(method, document), sort_keys=False)
    )
    return copy


# ---------------------------------------------------------------------------------------------- reading outcomes
def read_train_run(uri: str, wall_s: float) -> dict:
    """Test metrics of the run ``nbtl train`` chose (tagged nbtl.chosen); its curve is one point, the result
    at the time the method gave it."""
    from mlflow import MlflowClient

    from nbtl.tracking import chosen_training_runs

    runs = chosen_training_runs(MlflowClient(tracking_uri=uri))
    if not runs:
        return {"test_accuracy": NAN, "test_macro_f1": NAN, "curve": []}
    run = runs[0]
    metrics = run.data.metrics
    outcome = {
        "test_accuracy": metrics.get("test_accuracy", NAN),
        "test_macro_f1": metrics.get("test_macro_f1", NAN),
        "best_val_accuracy": metrics.get("best_val_accuracy", NAN),
        "chosen_run": run.info.run_name,
        "trials": 1,
    }
    outcome["curve"] = (
        [(wall_s, outcome["test_accuracy"])] if outcome["test_accuracy"] == outcome["test_accuracy"] else []
    )
    return outcome


def read_search(storage: Path, uri: str, started_wall: float, n_classes: int) -> dict:
    """Chosen trial's test metrics, trial counts and the best-so-far curve from ``results.csv`` under ``storage``."""
    from nbtl.ranking import METRIC, best_trial

    tables = sorted(storage.glob("*/results.csv"))
    if not tables or tables[-1].stat().st_size < 2:
        return {"test_accuracy": NAN, "test_macro_f1": NAN, "curve": []}
    table = pd.read_csv(tables[-1])
    outcome = {"trials": len(table), "failed": int((table["status"] == "FAILED").sum())}
    scored = table[METRIC].dropna()
    outcome["at_chance"] = int((scored <= 1.0 / n_classes + 0.05).sum())
    outcome["scored_trials"] = len(scored)
    chosen = best_trial(table)
    if chosen is not None:
        outcome.update(
            {
                "test_accuracy": float(chosen["test_accuracy"]),
                "test_macro_f1": float(chosen["test_macro_f1"]),
                "best_val_accuracy": float(chosen[METRIC]),
                "chosen_trial": chosen["trial_id"],
                # how noisy the choice was: validation images, trials tied at the top and their test range, the
                # probe's scores in the same search (benchmarks/selection_noise.py)
                "selection": selection_row(table),
                # every trial's validation and test scores, so other ways to choose can be measured from this file
                # (benchmarks/selection_rules.py)
                "trial_rows": trial_rows(table),
            }
        )
    offset = search_start_offset(tables[-1].parent, uri, started_wall)
    curve = []
    if "finished_at_s" in table:
        done = table[table["finished_at_s"].notna()]
        for end in sorted(done["finished_at_s"].unique()):
            best = best_trial(done[done["finished_at_s"] <= end])
            if best is not None:
                curve.append((float(end) + offset, float(best["test_accuracy"])))
    outcome["curve"] = curve
    return outcome


#: The columns of a search's results table kept in a result row (``trial_rows``).
TRIAL_COLUMNS = (
    "trial_id",
    "source",
    "status",
    "epoch",
    "best_epoch",
    "best_val_accuracy",
    "best_val_loss",
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "test_macro_f1",
    "backbone",
    "head",
    "transfer_blocks",
    "freeze_blocks",
)


def trial_rows(table: pd.DataFrame) -> list[dict]:
    """The trials of a results table as plain records (:data:`TRIAL_COLUMNS`; missing values as None)."""
    kept = table[[c for c in TRIAL_COLUMNS if c in table]]
    return [
        {k: (None if isinstance(v, float) and v != v else v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in kept.to_dict("records")
    ]


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


# ---------------------------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
        epilog="example: python benchmarks/equal_time.py --smoke-test",
    )
    every = {t.name: t for t in TUNING_TASKS + REPORTING_TASKS + HIGH_RES_TASKS + [SMOKE_TASK]}
    p.add_argument(
        "--tasks",
        default="reporting",
        help="'reporting' (default), 'tuning', 'reporting-224' (icons and cards at 224 px), or task names, comma-separated:\n  "
        + "\n  ".join(f"{t.name} ({t.role})" for t in every.values()),
    )
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (split, search, training); default 0-4")
    p.add_argument(
        "--methods",
        default=",".join(MAIN_METHODS),
        help=f"comma-separated, of {', '.join(MAIN_METHODS)} (default all of these), or 'ablations', or of\n"
        f"{', '.join(ABLATIONS)}: ablations run with a default of their own, measured in the same\n"
        "sitting, into results/ablations_<budget>.jsonl",
    )
    p.add_argument(
        "--budget",
        default="2m",
        help="wall-clock budget per method, task and seed, or a comma-separated list: 120, 90s, 2m, 1.5h (default 2m)",
    )
    p.add_argument("--epochs", type=int, help="epochs per search trial (default: the spaces' own)")
    p.add_argument("--trials", type=int, help="end each search after this many trials (default: as many as fit)")
    p.add_argument(
        "--probe-epochs", type=int, default=PROBE_EPOCHS, help=f"epochs of the linear probe (default {PROBE_EPOCHS})"
    )
    p.add_argument(
        "--results",
        type=Path,
        help="results file (JSONL, appended to; its runs are skipped); with several budgets put {budget} in it "
        "(default benchmarks/results/equal_time_{budget}.jsonl)",
    )
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help=f"where tasks on files live (default {DATA_ROOT})")
    p.add_argument("--work-dir", type=Path, help="working folder: a log and MLflow store per run (default: temporary)")
    p.add_argument("--keep", action="store_true", help="keep the working folder (logs, MLflow stores, results)")
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help=f"{SMOKE_TASK.name}, seed 0, {', '.join(SMOKE['methods'])}, {SMOKE['trials']} trials within {SMOKE['budget']:g}s, "
        f"{SMOKE['epochs']}-epoch trials; results in the working folder unless --results",
    )
    args = p.parse_args(argv)
    try:
        args.budgets = [parse_duration(b) for b in str(args.budget).split(",") if b.strip()]
    except argparse.ArgumentTypeError as error:
        p.error(f"--budget: {error}")
    if args.smoke_test:
        args.tasks, args.seeds, args.budgets = [SMOKE_TASK], [0], [SMOKE["budget"]]
        args.epochs, args.probe_epochs = args.epochs or SMOKE["epochs"], SMOKE["probe_epochs"]
        args.trials = args.trials or SMOKE["trials"]
        if args.methods == p.get_default("methods"):
            args.methods = ",".join(SMOKE["methods"])
    else:
        groups = {"reporting": REPORTING_TASKS, "tuning": TUNING_TASKS, "reporting-224": HIGH_RES_TASKS}
        names = [n.strip() for n in args.tasks.split(",") if n.strip()]
        unknown = [n for n in names if n not in every and n not in groups]
        if unknown or not names:
            p.error(
                f"--tasks: unknown {', '.join(unknown) or 'empty list'}; use reporting, tuning or: {', '.join(every)}"
            )
        args.tasks = list(dict.fromkeys(t for n in names for t in groups.get(n, [every.get(n)])))
        if not args.tasks:
            p.error(f"--tasks {','.join(names)}: benchmarks/tasks.py lists no such task yet")
        try:
            args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
        if not args.seeds:
            p.error("--seeds: give at least one seed")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    current = [m for m in ABLATIONS if m not in RETIRED]
    args.methods = list(dict.fromkeys(m for n in names for m in (current if n == "ablations" else [n])))
    if not args.methods or set(args.methods) - set(METHODS):
        p.error(f"--methods: choose from {', '.join(METHODS)} or ablations, got {','.join(args.methods)}")
    args.ablations = bool(set(args.methods) & set(ABLATIONS))
    if args.ablations:
        others = [m for m in args.methods if m not in ABLATIONS and m != BASELINE]
        if others:
            p.error(
                f"--methods: run the ablations apart from {', '.join(others)}: their results file holds the "
                f"ablations and a {BASELINE} of their own (--methods ablations)"
            )
        # each ablation is paired with a default measured in the same sitting, on the same machine and commit
        args.methods = [BASELINE, *(m for m in args.methods if m != BASELINE)]
    if args.results and len(args.budgets) > 1 and "{budget}" not in str(args.results):
        p.error(f"--results {args.results}: with {len(args.budgets)} budgets it must contain {{budget}}")
    for flag in ("epochs", "probe_epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    return args


def results_path(args, budget: float, workdir: Path) -> Path:
    label = budget_label(budget)
    if args.results:
        return Path(str(args.results).replace("{budget}", label))
    name = f"{'ablations' if args.ablations else 'equal_time'}_{label}.jsonl"
    return workdir / name if args.smoke_test else BENCHMARKS / "results" / name


def check_tasks(args, root: Path) -> str | None:
    """Why the chosen reporting tasks cannot be reported on (they share images with a tuning task), or None."""
    reporting = [t for t in args.tasks if t.role == "reporting"]
    if not reporting:
        return None
    try:
        lines = check_disjoint(TUNING_TASKS, reporting, root, args.seeds)
    except NotImplementedError:
        return "benchmarks/tasks.py's check_disjoint is not implemented yet: wait for it before a reporting run"
    if lines:
        shown = "\n  ".join(lines[:10]) + (f"\n  … {len(lines) - 10} more" if len(lines) > 10 else "")
        return f"the reporting tasks share images with tuning tasks ({len(lines)} found):\n  {shown}"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    # `kill PID` ends this script as Ctrl-C does: the run in progress is stopped with its Ray workers (run_logged)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    root = args.data_root.expanduser()
    problem = None if args.smoke_test else check_tasks(args, root)
    if problem:
        print(f"equal_time: refusing to report: {problem}", file=sys.stderr)
        return 2
    workdir = args.work_dir or Path(tempfile.mkdtemp(prefix="nbtl-equal-time-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = provenance()
    data = {task.name: task.data(root) for task in args.tasks}
    args.n_classes, args.n_train = {}, {}
    failed = False
    for budget in args.budgets:
        path = results_path(args, budget, workdir)
        done = done_keys(path)
        todo = [(s, t, m) for s in args.seeds for t in args.tasks for m in args.methods]
        todo = [(s, t, m) for s, t, m in todo if (t.name, s, m, budget) not in done]
        print(
            f"equal_time: budget {budget:g}s, {len(args.tasks)} task(s) x {len(args.seeds)} seed(s) x "
            f"{len(args.methods)} method(s): {len(todo)} run(s) to do, the others already in {path}; "
            f"working folder {workdir}",
            flush=True,
        )
        # Seeds outermost, every method of a (task, seed) together: a run cut short leaves whole paired blocks.
        for seed, task, method in todo:
            if (task.name, seed) not in args.n_train:
                args.n_classes[task.name], args.n_train[task.name, seed] = task_facts(task, data[task.name], seed)
            folder = workdir / budget_label(budget) / task.name / f"seed{seed}" / method
            row = run_method(method, task, data[task.name], seed, budget, args, folder)
            row.update({**stamp, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            append_row(path, row)
            failed |= row["exit"] != 0
            print(
                f"  {task.name} seed {seed} {method:<14} test acc {_pct(row.get('test_accuracy'))}  macro-F1 "
                f"{_pct(row.get('test_macro_f1'))}  wall {row.get('wall_s', NAN):.0f}s  trials {row.get('trials', 0)}",
                flush=True,
            )
        summary(path)
    if args.keep or failed:
        print(f"kept {workdir} (a log.txt and an MLflow store per run)")
    elif not args.work_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def summary(path: Path) -> None:
    from report import read_rows

    frame = read_rows(path) if path.exists() else pd.DataFrame()
    if frame.empty:
        return
    budget = float(frame["budget_s"].max())
    print("\n" + render_methods(frame, MAIN_METHODS, budget, f"(from {path})"))
    if frame["method"].isin(ABLATIONS).any():
        print(render_methods(frame, ("default", *ABLATIONS), budget, "(ablations)"))
    if path.parent == BENCHMARKS / "results":
        print("README tables: python benchmarks/report.py --write")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
