"""The product changes ``benchmarks/inert_changes.yaml`` lists as not reaching the benchmarks' runs, checked: each
entry names a commit of this repository that changes the product and a test that exists, and the conditions the
entries rely on hold for every benchmark task (``benchmarks/tasks.py``). Where a task, a budget or the cost model
grows past them, this fails, and the figures must be measured again (``report.py --shipped``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import measured_at  # noqa: E402
from fit_share import BUDGETS, RESULTS, every_task, train_images  # noqa: E402

from nbtl.heuristics.recommend import FIT_MAX_IMAGES  # noqa: E402
from nbtl.search import cost  # noqa: E402
from nbtl.search.space import load_space  # noqa: E402

#: How much slower than the machine that measured ``results/fit_share.json`` the benchmark machine may be with the
#: condition still holding (the benchmark's slowest sitting trained 116 images/s, its fastest 149: 1.3 times). The
#: cost model errs long at small sizes (fit_seconds: 28 % at 32 px), which adds to it there.
MARGIN = 1.5


def test_entries_name_product_commits_and_existing_tests():
    entries = yaml.safe_load(measured_at.INERT.read_text())
    assert entries, "benchmarks/inert_changes.yaml lists no change"
    for entry in entries:
        assert set(entry) == {"commit", "changed", "why", "check"}, entry
        sha = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{entry['commit']}^{{commit}}"],
            cwd=REPO, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if not sha:  # a shallow clone (CI's clean clone is a full one)
            pytest.skip(f"commit {entry['commit']} is not in this clone")
        assert measured_at.product_changes(f"{sha}^", against=sha), f"{entry['commit']} changes no product file"
        path, _, name = entry["check"].partition("::")
        assert f"def {name}(" in (REPO / path).read_text(), entry["check"]


def test_the_fit_bounds_do_not_reach_the_benchmark_tasks():
    """The changes of issue 18 in inert_changes.yaml: recommend's fit measures on a sample of FIT_MAX_IMAGES training
    images at most, at most FIT_SHARE of a budget by fit_seconds, and a large data file's pages dropped (by the fit,
    the driver after its setup, and the prefix store, which also draws a large file's views a batch at a time).
    Every benchmark task trains on fewer images, and its data is far below a large mapping. Under each shipped
    budget its fit is predicted, by the product's fit_seconds on the forward speeds benchmarks/fit_share.py timed
    with nothing else running (results/fit_share.json, with the cost model it was timed for), to take less than its
    share on a machine MARGIN times slower: so the searches measured before those commits ran as they run now."""
    from nbtl.data.images import LARGE_MAPPING_BYTES
    from nbtl.data.packaged import native_images

    for task in every_task():
        n_train = train_images(task)
        assert 0 < n_train <= FIT_MAX_IMAGES, task.name
        # the data file: a task on files holds at most its source's images, a built-in's split is of its n_train
        images = len(native_images(task.origin).labels) if task.origin else n_train
        assert images * 3 * task.image_size**2 < LARGE_MAPPING_BYTES / 2, task.name

    recorded = json.loads(RESULTS.read_text())
    backbones = load_space(REPO / "search_spaces" / "default.yaml").backbones()
    assert recorded["backbones"] == backbones, "the default space's backbones changed: run benchmarks/fit_share.py"
    model = {name: getattr(cost, name) for name in ("FIT_SHARE", "FIT_FORWARD_FACTOR", "FIT_TABLE_S", "FIT_LOAD_S")}
    assert recorded["model"] == model, "the fit cost model changed: run benchmarks/fit_share.py"
    for budget, tasks in BUDGETS.items():
        for task in tasks:
            speeds = [
                cost.Speed(b, task.image_size, recorded["forward_s"][f"{b}@{task.image_size}"], 0.0, (1.0,))
                for b in backbones
            ]
            predicted = cost.fit_seconds(speeds, train_images(task))
            assert predicted * MARGIN < cost.FIT_SHARE * budget, (task.name, budget, predicted)
