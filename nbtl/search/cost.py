"""What a trial costs here, in seconds, before it runs: the cost model behind the search's setup estimate.

One measurement per (backbone, image size) on this machine: a forward pass of a batch through each block in
turn (each block's share of the forward time) and a training step of the whole network (forward, backward,
SGD step), best of a few, with the torch threads a trial gets. A trial's seconds follow from its config:

- the blocks it trains (``freeze_blocks`` and up, the frozen prefix served from the prefix store) cost a training
  step's share per training image and a forward's share per validation image, every epoch;
- a frozen prefix is computed once, forward only, for the training views and the validation and test images
  (cached by the search: the first trial of that prefix pays it);
- a fully frozen trial with a linear head (the probe) is one forward pass over every image.

It is a model, not a promise: the search prints it as "about", and ASHA, the time budget and the trials' own
reports decide what really runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nbtl.config import TrialConfig
from nbtl.transfer import build_transfer

#: Images in the timed batch, and timed repeats (the best is kept: the rest waited on something else).
BATCH, REPEATS = 8, 3
#: Least growth of a step's seconds with the image side in :func:`scaled` (pixels grow with its square; fixed
#: per-step costs make small sizes grow slower).
MIN_SIZE_POWER = 1.0


@dataclass(frozen=True)
class Speed:
    """Seconds per image of one backbone at one size, here."""

    backbone: str
    image_size: int
    forward_s: float  # all blocks, no gradient
    train_s: float  # forward, backward and an SGD step of the whole network
    block_share: tuple[float, ...]  # each block's share of the forward time (sums to 1)

    def trained_share(self, first_block: int) -> float:
        """The share of the network from ``first_block`` on (the head alone: 2 %)."""
        return max(0.02, sum(self.block_share[first_block:]))


_MEASURED: dict[tuple[str, int, int], Speed] = {}


def measure_speed(backbone: str, image_size: int, threads: int = 1) -> Speed:
    """:class:`Speed` of ``backbone`` at ``image_size`` on ``threads`` torch threads (random weights: the
    arithmetic is the same), measured once per process."""
    import torch

    key = (backbone, int(image_size), int(threads))
    if key in _MEASURED:
        return _MEASURED[key]
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        with torch.random.fork_rng(devices=[]):
            model = build_transfer(TrialConfig(backbone=backbone, pretrained=False), 2).model
            images = torch.randint(0, 256, (BATCH, 3, image_size, image_size), dtype=torch.uint8)
            labels = torch.zeros(BATCH, dtype=torch.long)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

            def forward() -> list[float]:
                times, x = [], images
                with torch.no_grad():
                    started = time.perf_counter()
                    x = model.forward_to(x, 1)
                    times.append(time.perf_counter() - started)
                    for block in list(model.blocks)[1:]:
                        started = time.perf_counter()
                        x = block(x)
                        times.append(time.perf_counter() - started)
                return times

            def step() -> float:
                started = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                return time.perf_counter() - started

            model.eval()
            forward()  # warm-up: first calls allocate
            per_block = min((forward() for _ in range(REPEATS)), key=sum)
            model.train()
            step()
            train = min(step() for _ in range(REPEATS))
    finally:
        torch.set_num_threads(before)
    total = sum(per_block) or 1e-9
    speed = Speed(backbone, int(image_size), total / BATCH, train / BATCH, tuple(t / total for t in per_block))
    _MEASURED[key] = speed
    return speed


def trial_seconds(config: TrialConfig, speed: Speed, n_train: int, n_eval: int, cached: bool = True) -> float:
    """About how long ``config`` trains here, on ``n_train`` training images and ``n_eval`` validation and test
    images (see the module docstring)."""
    blocks = len(speed.block_share)
    freeze = min(config.freeze_blocks, blocks)
    if freeze == blocks and config.head == "linear" and not config.head_warmup_epochs:
        return (n_train + n_eval) * speed.forward_s  # the probe: features once, then a fitted head
    first = freeze if cached else 0
    prefix = (n_train + n_eval) * speed.forward_s * (1 - speed.trained_share(first)) if first else 0.0
    epoch = n_train * speed.train_s * speed.trained_share(first) + n_eval * speed.forward_s * speed.trained_share(first)
    return prefix + config.epochs * epoch


#: ``image_size: auto``: the share of the time budget (after the wrap-up) the start points may take.
AUTO_SHARE = 0.25
#: The share of a search's time budget that ``recommend``'s fit measures may take (nbtl.search.start.fit_images).
FIT_SHARE = 0.25
#: :func:`fit_seconds`, calibrated on 2 CPUs (2026-12-07) against ``measure_task`` on Fashion-MNIST with Lite0 and
#: Lite1: 275 s for 2,000 images at 224 px (0.071 s an image from :func:`measure_speed` on 1 thread: the features
#: of a batch of 64 and every block's pooling take longer than a batch of 8's forward) and 11.4 s for 480 at 32 px.
#: The model says 241 s and 14.6 s: 12 % short at 224 px, 28 % long at 32 px.
FIT_FORWARD_FACTOR, FIT_TABLE_S, FIT_LOAD_S = 1.6, 0.006, 1.0


def fit_seconds(speeds: list[Speed], n_images: int) -> float:
    """About how long ``recommend``'s fit measures take on ``n_images`` images with the backbones of ``speeds`` (each
    measured on 1 thread): per backbone its weights (:data:`FIT_LOAD_S`), then per image the features of every block
    (:data:`FIT_FORWARD_FACTOR` times the forward pass) and the fit table's share (:data:`FIT_TABLE_S`)."""
    return sum(FIT_LOAD_S + n_images * (FIT_FORWARD_FACTOR * speed.forward_s + FIT_TABLE_S) for speed in speeds)


