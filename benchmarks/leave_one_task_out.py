"""Does ``nbtl recommend`` carry over to a task it has not seen? Leave one task out.

For each task of the meta-dataset (``heuristics/meta_dataset.csv``, built by
``benchmarks/build_meta_dataset.py``): fit the learned recommender on the *other* tasks' trials,
recommend for this task (fit measures on its training split, rules, learned recommender), train the
recommended config with the search's epochs and split, and compare with that task's search:

    normalised regret = (best - recommended) / (best - worst)     (validation accuracy; 0 = as good as
                                                                  the search's best, 1 = as bad as its worst)

with the time each took (recommend + one training run vs the whole search). The rules alone (no
learned model) are scored the same way. Then the weighted Kendall tau (``scipy.stats.weightedtau``)
between each fit measure's ranking of the backbones and their fine-tuned accuracy (the best trial of
each backbone in the task's search), per task and averaged; and LogME's time on 10,000 x 1,280 features.

    python benchmarks/leave_one_task_out.py      # ~20 min on 2 CPUs; writes benchmarks/results/leave_one_task_out.json
    python benchmarks/leave_one_task_out.py --tasks "digits 32px seed=0"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread: the fit measures' cross-validation is faster so

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MEASURES = ["logme", "h_score", "knn_accuracy", "linear_probe_accuracy"]


def _none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def train(config: dict, task_row: dict, epochs: int, augmentation: dict | None) -> tuple[float, float, float]:
    """Train ``config`` on the task's split with the search's epochs and augmentation;
    (best val accuracy, its test accuracy, seconds)."""
    from nbtl.backbones import load_pretrained_state_dict
    from nbtl.config import TrialConfig
    from nbtl.data import load_dataset, split_dataset
    from nbtl.train import train_trial

    started = time.perf_counter()
    trial = TrialConfig.from_dict({**config, "epochs": epochs})
    dataset = load_dataset(
        task_row["data"],
        image_size=int(task_row["image_size"]),
        per_class=None if _none(task_row["per_class"]) is None else int(task_row["per_class"]),
        seed=int(task_row["split_seed"]),
        classes=_none(task_row["classes"]),
    )
    splits = split_dataset(dataset, seed=int(task_row["split_seed"]))
    result = train_trial(
        trial, splits, augmentation=augmentation, state_dict=load_pretrained_state_dict(trial.backbone)
    )
    return result.final["best_val_accuracy"], result.final["test_accuracy"], time.perf_counter() - started


def kendall(task, trials: pd.DataFrame) -> dict[str, float]:
    """Weighted Kendall tau of each measure's backbone ranking against fine-tuned accuracy."""
    from scipy.stats import weightedtau

    accuracy = trials.groupby("backbone")["best_val_accuracy"].max()
    backbones = [b for b in accuracy.index if b in task.backbones]
    if len(backbones) < 3:
        return {}
    table = task.tables.set_index("backbone")
    scores = {}
    for measure in MEASURES:
        best = [float(table.loc[b, measure].max()) for b in backbones]
        last = [float(table.loc[b, measure].iloc[-1]) for b in backbones]
        scores[f"{measure}_best_block"] = best
        scores[f"{measure}_last_block"] = last
    for measure in ("leep", "nce"):
        scores[measure] = [float(table.loc[b, measure].iloc[0]) for b in backbones]
    target = [float(accuracy[b]) for b in backbones]
    return {name: float(weightedtau(values, target).statistic) for name, values in scores.items()}


