"""The benchmarks' tables, rendered from the files under benchmarks/results/ and nothing else.

Each table lives in a README between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``; this script
renders every such block of benchmarks/README.md, README.md and benchmarks/HISTORY.md (the figures of earlier
defaults and of the decisions made on tuning tasks) from its results file:

  equal_time_B                results/equal_time_B.jsonl (benchmarks/equal_time.py, budget B: 2m, 5m, 15m)
  ablations_B                 results/ablations_B.jsonl (equal_time.py --methods ablations: each block's default
                              measured in the same sitting as its ablations)
  trial_speed                 results/trial_speed.json (benchmarks/trial_speed.py)
  leave_one_task_out          results/leave_one_task_out.json (benchmarks/leave_one_task_out.py)
  probe_floor                 results/probe_floor.json (benchmarks/probe_floor.py)
  rules_F                     results/F.jsonl's default rows with ``trial_rows``, replayed by benchmarks/selection_rules.py
                              (other ways to name the best trial from the same trials)
  selection_B                 the ``selection`` record of the default's rows in results/equal_time_B.jsonl
                              (benchmarks/selection_noise.py: how noisy the choice of the best trial was)

A block whose file is absent says "not measured yet". Every row names the commit(s) it was measured at
(``*``: the working tree had uncommitted changes to tracked files).

    python benchmarks/report.py --check    # exit 1 naming each block that differs from what the files say
    python benchmarks/report.py --write    # rewrite the blocks in place, and the equal-time figures
    python benchmarks/report.py --shipped  # which README blocks were measured on the product at HEAD (exit 1 where not)

Statistics (equal time). Per task and pooled over the reporting tasks: mean test accuracy and macro-F1 per
method; the paired difference ``default - method`` over the (task, seed) pairs where both have a result, with a
95 % percentile bootstrap interval (10,000 resamples of the pairs, numpy, seed 0) and wins / losses / ties of
default; and, as Quick-Tune reports (Arango et al. 2024, arXiv 2306.03828), normalised regret and average rank over
wall time: per (task, seed) with every method's result, at each time t each method's best-so-far test accuracy of
its chosen config, regret ``(best - value) / (best - worst)`` with best and worst the methods' final results on
that (task, seed), the rank among the methods at t (1 = best, ties averaged), both averaged over (task, seed).
Before its first result a method has regret 1, the last rank, and accuracy 0 in the area under its curve, which is
normalised by the budget (the mean best-so-far accuracy over [0, budget]).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import measured_at  # noqa: E402

REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
#: The READMEs: the figures of the product as it ships (what --shipped checks).
READMES = (BENCHMARKS / "README.md", REPO / "README.md")
#: The history: figures measured on earlier products, rendered and checked like the READMEs' but not --shipped.
HISTORY = BENCHMARKS / "HISTORY.md"
RENDERED = (*READMES, HISTORY)
MAIN_METHODS = ("probe", "binary", "random", "recommend", "default")
#: One change each to default.yaml; with-prior and cost-aware add one (the learned prior; the prior ranking by expected
#: gain per second) rather than removing one. no-prior removed the prior while default.yaml had it on; it is RETIRED
#: (equal to default since) and rendered only from the results measured then.
ABLATIONS = (
    "no-start",
    "no-prior",
    "no-cache",
    "batch64",
    "no-warmup",
    "no-l2sp-blocks",
    "with-prior",
    "cost-aware",
    "val-25",
    "reevaluate",
    "resplit",
)
RETIRED = ("no-prior",)
BASELINE = "default"
RESAMPLES, BOOTSTRAP_SEED, LEVEL = 10_000, 0, 0.95
AT = (0.25, 0.5, 1.0)  # shares of the budget the regret and rank tables show
GRID_POINTS = 201
BLOCK = re.compile(r"(<!-- report:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)", re.S)
RESULTS_FILE = re.compile(r"equal_time_\w+\.jsonl")  # not the superseded equal_time_2m.rows.jsonl
REQUIRED = ("task", "seed", "method", "budget_s", "exit")
NOT_MEASURED = "_Not measured yet: no `{file}`._\n"


class ReportError(Exception):
    """A results file or README that cannot be rendered; its message names the file and the fix."""


# ---------------------------------------------------------------------------------------------- statistics
def bootstrap_interval(values, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL):
    """Percentile bootstrap interval of the mean of ``values`` (shape (n,)): ``resamples`` draws of n values
    with replacement, numpy's generator seeded with ``seed``. Returns (low, high); (nan, nan) when empty."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired(frame: pd.DataFrame, method: str, baseline: str = BASELINE, column: str = "test_accuracy") -> pd.DataFrame:
    """(task, seed, baseline, method, diff) of the pairs where both have a finite ``column``."""
    wide = frame.pivot_table(index=["task", "seed"], columns="method", values=column, aggfunc="last")
    if method not in wide or baseline not in wide:
        return pd.DataFrame(columns=["task", "seed", baseline, method, "diff"])
    both = wide[[baseline, method]].dropna().reset_index()
    return both.assign(diff=both[baseline] - both[method])


