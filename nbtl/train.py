"""Fit one trial: epochs under a learning-rate schedule (cosine, constant or step), per-epoch validation,
optional early stopping, test metrics at the best epoch.

Plain PyTorch: no Ray, no MLflow. A caller passes ``report`` to receive each epoch's metrics (the
search's Ray adapter turns them into ``tune.report`` calls and checkpoints). A trial with frozen
blocks trains on their outputs from a :class:`nbtl.features.PrefixStore` instead of recomputing them.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from nbtl.config import TrialConfig
from nbtl.data import AugmentedDataset, Splits, make_augmentation
from nbtl.data.augment import BatchAugmentation
from nbtl.data.images import is_large_mapping, trim_heap
from nbtl.errors import TrialDivergedError
from nbtl.features import PrefixStore
from nbtl.feeds import (
    STEP_MEMORY_MB,
    BatchIndices,
    Feed,
    evaluate_inputs,
    image_feed,
    mixed_precision_dtype,
    prefix_feed,
)
from nbtl.fit.probe import fit_linear_probe
from nbtl.transfer import TransferModel, TransferSetup, build_transfer, frozen_state_keys, load_trainable_state

logger = logging.getLogger(__name__)

#: A fully frozen trial with an MLP or spinal head makes at least this many optimizer steps (see ``train_trial``).
PROBE_MIN_STEPS = 600

#: ``report(metrics, state)``: ``metrics`` for this epoch; ``state()`` returns a resumable checkpoint dict.
ReportFn = Callable[[dict[str, float], Callable[[], dict[str, Any]]], None]


@dataclass
class TrialResult:
    """What one trial ended with: the metrics of its last epoch (which carry the best epoch's)."""

    config: TrialConfig
    history: list[dict[str, float]] = field(default_factory=list)
    #: the best epoch's weights but the frozen blocks' (see nbtl.models.classifier.trained_state_dict)
    best_weights: dict[str, Any] | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


#: On CUDA, training steps between reads of the divergence check (each read waits for the GPU).
SYNC_STEPS = 8


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def _fit_probe_head(model: TransferModel, feed: Feed, labels: torch.Tensor, seed: int, fit: bool = True) -> float:
    """Fit the linear head of a fully frozen trial on ``feed``'s pooled features of the clean train images (the
    probe needs no augmentation) with :func:`nbtl.fit.probe.fit_linear_probe`, and return its training
    cross-entropy. ``fit=False`` (a resumed trial) keeps the head as loaded."""
    linear = model.head[-1]
    if fit:
        probe = fit_linear_probe(
            feed.train[0].cpu().numpy(), labels.numpy(), linear.out_features, random_state=seed % 2**32
        )
        linear.weight.copy_(torch.as_tensor(probe.weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(probe.bias, dtype=linear.bias.dtype))
        logger.info(
            "linear probe fitted: C=%.3g over %d folds, cv log loss %.4f", probe.C, probe.folds, probe.cv_log_loss
        )
    model.eval()
    logits = feed.forward(feed.train[0].to(linear.weight.device).float())
    return float(nn.functional.cross_entropy(logits.float(), labels.to(logits.device)).item())


def train_trial(
    config: TrialConfig,
    splits: Splits,
    *,
    augmentation: dict | None = None,
    state_dict: dict[str, Any] | None = None,
    report: ReportFn | None = None,
    resume: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    prefix_store: PrefixStore | None = None,
    cache_prefix: bool = True,
    augment_on_device: bool | None = None,
    step_memory_mb: float | None = -1.0,
) -> TrialResult:
    """Train one configuration and return its per-epoch history.

    With ``cache_prefix`` and ``freeze_blocks = k >= 1`` the frozen blocks ``[0, k)`` do not run per
    step: the trial trains blocks ``[k, B)`` and the head on their outputs, computed once by
    ``prefix_store`` (train: ``V`` augmentation views per image, fixed for the search; see
    :mod:`nbtl.features.prefix`). Batch order is the uncached path's (the same shuffle generator,
    seeded by ``config.seed``); each image's view is drawn from a second generator seeded by
    ``config.seed``. Without augmentation a cached and an uncached trial reach the same metrics up to
    float error. Val and test are evaluated on the cached clean outputs.

    The linear probe (``freeze_blocks`` = all blocks, ``head: linear``, no warm-up) is fitted, not trained:
    a multinomial logistic regression with L-BFGS on the pooled features of every train view, its L2
    strength chosen by cross-validated log loss on the train split (:func:`nbtl.fit.probe.fit_linear_probe`,
    the standard linear-probe protocol), cached or not; its ``lr``, ``head_lr`` and ``l2_head`` are unused.
    Every epoch then reports the same metrics, at the cost of an evaluation. Another fully frozen trial (an
    ``mlp`` or ``spinal`` head) trains its head on pooled features computed once per trial, where a step
    takes microseconds: each epoch makes as many passes over the train split as it takes for the whole
    trial to make at least ``PROBE_MIN_STEPS`` (600) optimizer steps, with the cosine schedule over all
    of them. (Uncached, such a trial makes one pass per epoch.)

    With ``head_warmup_epochs = W`` (LP-FT, Kumar et al., ICLR 2022) epochs ``1..W`` freeze every
    block and train the head alone (on cached pooled features when caching), then ``freeze_blocks``
    applies. Warm-up epochs make the same number of steps as the others.

    The learning rates follow ``config.lr_schedule`` (see :func:`make_scheduler`). With
    ``config.patience = P`` the trial ends after the first epoch that is ``P`` epochs past its best
    one (warm-up epochs not counted); that epoch is reported with ``early_stopped = 1.0`` and
    ``stopped_at_epoch``, and the trial returns normally: a finished trial, not a failure or a
    scheduler's stop.

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
    prefix_store : PrefixStore, optional
        Where frozen-prefix outputs are looked up and kept (share one per worker, or one directory
        per search); None: a new in-memory store for this trial.
    cache_prefix : bool, default=True
        False runs every block on every step, as without a store.
    augment_on_device : bool, optional
        Gather each batch of uint8 images by index and augment it on the trial's device as a whole
        (:class:`nbtl.data.augment.BatchAugmentation`), instead of image by image on the CPU. None (the
        default): on CUDA, where the batch is also copied from pinned memory, and the model and its inputs are
        channels-last; and for train images in a memory-mapped data file of a GiB or more
        (:func:`nbtl.data.images.is_large_mapping`), whose pages the trial then drops every ``RELEASE_STEPS``
        steps and after each evaluation, so that it never holds the file in its own memory.
    step_memory_mb : float, optional
        What a training step may hold in activations saved for the backward pass (MiB), measured per input on
        two validation inputs (:func:`nbtl.feeds.measure_step_memory`): above it each batch runs as equal
        micro-batches whose gradients add up before the one optimizer step (batch-norm statistics are then a
        micro-batch's), and evaluations run in batches whose largest outputs fit it. Default
        ``nbtl.feeds.STEP_MEMORY_MB`` of the device type (512 MiB on CPUs; none on GPUs); None: no cap.

    Returns
    -------
    TrialResult
        Each epoch's metrics: ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``,
        ``val_macro_f1``, ``val_weighted_f1``, ``best_val_accuracy``, ``best_epoch``, ``test_*`` (of
        the best epoch), ``prefix_blocks`` (blocks read from the cache, 0 when uncached),
        ``prefix_cache_hit`` (1.0 when the entry came from the store, 0.0 when this trial computed
        it or ran uncached), ``epoch_time_s``, ``learning_rate`` (the head's learning rate in this epoch's
        first step); with ``patience``, ``early_stopped`` (1.0 on the epoch that stopped the trial,
        else 0.0) and, on that epoch, ``stopped_at_epoch``.

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
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if augment_on_device is None:  # on CUDA; and on CPUs for a data file larger than memory should hold
        augment_on_device = device.type == "cuda" or is_large_mapping(splits.train.images)
    amp_dtype = mixed_precision_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    num_blocks, freeze, warmup = len(model.blocks), len(setup.frozen_blocks), config.head_warmup_epochs

    generator = torch.Generator().manual_seed(config.seed)
    view_generator = torch.Generator().manual_seed(config.seed)
    drop_last = len(splits.train) > config.batch_size
    loader = DataLoader(
        AugmentedDataset(splits.train, make_augmentation(augmentation)),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=generator,
        num_workers=0,
    )
    # The same sampler over indices draws the same batches from the same generator as `loader`.
    index_loader = DataLoader(
        BatchIndices(splits.train.labels),
        batch_size=None,
        generator=generator,
        sampler=BatchSampler(RandomSampler(splits.train.labels, generator=generator), config.batch_size, drop_last),
    )
    steps_per_epoch = len(loader)
    if step_memory_mb is not None and step_memory_mb < 0:
        step_memory_mb = STEP_MEMORY_MB.get(device.type)
    cap_bytes = None if step_memory_mb is None else step_memory_mb * 2**20
    store = prefix_store if prefix_store is not None else PrefixStore()
    feeds: dict[int, Feed] = {}

    # The linear probe (every block frozen, a linear head) is fitted, not trained: L-BFGS logistic regression
    # on the pooled features with its L2 strength cross-validated (nbtl.fit.probe), cached or not.
    closed_form = freeze == num_blocks and config.head == "linear" and not warmup

    def feed_for(epoch: int) -> Feed:
        level = num_blocks if epoch <= warmup else freeze
        if level not in feeds:
            entry = None
            if (cache_prefix or closed_form) and level >= 1:
                # Past transfer_blocks the prefix holds this trial's re-initialised blocks, which the
                # pre-trained weights' hash does not describe: key it by the model's own weights then.
                weights = state_dict if level <= setup.transfer_blocks else None
                entry = (store if cache_prefix else PrefixStore()).get(
                    model, splits, level, augmentation=augmentation, state_dict=weights, clean_only=closed_form
                )
            feed = (
                image_feed(
                    model, splits, loader, index_loader, BatchAugmentation.from_spec(augmentation), augment_on_device
                )
                if entry is None
                else prefix_feed(model, entry, index_loader, device)
            )
            memory = feed.limit_memory(model, config.batch_size, cap_bytes)
            if memory is not None and feed.micro_batch < config.batch_size:
                logger.info(
                    "batches of %d run as %d micro-batches of %d at most: a training step saves about %.0f MB of "
                    "activations an input from block %d on, the cap is %.0f MB (evaluation in batches of %d)",
                    config.batch_size,
                    math.ceil(config.batch_size / feed.micro_batch),
                    feed.micro_batch,
                    memory.saved_bytes / 1e6,
                    feed.start_block,
                    cap_bytes / 1e6,
                    feed.eval_batch_size,
                )
            feeds[level] = feed
        return feeds[level]

    start_epoch = 1 if resume is None else int(resume["epoch"]) + 1
    passes = 1
    probe = freeze == num_blocks and cache_prefix and start_epoch <= config.epochs and not closed_form
    if probe and feed_for(start_epoch).train is not None:  # head steps on pooled features cost microseconds
        passes = max(1, math.ceil(PROBE_MIN_STEPS / (config.epochs * steps_per_epoch)))
    if closed_form:
        passes = 0  # no optimizer step: the head is fitted once, below, and every epoch reports the same
        probe_loss = _fit_probe_head(model, feed_for(1), splits.train.labels, config.seed, fit=resume is None)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch * passes)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    result = TrialResult(config)
    best: dict[str, float] = {"best_val_accuracy": -1.0, "best_val_loss": math.inf}
    frozen_keys = frozen_state_keys(model, freeze)
    best_weights: dict[str, torch.Tensor] | None = None  # the best epoch's, but the frozen blocks' (never change)
    if resume is not None:
        load_trainable_state(model, resume["model"], freeze)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        if "view_generator" in resume:
            view_generator.set_state(resume["view_generator"])
        torch.set_rng_state(resume["torch_rng"])
        if "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
        result.history = list(resume["history"])
        best = dict(resume["best"])
        best_weights = resume.get("best_model")
        result.best_weights = best_weights
        if result.history and result.history[-1].get("early_stopped"):
            return result  # the checkpoint of an early-stopped trial: it is done

    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        if warmup:
            model.set_head_only(epoch <= warmup, freeze)
        feed = feed_for(epoch)
        epoch_lr = _head_lr(optimizer)
        model.train()
        total_loss, seen, step = torch.zeros((), dtype=torch.float64, device=device), 0, 0
        bad = torch.zeros((), dtype=torch.bool, device=device)  # a step whose objective was not finite
        for _ in range(passes):
            for items, labels in feed.loader:
                step += 1
                inputs = feed.batch(items, view_generator, device)
                labels = labels.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = torch.zeros((), device=device)
                # one part, unless the activations need more: then parts of equal size (within one input)
                parts = math.ceil(len(labels) / (feed.micro_batch or len(labels)))
                for number, (part_inputs, part_labels) in enumerate(
                    zip(inputs.tensor_split(parts), labels.tensor_split(parts), strict=True), start=1
                ):
                    share = len(part_labels) / len(labels)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = feed.forward(part_inputs)
                        part_loss = criterion(logits.float(), part_labels)
                    objective = part_loss if parts == 1 else part_loss * share
                    if number == parts:
                        objective = objective + regularizer()  # the penalty once a step, with the last part
                    # Reading a value off the GPU waits for it: on CUDA the check reads every SYNC_STEPS steps, so
                    # the CPU gathers the next batches while the GPU works (a diverged step is caught within them).
                    bad |= ~torch.isfinite(objective.detach())
                    if (device.type != "cuda" or step % SYNC_STEPS == 0) and bool(bad):
                        raise TrialDivergedError(
                            f"training loss became {objective.item()} at epoch {epoch} step {step} "
                            f"(lr={config.lr:g}, head_lr={config.effective_head_lr():g}, "
                            f"l2sp_alpha={config.l2sp_alpha:g}): lower the learning rates or the regularisation"
                        )
                    scaler.scale(objective).backward()
                    loss = loss + part_loss.detach() * share
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total_loss += loss.detach().double() * len(labels)
                seen += len(labels)
        if bool(bad):
            raise TrialDivergedError(
                f"training loss became non-finite in epoch {epoch} (lr={config.lr:g}, "
                f"head_lr={config.effective_head_lr():g}, l2sp_alpha={config.l2sp_alpha:g}): "
                "lower the learning rates or the regularisation"
            )
        total_loss = float(total_loss)

        model.eval()
        val = evaluate_inputs(
            feed.forward, feed.val, splits.val.labels, device, feed.eval_batch_size, amp_dtype=amp_dtype
        )
        metrics = {
            "epoch": epoch,
            "train_loss": probe_loss if closed_form else total_loss / max(seen, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "val_weighted_f1": val["weighted_f1"],
            "val_ece": val["ece"],
        }
        # The best epoch: the highest validation accuracy, a tie going to the lower validation loss.
        if (val["accuracy"], -val["loss"]) > (best["best_val_accuracy"], -best.get("best_val_loss", math.inf)):
            test = evaluate_inputs(
                feed.forward, feed.test, splits.test.labels, device, feed.eval_batch_size, amp_dtype=amp_dtype
            )
            best = {
                "best_val_accuracy": val["accuracy"],
                "best_val_loss": val["loss"],
                "best_epoch": epoch,
                **{f"test_{k}": v for k, v in test.items()},
            }
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen_keys}
        metrics.update(best)
        metrics["prefix_blocks"] = min(feed.start_block, num_blocks)
        metrics["prefix_cache_hit"] = 1.0 if feed.hit else 0.0
        metrics["epoch_time_s"] = time.perf_counter() - started
        metrics["learning_rate"] = epoch_lr
        if config.patience is not None:
            # patience counts from the best epoch, or from the end of the head warm-up, whichever is later
            stop = epoch < config.epochs and epoch - max(int(best["best_epoch"]), warmup) >= config.patience
            metrics["early_stopped"] = 1.0 if stop else 0.0
            if stop:
                metrics["stopped_at_epoch"] = epoch
        if not math.isfinite(metrics["val_loss"]):
            raise TrialDivergedError(
                f"validation loss became {metrics['val_loss']} at epoch {epoch}: lower the learning rates"
            )
        result.history.append(metrics)

        if report is not None:

            def state(epoch=epoch, best=dict(best), best_weights=best_weights) -> dict[str, Any]:  # noqa: B006 (binds this epoch's)
                return {
                    "model": copy.deepcopy(model.state_dict()),
                    # a checkpoint may leave these out (nbtl.search.trainable does): resume rebuilds them
                    "frozen_keys": sorted(frozen_keys),
                    # the weights of the best epoch so far, but the frozen blocks': what a search hands over
                    # (nbtl.models.classifier.trained_state_dict rebuilds the whole model from them)
                    "best_model": best_weights,
                    "optimizer": copy.deepcopy(optimizer.state_dict()),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                    "view_generator": view_generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": list(result.history),
                    "best": best,
                    "epoch": epoch,
                }

            report(metrics, state)
        trim_heap(collect=False)  # the epoch's freed activations and evaluation batches: back to the system
        if metrics.get("early_stopped"):
            logger.info(
                "early stopping at epoch %d of %d: no better validation accuracy for %d epochs (best epoch %d)",
                epoch,
                config.epochs,
                config.patience,
                int(best["best_epoch"]),
            )
            break
    result.best_weights = best_weights
    return result


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrialConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``config.lr_schedule``, stepped once per optimizer step.

    - ``cosine``: ``CosineAnnealingLR`` over all ``epochs * steps_per_epoch`` steps (to zero).
    - ``constant``: the rates never change (``ConstantLR`` with factor 1, so checkpoints look alike).
    - ``step``: every rate is multiplied by ``lr_gamma`` after each ``lr_step_epochs`` epochs
      (``StepLR``), or after each epoch in the list ``lr_step_epochs`` (``MultiStepLR``); None means
      every ``max(1, epochs // 3)`` epochs. Epoch ``e`` (1-based) trains at ``lr * lr_gamma ** k``, ``k``
      the drops after epochs ``< e``.
    """
    if config.lr_schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if config.lr_schedule == "step":
        steps = config.lr_step_epochs
        if isinstance(steps, list):
            milestones = [epoch * steps_per_epoch for epoch in steps]
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.lr_gamma)
        period = steps if steps is not None else max(1, config.epochs // 3)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=period * steps_per_epoch, gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)


def _head_lr(optimizer: torch.optim.Optimizer) -> float:
    """The current learning rate of the ``head`` parameter group (the last group when none is named so)."""
    groups = optimizer.param_groups
    return float(next((g["lr"] for g in groups if g.get("name") == "head"), groups[-1]["lr"]))
