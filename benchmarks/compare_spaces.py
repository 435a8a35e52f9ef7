"""Non-binary vs binary transfer: run two search spaces with the same trial budget on the same datasets.

For each (dataset, space) this runs ``nbtl search`` as a subprocess (its own embedded Ray, so nothing
leaks from one search into the next and the memory of its process tree is its own), samples the peak
memory of that process tree (the driver plus Ray's raylet, GCS and trial workers), then reads the
search's outcome from the files ``run_search`` writes (``results.csv``, ``nbtl_search.json``) and the
search's wall time from its MLflow parent run. It prints one row per search and a final table.

    python benchmarks/compare_spaces.py --smoke-test            # tiny: checks that everything runs
    python benchmarks/compare_spaces.py --out compare.csv       # the real comparison (about an hour on 2 CPUs)

See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPACES = [REPO / "search_spaces" / "default.yaml", REPO / "search_spaces" / "binary.yaml"]
DEFAULT_DATASETS = ["digits", "fashion-mnist@100"]
SMOKE = {"trials": 2, "per_class": 10, "image_size": 32, "epochs": 1}
MB = 1024 * 1024
NAN = float("nan")


def _import_psutil():
    """psutil, or the copy Ray ships in ``ray/thirdparty_files`` (Ray puts it on sys.path only on ``import ray``)."""
    try:
        import psutil

        return psutil
    except ImportError:
        pass
    spec = importlib.util.find_spec("ray")
    for location in (spec.submodule_search_locations or []) if spec else []:
        vendored = Path(location) / "thirdparty_files"
        if (vendored / "psutil").is_dir():
            sys.path.append(str(vendored))
            import psutil

            return psutil
    sys.exit("compare_spaces: needs psutil to measure memory; install it (pip install psutil)")


class ProcessTreeMonitor:
    """Samples a process and all its descendants in a background thread; keeps the peak of their summed
    RSS and summed PSS (PSS splits shared pages such as torch's libraries among the processes mapping
    them, so unlike the RSS sum it does not count them once per Ray worker)."""

    def __init__(self, pid: int, interval: float) -> None:
        self.psutil = _import_psutil()
        self.root = self.psutil.Process(pid)
        self.interval = interval
        self.peak_rss = self.peak_pss = self.peak_pss_anon = self.peak_processes = 0
        self.pss_at_peak: dict[str, int] = {}  # the peak PSS's parts (PSS_KINDS), where smaps_rollup tells them
        self.peak_at_s = 0.0  # seconds from the monitor's start to the peak PSS
        self.top_at_peak: list[dict] = []  # the processes with most PSS at the peak: name, pss, anon, file (bytes)
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessTreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        psutil = self.psutil
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:  # the search has exited
            return
        rss = pss = 0
        kinds = dict.fromkeys(PSS_KINDS, 0)
        each = []
        for process in processes:
            try:
                resident = process.memory_info().rss
                split = pss_split(process.pid)
                if split is not None:
                    proportional = split["pss"]
                else:
                    try:
                        proportional = process.memory_full_info().pss
                    except (psutil.AccessDenied, AttributeError):  # smaps unreadable, or no PSS on this platform
                        proportional = resident
            except psutil.Error:  # ended between listing and reading
                continue
            rss, pss = rss + resident, pss + proportional
            each.append({"pid": process.pid, "name": _short_name(process), "pss": proportional, **{
                kind: (split or {}).get(kind, 0) for kind in ("anon", "file")}})  # fmt: skip
            for kind in PSS_KINDS:
                kinds[kind] += (split or {}).get(kind, 0)
        self.peak_rss = max(self.peak_rss, rss)
        if pss > self.peak_pss:
            self.pss_at_peak = dict(kinds)
            self.peak_at_s = round(time.perf_counter() - self._started, 1)
            self.top_at_peak = sorted(each, key=lambda p: -p["pss"])[:6]
            for process in self.top_at_peak[:3]:  # where their memory lies: the data file, an entry, the heap
                process["mappings"] = largest_mappings(process["pid"])
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_pss_anon = max(self.peak_pss_anon, kinds["anon"])
        self.peak_processes = max(self.peak_processes, len(processes))


def _short_name(process) -> str:
    """A process's name as a table shows it: Ray's workers by the trial they run (``ray::...``), others by program."""
    try:
        line = process.cmdline()
    except Exception:  # ended, or unreadable
        return "?"
    if not line:
        return process.name()
    if line[0].startswith("ray::"):
        return line[0][:40]
    return " ".join(Path(part).name for part in line[:3])[:60]


#: The parts of PSS that ``/proc/PID/smaps_rollup`` names: anonymous memory (what the processes allocated), file
#: pages mapped (libraries, a memory-mapped data file: the kernel can drop them and read them again) and shared
#: memory (Ray's object store lives in /dev/shm).
PSS_KINDS = ("anon", "file", "shmem")


def largest_mappings(pid: int, count: int = 5) -> list[dict]:
    """The ``count`` mappings of process ``pid`` with most PSS, summed by what they map (a file's path, ``[heap]``,
    or ``[anon]`` for anonymous mappings without a name), from ``/proc/PID/smaps``: ``{"what", "pss"}`` (bytes)."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return []
    totals: dict[str, int] = {}
    what = "[anon]"
    for line in text.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's header line
            what = head[5] if len(head) == 6 else "[anon]"
        elif head and head[0] == "Pss:":
            totals[what] = totals.get(what, 0) + int(head[1]) * 1024
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:count]
    return [{"what": name, "pss": size} for name, size in ranked]