def paired_difference(diffs, tie: float = 1e-9) -> dict:
    """Mean of the paired differences ``diffs`` (baseline - method), its bootstrap interval, and the baseline's
    wins (diff > 0), losses and ties (|diff| <= ``tie``)."""
    diffs = np.asarray(diffs, dtype=float)
    low, high = bootstrap_interval(diffs)
    return {
        "n": int(diffs.size),
        "mean": float(diffs.mean()) if diffs.size else float("nan"),
        "low": low,
        "high": high,
        "wins": int((diffs > tie).sum()),
        "losses": int((diffs < -tie).sum()),
        "ties": int((np.abs(diffs) <= tie).sum()),
    }


def step_values(curve, grid) -> np.ndarray:
    """The step curve ``curve`` ([(seconds, value), ...]) at each time of ``grid``: the value of the last point
    at or before t; nan before the first."""
    grid = np.asarray(grid, dtype=float)
    if not curve:
        return np.full(grid.shape, np.nan)
    points = sorted((float(t), float(v)) for t, v in curve)
    times, values = np.array([t for t, _ in points]), np.array([v for _, v in points])
    index = np.searchsorted(times, grid, side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)


def area_under(curve, budget: float) -> float:
    """Area under the step curve over [0, budget] divided by ``budget`` (0 before its first point)."""
    points = sorted((min(max(float(t), 0.0), budget), float(v)) for t, v in curve)
    area = 0.0
    for (start, value), (end, _) in zip(points, points[1:] + [(budget, 0.0)]):
        area += value * (end - start)
    return area / budget


def complete_blocks(frame: pd.DataFrame, methods) -> list[pd.DataFrame]:
    """The (task, seed) groups of ``frame`` where every one of ``methods`` has a finite test accuracy."""
    blocks = []
    for _, group in frame[frame["method"].isin(methods)].groupby(["task", "seed"], sort=True):
        group = group.drop_duplicates("method", keep="last").set_index("method")
        if all(m in group.index and np.isfinite(group.loc[m, "test_accuracy"]) for m in methods):
            blocks.append(group.loc[list(methods)])
    return blocks


def anytime(frame: pd.DataFrame, methods, budget: float, points: int = GRID_POINTS) -> dict:
    """Best-so-far accuracy, normalised regret and rank over wall time, averaged over the complete (task, seed)
    blocks of ``methods``: {"grid": (points,), "blocks": n, "accuracy" / "regret" / "rank": {method: (points,)},
    "final_regret" / "final_rank" / "auc": {method: float}}."""
    methods = list(methods)
    grid = np.linspace(0.0, budget, points)
    blocks = complete_blocks(frame, methods)
    sums = {key: np.zeros((len(methods), points)) for key in ("accuracy", "regret", "rank")}
    finals = {key: np.zeros(len(methods)) for key in ("final_regret", "final_rank", "auc")}
    for block in blocks:
        final = block["test_accuracy"].to_numpy(dtype=float)
        best, worst = final.max(), final.min()
        values = np.array([step_values(block.loc[m, "curve"], grid) for m in methods])
        known = np.nan_to_num(values, nan=-np.inf)
        spread = best - worst
        with np.errstate(invalid="ignore"):
            regret = np.where(np.isfinite(known), (best - known) / spread if spread else (known < best) * 1.0, 1.0)
        sums["regret"] += regret
        sums["rank"] += pd.DataFrame(known).rank(axis=0, ascending=False, method="average").to_numpy()
        sums["accuracy"] += np.nan_to_num(values, nan=0.0)
        finals["final_regret"] += (best - final) / spread if spread else np.zeros(len(methods))
        finals["final_rank"] += pd.Series(final).rank(ascending=False, method="average").to_numpy()
        finals["auc"] += np.array([area_under(block.loc[m, "curve"], budget) for m in methods])
    n = max(len(blocks), 1)
    out = {"grid": grid, "blocks": len(blocks)}
    out.update({key: dict(zip(methods, value / n)) for key, value in {**sums, **finals}.items()})
    return out


