"""benchmarks/report.py: the READMEs' benchmark tables are what the committed results files say (the CI check),
and the statistics behind them on small hand-made rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import measured_at  # noqa: E402
import report  # noqa: E402


def test_readme_blocks_are_rendered_from_the_committed_results():
    for readme in report.RENDERED:
        text = readme.read_text()
        rendered, changed = report.update(text, readme.parent)
        assert not changed, (
            f"{readme}: blocks {changed} differ from benchmarks/results; run benchmarks/report.py --write"
        )
        assert rendered == text


def test_the_benchmarks_readme_has_the_blocks():
    names = {m["name"] for m in report.BLOCK.finditer((BENCHMARKS / "README.md").read_text())}
    assert {
        "equal_time_2m_shipped",
        "equal_time_5m_shipped",
        "equal_time_15m_224",
        "ablations_2m_shipped",
        "trial_speed",
        "leave_one_task_out",
    } <= names
    history = {m["name"] for m in report.BLOCK.finditer(report.HISTORY.read_text())}
    assert {
        "equal_time_2m",
        "equal_time_2m_prior_off",
        "equal_time_15m_prior_off",
        "equal_time_15m_shipped",
        "ablations_2m",
        "ablations_tuning_2m",
    } <= history
    assert not names & history, "a block is either the product's figure (README) or history, not both"


def test_a_block_without_results_says_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text = "a\n<!-- report:equal_time_7m -->\nold\n<!-- /report:equal_time_7m -->\nb\n"
    rendered, changed = report.update(text)
    assert changed == ["equal_time_7m"]
    assert "Not measured yet" in rendered and rendered.startswith("a\n") and rendered.endswith("\nb\n")


def test_check_exits_1_naming_the_stale_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:trial_speed -->\nstale\n<!-- /report:trial_speed -->\n")
    assert report.main(["--check", "--readme", str(readme)]) == 1
    assert "trial_speed" in capsys.readouterr().out


def test_unknown_block_is_one_clear_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:nonsense -->\n<!-- /report:nonsense -->\n")
    assert report.main(["--check", "--readme", str(readme)]) == 2
    assert "report block 'nonsense': unknown" in capsys.readouterr().err


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    diffs = np.array([0.05, -0.02, 0.03, 0.0, 0.08, 0.01])
    low, high = report.bootstrap_interval(diffs)
    assert low <= diffs.mean() <= high
    assert (low, high) == report.bootstrap_interval(diffs)
    assert report.bootstrap_interval([0.1]) == (0.1, 0.1)


def test_wins_losses_ties_of_the_paired_difference():
    stats = report.paired_difference([0.1, 0.1, -0.05, 0.0])
    assert (stats["wins"], stats["losses"], stats["ties"], stats["n"]) == (2, 1, 1, 4)
    assert stats["mean"] == pytest.approx(0.0375)


def _rows():
    # two (task, seed) blocks; in the second, binary has no result and so no pair
    rows = []
    for task, seed, accs in (("a", 0, (0.9, 0.8, 0.6)), ("a", 1, (0.7, float("nan"), 0.7))):
        for method, acc, at in zip(("default", "binary", "probe"), accs, (50.0, 80.0, 10.0)):
            curve = [] if acc != acc else [(at, acc)]
            rows.append({"task": task, "seed": seed, "method": method, "test_accuracy": acc, "curve": curve})
    return pd.DataFrame(rows)


def test_pairs_only_where_both_have_a_result():
    pairs = report.paired(_rows(), "binary")
    assert list(pairs["seed"]) == [0] and pairs["diff"].iloc[0] == pytest.approx(0.1)
    assert len(report.paired(_rows(), "probe")) == 2


def test_regret_is_0_for_the_best_and_1_for_the_worst_and_ranks_follow():
    curves = report.anytime(_rows(), ["default", "binary", "probe"], budget=100.0, points=101)
    assert curves["blocks"] == 1  # seed 1 lacks binary
    assert curves["final_regret"] == {"default": 0.0, "binary": pytest.approx(1 / 3), "probe": 1.0}
    assert curves["final_rank"] == {"default": 1.0, "binary": 2.0, "probe": 3.0}
    # at t = 20 s only the probe has a result: it ranks first, the others tie for last
    assert curves["rank"]["probe"][20] == 1.0 and curves["rank"]["default"][20] == 2.5
    assert curves["regret"]["default"][20] == 1.0 and curves["regret"]["probe"][20] == 1.0
    assert curves["regret"]["default"][100] == 0.0
    assert curves["auc"]["default"] == pytest.approx(0.9 * 0.5)


def test_area_under_a_step_curve_is_normalised_by_the_budget():
    assert report.area_under([(0.0, 0.5)], 10.0) == pytest.approx(0.5)
    assert report.area_under([(5.0, 0.4), (7.5, 0.8)], 10.0) == pytest.approx((0.4 * 2.5 + 0.8 * 2.5) / 10)
    assert report.area_under([(12.0, 0.9)], 10.0) == 0.0


def test_step_values_hold_the_last_point_and_are_nan_before_the_first():
    values = report.step_values([(2.0, 0.5), (4.0, 0.7)], [0.0, 2.0, 3.0, 5.0])
    assert np.isnan(values[0]) and list(values[1:]) == [0.5, 0.5, 0.7]


def test_render_names_commits_and_pooled_line(tmp_path):
    rows = _rows().assign(
        role="reporting", budget_s=100.0, exit=0, test_macro_f1=0.5, wall_s=90.0, commit="abcdef0123", dirty=False
    )
    rows.loc[rows["seed"] == 1, ["commit", "dirty"]] = ["1234567890", True]
    text = report.render_methods(rows, ("probe", "binary", "default"), 100.0, "")
    assert "`1234567*`, `abcdef0`" in text and "**pooled: reporting tasks**" in text
    assert "| binary | +10.0 [+10.0, +10.0] 1/0/0 |" in text
    assert "Runs without a result" in text  # binary seed 1


def test_targets_compare_default_with_the_best_floor_of_each_task():
    rows = []
    for seed in range(4):
        for method, a, b in (("probe", 0.70, 0.50), ("binary", 0.60, 0.62), ("recommend", 0.65, 0.55)):
            rows += [
                {"task": "a", "seed": seed, "method": method, "test_accuracy": a, "wall_s": 10.0, "role": "reporting"},
                {"task": "b", "seed": seed, "method": method, "test_accuracy": b, "wall_s": 10.0, "role": "reporting"},
            ]
        rows += [
            {"task": t, "seed": seed, "method": "default", "test_accuracy": v, "wall_s": 120.0, "role": "reporting",
             "at_chance": 1, "scored_trials": 10}
            for t, v in (("a", 0.75), ("b", 0.61 + 0.01 * seed))
        ]  # fmt: skip
    lines = report.targets(pd.DataFrame(rows))
    # task a: best floor probe (0.70), +5 points each seed; task b: best floor binary (0.62), -1, 0, +1, +2 points
    assert lines[0].startswith("PASS") and "+2.8 points" in lines[0] and "over 8 (task, seed) pairs" in lines[0]
    assert lines[1].startswith("PASS") and "worst +0.5 (b; best floor there: binary)" in lines[1]
    worse = [{**r, "test_accuracy": 0.60} if (r["task"], r["method"]) == ("b", "default") else r for r in rows]
    assert (
        "MISS on no task more than 1 point below that best: worst -2.0" in report.targets(pd.DataFrame(worse))[1]
    )  # task b: 2 points below binary
    assert lines[2].startswith("MISS") and "8 of 80" in lines[2]
    assert lines[3].startswith("MISS") and "time 8% of default's" in lines[3]


def test_selection_block_reads_the_default_rows_selection_record():
    record = {
        "scored_trials": 5,
        "n_val": 20,
        "tied": 3,
        "near": 4,
        "chosen_test_accuracy": 0.40,
        "tied_test_min": 0.40,
        "tied_test_max": 0.65,
        "probe_test_accuracy": 0.66,
        "oracle_test_accuracy": 0.67,
        "spearman_val_test": 0.7,
    }
    frame = pd.DataFrame(
        [
            {
                "task": "cards",
                "seed": 0,
                "method": "default",
                "budget_s": 120.0,
                "commit": "abc1234",
                "dirty": False,
                "selection": record,
            },
            {"task": "cards", "seed": 0, "method": "probe", "budget_s": 120.0, "commit": "abc1234", "dirty": False},
        ]
    )
    text = report.render_selection("selection_2m", frame)
    assert "| cards | 1 | 20 | 3.0 | 4.0 | 25.0 | -26.0 | +27.0 | 0.70 |" in text and "`abc1234`" in text
    assert "Not measured" in report.render_selection("selection_2m", frame.drop(columns="selection"))


def test_selection_rules_replay_the_kept_trials_and_judge_each_rule_by_its_choice(tmp_path):
    """20 validation images (one image = 0.05): the probe is one image below the best; the best is tied twice and
    its tie is broken by loss. Each rule must name the trial its definition says, judged by that trial's test score."""
    import json

    import equal_time
    import selection_rules

    table = pd.DataFrame(
        [
            # source, status, best val acc, best val loss, last val acc, last val loss, test acc
            ("probe", "FINISHED", 0.80, 0.50, 0.80, 0.50, 0.70),
            ("sampler", "FINISHED", 0.85, 0.90, 0.75, 1.00, 0.40),
            ("conventional", "FINISHED", 0.85, 0.60, 0.85, 0.60, 0.65),
            ("recommend-1", "FINISHED", 0.75, 0.30, 0.75, 0.30, 0.60),
            ("sampler", "FAILED", None, None, None, None, None),
        ],
        columns=["source", "status", "best_val_accuracy", "best_val_loss", "val_accuracy", "val_loss", "test_accuracy"],
    ).assign(trial_id=lambda t: [f"t{i}" for i in range(len(t))])
    rows = equal_time.trial_rows(table)
    assert rows[4]["best_val_accuracy"] is None and rows[0]["source"] == "probe"
    path = tmp_path / "results.jsonl"
    path.write_text(
        json.dumps({"task": "a", "seed": 0, "method": "default", "trial_rows": rows})
        + "\n"
        + json.dumps({"task": "a", "seed": 0, "method": "probe"})
        + "\n"
    )
    searches = selection_rules.read_searches([path])
    assert len(searches) == 1
    chosen = selection_rules.replay(searches).set_index("rule")["test_accuracy"]
    # current: 0.85 tied, the lower loss (0.60) -> conventional; loss: recommend-1 (0.30); one standard error at
    # 0.85 of 20 images is 0.08: probe (0.80) is inside, recommend-1 (0.75) is not
    assert chosen["current"] == 0.65 and chosen["loss"] == 0.60
    assert chosen["se_loss"] == 0.70 and chosen["se_probe"] == 0.70 and chosen["near_loss"] == 0.70
    assert chosen["last_epoch"] == 0.65
    assert "se_probe" in selection_rules.render(selection_rules.replay(searches))