#: ``image_size: auto``: the sizes it chooses from (up to the backbone's own).
AUTO_SIZES = (32, 48, 64, 96, 128, 160, 192, 224, 240, 260)


def scaled(low: Speed, high: Speed, image_size: int) -> Speed:
    """The speed at ``image_size`` from two measured sizes: each seconds-per-image as a power of the side,
    fitted through both (log-log), the block shares of the nearer one. The power is at least
    :data:`MIN_SIZE_POWER`: on a busy machine the smaller size can measure slower than the larger one, and a cost
    that fell as images grew would send ``image_size: auto`` to the largest size."""
    import math

    def between(a: float, b: float) -> float:
        if low.image_size == high.image_size or a <= 0 or b <= 0:
            return a * (image_size / low.image_size) ** 2
        power = math.log(b / a) / math.log(high.image_size / low.image_size)
        return a * (image_size / low.image_size) ** max(MIN_SIZE_POWER, power)

    near = low if abs(image_size - low.image_size) <= abs(image_size - high.image_size) else high
    return Speed(
        low.backbone,
        int(image_size),
        between(low.forward_s, high.forward_s),
        between(low.train_s, high.train_s),
        near.block_share,
    )


def auto_image_size(
    native: int,
    configs: list[TrialConfig],
    speed_at,
    n_train: int,
    n_eval: int,
    seconds: float,
    at_once: int = 1,
) -> tuple[int, str]:
    """``image_size: auto``: the largest of :data:`AUTO_SIZES` up to ``native`` at which ``configs`` (the start
    points) take at most :data:`AUTO_SHARE` of ``seconds``, ``at_once`` at a time; ``speed_at(size)`` gives the
    :class:`Speed` at a size. Returns the size and why (one clause); the smallest size when none fits."""
    share = AUTO_SHARE * seconds
    sizes = sorted({s for s in AUTO_SIZES if s <= native} | {native}, reverse=True)
    cost = {}
    for size in sizes:
        speed = speed_at(size)
        cost[size] = sum(trial_seconds(c, speed, n_train, n_eval) for c in configs) / max(1, at_once)
        if cost[size] <= share:
            larger = [s for s in sizes if s > size]
            above = f"; {larger[-1]}px would take about {cost[larger[-1]]:.0f}s" if larger else ""
            return size, (
                f"the start points take about {cost[size]:.0f}s of the {seconds:.0f}s for trials at {size}px "
                f"(at most {AUTO_SHARE:.0%}){above}"
            )
    smallest = sizes[-1]
    return smallest, (
        f"even at {smallest}px the start points take about {cost[smallest]:.0f}s, more than {AUTO_SHARE:.0%} of the "
        f"{seconds:.0f}s for trials: a longer --time-budget or fewer images would afford a larger size"
    )


