"""Is the linear probe a floor? The probe nbtl fits against the one it trained before, on tuning tasks only.

For each task and seed the pooled EfficientNet-Lite0 features of the search's splits are computed once (the
search's augmentation: 4 train views, view 0 clean), then three probes are fitted on them:

  sgd        what nbtl did before: a linear head trained by SGD (lr 0.1, momentum 0.9, cosine schedule,
             L2 1e-4, batch_size auto) for at least 600 steps on every train view
  lbfgs      nbtl.fit.probe.fit_linear_probe: L-BFGS logistic regression on the clean view, its L2 strength
             chosen by 5-fold cross-validated log loss (what the probe start point, nbtl train's floor and
             nbtl zoo's linear heads now use)
  lbfgs-std  the same on standardised features (the alternative that was not kept)

It prints and writes (``--out``, default benchmarks/results/probe_floor.json) each probe's test accuracy,
validation loss, test expected calibration error and fitting time. Tasks: tuning tasks only (benchmarks/tasks.py).

    python benchmarks/probe_floor.py                 # ~5 min on 2 CPUs
    python benchmarks/probe_floor.py --seeds 0 --tasks digits-pc30-32
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from equal_time import provenance  # noqa: E402
from tasks import DEFAULT_ROOT, TUNING_TASKS  # noqa: E402

TASKS = ("digits-pc30-32", "fmnist-pc30-32", "photo-patches-pc60-48")
BACKBONE = "efficientnet_lite0"
AUGMENTATION = {"crop_padding": 4}  # default.yaml's


def pooled_features(task, seed: int, weights):
    """Pooled features (train views (V, N, D), val, test) and labels of ``task``'s splits under ``seed``."""
    import torch

    from nbtl.config import TrialConfig
    from nbtl.data import load_dataset, split_dataset
    from nbtl.features import PrefixStore
    from nbtl.heuristics.recipes import probe_config
    from nbtl.transfer import build_transfer

    dataset = load_dataset(
        task.data(DEFAULT_ROOT), image_size=task.image_size, per_class=task.per_class, seed=seed, classes=task.classes
    )
    splits = split_dataset(dataset, seed=seed)
    config = TrialConfig.from_dict({**probe_config(BACKBONE), "seed": seed})
    model = build_transfer(config, num_classes=len(dataset.classes), state_dict=weights).model.eval()
    entry = PrefixStore(seed=seed).get(model, splits, len(model.blocks), augmentation=AUGMENTATION, state_dict=weights)
    with torch.no_grad():

        def pool(t):
            return model.backbone.pool(t.float()).numpy()

        train = np.stack([pool(view) for view in entry.train])
        return (
            (train, splits.train.labels.numpy()),
            (pool(entry.val), splits.val.labels.numpy()),
            (pool(entry.test), splits.test.labels.numpy()),
            len(dataset.classes),
        )


def sgd_probe(train, labels, n_classes: int, seed: int):
    """nbtl's probe before: SGD with momentum, cosine, L2 1e-4 on the head, >= 600 steps over every view."""
    import torch

    from nbtl.search.space import auto_batch_size

    torch.manual_seed(seed)
    views, count, dim = train.shape
    x = torch.as_tensor(train, dtype=torch.float32)
    y = torch.as_tensor(labels)
    head = torch.nn.Linear(dim, n_classes)
    batch = auto_batch_size(count)
    steps_per_pass = max(1, count // batch)
    passes = max(1, math.ceil(600 / steps_per_pass))
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=passes * steps_per_pass)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(passes):
        order = torch.randperm(count, generator=generator)
        for step in range(steps_per_pass):
            index = order[step * batch : (step + 1) * batch]
            view = torch.randint(views, (len(index),), generator=generator)
            loss = torch.nn.functional.cross_entropy(head(x[view, index]), y[index])
            loss = loss + 0.5 * 1e-4 * head.weight.pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    return lambda features: features @ weight.T + bias


def lbfgs_probe(train, labels, n_classes: int, seed: int, standardise: bool = False):
    from nbtl.fit.probe import fit_linear_probe

    features = train[0]
    mean, scale = (features.mean(0), features.std(0) + 1e-8) if standardise else (0.0, 1.0)
    probe = fit_linear_probe((features - mean) / scale, labels, n_classes, random_state=seed)
    return lambda f: probe.logits((f - mean) / scale)


def scores(logits_fn, val, test) -> dict:
    from sklearn.metrics import log_loss

    from nbtl.fit.probe import expected_calibration_error

    def softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    p_val, p_test = softmax(logits_fn(val[0])), softmax(logits_fn(test[0]))
    classes = np.arange(p_val.shape[1])
    return {
        "val_accuracy": float((p_val.argmax(1) == val[1]).mean()),
        "val_loss": float(log_loss(val[1], p_val, labels=classes)),
        "test_accuracy": float((p_test.argmax(1) == test[1]).mean()),
        "test_loss": float(log_loss(test[1], p_test, labels=classes)),
        "test_ece": expected_calibration_error(p_test, test[1]),
        "test_images": int(len(test[1])),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tuning tasks (default %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="default %(default)s")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "results" / "probe_floor.json")
    args = parser.parse_args(argv)
    tuning = {t.name: t for t in TUNING_TASKS}
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    unknown = [n for n in names if n not in tuning]
    if unknown:
        parser.error(f"--tasks: {', '.join(unknown)} are not tuning tasks; use some of {', '.join(tuning)}")
    import torch

    from nbtl.backbones import load_pretrained_state_dict

    torch.set_num_threads(1)
    weights = load_pretrained_state_dict(BACKBONE)
    rows = []
    for name in names:
        for seed in [int(s) for s in args.seeds.split(",")]:
            train, val, test, n_classes = pooled_features(tuning[name], seed, weights)
            for probe in ("sgd", "lbfgs", "lbfgs-std"):
                started = time.perf_counter()
                if probe == "sgd":
                    logits = sgd_probe(*train, n_classes, seed)
                else:
                    logits = lbfgs_probe(*train, n_classes, seed, standardise=probe == "lbfgs-std")
                row = {"task": name, "seed": seed, "probe": probe, "fit_s": time.perf_counter() - started}
                row.update(scores(logits, val, test))
                rows.append(row)
                print(
                    f"{name} seed {seed} {probe:<9} test {row['test_accuracy']:.3f}  val loss {row['val_loss']:.3f}  "
                    f"test ECE {row['test_ece']:.3f}  ({row['fit_s']:.1f}s, {row['test_images']} test images)",
                    flush=True,
                )
    import pandas as pd

    table = pd.DataFrame(rows).groupby("probe")[["test_accuracy", "val_loss", "test_ece", "fit_s"]].mean()
    print("\nmean over tasks and seeds:\n" + table.to_string(float_format=lambda v: f"{v:.3f}"))
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    args.out.write_text(json.dumps({**provenance(), "date": date, "tasks": names, "rows": rows}, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