# ---------------------------------------------------------------------------------------------- reading
def read_rows(path: Path) -> pd.DataFrame:
    """The runs of an equal-time results file (one JSON object a line), the last row of each (task, seed,
    method, budget) kept."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ReportError(
                    f"{path}:{number}: not a JSON line ({error.msg}); remove or repair that line"
                ) from None
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        raise ReportError(f"{path}: rows without {', '.join(missing)}; not a results file of benchmarks/equal_time.py")
    for column in ("test_accuracy", "test_macro_f1", "wall_s"):
        frame[column] = pd.to_numeric(frame.get(column), errors="coerce")
    frame["curve"] = [c if isinstance(c, list) else [] for c in frame.get("curve", [[]] * len(frame))]
    return frame.drop_duplicates(["task", "seed", "method", "budget_s"], keep="last").reset_index(drop=True)


def commits(group: pd.DataFrame) -> str:
    marks = {measured_at.label(c, d) for c, d in zip(group.get("commit", []), group.get("dirty", []))}
    return ", ".join(f"`{m}`" for m in sorted(marks)) or "?"


def reported(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows pooled in the headline (the reporting tasks' when there are any) and what they are called."""
    reporting = frame[frame.get("role", pd.Series("", index=frame.index)) == "reporting"]
    if len(reporting):
        return reporting, "reporting tasks"
    roles = sorted(set(frame.get("role", pd.Series(["?"])).dropna()))
    return frame, f"{'/'.join(roles) or 'all'} tasks (no reporting task measured)"


# ---------------------------------------------------------------------------------------------- rendering
def _pct(value: float, digits: int = 1) -> str:
    return "–" if value != value else f"{100 * value:.{digits}f}"


def _delta(stats: dict) -> str:
    if not stats["n"]:
        return "–"
    return (
        f"{100 * stats['mean']:+.1f} [{100 * stats['low']:+.1f}, {100 * stats['high']:+.1f}] "
        f"{stats['wins']}/{stats['losses']}/{stats['ties']}"
    )


