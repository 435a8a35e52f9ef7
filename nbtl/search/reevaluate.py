"""Name the best trial robustly: train the top few once more with another seed before choosing.

On a small validation split the best validation accuracy is noisy: two trials tied at 0.967 on 90 images
scored 0.822 and 0.956 on test (shared/DESIGN.md). A search with ``search.reevaluate: {top: 3}`` trains its
``top`` best finished trials again (a *repeat*: the same config and split, another training seed derived
from the search seed), as Ray tasks with the trials' resources, and ranks those trials by the mean
validation accuracy of both runs (ties: the mean validation loss). The repeats read the search's
frozen-prefix store, so frozen trials repeat in seconds. Under a time budget a share of it is kept for the
repeats, and repeats that do not end in time are left out (the ranking then uses the single run).

With ``search.reevaluate: {top: 3, resplit: true}`` each repeat also trains and validates on another partition of
the training and validation images (:func:`nbtl.data.splits.resplit`, one partition for every repeat, so the top
trials are compared on the same new validation images; the test images never move): on 20-40 validation images
*which* images validate is a larger noise than the training seed (benchmarks/README.md, "How noisy the choice
is"). Those repeats cannot read the prefix store, whose entries belong to the search's own partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from nbtl.config import TrialConfig
from nbtl.data.splits import resplit
from nbtl.ranking import rank_trials
from nbtl.search.space import trial_seed
from nbtl.search.trainable import prefix_store
from nbtl.train import train_trial

log = logging.getLogger(__name__)

#: Share of a time budget kept for the repeats when a search re-evaluates.
BUDGET_SHARE = 0.15
#: Repeat seeds are derived from the search seed and ``REPEAT_OFFSET + rank`` (never a trial's own number).
REPEAT_OFFSET = 1_000_000
#: The seed of the one new partition of a resplit re-evaluation: the search seed and this number.
RESPLIT_OFFSET = 2_000_000
COLUMNS = ("repeat_val_accuracy", "repeat_val_loss", "mean_val_accuracy", "mean_val_loss")


def _repeat_trial(
    config: dict[str, Any],
    splits,
    weights,
    augmentation,
    prefix_dir: str | None,
    search_seed: int,
    seed: int,
    image_sizes: dict[str, int] | None = None,
    resplit_seed: int | None = None,
) -> dict:
    """One repeat, in a Ray worker: the trial's config trained again with ``seed`` (on the partition
    ``resplit_seed`` draws, when given); its last epoch's metrics."""
    trial_config = TrialConfig.from_dict({**config, "seed": seed}, where="re-evaluated trial")
    if isinstance(splits, dict):  # one data file per image size: the trial's own, else its backbone's
        splits = splits[trial_config.image_size or image_sizes[trial_config.backbone]]
    weight = (weights or {}).get(trial_config.backbone) if trial_config.pretrained else None
    if resplit_seed is not None:
        splits, prefix_dir = resplit(splits, resplit_seed), None
    return train_trial(
        trial_config,
        splits,
        augmentation=augmentation,
        state_dict=weight,
        prefix_store=prefix_store(prefix_dir, search_seed),
    ).final


@dataclass
class Reevaluation:
    """``reevaluation(table, configs) -> table``: the ``top`` best finished trials repeated and re-ranked."""

    top: int
    search_seed: int
    splits: Any
    weights: dict[str, Any]
    augmentation: dict[str, Any] | None
    prefix_dir: str | None
    resources: dict[str, float]
    deadline: float | None = None  # time.perf_counter() by which the repeats must have ended
    say: Callable[[str], None] = log.info
    image_sizes: dict[str, int] | None = None  # each backbone's size, when ``splits`` maps sizes to splits
    resplit: bool = False  # each repeat on another partition of train + val (one for all repeats)

    def __call__(self, table: pd.DataFrame, configs: dict[str, dict[str, Any]]) -> pd.DataFrame:
        import ray

        finished = table[table["status"] == "FINISHED"].head(self.top)
        if len(finished) < 2:
            return table
        task = ray.remote(_repeat_trial).options(
            num_cpus=self.resources.get("cpu", 1), num_gpus=self.resources.get("gpu", 0)
        )
        splits, weights = ray.put(self.splits), ray.put(self.weights)
        pending = {
            task.remote(
                configs[row.trial_id],
                splits,
                weights,
                self.augmentation,
                self.prefix_dir,
                self.search_seed,
                trial_seed(self.search_seed, REPEAT_OFFSET + rank),
                self.image_sizes,
                trial_seed(self.search_seed, RESPLIT_OFFSET) if self.resplit else None,
            ): row.trial_id
            for rank, row in enumerate(finished.itertuples())
        }
        timeout = None if self.deadline is None else max(0.0, self.deadline - time.perf_counter())
        done, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
        for ref in late:
            ray.cancel(ref, force=True)
        repeats: dict[str, dict] = {}
        for ref in done:
            try:
                repeats[pending[ref]] = ray.get(ref)
            except Exception as error:  # a repeat that fails leaves its trial's single run to rank it
                self.say(f"re-evaluation of trial {pending[ref]} failed: {str(error).strip().splitlines()[-1][:200]}")
        self.say(
            f"re-evaluated the top {len(finished)} trials with another seed"
            + (" on another train / validation partition" if self.resplit else "")
            + f": {len(repeats)} repeat(s) ended"
            + (f", {len(late)} cut off by the time budget" if late else "")
        )
        return rerank(table, repeats, list(finished["trial_id"]))


def rerank(table: pd.DataFrame, repeats: dict[str, dict], top: list[str]) -> pd.DataFrame:
    """``table`` with the repeats' columns; the ``top`` trials first, ordered by the mean of both runs
    (a trial without a repeat keeps its own values as the mean), then the rest as they were."""
    table = table.copy()
    for column in COLUMNS:
        table[column] = float("nan")
    for index, row in table[table["trial_id"].isin(top)].iterrows():
        repeat = repeats.get(row["trial_id"])
        accuracy, loss = row["best_val_accuracy"], row["best_val_loss"]
        if repeat is not None:
            table.loc[index, ["repeat_val_accuracy", "repeat_val_loss"]] = [
                repeat["best_val_accuracy"],
                repeat["best_val_loss"],
            ]
            accuracy, loss = (accuracy + repeat["best_val_accuracy"]) / 2, (loss + repeat["best_val_loss"]) / 2
        table.loc[index, ["mean_val_accuracy", "mean_val_loss"]] = [accuracy, loss]
    return rank_trials(table)
