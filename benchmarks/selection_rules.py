"""Which way of naming a search's best trial does best on test? Measured from the trials a benchmark kept.

A search names its best trial by validation accuracy (:mod:`nbtl.ranking`). On 20-40 validation images that is a
coarse, noisy score (``benchmarks/selection_noise.py``). This script replays other ways to choose over the trials of
searches that already ran: ``equal_time.py`` writes every trial's validation and test scores into each default row
(``trial_rows``), so no search runs again. Every rule sees only validation scores and the trials' sources; the test
accuracy of the trial a rule names is what it is judged by.

Rules (``RULES``):

- ``current``: nbtl.ranking as it ships (best validation accuracy, ties by validation loss at that epoch);
- ``loss``: the lowest validation loss at the best epoch (a proper score, finer than accuracy);
- ``se_loss``: among the trials within one binomial standard error of the best validation accuracy, the lowest
  validation loss (the one-standard-error rule, Breiman et al. 1984, with loss as the tie-break);
- ``se_probe``: the probe when it is within one standard error of the best, else ``current``;
- ``near_loss``: among the trials within one validation image of the best, the lowest validation loss;
- ``last_epoch``: validation accuracy at the last epoch instead of the best one (less optimistic), ties by its loss.

Decide on tuning tasks only: run ``--tasks tuning`` rows here first, and read the reporting rows only to report a
rule already chosen.

    python benchmarks/selection_rules.py benchmarks/results/selection_study_tuning_2m.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
sys.path.insert(0, str(BENCHMARKS.parent))
from report import paired_difference  # noqa: E402
from selection_noise import validation_images  # noqa: E402

from nbtl.ranking import best_trial  # noqa: E402

ACC, LOSS = "best_val_accuracy", "best_val_loss"


def scored(table: pd.DataFrame) -> pd.DataFrame:
    """Trials with a validation score that did not fail."""
    ok = table[ACC].notna()
    if "status" in table:
        ok &= table["status"].ne("FAILED")
    return table[ok]


def standard_error(table: pd.DataFrame) -> float:
    """One binomial standard error of the best validation accuracy, at least one validation image."""
    n_val = validation_images(table[ACC].tolist()) or 0
    top = float(table[ACC].max())
    if not n_val:
        return 0.0
    return max(math.sqrt(top * (1 - top) / n_val), 1.0 / n_val)


def lowest_loss(band: pd.DataFrame) -> pd.Series:
    loss = band[LOSS].fillna(math.inf)
    return band.loc[loss.idxmin()]


def rule_current(table: pd.DataFrame) -> pd.Series:
    return best_trial(table)


def rule_loss(table: pd.DataFrame) -> pd.Series:
    return lowest_loss(table)


def within(table: pd.DataFrame, margin: float) -> pd.DataFrame:
    """The trials whose validation accuracy is within ``margin`` of the best."""
    return table[table[ACC] >= table[ACC].max() - margin - 1e-9]


def rule_se_loss(table: pd.DataFrame) -> pd.Series:
    return lowest_loss(within(table, standard_error(table)))


def rule_se_probe(table: pd.DataFrame) -> pd.Series:
    band = within(table, standard_error(table))
    probe = band[band["source"].eq("probe")] if "source" in band else band.iloc[:0]
    return probe.iloc[0] if len(probe) else best_trial(table)


def rule_near_loss(table: pd.DataFrame) -> pd.Series:
    n_val = validation_images(table[ACC].tolist()) or 0
    step = 1.0 / n_val if n_val else 0.0
    return lowest_loss(within(table, step))


def rule_last_epoch(table: pd.DataFrame) -> pd.Series:
    last = table.dropna(subset=["val_accuracy"])
    if last.empty:
        return best_trial(table)
    ranked = last.assign(_loss=last["val_loss"].fillna(math.inf)).sort_values(
        ["val_accuracy", "_loss"], ascending=[False, True], kind="stable"
    )
    return ranked.iloc[0]


RULES: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "current": rule_current,
    "loss": rule_loss,
    "se_loss": rule_se_loss,
    "se_probe": rule_se_probe,
    "near_loss": rule_near_loss,
    "last_epoch": rule_last_epoch,
}


def read_searches(paths: list[Path], method: str = "default") -> list[dict]:
    """The rows of ``method`` that kept their trials, from every results file in ``paths``."""
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("method") == method and row.get("trial_rows"):
                rows.append(row)
    return rows


def replay(rows: list[dict]) -> pd.DataFrame:
    """One line per (search, rule): the test accuracy of the trial the rule names, and where it came from."""
    out = []
    for row in rows:
        table = scored(pd.DataFrame(row["trial_rows"]))
        table = table[table["test_accuracy"].notna()]
        if table.empty:
            continue
        for name, rule in RULES.items():
            chosen = rule(table)
            out.append(
                {
                    "task": row["task"],
                    "seed": row["seed"],
                    "rule": name,
                    "test_accuracy": float(chosen["test_accuracy"]),
                    "source": chosen.get("source", ""),
                    "oracle": float(table["test_accuracy"].max()),
                    "trials": len(table),
                    "commit": row.get("commit", ""),
                }
            )
    return pd.DataFrame(out)


def render(frame: pd.DataFrame) -> str:
    """Markdown: each rule's mean test accuracy and paired difference from ``current``, pooled and per task."""
    wide = frame.pivot_table(index=["task", "seed"], columns="rule", values="test_accuracy", aggfunc="last")
    commits = ", ".join(f"`{c[:7]}`" for c in sorted(set(frame["commit"])) if c) if "commit" in frame else ""
    lines = [
        f"{len(wide)} searches on {wide.index.get_level_values('task').nunique()} tasks"
        + (f" at {commits}" if commits else "")
        + ": the test accuracy of the trial each rule names from the same trials, and its paired difference from "
        "`current` (points; 95 % bootstrap over searches; wins / losses).",
        "",
        "| rule | mean test acc | minus current | wins / losses |",
        "| --- | --- | --- | --- |",
    ]
    sources = frame.pivot_table(index="rule", columns="source", values="seed", aggfunc="count", fill_value=0)
    for rule in RULES:
        diff = paired_difference(wide[rule] - wide["current"])
        lines.append(
            f"| {rule} | {100 * wide[rule].mean():.1f} | {100 * diff['mean']:+.1f} "
            f"[{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}] | {diff['wins']} / {diff['losses']} |"
        )
    oracle = frame.drop_duplicates(["task", "seed"])["oracle"].mean()
    lines += [
        "",
        f"The best trial on test (never available to a search) averages {100 * oracle:.1f} %. Per task, mean test "
        "accuracy (%) of the trial each rule names:",
        "",
        "| task | searches | " + " | ".join(RULES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in RULES) + " |",
    ]
    per_task = wide.groupby(level="task")
    for task, group in per_task:
        lines.append(f"| {task} | {len(group)} | " + " | ".join(f"{100 * group[r].mean():.1f}" for r in RULES) + " |")
    lines += [
        "",
        "Where the chosen trials came from (searches per source):",
        "",
        "| rule | " + " | ".join(sources.columns) + " |",
        "| --- | " + " | ".join("---" for _ in sources.columns) + " |",
        *(f"| {rule} | " + " | ".join(str(int(v)) for v in sources.loc[rule]) + " |" for rule in RULES),
    ]
    return "\n".join(lines) + "\n"


def render_file(path: Path, method: str = "default") -> str:
    """The block ``benchmarks/report.py`` writes for a results file (``rules_<stem>``)."""
    rows = read_searches([path], method)
    if not rows:
        return f"_Not measured yet: no {method} row with `trial_rows` in `results/{path.name}`._\n"
    return render(replay(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="equal_time.py results files (JSONL)")
    parser.add_argument("--method", default="default", help="whose searches to replay (default: default)")
    parser.add_argument("--tasks", help="comma-separated task names to keep (default: all in the files)")
    args = parser.parse_args(argv)
    rows = read_searches(args.results, args.method)
    if args.tasks:
        keep = {t.strip() for t in args.tasks.split(",")}
        rows = [r for r in rows if r["task"] in keep]
    if not rows:
        print(
            f"selection_rules: no {args.method} rows with trial_rows in {', '.join(map(str, args.results))}: "
            "rows written by equal_time.py before it kept trials cannot be replayed",
            file=sys.stderr,
        )
        return 1
    print(render(replay(rows)))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
