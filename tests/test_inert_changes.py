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
from fit_share import BUDGETS, RESULTS, every_task, task_classes, train_images  # noqa: E402

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
        assert (
            {"commit", "changed", "why", "check"}
            <= set(entry)
            <= {"commit", "changed", "why", "check", "reaches", "reaches_sizes"}
        ), entry
        sha = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{entry['commit']}^{{commit}}"],
            cwd=REPO, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if not sha:  # a shallow clone (CI's clean clone is a full one)
            pytest.skip(f"commit {entry['commit']} is not in this clone")
        assert measured_at.product_changes(f"{sha}^", against=sha), f"{entry['commit']} changes no product file"
        for check in [entry["check"]] if isinstance(entry["check"], str) else entry["check"]:  # a test, or a list
            path, _, name = check.partition("::")
            assert f"def {name}(" in (REPO / path).read_text(), check


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


def task_batch(task) -> int:
    """The largest batch a benchmark run of ``task`` trains at: ``batch_size: auto`` (the default and binary spaces)
    on at most its training images, or recommend's rules (32 at most)."""
    from nbtl.search.space import auto_batch_size

    return max(auto_batch_size(train_images(task)), 32)


def block_runs(name: str) -> set[tuple[int, int]]:
    """The (image size, largest batch) pairs the runs of README report block ``name`` trained at, from its results
    file."""
    import re

    import report

    path = report.source(name)
    tasks = {task.name: task for task in every_task()}
    if path.suffix == ".jsonl":
        names = set(report.read_rows(path)["task"])
        assert names <= set(tasks), f"{name}: tasks unknown to benchmarks/tasks.py: {names - set(tasks)}"
        return {(tasks[task].image_size, task_batch(tasks[task])) for task in names}
    document = json.loads(path.read_text())
    if name == "trial_speed":
        return {(int(document["options"]["image_size"]), int(document["options"]["batch_size"]))}
    if name == "probe_floor":
        return {(tasks[task].image_size, task_batch(tasks[task])) for task in document["tasks"]}
    if name == "leave_one_task_out":  # meta.yaml's trials; its tasks read "digits per_class=100 32px seed=0"
        (batch,) = next(
            p for p in load_space(REPO / "search_spaces" / "meta.yaml").parameters if p.name == "batch_size"
        ).candidates()
        return {(int(re.search(r"(\d+)px", task["task"])[1]), int(batch)) for task in document["tasks"]}
    raise AssertionError(f"report block {name}: say here which image sizes and batches its runs trained at")


def test_the_step_memory_cap_reaches_only_the_runs_at_224_px():
    """The entries of the step-memory cap (nbtl.feeds.STEP_MEMORY_MB): a trial of the shipped spaces' backbones, every
    block trained, at the largest batch a benchmark run of the task trains at (batch_size auto on its training images,
    or recommend's 32), saves less than the CPU cap on every benchmark task but those at 224 px, and an evaluation
    batch of EVAL_BATCH_SIZE fits it: those runs train as before. The image sizes of the runs where the cap binds are
    exactly each entry's ``reaches_sizes``."""
    import report
    import torch

    from nbtl.config import TrialConfig
    from nbtl.feeds import EVAL_BATCH_SIZE, STEP_MEMORY_MB, measure_step_memory
    from nbtl.transfer import build_transfer

    this = "tests/test_inert_changes.py::test_the_step_memory_cap_reaches_only_the_runs_at_224_px"
    entries = [e for e in yaml.safe_load(measured_at.INERT.read_text()) if this in str(e["check"])]
    assert entries, "no entry of inert_changes.yaml names this check"
    cap = STEP_MEMORY_MB["cpu"] * 2**20
    backbones = sorted(
        {b for space in ("default", "binary") for b in load_space(REPO / "search_spaces" / f"{space}.yaml").backbones()}
    )
    names = [m["name"] for readme in report.READMES for m in report.BLOCK.finditer(readme.read_text())]
    runs = {name: block_runs(name) for name in names}
    measured = {}  # (size, backbone) -> StepMemory
    for size in sorted({size for pairs in runs.values() for size, _ in pairs}):
        images = torch.zeros(2, 3, size, size, dtype=torch.uint8)
        for backbone in backbones:
            model = build_transfer(
                TrialConfig(backbone=backbone, freeze_blocks=0, head="spinal", pretrained=False), 10
            ).model
            measured[size, backbone] = measure_step_memory(model, model, images)

    def binds(size: int, batch: int) -> bool:
        return any(
            measured[size, b].micro_batch(batch, cap) < batch or measured[size, b].eval_batch(cap) < EVAL_BATCH_SIZE
            for b in backbones
        )

    bound = {pair for pairs in runs.values() for pair in pairs if binds(*pair)}
    assert bound and all(size == 224 for size, _ in bound), bound
    # where the cap binds at a size, it binds at every batch a run of that size trains at: the entries name the sizes
    # (report.py --shipped counts them for a block's rows at those sizes, read from the rows' task names)
    sizes = {size for size, _ in bound}
    assert {pair for pairs in runs.values() for pair in pairs if pair[0] in sizes} == bound
    for name, pairs in runs.items():
        assert set().union(*report.block_commits(name).values()) == {size for size, _ in pairs}, name  # all said
    for entry in entries:
        assert "reaches" not in entry and set(entry.get("reaches_sizes", [])) == sizes, (entry["commit"], sizes)


def test_subsample_auto_reaches_no_benchmark_run():
    """The entry of ``search.subsample: auto``: a search whose training split holds fewer than twice
    SUBSAMPLE_MIN_PER_CLASS images a class on average keeps every image, whatever its budget. Every benchmark task
    trains on fewer (its validation images counted too), so auto kept every image in every benchmark run."""
    this = "tests/test_inert_changes.py::test_subsample_auto_reaches_no_benchmark_run"
    assert any(this in str(e["check"]) for e in yaml.safe_load(measured_at.INERT.read_text())), "no entry names this"
    for task in every_task():
        assert train_images(task) < 2 * cost.SUBSAMPLE_MIN_PER_CLASS * task_classes(task), task.name
