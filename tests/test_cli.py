"""The ``nbtl`` command line: help on every command, and bad input ending in one clear line, exit 2,
before any trial runs.

Every command runs in its own folder, started ahead by the module (``started``) while its first tests run; each
test reads its own. Most only import torch and refuse: they run one after another through ``nbtl``'s entry point in
one interpreter (``nbtl_in_one_interpreter``); the trainings each as an ``nbtl`` process of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import REPO, nbtl_in_one_interpreter, new_store, run_nbtl, selected_tests

TINY = REPO / "search_spaces" / "tiny.yaml"


@pytest.mark.parametrize("command", [[], ["search"], ["backbones"]])
def test_help_on_every_command(tmp_path, command):
    result = run_nbtl(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: nbtl" in result.stdout


def every_command():
    """``(words, parser)`` of every command and sub-command ``nbtl``'s parser has (``["heuristics", "learn"]``)."""
    import argparse

    from nbtl.cli import build_parser

    found = []

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    found.append((words + [name], command))
                    walk(command, words + [name])

    walk(build_parser(), [])
    return found


def test_help_of_every_command_reads_clean():
    commands = every_command()
    assert {"search", "backbones", "fit", "recommend", "train", "zoo", "predict", "ensemble"} <= {
        words[0] for words, _ in commands
    }
    for words, parser in commands:
        text = parser.format_help()
        assert text.startswith(f"usage: nbtl {' '.join(words)}"), (words, text[:200])
        assert "%%" not in text and "%(" not in text, (words, text)  # argparse escapes left unformatted


def test_no_finished_trial_says_why():
    import pandas as pd

    from nbtl.cli.search_run import no_trial_finished

    failed = no_trial_finished(pd.DataFrame({"status": ["FAILED", "KILLED"], "error": ["TrialDivergedError: nan", ""]}))
    assert failed.startswith("No trial finished: 1 of 2 failed") and "nbtl.error" in failed
    cut = no_trial_finished(pd.DataFrame({"status": ["KILLED", "KILLED", "KILLED"]}))
    assert "3 trial(s) started and none reported an epoch" in cut and "--time-budget" in cut and "errors" not in cut
    assert "1 trial(s)" not in no_trial_finished(pd.DataFrame({"trial_id": []}))  # an empty table: 0 started


def test_console_table_shows_the_top_trials_and_what_tells_them_apart():
    import pandas as pd

    from nbtl.cli.search_run import CONSOLE_PARAMS, CONSOLE_ROWS, console_table

    n = 14
    table = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(n)], "run_id": ["r"] * n, "status": ["FINISHED"] * n,
            "backbone": ["efficientnet_lite0"] * n, "lr": [0.1 / (i + 1) for i in range(n)],
            "head": ["linear", "mlp"] * (n // 2), "transfer_blocks": [9] * n, "freeze_blocks": list(range(n)),
            "l2sp_alpha": [0.0, 0.01] * (n // 2), "epochs": [6] * n, "batch_size": [16, 32] * (n // 2),
            "head_warmup_epochs": [0, 1] * (n // 2), "seed": list(range(n)), "best_val_accuracy": [0.5] * n,
            "test_accuracy": [0.5] * n, "val_loss": [1.0] * n, "source": ["probe"] + ["sampler"] * (n - 1),
            "stop_reason": ["finished"] * n, "error": [""] * n,
        }
    )  # fmt: skip
    shown, rows = console_table(table)
    assert rows == CONSOLE_ROWS < n
    assert shown[:5] == ["trial_id", "source", "stop_reason", "best_val_accuracy", "test_accuracy"]
    params = shown[5:]
    assert len(params) == CONSOLE_PARAMS and {"lr", "freeze_blocks"} <= set(params)  # the most varied first
    assert not {"backbone", "transfer_blocks", "epochs", "run_id", "seed", "val_loss", "error"} & set(params)
    table.loc[3, ["status", "error"]] = ["FAILED", "TrialDivergedError: loss became nan"]
    assert console_table(table)[0][-1] == "error"


def test_backbones_lists_registry(started):
    result, _ = started["backbones"]
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"efficientnet_lite0", "resnet18", "mobilenet_v3_small"} <= set(names)