def budget_label(seconds: float) -> str:
    """2m, 15m, 40s, 1.5h: the budget in a results file's name and a report block's."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % (size / 10) == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _header(frame: pd.DataFrame, budget: float) -> str:
    shown = budget_label(budget).replace("m", " min").replace("s", " s").replace("h", " h")
    dates = sorted(str(d)[:10] for d in frame.get("date", pd.Series(dtype=str)).dropna())
    cpus = sorted({int(c) for c in frame.get("cpus", pd.Series(dtype=float)).dropna()})
    when = f"{dates[0]} … {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "?")
    speeds = pd.to_numeric(frame.get("cpu_images_per_s", pd.Series(dtype=float)), errors="coerce").dropna()
    speed = (
        f"; machine speed {speeds.min():.0f}–{speeds.max():.0f} training images/s (`cpu_images_per_s`) on "
        f"{len(speeds)} of the runs"
        if len(speeds)
        else ""
    )
    return (
        f"Budget {shown} per method, task and seed; {frame['task'].nunique()} task(s), "
        f"{frame['seed'].nunique()} seed(s), {len(frame)} runs; measured {when} on {'/'.join(map(str, cpus)) or '?'} "
        f"CPUs at {commits(frame)} (`*`: uncommitted changes){speed}."
    )


def _failures(frame: pd.DataFrame) -> str:
    bad = frame[(frame["exit"] != 0) | frame["test_accuracy"].isna()]
    if bad.empty:
        return ""
    counts = ", ".join(f"{m} {n}" for m, n in bad.groupby("method").size().items())
    return f"\nRuns without a result (failed or no trial finished; left out of every pair): {counts}.\n"


def render_methods(frame: pd.DataFrame, methods, budget: float, label: str) -> str:
    """The accuracy table, the paired differences and the anytime table of ``methods`` in ``frame``."""
    frame = frame[frame["method"].isin(methods)]
    methods = [m for m in methods if m in set(frame["method"])]
    if frame.empty:
        return "_No run of these methods in the results file yet._\n"
    pooled, pooled_name = reported(frame)
    lines = [_header(frame, budget), ""]
    lines += ["| task | seeds | " + " | ".join(methods) + " | commits |", "| --- " * (len(methods) + 3) + "|"]
    groups = [(f"{t} ({g['role'].iloc[0]})", g) for t, g in frame.groupby("task", sort=True)]
    for name, group in groups + [(f"**pooled: {pooled_name}**", pooled)]:
        cells = []
        for method in methods:
            rows = group[group["method"] == method]
            cells.append(f"{_pct(rows['test_accuracy'].mean())} / {_pct(rows['test_macro_f1'].mean())}")
        lines.append(f"| {name} | {group['seed'].nunique()} | " + " | ".join(cells) + f" | {commits(group)} |")
    lines += ["", "Test accuracy / macro-F1 (%) of each method's chosen config, mean over seeds.", ""]
    others = [m for m in methods if m != BASELINE]
    if BASELINE in methods and others:
        tasks = sorted(frame["task"].unique())
        lines += [
            f"| {BASELINE} − method | pooled ({pooled_name}) | " + " | ".join(tasks) + " |",
            "| --- " * (len(tasks) + 2) + "|",
        ]
        for method in others:
            cells = [_delta(paired_difference(paired(pooled, method)["diff"]))]
            for task in tasks:
                cells.append(_delta(paired_difference(paired(frame[frame["task"] == task], method)["diff"])))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Paired difference in test accuracy (points), {BASELINE} minus the method, over (task, seed) pairs: "
            f"mean [95 % bootstrap interval, {RESAMPLES:,} resamples] and {BASELINE}'s wins/losses/ties.",
            "",
        ]
    curves = anytime(pooled, methods, budget)
    if curves["blocks"]:
        shares = " | ".join(f"regret {share:.0%}" for share in AT) + " | " + " | ".join(f"rank {s:.0%}" for s in AT)
        lines += [f"| method | area under curve | {shares} | rank at end |", "| --- " * (2 * len(AT) + 3) + "|"]
        for method in methods:
            at = [int(round(share * (GRID_POINTS - 1))) for share in AT]
            cells = [f"{curves['regret'][method][i]:.2f}" for i in at] + [
                f"{curves['rank'][method][i]:.2f}" for i in at
            ]
            lines.append(
                f"| {method} | {_pct(curves['auc'][method])} | " + " | ".join(cells) + f" | "
                f"{curves['final_rank'][method]:.2f} |"
            )
        lines += [
            "",
            f"Over wall time, on the {curves['blocks']} (task, seed) pairs of the {pooled_name} where every method has a "
            "result: the area under the best-so-far test accuracy of the chosen config (% over the budget), normalised "
            "regret and average rank (1 = best) at 25 %, 50 % and 100 % of the budget.",
            "",
        ]
    return "\n".join(lines) + _failures(frame) + f"\n{label}\n"


#: The floors issue 17 measures the default search against: best(probe, binary, recommend -> train) per task.
FLOORS = ("probe", "binary", "recommend")


def targets(frame: pd.DataFrame) -> list[str]:
    """Issue 17's targets on the pooled rows of ``frame``, each a line ``PASS`` / ``MISS`` / ``n/a`` with its numbers
    (``PARTIAL``: met against the floors measured so far, not all three):
    default beats best(probe, binary, recommend) by >= 2 points with the interval above 0; on no task more than 1
    point below it; at most 1 in 20 of default's trials at chance; recommend -> train within 2 points of default in
    at most 10 % of its time."""
    pooled, _ = reported(frame)
    floors = [m for m in FLOORS if m in set(pooled["method"])]
    if BASELINE not in set(pooled["method"]) or not floors:
        return ["n/a: the default search and at least one floor are needed"]
    wide = pooled.pivot_table(index=["task", "seed"], columns="method", values="test_accuracy", aggfunc="last")
    # the best floor of each task: the floor method with the best mean over that task's seeds
    best_floor = wide[floors].groupby(level="task").mean().idxmax(axis=1)
    diffs = pd.Series(
        [wide.loc[key, BASELINE] - wide.loc[key, best_floor[key[0]]] for key in wide.index], index=wide.index
    ).dropna()
    lines = []
    missing = [m for m in FLOORS if m not in floors]

    def verdict(ok: bool) -> str:  # a target met against fewer floors than it names is not met yet
        return "MISS" if not ok else "PARTIAL" if missing else "PASS"

    label = f"best({', '.join(floors)})" + (f" ({', '.join(missing)} not measured yet)" if missing else "")
    stats = paired_difference(diffs)
    if stats["n"]:
        ok = stats["mean"] >= 0.02 and stats["low"] > 0
        lines.append(
            f"{verdict(ok)} default − {label} per task: "
            f"{100 * stats['mean']:+.1f} points [{100 * stats['low']:+.1f}, {100 * stats['high']:+.1f}] over "
            f"{stats['n']} (task, seed) pairs (target >= +2, interval above 0)"
        )
        by_task = diffs.groupby(level="task").mean()
        lines.append(
            f"{verdict(by_task.min() >= -0.01)} on no task more than 1 point below that best: worst "
            f"{100 * by_task.min():+.1f} ({by_task.idxmin()}; best floor there: {best_floor[by_task.idxmin()]})"
        )
    searches = pooled[pooled["method"] == BASELINE]
    if "at_chance" in searches and "scored_trials" in searches and searches["scored_trials"].sum() > 0:
        chance, scored = int(searches["at_chance"].sum()), int(searches["scored_trials"].sum())
        lines.append(
            f"{'PASS' if chance * 20 <= scored else 'MISS'} default's trials at chance: {chance} of {scored} "
            "(target at most 1 in 20)"
        )
    if "recommend" in wide:
        gap = (wide[BASELINE] - wide["recommend"]).dropna()
        walls = pooled.pivot_table(index=["task", "seed"], columns="method", values="wall_s", aggfunc="last")
        share = (walls["recommend"] / walls[BASELINE]).reindex(gap.index)
        if len(gap):
            ok = gap.mean() <= 0.02 and share.mean() <= 0.10
            lines.append(
                f"{'PASS' if ok else 'MISS'} recommend → train within 2 points of default in <= 10 % of its time: "
                f"gap {100 * gap.mean():+.1f} points, time {share.mean():.0%} of default's (mean over {len(gap)} pairs)"
            )
    return lines


def render_equal_time(name: str, frame: pd.DataFrame, figure: str) -> str:
    budget = float(frame["budget_s"].max())
    picture = f"![best-so-far accuracy, regret and rank over wall time]({figure})" if figure else ""
    found = targets(frame[frame["method"].isin(MAIN_METHODS)])
    goals = "Issue 17's targets (set for the 5-minute budget), on the pooled rows:\n\n" + "".join(
        f"- {line}\n" for line in found
    )
    return render_methods(frame, MAIN_METHODS, budget, goals + ("\n" + picture if picture else ""))


def render_ablations(name: str, frame: pd.DataFrame) -> str:
    budget = float(frame["budget_s"].max())
    return render_methods(frame, (BASELINE, *ABLATIONS), budget, "(each ablation changes one thing in default.yaml)")


def render_trial_speed(document: dict) -> str:
    options = document.get("options", {})
    lines = [
        f"Measured {document.get('date', '?')[:10]} on {document.get('cpus', '?')} CPUs at "
        f"`{measured_at.label(document.get('commit'), document.get('dirty', False))}`; options "
        + ", ".join(f"{k}={v}" for k, v in options.items())
        + ".",
        "",
        "| freeze_blocks | mode | prefix | build_s | train_s | total_s | val_acc | test_acc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in document.get("rows", []):
        lines.append(
            f"| {row['freeze']} | {row['mode']} | {row['prefix']} | {row['build_s']:.1f} | {row['train_s']:.1f} | "
            f"{row['total_s']:.1f} | {row['val']:.4f} | {row['test']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def render_probe_floor(document: dict) -> str:
    rows = pd.DataFrame(document.get("rows", []))
    lines = [
        f"Measured {document['date'][:10] + ' ' if 'date' in document else ''}on {document.get('cpus', '?')} CPUs at "
        f"`{measured_at.label(document.get('commit'), document.get('dirty', False))}`; tuning tasks "
        + ", ".join(document.get("tasks", []))
        + f", seeds {', '.join(str(s) for s in sorted(rows['seed'].unique()))}"
        + (f", {int(rows.groupby('task')['test_images'].first().sum())} test images per seed" if len(rows) else "")
        + "; mean over tasks and seeds.",
        "",
        "| probe | test accuracy | validation loss | test ECE | fit time (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    if len(rows):
        means = rows.groupby("probe", sort=False)[["test_accuracy", "val_loss", "test_ece", "fit_s"]].mean()
        for probe, r in means.iterrows():
            lines.append(
                f"| {probe} | {_pct(r['test_accuracy'])} | {r['val_loss']:.3f} | {r['test_ece']:.3f} | {r['fit_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def render_loto(document: dict) -> str:
    tasks = document.get("tasks", [])
    lines = [
        f"Measured {document.get('date', '?')[:10]} on {document.get('cpus', '?')} CPUs at "
        f"`{measured_at.label(document.get('commit'), document.get('dirty', False))}`; "
        f"LogME on 10,000 × 1,280 features: {document.get('logme_seconds', float('nan')):.2f} s.",
        "",
        "| task | trials | search best / worst val | learned val (regret) | rules val (regret) | "
        "recommend + train (s) | search (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in tasks:
        lines.append(
            f"| {t['task']} | {t['trials']} | {t['search_best_val']:.3f} / {t['search_worst_val']:.3f} | "
            f"{t['learned_val']:.3f} ({t['learned_regret']:.2f}) | {t['rules_val']:.3f} ({t['rules_regret']:.2f}) | "
            f"{t['recommend_s'] + t['learned_train_s']:.0f} | {t['search_s']:.0f} |"
        )
    if tasks:
        regret = pd.DataFrame(tasks)[["learned_regret", "rules_regret"]].astype(float).mean()
        lines.append(f"| **mean** | | | ({regret['learned_regret']:.2f}) | ({regret['rules_regret']:.2f}) | | |")
    return "\n".join(lines) + "\n"


RENDER_JSON = {"trial_speed": render_trial_speed, "leave_one_task_out": render_loto, "probe_floor": render_probe_floor}


def render_selection(name: str, frame: pd.DataFrame) -> str:
    """How noisy the default search's choice of its best trial was (the ``selection`` record equal_time.py writes,
    benchmarks/selection_noise.py): per task, mean over the seeds measured."""
    if "selection" not in frame:
        frame = frame.assign(selection=None)
    rows = frame[(frame["method"] == BASELINE) & frame["selection"].notna()]
    records = [
        {"task": task, "seed": seed, "commit": commit, "dirty": dirty, **record}
        for task, seed, commit, dirty, record in zip(
            rows["task"],
            rows["seed"],
            rows.get("commit", pd.Series("", index=rows.index)),
            rows.get("dirty", pd.Series(False, index=rows.index)),
            rows["selection"],
        )
        if isinstance(record, dict) and record.get("scored_trials")
    ]
    if not records:
        return (
            "_Not measured yet: no default row with a `selection` record (equal_time.py writes it since `62204e5`)._\n"
        )
    table = pd.DataFrame(records)
    table["tied_range"] = table["tied_test_max"] - table["tied_test_min"]
    table["chosen_minus_probe"] = table["chosen_test_accuracy"] - table["probe_test_accuracy"]
    table["oracle_minus_chosen"] = table["oracle_test_accuracy"] - table["chosen_test_accuracy"]
    lines = [
        f"The default search's choice of its best trial, {len(table)} searches ({budget_label(float(rows['budget_s'].max()))}"
        f" budget) at {commits(table)}. Test accuracies here only measure the choice; no search saw them.",
        "",
        "| task | searches | validation images | tied at the top | within 1 image | test range of the tied | "
        "chosen - probe (same search) | best trial - chosen | Spearman val/test |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def line(label: str, group: pd.DataFrame) -> str:
        return (
            f"| {label} | {len(group)} | {group['n_val'].mean():.0f} | {group['tied'].mean():.1f} | "
            f"{group['near'].mean():.1f} | {group['tied_range'].mean() * 100:.1f} | "
            f"{group['chosen_minus_probe'].mean() * 100:+.1f} | {group['oracle_minus_chosen'].mean() * 100:+.1f} | "
            f"{pd.to_numeric(group['spearman_val_test'], errors='coerce').mean():.2f} |"
        )

    for task, group in table.groupby("task", sort=True):
        lines.append(line(task, group))
    lines.append(line("**all**", table))
    return "\n".join(lines) + "\n"


def source(name: str) -> Path:
    """The results file block ``name`` is rendered from."""
    if re.fullmatch(r"(equal_time|ablations)_\w+", name):
        return RESULTS / f"{name}.jsonl"
    if re.fullmatch(r"rules_\w+", name):
        return RESULTS / f"{name.removeprefix('rules_')}.jsonl"
    if re.fullmatch(r"selection_\w+", name):
        return RESULTS / f"equal_time_{name.removeprefix('selection_')}.jsonl"
    if name in RENDER_JSON:
        return RESULTS / f"{name}.json"
    raise ReportError(
        f"report block {name!r}: unknown; use equal_time_B, ablations_B, selection_B (B a budget such as 2m), rules_F (F a "
        "results file's stem) or one of " + ", ".join(RENDER_JSON)
    )


def render(name: str, base: Path = BENCHMARKS) -> str:
    """Block ``name`` as markdown; links (the figures) relative to ``base``, the folder of the README it goes in."""
    path = source(name)
    if not path.exists():
        return NOT_MEASURED.format(file=f"results/{path.name}")
    if name.startswith("rules_"):  # replayed from the raw rows (their trial_rows), not the rows' table
        from selection_rules import render_file

        return render_file(path)
    if path.suffix == ".jsonl":
        frame = read_rows(path)
        if frame.empty:
            return NOT_MEASURED.format(file=f"results/{path.name}")
        if name.startswith("ablations_"):
            return render_ablations(name, frame)
        if name.startswith("selection_"):
            return render_selection(name, frame)
        figure = figure_path(path)
        return render_equal_time(name, frame, os.path.relpath(figure, base) if figure.exists() else "")
    return RENDER_JSON[name](read_document(path))


def read_document(path: Path) -> dict:
    """A JSON results file (trial_speed, probe_floor, leave_one_task_out)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not JSON ({error.msg}); run its benchmark again") from None


