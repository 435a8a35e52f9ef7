"""Trials packed on one GPU: each trial's images/s at 1, 4 and 8 at once, against a bare PyTorch loop, with the
GPU's utilisation and memory.

Each trial is a process of its own, as a Ray worker holding ``resources: {gpu: 1/N}`` is: it runs
``nbtl.train.train_trial`` (what a search's trial runs: autocast in bfloat16, a channels-last model, batches gathered
from memory-mapped uint8 images into pinned memory and augmented on the GPU, its per-epoch validation and test
scoring) for a fully fine-tuned network (``freeze_blocks`` 0: nothing cached, every block runs every step). Its
images/s are training images per second of its epochs, the first epoch (CUDA and cuDNN warm-up) left out; every
process waits for the others to finish their first epoch before timing starts.

The bare loop is a plain PyTorch loop of the same network (``build_transfer``) and batch: the images already on
the device, SGD with momentum, autocast, channels-last, then one forward pass over the validation and test images
per epoch, as the trial does. It runs alone and packed like the trials.

The images are real photos: random crops of scikit-image's bundled colour pictures, one class per picture,
resized to ``--image-size`` and written once to a memory-mapped ``.npy`` file that every process maps (copy-on-write,
as nbtl's data file is). The network starts from random weights (no pre-trained file is needed to time it).

While the timed epochs run, the parent samples NVML (nvidia-ml-py): GPU utilisation (the share of time a kernel
ran) and device memory used. Writes ``results/gpu_check.json`` and prints a table. On a machine without CUDA,
``--device cuda`` (the default) says so in one line and exits 1; ``--device cpu`` runs the same on CPUs (each
process gets its share of torch threads), which is how CI-sized machines can try it.

    python benchmarks/gpu_check.py                                   # lite0, 224 px, batch 64, 1/4/8 at once
    python benchmarks/gpu_check.py --device cpu --image-size 64 --train 256 --concurrency 1,2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCHMARKS))
import measured_at  # noqa: E402

OUT = BENCHMARKS / "results" / "gpu_check.json"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")

logger = logging.getLogger("gpu_check")


def make_images(path: Path, n: int, size: int, seed: int = 0) -> tuple[list[int], list[str]]:
    """``n`` random crops (a quarter to all of the shorter side) of scikit-image's colour photos, resized to
    ``size``, into the uint8 ``.npy`` file ``path`` ``(n, 3, size, size)``; returns the labels and class names."""
    import numpy as np
    import torch
    from skimage import data

    photos = [
        torch.from_numpy(np.ascontiguousarray(getattr(data, name)()[..., :3])).permute(2, 0, 1) for name in PHOTOS
    ]
    generator = torch.Generator().manual_seed(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    labels = []
    for i in range(n):
        label = i % len(photos)
        photo = photos[label]
        side = min(photo.shape[1:])
        crop = int(torch.randint(side // 4, side + 1, (1,), generator=generator))
        top = int(torch.randint(0, photo.shape[1] - crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[2] - crop + 1, (1,), generator=generator))
        window = photo[None, :, top : top + crop, left : left + crop].float()
        resized = torch.nn.functional.interpolate(window, size=(size, size), mode="bilinear", antialias=True)
        out[i] = resized[0].round().clamp(0, 255).to(torch.uint8).numpy()
        labels.append(label)
    out.flush()
    return labels, list(PHOTOS)


def load_splits(path: Path, labels: list[int], classes: list[str], n_train: int, n_eval: int):
    """Train / val / test over the mapped file (copy-on-write: a process's stray write stays its own)."""
    import numpy as np
    import torch

    from nbtl.data import ImageDataset, Splits

    images = torch.from_numpy(np.load(path, mmap_mode="c"))
    targets = torch.as_tensor(labels, dtype=torch.int64)
    parts = [(0, n_train), (n_train, n_train + n_eval), (n_train + n_eval, n_train + 2 * n_eval)]
    made = [
        ImageDataset(images[a:b], targets[a:b], classes, "photos", False, tuple(images.shape[2:])) for a, b in parts
    ]
    return Splits(*made)


def config_for(args, epochs: int):
    from nbtl.config import TrialConfig

    return TrialConfig.from_dict(
        {
            "backbone": args.backbone,
            "pretrained": False,
            "freeze_blocks": 0,
            "lr": 0.01,
            "epochs": epochs,
            "batch_size": args.batch_size,
            "seed": 0,
        }  # fmt: skip
    )


def worker(kind: str, index: int, args, data: dict, barrier, results) -> None:
    """One trial (``kind`` 'trial') or bare loop ('bare'): put its epoch times and peak memory on ``results``."""
    import torch

    try:
        torch.set_num_threads(max(1, args.threads // args.concurrent))
        device = torch.device(args.device)
        splits = load_splits(Path(data["path"]), data["labels"], data["classes"], args.train, args.eval)
        config = config_for(args, args.epochs)
        times: list[float] = []
        if kind == "trial":
            from nbtl.features import PrefixStore
            from nbtl.train import train_trial

            def report(metrics, state) -> None:
                times.append(float(metrics["epoch_time_s"]))
                if metrics["epoch"] == 1:
                    barrier.wait(timeout=args.timeout)

            train_trial(
                config,
                splits,
                augmentation={"hflip": True, "crop_padding": args.image_size // 16},
                report=report,
                device=device,
                prefix_store=PrefixStore(),
                cache_prefix=False,
            )
        else:
            times = bare_loop(config, splits, device, barrier, args.timeout)
        memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        results.put({"kind": kind, "index": index, "epoch_s": times, "max_memory_allocated": memory})
    except BaseException as error:  # reported by the parent, which then stops
        barrier.abort()
        results.put({"kind": kind, "index": index, "error": f"{type(error).__name__}: {error}"})


def bare_loop(config, splits, device, barrier, timeout: float) -> list[float]:
    """Seconds of each epoch of a plain loop over the same network and batch, images already on ``device``."""
    import torch

    from nbtl.transfer import build_transfer

    cuda = device.type == "cuda"
    model = build_transfer(config, len(splits.train.classes)).model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    layout = torch.channels_last if cuda else torch.contiguous_format
    images = splits.train.images.to(device).contiguous(memory_format=layout)
    labels = splits.train.labels.to(device)
    evaluation = [part.images.to(device).contiguous(memory_format=layout) for part in (splits.val, splits.test)]
    generator = torch.Generator().manual_seed(0)
    size = config.batch_size
    times = []
    for epoch in range(config.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(labels), generator=generator).to(device)
        for start in range(0, len(order) - size + 1, size):
            batch = order[start : start + size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(model(images[batch]).float(), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            for part in evaluation:
                for start in range(0, len(part), 256):
                    model(part[start : start + 256]).float().cpu()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
        if epoch == 0:
            barrier.wait(timeout=timeout)
    return times


class GpuSampler:
    """Samples NVML's utilisation and memory of GPU 0 every ``period`` seconds, in a thread, between start and stop."""

    def __init__(self, period: float = 0.1) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.period = period
        self.utilisation: list[int] = []
        self.memory: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.utilisation.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            self.memory.append(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
            time.sleep(self.period)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {
            "gpu_utilisation_pct": round(statistics.fmean(self.utilisation), 1) if self.utilisation else None,
            "gpu_memory_used_gib": round(max(self.memory) / 2**30, 2) if self.memory else None,
            "samples": len(self.utilisation),
        }


def run(kind: str, concurrent: int, args, data: dict) -> dict:
    """``concurrent`` processes of ``kind`` at once; their per-process images/s and the GPU's figures."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(concurrent + 1)
    results = context.Queue()
    args.concurrent = concurrent
    processes = [
        context.Process(target=worker, args=(kind, i, args, data, barrier, results)) for i in range(concurrent)
    ]
    for process in processes:
        process.start()
    sampler = GpuSampler() if args.device == "cuda" else None
    try:
        barrier.wait(timeout=args.timeout)  # every process has run its first epoch
        timed_from = time.perf_counter()
        if sampler is not None:
            sampler.start()
    except threading.BrokenBarrierError:
        timed_from = None
    rows = [results.get(timeout=args.timeout) for _ in processes]
    wall = time.perf_counter() - timed_from if timed_from is not None else None
    gpu = sampler.stop() if sampler is not None and timed_from is not None else {}
    for process in processes:
        process.join()
    errors = [row["error"] for row in rows if "error" in row]
    if errors:
        raise RuntimeError(f"{kind} x{concurrent}: {errors[0]}")
    per_process = [args.train / statistics.median(row["epoch_s"][1:]) for row in rows]
    return {
        "kind": kind,
        "concurrent": concurrent,
        "images_per_s_each": round(statistics.fmean(per_process), 1),
        "images_per_s_min": round(min(per_process), 1),
        "images_per_s_total": round(sum(per_process), 1),
        "timed_wall_s": round(wall, 2) if wall is not None else None,
        "max_memory_allocated_gib_each": round(max(row["max_memory_allocated"] for row in rows) / 2**30, 2),
        **gpu,
        "epoch_s": [[round(t, 3) for t in row["epoch_s"]] for row in rows],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train", type=int, default=2048, help="training images (default %(default)s)")
    parser.add_argument("--eval", type=int, default=256, help="validation and test images each (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each; the first is not timed (default 4)")
    parser.add_argument("--concurrency", default="1,4,8", help="processes at once, comma-separated (default 1,4,8)")
    parser.add_argument("--kinds", default="bare,trial", help="bare, trial or both (default both)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads shared by the processes"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a run may wait for its processes")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, or pass --device cpu"
        )
        return 1
    levels = [int(n) for n in args.concurrency.split(",")]
    kinds = args.kinds.split(",")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"gpu_check: {args.backbone} at {args.image_size}px, batch {args.batch_size}, {args.train} training images, on {name}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="nbtl-gpu-check-") as tmp:
        path = Path(tmp) / "images.npy"
        started = time.perf_counter()
        labels, classes = make_images(path, args.train + 2 * args.eval, args.image_size)
        print(f"  images written to a mapped file in {time.perf_counter() - started:.1f}s")
        data = {"path": str(path), "labels": labels, "classes": classes}
        for concurrent in levels:
            for kind in kinds:
                started = time.perf_counter()
                row = run(kind, concurrent, args, data)
                rows.append(row)
                gpu = (
                    f"  GPU {row.get('gpu_utilisation_pct')}% busy, {row.get('gpu_memory_used_gib')} GiB"
                    if args.device == "cuda"
                    else ""
                )
                print(
                    f"  {kind:5s} x{concurrent}: {row['images_per_s_each']:8.1f} images/s each "
                    f"({row['images_per_s_total']:8.1f} together){gpu}  [{time.perf_counter() - started:.0f}s]",
                    flush=True,
                )
    lone = {row["kind"]: row["images_per_s_each"] for row in rows if row["concurrent"] == 1}
    for row in rows:
        if "bare" in lone:
            row["vs_lone_bare"] = round(row["images_per_s_each"] / lone["bare"], 3)
        if row["kind"] in lone:
            row["vs_lone_same_kind"] = round(row["images_per_s_each"] / lone[row["kind"]], 3)
    sha, dirty = measured_at.commit()
    document = {
        "rows": rows,
        "device": name,
        "torch": torch.__version__,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "concurrent"},
        "commit": sha,
        "dirty": dirty,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print("  kind  at once  images/s each  vs lone bare  vs lone same kind  GPU busy  GPU memory")
    for row in rows:
        print(
            f"  {row['kind']:5s} {row['concurrent']:7d}  {row['images_per_s_each']:13.1f}  {row.get('vs_lone_bare', float('nan')):12.3f}"
            f"  {row.get('vs_lone_same_kind', float('nan')):17.3f}  {row.get('gpu_utilisation_pct')!s:>8}  {row.get('gpu_memory_used_gib')!s:>10}"
        )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
