"""End to end, on embedded Ray: a search under a time budget, that starts from the probe, the conventional
recipe and nbtl recommend's configs, gives each trial its own derived seed, and computes each frozen prefix
once for all its trials (the feature store under the search's folder)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, run_nbtl
from nbtl.search.space import trial_seed
from nbtl.tracking import search_experiment

pytestmark = pytest.mark.e2e

# 60 s did not fit the three start points once under CI load; 75 s once left no trial finished (CI at fb174de, on a
# machine at half its usual speed while another search test ran beside it: 51 s for trials, none reported an epoch;
# alone here the first finishes 34 s after the start)
BUDGET_S = 120
SLACK_S = 30  # Ray's shutdown and the parent run's plots come after the budget ends
NAME = "e2e-budget"


def budget_space(tmp_path: Path) -> Path:
    document = yaml.safe_load((REPO / "search_spaces" / "tiny.yaml").read_text())
    document = copy.deepcopy(document)
    document["search"]["start_points"] = ["probe", "conventional", "recommend"]
    document["search"]["scheduler"] = {"type": "fifo"}
    document["parameters"]["freeze_blocks"] = {"choices": [7, 9]}  # two prefixes to cache, both cheap
    document["parameters"]["transfer_blocks"] = 9
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_time_budget_start_points_seeds_and_prefix_cache(tmp_path, tracking_uri):
    results = tmp_path / "results"
    run = run_nbtl(
        "search",
        str(budget_space(tmp_path)),
        "--data",
        "digits",
        "--name",
        NAME,
        "--keep-weights",  # the model hand-over is tested in test_models_e2e and test_mlflow_ui
        "0",
        "--time-budget",
        f"{BUDGET_S}s",
        "--max-concurrent",
        "2",
        "--tracking-uri",
        tracking_uri,
        "--storage-path",
        str(results),
        cwd=tmp_path,
        timeout=BUDGET_S + 300,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    out = run.stdout
    assert "trials until the time budget ends" in out and f"time budget {BUDGET_S // 60}m" in out
    assert "start points, run first: probe, conventional, recommend-1" in out
    assert " left)" in out  # progress lines say what is spent and left
    # before the trials: the setup's time, a trial's cost here, and how many trials the time left affords
    estimate = next(line for line in out.splitlines() if line.startswith("setup took "))
    assert "costs about" in estimate and "the 3 start point(s)" in estimate and "more, 2 at a time" in estimate
    assert re.search(r"finished \[1/~\d+\]", out)  # the count is what the budget affords, estimated

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(search_experiment(NAME))
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # Trial n trains with trial_seed(search seed, n): that orders the runs as Optuna proposed them (two start at once).
    number = {trial_seed(0, n): n for n in range(len(children))}  # trial numbers run 0 .. trials - 1
    children.sort(key=lambda r: number[int(r.data.params["seed"])])
    assert parent.info.status == "FINISHED" and all(c.info.status != "RUNNING" for c in children)
    # The budget: recorded on the parent, and kept.
    assert float(parent.data.params["time_budget_s"]) == BUDGET_S
    assert parent.data.metrics["time_budget_s"] == BUDGET_S
    assert parent.data.metrics["wall_time_s"] <= BUDGET_S + SLACK_S
    assert parent.data.metrics["time_budget_used"] == pytest.approx(parent.data.metrics["wall_time_s"] / BUDGET_S)
    assert parent.data.params["start_points"].startswith("probe,conventional,recommend-1")
    assert len(children) >= 3, "the budget should fit the start points"

    # The first trials are the start points: the probe (everything frozen), then the conventional recipe moved
    # to the space (freeze_blocks 0 -> 7, the nearest choice).
    probe, conventional = children[0].data.params, children[1].data.params
    assert (probe["transfer_blocks"], probe["freeze_blocks"], probe["head"]) == ("9", "9", "linear")
    assert (conventional["transfer_blocks"], conventional["freeze_blocks"]) == ("9", "7")
    assert float(conventional["lr"]) == pytest.approx(0.03)

    # Labels: where each trial came from and why it ended, on its run and in results.csv (FIFO: no ASHA stops).
    sources = [c.data.tags.get("nbtl.source") for c in children]
    assert sources[:3] == ["probe", "conventional", "recommend-1"] and set(sources[3:]) <= {"sampler"}, sources
    reasons = {c.data.tags.get("nbtl.trial_id"): c.data.tags.get("nbtl.stop_reason") for c in children}
    assert set(reasons.values()) <= {"finished", "patience", "time_budget"} and "finished" in reasons.values(), reasons
    assert all((c.data.tags.get("nbtl.stopped_early") == "true") == (reasons[c.data.tags["nbtl.trial_id"]] == "time_budget")
               for c in children)  # fmt: skip

    # Seeds: each trial's training seed is derived from the search seed and its number (the sort above found them all).
    seeds = [int(c.data.params["seed"]) for c in children]
    assert len(set(seeds)) == len(seeds) and seeds[:3] == [trial_seed(0, n) for n in range(3)]

    # The frozen-prefix store: one entry per (backbone, frozen blocks), computed by one trial, read by the rest.
    folder = next(results.glob(f"{NAME}*"))
    table = pd.read_csv(folder / "results.csv")
    # one row a trial (a clean-clone CI of 4fbf570 once found a trial_id twice here: the rows, should it recur)
    assert table["trial_id"].is_unique, table[table["trial_id"].duplicated(keep=False)].to_dict("records")
    assert dict(zip(table["trial_id"], table["stop_reason"], strict=True)) == reasons
    assert sorted(table["source"]) == sorted(sources)
    assert table["finished_at_s"].notna().all() and (table["finished_at_s"] <= BUDGET_S + SLACK_S).all()
    assert (table.sort_values("finished_at_s")["finished_at_s"].iloc[:2] < BUDGET_S).all()
    reported = table[table["prefix_blocks"].notna() & (table["prefix_blocks"] > 0)]
    assert len(reported) >= 2
    misses = reported[reported["prefix_cache_hit"] == 0]
    entries = [p for p in (folder / "prefix_cache").iterdir() if (p / "key.json").exists()]  # an entry: a folder
    # one entry per (frozen blocks, views), each computed by one trial: the probe's holds the clean view only
    names = [p.name.split("-") for p in entries]  # backbone, b<blocks>, <size>px, v<views>, digest
    assert len({(n[1], n[3]) for n in names}) == len(entries), entries
    blocks = sorted(int(n[1][1:]) for n in names)
    assert sorted(misses["prefix_blocks"].astype(int)) == blocks, entries
    assert set(blocks) == set(reported["prefix_blocks"].astype(int)), entries


def test_a_budget_the_setup_spends_is_refused_in_one_line_naming_a_minimum(tmp_path, tracking_uri):
    # 5 s: 5 s are kept for the wrap-up alone, so whatever the setup took, no trial could run
    results = tmp_path / "results"
    run = run_nbtl(
        "search", str(REPO / "search_spaces" / "tiny.yaml"), "--data", "digits", "--name", "short",
        "--time-budget", "5s", "--tracking-uri", tracking_uri, "--storage-path", str(results), cwd=tmp_path,
    )  # fmt: skip
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert run.returncode == 2 and len(errors) == 1, run.stdout[-2000:] + run.stderr[-3000:]
    assert errors[0].startswith("nbtl search: error: --time-budget 5s: the setup (data, start points, Ray) took")
    minimum = re.search(r"give at least --time-budget (\d+)m00s", errors[0])
    assert minimum and int(minimum[1]) >= 1, errors[0]
    assert "Traceback" not in run.stderr
    assert not (results / "short").exists()  # the results folder it claimed is given back
    client = MlflowClient(tracking_uri=tracking_uri)
    assert not [e for e in client.search_experiments() if e.name.endswith("short")]  # nothing logged