def figure_path(results: Path) -> Path:
    return results.with_name(results.stem + ".png")


def plot(results: Path) -> Path | None:
    """Best-so-far accuracy, regret and rank over wall time of the main methods (pooled) as a PNG beside
    ``results``; None when no (task, seed) has every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = read_rows(results)
    if frame.empty:
        return None
    pooled, pooled_name = reported(frame)
    methods = [m for m in MAIN_METHODS if m in set(frame["method"])]
    budget = float(frame["budget_s"].max())
    curves = anytime(pooled, methods, budget)
    if not curves["blocks"]:
        return None
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, axis, label in zip(
        ("accuracy", "regret", "rank"), axes, ("best-so-far test accuracy (%)", "normalised regret", "average rank")
    ):
        for method in methods:
            values = curves[key][method] * (100 if key == "accuracy" else 1)
            axis.step(curves["grid"], values, where="post", label=method)
        axis.set(xlabel="wall time (s)", ylabel=label)
        axis.grid(alpha=0.3)
    axes[2].invert_yaxis()
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{pooled_name}, {curves['blocks']} (task, seed) pairs, budget {budget:g} s")
    figure.tight_layout()
    path = figure_path(results)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------- README blocks
def update(text: str, base: Path = BENCHMARKS) -> tuple[str, list[str]]:
    """``text`` (a README in the folder ``base``) with every report block rendered anew, and the names of the blocks
    that changed."""
    changed = []

    def replace(match: re.Match) -> str:
        body = render(match["name"], base)
        if body != match["body"]:
            changed.append(match["name"])
        return match[1] + body + match[4]

    return BLOCK.sub(replace, text), changed


#: A benchmark task's name ends in its image size (``cards-suit-pc30-224``); leave_one_task_out's read ``... 32px ...``.
TASK_SIZE = re.compile(r"-(\d+)$|\b(\d+)px\b")


def task_size(task: str) -> int:
    """The image size a benchmark task's runs trained at, read from its name."""
    found = TASK_SIZE.search(task)
    if not found:
        raise ReportError(f"task {task!r}: its name does not end in an image size (-224) nor name one (32px)")
    return int(found[1] or found[2])