def write_space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def one_line_error(result, *fragments: str, command: str = "search") -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"nbtl {command}: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.stderr
    return lines[0]


BAD_SPACES = {
    "unknown parameter": (
        "parameters:\n  backbone: efficientnet_lite0\n  learning_rate: {low: 0.1, high: 1}\n",
        "learning_rate",
    ),
    "low above high": ("parameters:\n  lr: {low: 0.5, high: 0.1}\n", "lr"),
    "log with zero": ("parameters:\n  lr: {low: 0.0, high: 0.1, log: true}\n", "lr"),
    "unknown section": ("search: {trials: 2}\nsearch_space: {}\n", "search_space"),
    "unknown backbone": ("parameters:\n  backbone: {choices: [efficientnet_lite0, resnet-50]}\n", "resnet-50"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_is_rejected_naming_the_key(started, case):
    result, folder = started["bad space", case]
    one_line_error(result, BAD_SPACES[case][1], str(folder / "space.yaml"))
    assert not (folder / "mlflow.db").exists(), "a rejected space must not start a search"


def test_missing_space_file(started):
    one_line_error(started["missing space"][0], "nope.yaml")


def test_missing_data_path(started):
    one_line_error(started["missing data"][0], "no_such_dir")


def corrupt_images(folder: Path) -> Path:
    """An ImageFolder of two classes, one of whose files is not an image."""
    from PIL import Image

    for label in ("cat", "dog"):
        (folder / "data" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / "data" / label / f"{i}.png")
    (folder / "data" / "dog" / "3.png").write_bytes(b"not a png at all")
    return folder / "data"


def test_corrupt_image_is_named(started):
    one_line_error(started["corrupt image"][0], "3.png")


def test_bad_numbers(tmp_path):
    one_line_error(run_nbtl("search", str(TINY), "--data", "digits", "--trials", "0", cwd=tmp_path), "--trials")


def test_unreachable_cluster_fails_fast_and_leaves_no_run(started):
    result, folder = started["unreachable cluster"]
    one_line_error(result, "--address 127.0.0.1:1", "ray start --head")
    if (folder / "mlflow.db").exists():
        with sqlite3.connect(folder / "mlflow.db") as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0


def test_resume_unknown_search_lists_known_ones(started):
    one_line_error(started["resume unknown"][0], "--resume nope", "old-search")


def test_resume_takes_no_space_or_data(started):
    one_line_error(started["resume with space"][0], "--resume tiny", "--data", "tiny.yaml")


def test_search_needs_space_and_data(started):
    one_line_error(started["no space"][0], "SPACE")
    one_line_error(started["no data"][0], "--data")


def test_storage_uri_is_refused_with_the_fix(started):
    one_line_error(started["storage uri"][0], "s3://bucket/results", "/mnt/nbtl/results")


def test_bad_cache_size_is_one_line(started):
    one_line_error(started["bad cache size"][0], "--cache-size", "20G", "'lots'")


def test_an_optuna_storage_optuna_cannot_open_is_one_line(started):
    one_line_error(started["bad optuna storage"][0], "--optuna-storage nodb://nowhere", "sqlite:///optuna.db")


PLAIN_CONFIG = (
    "backbone: efficientnet_lite0\ntransfer_blocks: 9\nfreeze_blocks: 9\nhead: linear\nepochs: 1\nbatch_size: 8\n"
)
#: Every command with data flags, as far as its required arguments (``{config}``: a plain config file).
DATA_COMMANDS = {
    "search": ["search", str(TINY), "--data", "digits"],
    "fit": ["fit", "digits", "--backbones", "efficientnet_lite0"],
    "recommend": ["recommend", "digits", "--backbones", "efficientnet_lite0"],
    "train": ["train", "{config}", "--data", "digits"],
    "zoo": ["zoo", "digits", "--backbones", "efficientnet_lite0"],
}
BAD_FLAGS = {
    "negative seed": (["--seed", "-5"], "0..4294967295"),
    "seed above 2**32-1": (["--seed", str(2**32)], "0..4294967295"),
    "image size below the spaces' minimum": (["--image-size", "2"], ">= 8"),
    "name outside the results folder": (["--name", "../.."], "'../..'"),
}


def bad_flags_command(folder: Path, command: str, case: str) -> list[str]:
    (folder / "config.yaml").write_text(PLAIN_CONFIG)
    args = [a.replace("{config}", str(folder / "config.yaml")) for a in DATA_COMMANDS[command]]
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    store = ["--tracking-uri", uri] if command != "recommend" else []
    extra = ["--storage-path", str(folder / "results")] if command == "search" else []
    return [*args, *BAD_FLAGS[case][0], *store, *extra]


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_data_flags_are_one_line_before_anything_starts(started, command, case):
    flags, fragment = BAD_FLAGS[case]
    if flags[0] == "--name" and command == "recommend":
        pytest.skip("nbtl recommend takes no --name")
    result, folder = started["bad flags", command, case]
    line = one_line_error(result, fragment, command=command)
    assert line.split(": error: ", 1)[1].startswith(flags[0]), line  # names the flag first
    assert not (folder / "mlflow.db").exists() and not (folder / "results").exists()


def plain_config(folder: Path) -> str:
    (folder / "config.yaml").write_text(PLAIN_CONFIG)
    return "config.yaml"


def small_train(folder: Path, *flags: str) -> list[str]:
    """``nbtl train`` of the plain config on a few small digits, tracked in the folder's own store."""
    data = ("--data", "digits", "--image-size", "16", "--per-class", "5", "--no-floor")
    return [*flags, "train", plain_config(folder), *data, "--tracking-uri", new_store(folder)]


def test_verbose_shows_debug_lines_and_quiet_hides_progress(started):
    (plain, _), (verbose, _) = started["backbones"], started["backbones -v"]
    assert plain.returncode == verbose.returncode == 0
    assert "debug nbtl.cli: nbtl " in verbose.stderr and "debug" not in plain.stderr
    # the same training, loud and with -q (each in its own folder and MLflow store)
    (loud, loud_folder), (quiet, quiet_folder) = started["train"], started["train -q"]
    assert loud.returncode == quiet.returncode == 0, (loud.stderr[-2000:], quiet.stderr[-2000:])
    assert "data digits: " in loud.stdout and "epoch 1: val_accuracy" in loud.stdout
    assert "data digits" not in quiet.stdout and "epoch 1:" not in quiet.stdout and not quiet.stderr.strip()
    for result in (loud, quiet):  # the result still shows
        assert "best_val_accuracy " in result.stdout and "MLflow: " in result.stdout
    # a plain config trains with the default space's data settings (its augmentation included)
    from mlflow import MlflowClient

    for folder in (loud_folder, quiet_folder):
        client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("train-digits").experiment_id])
        assert [r.data.params["augmentation"] for r in runs] == ['{"crop_padding": 4}']
        assert [r.info.status for r in runs] == ["FINISHED"]
    # bad input still ends in one line
    one_line_error(started["train -q bad seed"][0], "--seed", command="train")


