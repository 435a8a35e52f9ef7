"""How noisy is the choice of the best trial? Read the searches an equal-time run left in its working folder.

A search names its best trial by validation accuracy (nbtl.ranking). On a small validation split that is a coarse
and noisy score: with 20 validation images one image is 5 points, several trials tie at the top, and the tie is
broken by validation loss. This script reads every search store under an ``equal_time.py`` working folder
(``<work-dir>/<task>/seed<k>/<method>/mlflow.db``: the ``results.csv`` its parent run logged, one row per trial with
its validation and test scores) and writes, per search:

- ``n_val``: validation images (the smallest count that makes every validation accuracy a whole number of images);
- ``tied``: trials at the best validation accuracy, ``near``: within one validation image of it;
- the test accuracy of the trial the ranking chose, and the lowest / highest test accuracy among the tied;
- the probe trial's validation and test accuracy in the same search, and the best test accuracy of any trial (what
  an oracle would have chosen; never available to a search);
- the Spearman correlation of validation and test accuracy over the search's scored trials.

Test accuracies are read here only to measure the selection; no search saw them.

    python benchmarks/selection_noise.py --work-dir /tmp/eq_work/2m --results benchmarks/results/selection_noise_2m.jsonl

Rows already in ``--results`` (same task, seed, method) are skipped. Run it before the working folder is removed
(equal_time.py removes a run's folder when it runs that cell again).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

import pandas as pd

log = logging.getLogger("selection_noise")


def validation_images(accuracies: list[float], most: int = 2000) -> int | None:
    """The smallest image count ``n`` for which every accuracy is ``k / n``; None if none up to ``most``."""
    values = [a for a in accuracies if math.isfinite(a)]
    for n in range(1, most + 1):
        if all(abs(a * n - round(a * n)) < 1e-6 for a in values):
            return n
    return None


def read_table(store: Path) -> pd.DataFrame | None:
    """The results table the search logged on its parent run (None when the search logged none)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`nbtl.role` = 'search'")
        for run in runs:
            with tempfile.TemporaryDirectory() as folder:
                try:
                    path = client.download_artifacts(run.info.run_id, "results.csv", folder)
                except Exception:  # noqa: BLE001 -- a search that ended before writing its table
                    continue
                return pd.read_csv(path)
    return None


def selection_row(table: pd.DataFrame) -> dict:
    from nbtl.ranking import rank_trials

    scored = table[table["test_accuracy"].notna() & table["best_val_accuracy"].notna()]
    if scored.empty:
        return {"scored_trials": 0}
    ranked = rank_trials(scored.copy())
    n_val = validation_images(scored["best_val_accuracy"].tolist())
    best = float(ranked["best_val_accuracy"].iloc[0])
    tied = scored[scored["best_val_accuracy"] >= best - 1e-9]
    step = 1.0 / n_val if n_val else 0.0
    near = scored[scored["best_val_accuracy"] >= best - step - 1e-9]
    probe = scored[scored["source"].eq("probe")] if "source" in scored else scored.iloc[:0]
    rho = scored["best_val_accuracy"].corr(scored["test_accuracy"], method="spearman") if len(scored) > 2 else NAN
    return {
        "scored_trials": int(len(scored)),
        "n_val": n_val,
        "best_val_accuracy": best,
        "tied": int(len(tied)),
        "near": int(len(near)),
        "chosen_test_accuracy": float(ranked["test_accuracy"].iloc[0]),
        "chosen_source": str(ranked["source"].iloc[0]) if "source" in ranked else "",
        "tied_test_min": float(tied["test_accuracy"].min()),
        "tied_test_max": float(tied["test_accuracy"].max()),
        "near_test_mean": float(near["test_accuracy"].mean()),
        "probe_val_accuracy": float(probe["best_val_accuracy"].iloc[0]) if len(probe) else NAN,
        "probe_test_accuracy": float(probe["test_accuracy"].iloc[0]) if len(probe) else NAN,
        "oracle_test_accuracy": float(scored["test_accuracy"].max()),
        "spearman_val_test": round(float(rho), 3) if math.isfinite(rho) else None,
    }


NAN = float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="an equal_time.py working folder for one budget")
    parser.add_argument("--results", type=Path, required=True, help="JSONL file, appended to; its rows are skipped")
    parser.add_argument("--method", default="default", help="the method whose searches to read (default: default)")
    parser.add_argument("--commit", default="", help="the commit the searches ran at (written into each row)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    done = set()
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done.add((row["task"], row["seed"], row["method"]))
    rows = []
    for store in sorted(args.work_dir.glob(f"*/seed*/{args.method}/mlflow.db")):
        task, seed = store.parents[2].name, int(store.parents[1].name.removeprefix("seed"))
        if (task, seed, args.method) in done:
            continue
        table = read_table(store)
        if table is None:
            print(f"{task} seed {seed}: no results table (the search did not finish)", file=sys.stderr)
            continue
        row = {"task": task, "seed": seed, "method": args.method, "commit": args.commit, **selection_row(table)}
        rows.append(row)
        with args.results.open("a") as out:
            out.write(json.dumps(row) + "\n")
    every = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()] if rows or done else []
    every = [r for r in every if r.get("scored_trials")]
    if not every:
        print("no searches read")
        return 0
    print(f"{'task':26s} seed n_val tied near  chosen  tied test range  probe(val/test)  oracle  rho")
    for r in sorted(every, key=lambda r: (r["task"], r["seed"])):
        print(
            f"{r['task']:26s} {r['seed']:4d} {r['n_val'] or 0:5d} {r['tied']:4d} {r['near']:4d}  "
            f"{r['chosen_test_accuracy']:6.3f}  {r['tied_test_min']:.3f}..{r['tied_test_max']:.3f}     "
            f"{r['probe_val_accuracy']:.3f}/{r['probe_test_accuracy']:.3f}    {r['oracle_test_accuracy']:.3f}  "
            f"{r['spearman_val_test']}"
        )
    frame = pd.DataFrame(every)
    print(
        f"{len(frame)} searches: mean {frame['tied'].mean():.1f} trials tied at the best validation accuracy "
        f"(mean {frame['n_val'].mean():.0f} validation images); test range among the tied "
        f"{(frame['tied_test_max'] - frame['tied_test_min']).mean() * 100:.1f} points on average; chosen - probe "
        f"{(frame['chosen_test_accuracy'] - frame['probe_test_accuracy']).mean() * 100:+.1f} points; oracle - chosen "
        f"{(frame['oracle_test_accuracy'] - frame['chosen_test_accuracy']).mean() * 100:+.1f} points"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