def block_commits(name: str) -> dict[tuple[str, bool], set[int] | None]:
    """``{(commit, dirty): the image sizes of the runs measured there}`` of block ``name``'s results, in commit order
    (sizes None: its file does not say them); empty where it is not measured yet."""
    path = source(name)
    if not path.exists():
        return {}
    if path.suffix == ".jsonl":
        frame = read_rows(path)
        sizes: dict[tuple[str, bool], set[int]] = {}
        rows = zip(frame.get("commit", [""] * len(frame)), frame.get("dirty", [False] * len(frame)), frame["task"])
        for commit, dirty, task in rows:
            sizes.setdefault((str(commit), bool(dirty)), set()).add(task_size(task))
        return dict(sorted(sizes.items()))
    document = read_document(path)
    found: set[int] | None = None  # not said: an entry that reaches some sizes counts for it
    if name == "trial_speed" and "image_size" in document.get("options", {}):
        found = {int(document["options"]["image_size"])}
    elif document.get("tasks"):  # probe_floor names its tasks, leave_one_task_out describes them
        found = {task_size(t if isinstance(t, str) else t["task"]) for t in document["tasks"]}
    return {(str(document.get("commit", "unknown")), bool(document.get("dirty", False))): found}


def reaches(entry: dict, name: str, sizes: set[int] | None) -> bool:
    """Whether the inert change ``entry`` reaches the runs of block ``name`` measured at one commit, at image
    ``sizes``: it names the block (``reaches``) or one of their sizes (``reaches_sizes``; sizes unknown: it does)."""
    if name in entry.get("reaches", []):
        return True
    at = set(entry.get("reaches_sizes", []))
    return bool(at) and (sizes is None or bool(at & sizes))


