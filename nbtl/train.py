"""Fit one trial: epochs with a cosine schedule, per-epoch validation, test metrics at the best epoch.

Plain PyTorch: no Ray, no MLflow. A caller passes ``report`` to receive each epoch's metrics (the
search's Ray adapter turns them into ``tune.report`` calls and checkpoints).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.utils.data import DataLoader

from nbtl.config import TrialConfig
from nbtl.data import AugmentedDataset, ImageDataset, Splits, make_augmentation
from nbtl.errors import TrialDivergedError
from nbtl.transfer import TransferSetup, build_transfer

#: ``report(metrics, state)``: ``metrics`` for this epoch; ``state()`` returns a resumable checkpoint dict.
ReportFn = Callable[[dict[str, float], Callable[[], dict[str, Any]]], None]


@dataclass
class TrialResult:
    """What one trial ended with: the metrics of its last epoch (which carry the best epoch's)."""

    config: TrialConfig
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageDataset, device: torch.device, batch_size: int = 256,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Loss, accuracy, macro-F1 and weighted-F1 of ``model`` on ``data`` (scikit-learn metrics)."""
    model.eval()
    losses, predictions = [], []
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size].to(device, non_blocking=True)
        labels = data.labels[start:start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        losses.append(nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item())
        predictions.append(logits.argmax(1).cpu())
    y_true = data.labels.numpy()
    y_pred = torch.cat(predictions).numpy()
    return {
        "loss": sum(losses) / len(data),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
    }


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_trial(config: TrialConfig, splits: Splits, *, augmentation: dict | None = None,
                state_dict: dict[str, Any] | None = None, report: ReportFn | None = None,
                resume: dict[str, Any] | None = None, device: torch.device | str | None = None) -> TrialResult:
    """Train one configuration and return its per-epoch history.

    Parameters
    ----------
    config : TrialConfig
        The trial's settings (validated).
    splits : Splits
        Train / val / test images, uint8 ``(N, 3, S, S)``, decoded once by the caller.
    augmentation : dict, optional
        The search's augmentation spec (same for every trial), see :func:`nbtl.data.make_augmentation`.
    state_dict : dict, optional
        Pre-trained backbone weights (Backbone key format), loaded once by the caller and shared.
    report : callable, optional
        Called after each epoch with the metrics and a function returning a checkpoint dict.
    resume : dict, optional
        A checkpoint dict produced by ``state()`` in an earlier ``report``: training continues after it.
    device : str or torch.device, optional
        Default CUDA when available (with autocast: bfloat16, or float16 with a gradient scaler),
        else CPU.

    Raises
    ------
    TrialDivergedError
        When the training loss becomes NaN or infinite.
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats slow CPU kernels by 10x once weights get tiny
    seed_everything(config.seed)
    setup: TransferSetup = build_transfer(config, num_classes=len(splits.train.classes), state_dict=state_dict)
    model, optimizer, regularizer = setup.model.to(device), setup.optimizer, setup.regularizer.to(device)
    amp_dtype = _amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(AugmentedDataset(splits.train, make_augmentation(augmentation)),
                        batch_size=config.batch_size, shuffle=True, drop_last=len(splits.train) > config.batch_size,
                        generator=generator, num_workers=0)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    result = TrialResult(config)
    best: dict[str, float] = {"best_val_accuracy": -1.0}
    start_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
        result.history = list(resume["history"])
        best = dict(resume["best"])
        start_epoch = int(resume["epoch"]) + 1

    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        total_loss, seen = 0.0, 0
        for step, (images, labels) in enumerate(loader):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
                loss = criterion(logits.float(), labels)
            penalty = regularizer()
            objective = loss + penalty
            if not torch.isfinite(objective):
                raise TrialDivergedError(
                    f"training loss became {objective.item()} at epoch {epoch} step {step + 1} "
                    f"(lr={config.lr:g}, head_lr={config.effective_head_lr():g}, l2sp_alpha={config.l2sp_alpha:g}): "
                    "lower the learning rates or the regularisation"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += loss.item() * len(labels)
            seen += len(labels)

        val = evaluate(model, splits.val, device, amp_dtype=amp_dtype)
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / max(seen, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "val_weighted_f1": val["weighted_f1"],
        }
        if val["accuracy"] > best["best_val_accuracy"]:
            test = evaluate(model, splits.test, device, amp_dtype=amp_dtype)
            best = {"best_val_accuracy": val["accuracy"], "best_epoch": epoch,
                    **{f"test_{k}": v for k, v in test.items()}}
        metrics.update(best)
        metrics["epoch_time_s"] = time.perf_counter() - started
        if not math.isfinite(metrics["val_loss"]):
            raise TrialDivergedError(f"validation loss became {metrics['val_loss']} at epoch {epoch}: lower the learning rates")
        result.history.append(metrics)

        if report is not None:
            def state(epoch=epoch, best=dict(best)) -> dict[str, Any]:
                return {
                    "model": copy.deepcopy(model.state_dict()),
                    "optimizer": copy.deepcopy(optimizer.state_dict()),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": list(result.history),
                    "best": best,
                    "epoch": epoch,
                }
            report(metrics, state)
    return result
