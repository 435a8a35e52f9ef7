"""What a finished search hands over: the best trials' best-epoch weights, kept on their MLflow runs for
``nbtl ensemble``, and the best trial's model, logged on the parent run and registered in the Model Registry.

Everything else of a finished search (Ray Tune's checkpoints) may be cleaned afterwards.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nbtl.codec import is_unset
from nbtl.errors import one_line
from nbtl.models.classifier import Member, save_classifier, trained_state_dict
from nbtl.models.export import KEPT_ARTIFACT, KEPT_TAG, MODEL_NAME, log_classifier
from nbtl.ranking import METRIC, ranked_scored, trial_id_of
from nbtl.search.trainable import TRIAL_CHECKPOINT
from nbtl.tracking import MODEL_URI_TAG

logger = logging.getLogger(__name__)


@dataclass
class Handover:
    """What the hand-over needs from the search: the pre-trained weights its trials started from (they hold
    the frozen blocks), the classes, each backbone's image size, one test image of each size (the model's input
    example), how many trials keep their weights, and the registered model's name (None: not registered)."""

    weights: dict[str, Any]
    classes: list[str]
    image_sizes: dict[str, int]
    examples: dict[int, np.ndarray]
    keep: int
    register: str | None
    dataset: dict[str, Any] = field(default_factory=dict)

    def image_size(self, config: dict[str, Any]) -> int:
        """The size a trial of ``config`` trained at: its own ``image_size``, else its backbone's."""
        own = config.get("image_size")
        if not is_unset(own):
            return int(own)
        return int(self.image_sizes.get(config.get("backbone"), next(iter(self.examples))))


def _best_weights(result) -> tuple[dict[str, Any], dict[str, float]] | None:
    """The best epoch's weights (all but the frozen blocks') and metrics (``best_val_accuracy``, ``best_epoch``,
    ``test_*``: what those weights scored) from a Ray Tune result's latest checkpoint.

    Taken from the checkpoint, not the trial's MLflow run: a trial the time budget cuts off may have logged one
    more epoch to MLflow than Ray Tune kept."""
    import torch

    checkpoint = getattr(result, "checkpoint", None)
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        file = Path(directory) / TRIAL_CHECKPOINT
        if not file.exists():
            return None
        state = torch.load(file, map_location="cpu", weights_only=True)
    if state.get("best_model") is None:
        return None
    return state["best_model"], {k: float(v) for k, v in state.get("best", {}).items()}


def hand_over(
    tracker,
    results,
    table: pd.DataFrame,
    configs: dict[str, dict[str, Any]],
    handover: Handover,
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    """Keep the best ``handover.keep`` trials' weights on their runs, and log (and register) the best one's
    model on the parent run. Returns what was logged, or None when no trial left weights."""
    if handover.keep < 1 or table.empty:
        return None
    ranked = ranked_scored(table).head(handover.keep)  # the one ranking: the search's best trial first
    by_id: dict[str, Any] = {}
    for result in results:  # in the order Ray Tune made the trials: a later one never shadows an earlier one's id
        by_id.setdefault(trial_id_of(result), result)
    kept: list[tuple[dict[str, Any], Member]] = []
    for row in ranked.to_dict("records"):
        found = _best_weights(by_id.get(row["trial_id"]))
        if found is None or not row.get("run_id"):
            logger.warning("trial %s left no best-epoch weights (no checkpoint)", row["trial_id"])
            continue
        trained, scored = found
        config = configs[row["trial_id"]]
        pretrained = handover.weights.get(config.get("backbone"))
        state = trained_state_dict(config, len(handover.classes), trained, pretrained)
        member = Member(config, state, row["run_id"], scored)
        with tempfile.TemporaryDirectory(prefix="nbtl-kept-") as folder:
            directory = save_classifier(
                Path(folder) / KEPT_ARTIFACT, [member], handover.classes, handover.image_size(config)
            )
            tracker.client.log_artifacts(row["run_id"], str(directory), KEPT_ARTIFACT)
        tracker.client.set_tag(row["run_id"], KEPT_TAG, "true")
        tracker.client.set_tag(row["run_id"], "nbtl.kept_epoch", str(int(scored.get("best_epoch", 0))))
        kept.append((row, member))
    if not kept:
        return None
    row, member = kept[0]
    if row["trial_id"] != ranked.iloc[0]["trial_id"]:
        say(f"the best trial {ranked.iloc[0]['trial_id']} left no weights: the model is trial {row['trial_id']}'s")
    # what the kept weights scored (their checkpoint's metrics; the table's row says the same)
    metrics = {k: member.metrics.get(k, row.get(k)) for k in (METRIC, "test_accuracy", "test_macro_f1", "best_epoch")}
    tags = {
        **{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in metrics.items() if v is not None},
        "nbtl.search": tracker.search_name,
        "nbtl.trial_id": row["trial_id"],
        "nbtl.run_id": row["run_id"],
        "nbtl.search_run_id": tracker.parent_run_id,
        **({"nbtl.dataset_digest": handover.dataset["digest"]} if handover.dataset.get("digest") else {}),
    }
    try:
        logged = log_classifier(
            tracker.tracking_uri,
            tracker.parent_run_id,
            [member],
            handover.classes,
            handover.image_size(member.config),
            handover.examples[handover.image_size(member.config)],
            name=MODEL_NAME,
            register=handover.register,
            tags=tags,
            metadata={"trial_id": row["trial_id"], "trial_run_id": row["run_id"], "metrics": metrics},
        )
    except Exception as error:  # the search's results are logged already: say what failed, keep them
        say(f"could not log the best trial's model: {one_line(error, with_type=True)}")
        tracker.set_tags({"nbtl.model_error": one_line(error, with_type=True)})
        return None
    uri = logged.uri
    tracker.set_tags({MODEL_URI_TAG: logged.model_uri, **({"nbtl.registered_model": uri} if logged.version else {})})
    say(
        f"model: {uri} (trial {row['trial_id']}, epoch {int(row.get('best_epoch') or 0)}; "
        f"weights of the best {len(kept)} trial(s) kept for nbtl ensemble); classify images with: nbtl predict {uri} IMAGES"
    )
    return {"logged": logged, "kept": [r["trial_id"] for r, _ in kept]}