def shipped(readmes) -> tuple[list[str], bool]:
    """Whether each report block of ``readmes`` was measured on the product at ``HEAD``: each of its commits has the
    same ``measured_at.PRODUCT`` (nbtl/, the spaces, the heuristics, pyproject.toml) and a clean tree, or differs from
    it only by commits of ``benchmarks/inert_changes.yaml`` (changes shown, by the test each names, not to reach the
    benchmarks' runs; an entry's ``reaches`` lists the blocks it does reach and its ``reaches_sizes`` the image sizes
    whose runs it does reach, in any block: for those rows it is not inert). One line a block, and whether every block
    was."""
    lines, every = [], True
    inert = measured_at.inert_changes()
    for readme in readmes:
        for match in BLOCK.finditer(readme.read_text()):
            name, verdicts = match["name"], []
            for (sha, dirty), sizes in block_commits(name).items():
                if dirty:
                    verdicts.append((False, f"{measured_at.label(sha, dirty)} (uncommitted changes: cannot tell)"))
                    continue
                changes = measured_at.product_changes(sha)
                if changes is None:
                    verdicts.append((False, f"{measured_at.label(sha)} (not a commit here)"))
                elif changes:
                    commits = measured_at.product_commits(sha)
                    # an entry inert for some runs names the blocks or the image sizes it does reach
                    others = [c for c in commits if c not in inert or reaches(inert[c], name, sizes)]
                    if commits and not others:  # every product change since is one shown not to reach these runs
                        named = ", ".join(measured_at.label(c) for c in commits)
                        verdicts.append((True, f"{measured_at.label(sha)} (changed since only by {named}: inert here)"))
                    else:
                        verdicts.append((False, f"{measured_at.label(sha)} (changed since: {', '.join(changes)})"))
                else:
                    verdicts.append((True, f"{measured_at.label(sha)} (as at HEAD)"))
            ok = bool(verdicts) and all(v for v, _ in verdicts)
            every &= ok
            where = readme.relative_to(REPO) if readme.is_relative_to(REPO) else readme
            said = ", ".join(text for _, text in verdicts) or "not measured"
            lines.append(f"{'ships' if ok else 'OLDER'}  {where}: {name}: {said}")
    return lines, every


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 naming each block that differs")
    action.add_argument("--write", action="store_true", help="rewrite the blocks in place (and the figures)")
    action.add_argument("--show", metavar="NAME", help="print one block, e.g. equal_time_2m")
    action.add_argument(
        "--shipped",
        action="store_true",
        help="say for each block whether it was measured on the product at HEAD (nbtl/, spaces, heuristics, "
        "pyproject.toml unchanged since its commits); exit 1 where one was not",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        nargs="+",
        help="README files to render or check (default: the READMEs and HISTORY.md; --shipped: the READMEs)",
    )
    args = parser.parse_args(argv)
    try:
        if args.show:
            print(render(args.show), end="")
            return 0
        if args.shipped:
            lines, every = shipped(args.readme or READMES)
            print("\n".join(lines))
            print(f"{sum(line.startswith('ships') for line in lines)} of {len(lines)} blocks measured on what ships")
            return 0 if every else 1
        if args.write:
            for results in sorted(p for p in RESULTS.glob("equal_time_*.jsonl") if RESULTS_FILE.fullmatch(p.name)):
                written = plot(results)
                if written:
                    print(f"written {written.relative_to(REPO)}")
        stale = []
        for readme in args.readme or RENDERED:
            if not readme.exists():
                raise ReportError(f"--readme {readme}: no such file")
            text, changed = update(readme.read_text(), readme.resolve().parent)
            stale += [f"{readme.relative_to(REPO) if readme.is_relative_to(REPO) else readme}: {n}" for n in changed]
            if args.write and changed:
                readme.write_text(text)
    except ReportError as error:
        print(f"report.py: {error}", file=sys.stderr)
        return 2
    for line in stale:
        print(f"{'rewritten' if args.write else 'differs from its results'}: {line}")
    if args.check and stale:
        print("run: python benchmarks/report.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