def logme_seconds(repeats: int = 3) -> float:
    from nbtl.fit import logme

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 10_000)
    features = rng.normal(size=(10_000, 1280)).astype(np.float32) + labels[:, None] * 0.01
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        logme(features, labels)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", default=str(REPO / "heuristics" / "meta_dataset.csv"))
    parser.add_argument(
        "--space",
        default=str(REPO / "search_spaces" / "meta.yaml"),
        help="the space the meta-dataset searched: its values and epochs (default: %(default)s)",
    )
    parser.add_argument("--rules", default=None, help="rules YAML (default: heuristics/rules.yaml)")
    parser.add_argument("--tasks", nargs="*", help="only these tasks (as in the meta-dataset's task column)")
    parser.add_argument(
        "--out",
        default=str(REPO / "benchmarks" / "results" / "leave_one_task_out.json"),
        help="results JSON that benchmarks/report.py renders (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    from nbtl.heuristics import load_rules
    from nbtl.heuristics.meta import learn, read_meta_csv
    from nbtl.heuristics.recommend import measure_task, recommend
    from nbtl.search import load_space

    rows = read_meta_csv(args.meta)
    meta = pd.DataFrame(rows)
    rules = load_rules(args.rules)
    space = load_space(args.space)
    epochs = space.max_epochs
    tasks = sorted(meta["task"].unique())
    if args.tasks:
        tasks = [t for t in tasks if t in args.tasks]
    results, taus = [], {}
    for name in tasks:
        trials = meta[meta["task"] == name]
        first = trials.iloc[0].to_dict()
        others = [r for r in rows if r["task"] != name]
        model = learn(others, f"meta-dataset without {name}")
        started = time.perf_counter()
        backbones = sorted(trials["backbone"].unique())
        task = measure_task(
            first["data"],
            backbones,
            image_size=int(first["image_size"]),
            per_class=None if _none(first["per_class"]) is None else int(first["per_class"]),
            classes=_none(first["classes"]),
            seed=int(first["split_seed"]),
            fit_curve=rules.fit_curve,
            peak_tolerance=rules.peak_tolerance,
        )
        recommendation = recommend(task, rules, model)
        recommend_s = time.perf_counter() - started
        rules_entry, learned_entry = recommendation.configs[0], recommendation.configs[-1]  # learned = rules if none
        best, worst = float(trials["best_val_accuracy"].max()), float(trials["best_val_accuracy"].min())
        best_test = float(trials.loc[trials["best_val_accuracy"].idxmax(), "test_accuracy"])
        spread = best - worst if best > worst else float("nan")
        row = {
            "task": name,
            "trials": len(trials),
            "search_best_val": best,
            "search_worst_val": worst,
            "search_best_test": best_test,
            "search_s": float(trials["search_seconds"].max()),
            "recommend_s": recommend_s,
        }
        trained = {}
        for label, entry in (("learned", learned_entry), ("rules", rules_entry)):
            key = json.dumps(entry["config"], sort_keys=True)
            if key not in trained:
                trained[key] = train(entry["config"], first, epochs, space.data.get("augmentation"))
            val, test, seconds = trained[key]
            row.update(
                {
                    f"{label}_val": val,
                    f"{label}_test": test,
                    f"{label}_train_s": seconds,
                    f"{label}_predicted_val": entry.get("predicted_val_accuracy"),
                    f"{label}_regret": (best - val) / spread if spread == spread else float("nan"),
                    f"{label}_config": entry["config"],
                }
            )
        taus[name] = kendall(task, trials)
        results.append(row)
        print(
            f"{name}: search best {best:.4f} / worst {worst:.4f} ({row['search_s']:.0f}s, {len(trials)} trials); "
            f"recommended (learned) {row['learned_val']:.4f} regret {row['learned_regret']:.3f} "
            f"(predicted {row['learned_predicted_val']}), rules only {row['rules_val']:.4f} regret "
            f"{row['rules_regret']:.3f}; recommend {recommend_s:.0f}s + train {row['learned_train_s']:.0f}s",
            flush=True,
        )

    table = pd.DataFrame(results)
    shown = [
        "task",
        "trials",
        "search_best_val",
        "search_worst_val",
        "learned_val",
        "learned_regret",
        "rules_val",
        "rules_regret",
        "search_best_test",
        "learned_test",
        "search_s",
        "recommend_s",
        "learned_train_s",
    ]
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.float_format", "{:.3f}".format):
        print("\nLeave one task out (validation accuracy; regret = (best - recommended) / (best - worst)):")
        print(table[shown].to_string(index=False))
        print(
            f"\nmean regret: learned {table['learned_regret'].mean():.3f}, "
            f"rules only {table['rules_regret'].mean():.3f}; median time: recommend + train "
            f"{(table['recommend_s'] + table['learned_train_s']).median():.0f}s vs search {table['search_s'].median():.0f}s"
        )
        tau = pd.DataFrame(taus).T
        if not tau.empty:
            print(
                "\nWeighted Kendall tau between each measure's ranking of the backbones and their fine-tuned accuracy:"
            )
            print(tau.to_string())
            print("\nmean over tasks:")
            print(tau.mean().sort_values(ascending=False).to_string())
    seconds = logme_seconds()
    print(
        f"\nLogME on 10,000 x 1,280 features, 10 classes: {seconds:.2f}s (median of 3, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
    )
    if args.out:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from equal_time import provenance

        document = {
            **provenance(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "options": {"meta": args.meta, "space": args.space, "rules": args.rules, "tasks": args.tasks},
            "tasks": results,
            "kendall_tau": taus,
            "logme_seconds": seconds,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(document, indent=1, default=str) + "\n")
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