def test_every_benchmark_names_its_commit_through_one_lookup(monkeypatch):
    monkeypatch.delenv("NBTL_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS.parent, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=BENCHMARKS.parent, capture_output=True, text=True
    )
    assert measured_at.commit() == (head.stdout.strip(), bool(dirty.stdout.strip()))
    monkeypatch.setenv("NBTL_COMMIT", "0123456789abcdef*")  # a copy of the tree without .git
    assert measured_at.commit() == ("0123456789abcdef", True)
    assert measured_at.label(*measured_at.commit()) == "0123456*"
    assert measured_at.label(None) == "?"
    # no script asks git by itself
    for script in BENCHMARKS.glob("*.py"):
        if script.name != "measured_at.py":
            assert '"git"' not in script.read_text(), f"{script.name} looks up its commit itself: use measured_at"


def test_shipped_says_which_blocks_were_measured_on_the_product_at_head(tmp_path, monkeypatch, capsys):
    """``report.py --shipped`` (issue 17, item 8) on a real git repository: a block measured at a commit whose
    nbtl/, spaces, heuristics and pyproject.toml are those of HEAD ships, whatever else changed since (the tests' tiny
    space, the benchmarks, a space's comments); one measured before a change to nbtl/ does not, and says what changed."""
    repo = tmp_path / "repo"

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def commit(path: str, text: str) -> str:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
        git("add", "-A")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", path)
        return git("rev-parse", "HEAD")

    repo.mkdir()
    git("init", "-q")
    for path in ("nbtl/train.py", "search_spaces/default.yaml", "heuristics/rules.yaml", "pyproject.toml"):
        first = commit(path, "1\n")
    commit("search_spaces/tiny.yaml", "trials: 3\n")  # the tests' space: not the product
    before_change = commit("benchmarks/equal_time.py", "x = 1\n")
    commit("nbtl/train.py", "2\n")
    monkeypatch.setattr(measured_at, "REPO", repo)
    assert measured_at.product_changes(git("rev-parse", "HEAD")) == []
    assert measured_at.product_changes(before_change) == ["nbtl"]
    assert measured_at.product_changes(first) == ["nbtl"]
    assert measured_at.product_changes("0" * 40) is None
    shipped = commit("search_spaces/tiny.yaml", "trials: 4\n")
    assert measured_at.product_changes(shipped) == []
    # A space's comment is not the product; its data is.
    commented = commit("search_spaces/default.yaml", "1  # the learned prior is off (HISTORY.md)\n")
    assert measured_at.product_changes(shipped, against=commented) == []
    assert measured_at.product_changes(shipped, against=commit("search_spaces/default.yaml", "2\n")) == [
        "search_spaces"
    ]
    shipped = commit("search_spaces/default.yaml", "1\n")

    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(report, "RESULTS", results)
    (results / "probe_floor.json").write_text(json.dumps({"commit": before_change, "dirty": False, "rows": []}))
    (results / "trial_speed.json").write_text(json.dumps({"commit": shipped, "dirty": False, "rows": []}))
    readme = tmp_path / "README.md"
    readme.write_text(
        "".join(
            f"<!-- report:{n} -->\n<!-- /report:{n} -->\n" for n in ("trial_speed", "probe_floor", "leave_one_task_out")
        )
    )
    commit("search_spaces/tiny.yaml", "trials: 5\n")  # HEAD moves on: the product does not
    assert report.main(["--shipped", "--readme", str(readme)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ships") and "trial_speed" in lines[0] and "(as at HEAD)" in lines[0]
    assert lines[1].startswith("OLDER") and "probe_floor" in lines[1] and "(changed since: nbtl)" in lines[1]
    assert lines[2].startswith("OLDER") and "leave_one_task_out: not measured" in lines[2]
    assert lines[3] == "1 of 3 blocks measured on what ships"

    # A product change listed in benchmarks/inert_changes.yaml (shown not to reach the runs) keeps a block shipping;
    # one more change to nbtl/ that is not listed makes it older again.
    changed = git("log", "--format=%H", "-1", "--", "nbtl/train.py")
    inert = tmp_path / "inert_changes.yaml"
    inert.write_text(f"- {{commit: {changed[:10]}, changed: x, why: y, check: tests/t.py::t}}\n")
    monkeypatch.setattr(measured_at, "INERT", inert)
    assert measured_at.product_commits(before_change) == [changed]
    assert report.main(["--shipped", "--readme", str(readme)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("ships") and f"(changed since only by {changed[:7]}: inert here)" in lines[1]
    assert lines[3] == "2 of 3 blocks measured on what ships"
    # An entry that reaches some blocks (``reaches``) is inert for the others only.
    inert.write_text(
        f"- {{commit: {changed[:10]}, changed: x, why: y, check: tests/t.py::t, reaches: [probe_floor]}}\n"
    )
    report.main(["--shipped", "--readme", str(readme)])
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[1].startswith("OLDER")
        and "probe_floor" in lines[1]
        and lines[3] == "1 of 3 blocks measured on what ships"
    )
    inert.write_text(
        f"- {{commit: {changed[:10]}, changed: x, why: y, check: tests/t.py::t, reaches: [trial_speed]}}\n"
    )
    report.main(["--shipped", "--readme", str(readme)])
    assert capsys.readouterr().out.splitlines()[1].startswith("ships")
    # One that reaches the runs at some image sizes (``reaches_sizes``) counts for a block's rows at those sizes only:
    # probe_floor's tasks are at 32 px, and a results file's rows are judged by the sizes of those at each commit.
    inert.write_text(f"- {{commit: {changed[:10]}, changed: x, why: y, check: tests/t.py::t, reaches_sizes: [224]}}\n")
    (results / "probe_floor.json").write_text(
        json.dumps({"commit": before_change, "dirty": False, "rows": [], "tasks": ["digits-pc30-32"]})
    )
    report.main(["--shipped", "--readme", str(readme)])
    assert capsys.readouterr().out.splitlines()[1].startswith("ships")
    (results / "probe_floor.json").write_text(
        json.dumps({"commit": before_change, "dirty": False, "rows": [], "tasks": ["digits-pc30-32", "icons-pc40-224"]})
    )
    report.main(["--shipped", "--readme", str(readme)])
    assert capsys.readouterr().out.splitlines()[1].startswith("OLDER")
    row = {"seed": 0, "method": "default", "budget_s": 540.0, "exit": 0}
    rows = [
        {**row, "task": "fmnist-t10k-pc50-32", "commit": before_change},
        {**row, "task": "icons-pc40-224", "commit": shipped},
    ]
    (results / "equal_time_9m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.block_commits("equal_time_9m") == {(before_change, False): {32}, (shipped, False): {224}}
    both = tmp_path / "BOTH.md"
    both.write_text("<!-- report:equal_time_9m -->\n<!-- /report:equal_time_9m -->\n")
    report.main(["--shipped", "--readme", str(both)])  # the 224-px rows were measured after the change
    assert capsys.readouterr().out.splitlines()[0].startswith("ships")
    rows[0]["task"] = "fmnist-t10k-pc50-224"
    (results / "equal_time_9m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report.main(["--shipped", "--readme", str(both)])  # now some were measured before it
    assert capsys.readouterr().out.splitlines()[0].startswith("OLDER")
    inert.write_text(
        f"- {{commit: {changed[:10]}, changed: x, why: y, check: tests/t.py::t, reaches: [trial_speed]}}\n"
    )
    (results / "probe_floor.json").write_text(json.dumps({"commit": before_change, "dirty": False, "rows": []}))
    later = commit("nbtl/train.py", "3\n")
    assert measured_at.product_commits(before_change) == [changed, later]
    report.main(["--shipped", "--readme", str(readme)])
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[1].startswith("OLDER")
        and lines[0].startswith("OLDER")
        and lines[3] == "0 of 3 blocks measured on what ships"
    )