def pss_split(pid: int) -> dict[str, int] | None:
    """``{"pss", "anon", "file", "shmem"}`` in bytes from ``/proc/PID/smaps_rollup``, or None where it cannot be
    read (another platform, an older kernel, a process that ended)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
            fields[name] = int(value.split()[0]) * 1024
    if "Pss" not in fields:
        return None
    return {
        "pss": fields["Pss"],
        "anon": fields.get("Pss_Anon", 0),
        "file": fields.get("Pss_File", 0),
        "shmem": fields.get("Pss_Shmem", 0),
    }


def parse_dataset(text: str, per_class: int | None) -> tuple[str, str, int | None]:
    """``SPEC`` or ``SPEC@N`` (at most N images per class) -> (label, spec, per_class); --per-class wins."""
    spec, _, n = text.rpartition("@")
    if not (spec and n.isdigit()):  # no '@N' suffix: a path may hold '@' itself
        spec, n = text, ""
    chosen = per_class if per_class is not None else (int(n) if n else None)
    return (spec if chosen is None else f"{spec}@{chosen}"), spec, chosen


def prepare_space(path: Path, epochs: int | None, folder: Path) -> tuple[Path, dict]:
    """The space itself, or (with ``epochs``) a copy whose trials train that many epochs; ASHA's grace
    period is capped so that the scheduler still makes sense with so few epochs."""
    document = yaml.safe_load(path.read_text())
    if epochs is None:
        return path, document
    document.setdefault("parameters", {})["epochs"] = epochs
    scheduler = (document.get("search") or {}).get("scheduler") or {}
    if scheduler.get("type", "asha") == "asha" and scheduler.get("grace_period", 1) > epochs:
        scheduler["grace_period"] = epochs
    copy = folder / f"{path.stem}_epochs{epochs}.yaml"
    copy.write_text(
        f"# {path} with epochs: {epochs} (written by benchmarks/compare_spaces.py)\n"
        + yaml.safe_dump(document, sort_keys=False)
    )
    return copy, document


def run_search(
    space: Path, dataset: str, per_class: int | None, name: str, args, storage: Path, log_path: Path
) -> tuple[int, float, ProcessTreeMonitor]:
    command = [
        sys.executable,
        "-m",
        "nbtl",
        "search",
        str(space),
        "--data",
        dataset,
        "--name",
        name,
        "--trials",
        str(args.trials),
        "--tracking-uri",
        args.tracking_uri,
        "--storage-path",
        str(storage),
    ]
    for flag, value in (
        ("--per-class", per_class),
        ("--image-size", args.image_size),
        ("--max-concurrent", args.max_concurrent),
        ("--seed", args.seed),
    ):
        if value is not None:
            command += [flag, str(value)]
    # No --address: nbtl starts a fresh embedded Ray per search, so its workers are in the measured tree.
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        with ProcessTreeMonitor(process.pid, args.sample_interval) as monitor:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if args.verbose:
                    print("    " + line, end="", flush=True)
            returncode = process.wait()
    return returncode, time.perf_counter() - started, monitor


def read_outcome(storage: Path) -> dict:
    """Best trial, its test accuracy and the trial counts from the experiment folder under ``storage``;
    the search's own wall time (data, Ray trials, tracking; no interpreter start) from its MLflow parent run."""
    states = sorted(storage.glob("*/nbtl_search.json"))
    if not states:
        return {}
    folder = states[-1].parent
    state = json.loads(states[-1].read_text())
    outcome: dict = {"experiment_path": str(folder), "parent_run_id": state.get("parent_run_id")}
    if (folder / "results.csv").is_file() and (folder / "results.csv").stat().st_size > 1:
        table = pd.read_csv(folder / "results.csv")
        counts = table["status"].value_counts()
        outcome.update({status.lower(): int(counts.get(status, 0)) for status in ("FINISHED", "STOPPED", "FAILED")})
        ok = table[(table["status"] != "FAILED") & table["best_val_accuracy"].notna()]
        if not ok.empty:
            best = ok.loc[ok["best_val_accuracy"].idxmax()]
            outcome.update(
                {
                    "best_val_acc": float(best["best_val_accuracy"]),
                    "test_acc": float(best["test_accuracy"]),
                    "best_trial": best["trial_id"],
                    "best_config": {k: _plain(best[k]) for k in table.columns if k in _CONFIG_SHOWN},
                }
            )
    try:
        from mlflow.tracking import MlflowClient

        run = MlflowClient(state["tracking_uri"]).get_run(state["parent_run_id"])
        outcome["search_s"] = run.data.metrics.get("wall_time_s")
    except Exception as error:  # the benchmark still has its own wall time
        print(f"  (could not read the MLflow parent run: {type(error).__name__}: {error})")
    return outcome