def old_search(folder: Path) -> Path:
    """A results folder that holds one search, ``old-search``."""
    (folder / "results" / "old-search").mkdir(parents=True)
    (folder / "results" / "old-search" / "nbtl_search.json").write_text("{}")
    return folder / "results"


VERBOSE = "test_verbose_shows_debug_lines_and_quiet_hides_progress"
#: What the tests above read from ``started``: the tests that read it, its key, its command given its folder,
#: the seconds it may take, and whether it runs as its own process (the trainings: torch and MLflow at work) or
#: with the rest, one after another in one interpreter (``nbtl_in_one_interpreter``).
COMMANDS = [
    ((VERBOSE,), "train", lambda d: small_train(d), 600, True),
    ((VERBOSE,), "train -q", lambda d: small_train(d, "-q"), 600, True),
    *[
        (("test_bad_space_is_rejected_naming_the_key",), ("bad space", case),
         lambda d, text=text: ["search", str(write_space(d, text)), "--data", "digits"], 300, False)
        for case, (text, _) in BAD_SPACES.items()
    ],
    (("test_missing_space_file",), "missing space", lambda d: ["search", "nope.yaml", "--data", "digits"], 300, False),
    (("test_missing_data_path",), "missing data",
     lambda d: ["search", str(TINY), "--data", str(d / "no_such_dir")], 300, False),
    (("test_corrupt_image_is_named",), "corrupt image",
     lambda d: ["search", str(TINY), "--data", str(corrupt_images(d))], 300, False),
    (("test_resume_unknown_search_lists_known_ones",), "resume unknown",
     lambda d: ["search", "--resume", "nope", "--storage-path", str(old_search(d))], 300, False),
    (("test_resume_takes_no_space_or_data",), "resume with space",
     lambda d: ["search", str(TINY), "--resume", "tiny", "--data", "digits"], 300, False),
    (("test_search_needs_space_and_data",), "no space", lambda d: ["search", "--data", "digits"], 300, False),
    (("test_search_needs_space_and_data",), "no data", lambda d: ["search", str(TINY)], 300, False),
    (("test_storage_uri_is_refused_with_the_fix",), "storage uri",
     lambda d: ["search", str(TINY), "--data", "digits", "--storage-path", "s3://bucket/results"], 300, False),
    (("test_an_optuna_storage_optuna_cannot_open_is_one_line",), "bad optuna storage",
     lambda d: ["search", str(TINY), "--data", "digits", "--optuna-storage", "nodb://nowhere"], 300, False),
    (("test_bad_cache_size_is_one_line",), "bad cache size",
     lambda d: ["search", str(TINY), "--data", "digits", "--cache-size", "lots"], 300, False),
    *[
        (("test_bad_data_flags_are_one_line_before_anything_starts",), ("bad flags", command, case),
         lambda d, command=command, case=case: bad_flags_command(d, command, case), 300, False)
        for command in DATA_COMMANDS
        for case in BAD_FLAGS
        if not (BAD_FLAGS[case][0][0] == "--name" and command == "recommend")
    ],
    ((VERBOSE,), "train -q bad seed", lambda d: ["-q", "train", plain_config(d), "--seed", "-5"], 300, False),
    (("test_unreachable_cluster_fails_fast_and_leaves_no_run",), "unreachable cluster",
     lambda d: ["search", str(TINY), "--data", "digits", "--address", "127.0.0.1:1",
                "--tracking-uri", f"sqlite:///{d / 'mlflow.db'}"], 120, False),
    # last: output a process writes once (an import's warning) lands in the first case, which must check its stderr
    (("test_backbones_lists_registry", VERBOSE), "backbones", lambda d: ["backbones"], 300, False),
    ((VERBOSE,), "backbones -v", lambda d: ["backbones", "-v"], 300, False),
]  # fmt: skip