#: ``search.subsample: auto``: on a subsample, the share of the time left for trials the cheapest start point may take.
SUBSAMPLE_SHARE = 0.5
#: ``search.subsample: auto``: how much slower a trial runs in a search than :func:`measure_speed` times a batch alone:
#: the scale run at 95fde22 (60,000 Fashion-MNIST images at 224 px, 2 CPUs, two trials at once) computed the probe's
#: features of 7,500 images in about 1,140 s, 0.152 s an image beside a fine-tune, where 0.058 s was timed alone.
SEARCH_SLOWDOWN = 2.6
#: ``search.subsample: auto``: the fewest training images a class keeps on average (the smallest share it tries); a
#: search with fewer than twice as many keeps every image: a subsample is a fidelity for large data, and on small data
#: each image counts.
SUBSAMPLE_MIN_PER_CLASS = 200


def auto_subsample(cost_at, seconds: float, smallest: float) -> tuple[float, str]:
    """``search.subsample: auto``: 1.0 when the cheapest start point (``cost_at(fraction)``: its seconds on that share
    of the images) finishes in the ``seconds`` left for trials on every image; else the largest of 1/2, 1/4, ... (down
    to ``smallest``) at which it takes at most :data:`SUBSAMPLE_SHARE` of them, so that it and others finish. Returns
    the share and why (one clause); the smallest share tried when none fits."""
    full = cost_at(1.0)
    if full <= seconds:
        return 1.0, f"the cheapest start point takes about {full:.0f}s of the {seconds:.0f}s left for trials"
    fraction, cost = 1.0, full
    while fraction / 2 >= smallest:
        fraction /= 2
        cost = cost_at(fraction)
        if cost <= SUBSAMPLE_SHARE * seconds:
            return fraction, (
                f"on every image the cheapest start point would take about {full:.0f}s, more than the {seconds:.0f}s "
                f"left for trials; on 1/{round(1 / fraction)} of them about {cost:.0f}s (at most "
                f"{SUBSAMPLE_SHARE:.0%})"
            )
    return fraction, (
        f"on every image the cheapest start point would take about {full:.0f}s, more than the {seconds:.0f}s left "
        f"for trials, and still {cost:.0f}s on the smallest share tried (1/{round(1 / fraction)}): trials run until "
        "the budget ends them; a longer --time-budget, a smaller --image-size or a GPU lets them finish"
    )


class CostModel:
    """``cost(configs) -> seconds``: :func:`trial_seconds` of full candidate configs (dicts), with each backbone's
    measured :class:`Speed`; a config it cannot read costs what a default one does. Picklable (a study holds it)."""

    def __init__(self, speeds: dict[str, Speed], n_train: int, n_eval: int, cached: bool = True) -> None:
        self.speeds = dict(speeds)
        self.n_train, self.n_eval, self.cached = int(n_train), int(n_eval), bool(cached)

    def config(self, values: dict) -> TrialConfig:
        keys = set(TrialConfig.keys())
        known = {k: v for k, v in values.items() if k in keys}
        try:
            return TrialConfig.from_dict(known)
        except Exception:  # e.g. batch_size: auto, unresolved: the cost does not depend on it
            return TrialConfig(
                backbone=str(known.get("backbone", TrialConfig.backbone)),
                freeze_blocks=int(known.get("freeze_blocks", 0) or 0),
                epochs=int(known.get("epochs", TrialConfig.epochs) or TrialConfig.epochs),
                head=str(known.get("head", TrialConfig.head)),
            )

    def __call__(self, configs: list[dict]):
        import numpy as np

        seconds = []
        for values in configs:
            config = self.config(values)
            speed = self.speeds.get(config.backbone) or next(iter(self.speeds.values()))
            seconds.append(trial_seconds(config, speed, self.n_train, self.n_eval, self.cached))
        return np.asarray(seconds, dtype=float)