_CONFIG_SHOWN = (
    "backbone",
    "transfer_blocks",
    "freeze_blocks",
    "lr",
    "lr_decay",
    "head_lr",
    "l2sp_alpha",
    "l2_beta",
    "l2_head",
    "head",
    "head_width",
    "head_dropout",
)


def _plain(value):
    return None if pd.isna(value) else (value.item() if hasattr(value, "item") else value)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
        epilog="example: python benchmarks/compare_spaces.py --smoke-test",
    )
    p.add_argument(
        "--spaces",
        nargs="+",
        type=Path,
        default=DEFAULT_SPACES,
        help="search space YAMLs (default: search_spaces/default.yaml search_spaces/binary.yaml)",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=DEFAULT_DATASETS,
        help="nbtl --data specs; SPEC@N keeps at most N images per class (default: digits fashion-mnist@100)",
    )
    p.add_argument(
        "--trials",
        type=int,
        help="trial budget of every search (default: the largest search.trials "
        "of the spaces, so every space gets the same budget)",
    )
    p.add_argument("--per-class", type=int, help="images per class for every dataset (overrides @N)")
    p.add_argument("--image-size", type=int, help="image size of every search (default: the spaces')")
    p.add_argument(
        "--epochs",
        type=int,
        help="epochs per trial: runs a copy of each space with this fixed (default: the spaces' own)",
    )
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the spaces')")
    p.add_argument("--seed", type=int, help="seed of split, sampler and trials (default: the spaces')")
    p.add_argument("--tracking-uri", help="MLflow store (default: a sqlite file in the benchmark's temporary folder)")
    p.add_argument("--storage-path", type=Path, help="Ray Tune results and checkpoints (default: the temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (MLflow store, results, logs)")
    p.add_argument("--out", type=Path, help="also write the table to this .csv or .json file")
    p.add_argument("--sample-interval", type=float, default=0.5, help="seconds between memory samples (default 0.5)")
    p.add_argument("--verbose", "-v", action="store_true", help="echo the output of each nbtl search")
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="tiny run to check that everything works: {trials} trials, {per_class} images per class, "
        "{image_size}px, {epochs} epoch".format(**SMOKE),
    )
    args = p.parse_args(argv)
    if args.smoke_test:
        for key, value in SMOKE.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    for key in ("trials", "per_class", "image_size", "epochs", "max_concurrent"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.out and args.out.suffix not in (".csv", ".json"):
        p.error(f"--out {args.out}: must end in .csv or .json")
    for space in args.spaces:
        if not space.is_file():
            p.error(f"--spaces {space}: no such file")
    return args


SHOWN = [
    "dataset",
    "space",
    "trials",
    "best_val_acc",
    "test_acc",
    "finished",
    "stopped",
    "failed",
    "wall_s",
    "search_s",
    "peak_rss_mb",
    "peak_pss_mb",
    "exit",
]


def benchmark_one(
    label: str,
    spec: str,
    per_class: int | None,
    original: Path,
    space: Path,
    space_name: str,
    args,
    storage_root: Path,
    stamp: str,
    workdir: Path,
) -> dict:
    """Run one search and return its row of the table."""
    slug = f"{label}-{space_name}".replace("/", "_").replace("@", "-pc")
    storage, log_path = storage_root / f"{stamp}-{slug}", workdir / "logs" / f"{slug}.log"
    print(f"\n== {label} / {space_name} ({original.name}) ... log {log_path}", flush=True)
    returncode, wall, monitor = run_search(space, spec, per_class, f"compare-{slug}", args, storage, log_path)
    row = {
        "dataset": label,
        "space": space_name,
        "trials": args.trials,
        "best_val_acc": NAN,
        "test_acc": NAN,
        "finished": 0,
        "stopped": 0,
        "failed": 0,
        "wall_s": round(wall, 1),
        "search_s": NAN,
        "peak_rss_mb": round(monitor.peak_rss / MB),
        "peak_pss_mb": round(monitor.peak_pss / MB),
        "processes": monitor.peak_processes,
        "exit": returncode,
        "log": str(log_path),
    }
    row.update(read_outcome(storage))
    row["search_s"] = round(row["search_s"], 1) if row["search_s"] is not None else NAN
    if returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        print(f"  nbtl search exited {returncode}; last lines of its log:\n    " + "\n    ".join(tail))
    print(
        f"  best val {_fmt(row['best_val_acc'])}  test {_fmt(row['test_acc'])}  trials "
        f"{row['finished']} finished / {row['stopped']} stopped / {row['failed']} failed  wall {row['wall_s']}s  "
        f"peak RSS {row['peak_rss_mb']} MB (PSS {row['peak_pss_mb']} MB, {row['processes']} processes)",
        flush=True,
    )
    if row.get("best_config"):
        print(
            "  best config: "
            + ", ".join(
                f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in row["best_config"].items() if v is not None
            )
        )
    return row


def write_out(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        table = table.copy()
        if "best_config" in table:
            table["best_config"] = table["best_config"].map(lambda c: json.dumps(c) if isinstance(c, dict) else "")
        table.to_csv(path, index=False)
    else:
        path.write_text(json.dumps(table.to_dict(orient="records"), indent=2, default=str))
    print(f"written {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="nbtl-compare-"))
    own_tracking, own_storage = args.tracking_uri is None, args.storage_path is None
    args.tracking_uri = args.tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    storage_root = (args.storage_path or workdir / "results").resolve()
    (workdir / "logs").mkdir()
    spaces = [(path, *prepare_space(path.resolve(), args.epochs, workdir)) for path in args.spaces]
    if args.trials is None:
        args.trials = max(int((doc.get("search") or {}).get("trials", 8)) for _, _, doc in spaces)
    datasets = [parse_dataset(text, args.per_class) for text in args.datasets]
    print(
        f"compare_spaces: {len(spaces)} spaces x {len(datasets)} datasets, {args.trials} trials each; "
        f"MLflow {args.tracking_uri}; results under {storage_root}",
        flush=True,
    )

    rows = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for label, spec, per_class in datasets:
        for original, space, document in spaces:
            rows.append(
                benchmark_one(
                    label,
                    spec,
                    per_class,
                    original,
                    space,
                    document.get("name", original.stem),
                    args,
                    storage_root,
                    stamp,
                    workdir,
                )
            )
    failed = any(row["exit"] != 0 for row in rows)
    keep = args.keep or failed

    table = pd.DataFrame(rows)
    print("\nResults (same trial budget per space; accuracies of the trial with the best validation accuracy):")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table[SHOWN].round({"best_val_acc": 4, "test_acc": 4}).to_string(index=False, na_rep="-"))
    if not keep:  # these would point into the folder removed below
        table = table.drop(
            columns=["log"]
            + (["experiment_path"] if own_storage else [])
            + (["parent_run_id"] if own_tracking else []),
            errors="ignore",
        )
    if args.out:
        write_out(table, args.out)
    if keep:
        print(f"kept {workdir} (logs; MLflow: mlflow ui --backend-store-uri {args.tracking_uri})")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4g}"


if __name__ == "__main__":
    sys.exit(main())