class Started:
    """``started[key]``: the command's result (once it ended) and its folder."""

    def __init__(self, ahead, folders: dict, in_one: dict):
        self.ahead, self.folders, self.in_one = ahead, folders, in_one

    def __getitem__(self, key) -> tuple:
        result = self.ahead["in one interpreter"][repr(key)] if repr(key) in self.in_one else self.ahead[key]
        return result, self.folders[key]


@pytest.fixture(scope="module")
def started(ahead, tmp_path_factory, request):
    """The commands of the tests this session runs, started ahead, each in a fresh folder of its own: those in
    one interpreter first (most tests read them), then the trainings beside them."""
    wanted = selected_tests(request)
    folders, in_one = {}, {}
    for tests, key, command, timeout, own_process in COMMANDS:
        if wanted & set(tests) and not own_process:
            folder = folders[key] = tmp_path_factory.mktemp("cli")
            in_one[repr(key)] = command(folder), folder, timeout
    if in_one:
        ahead.call("in one interpreter", nbtl_in_one_interpreter, in_one, tmp_path_factory.mktemp("captured"))
    for tests, key, command, timeout, own_process in COMMANDS:
        if wanted & set(tests) and own_process:
            folder = folders[key] = tmp_path_factory.mktemp("cli")
            ahead.start(key, *command(folder), cwd=folder, timeout=timeout)
    return Started(ahead, folders, in_one)
