"""The ``nbtl`` command line: help on every command, and bad input ending in one clear line, exit 2,
before any trial runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import REPO, run_nbtl

TINY = REPO / "search_spaces" / "tiny.yaml"


@pytest.mark.parametrize("command", [[], ["search"], ["backbones"]])
def test_help_on_every_command(tmp_path, command):
    result = run_nbtl(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: nbtl" in result.stdout


def test_backbones_lists_registry(tmp_path):
    result = run_nbtl("backbones", cwd=tmp_path)
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
def test_bad_space_is_rejected_naming_the_key(tmp_path, case):
    text, key = BAD_SPACES[case]
    space = write_space(tmp_path, text)
    result = run_nbtl("search", str(space), "--data", "digits", cwd=tmp_path)
    one_line_error(result, key, str(space))
    assert not (tmp_path / "mlflow.db").exists(), "a rejected space must not start a search"


def test_missing_space_file(tmp_path):
    one_line_error(run_nbtl("search", "nope.yaml", "--data", "digits", cwd=tmp_path), "nope.yaml")


def test_missing_data_path(tmp_path):
    one_line_error(run_nbtl("search", str(TINY), "--data", str(tmp_path / "no_such_dir"), cwd=tmp_path), "no_such_dir")


def test_corrupt_image_is_named(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "data" / label / f"{i}.png")
    (tmp_path / "data" / "dog" / "3.png").write_bytes(b"not a png at all")
    result = run_nbtl("search", str(TINY), "--data", str(tmp_path / "data"), cwd=tmp_path)
    one_line_error(result, "3.png")


def test_bad_numbers(tmp_path):
    one_line_error(run_nbtl("search", str(TINY), "--data", "digits", "--trials", "0", cwd=tmp_path), "--trials")


def test_unreachable_cluster_fails_fast_and_leaves_no_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_nbtl(
        "search",
        str(TINY),
        "--data",
        "digits",
        "--address",
        "127.0.0.1:1",
        "--tracking-uri",
        uri,
        cwd=tmp_path,
        timeout=120,
    )
    one_line_error(result, "--address 127.0.0.1:1", "ray start --head")
    if (tmp_path / "mlflow.db").exists():
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0


def test_resume_unknown_search_lists_known_ones(tmp_path):
    (tmp_path / "results" / "old-search").mkdir(parents=True)
    (tmp_path / "results" / "old-search" / "nbtl_search.json").write_text("{}")
    result = run_nbtl("search", "--resume", "nope", "--storage-path", str(tmp_path / "results"), cwd=tmp_path)
    one_line_error(result, "--resume nope", "old-search")


def test_resume_takes_no_space_or_data(tmp_path):
    result = run_nbtl("search", str(TINY), "--resume", "tiny", "--data", "digits", cwd=tmp_path)
    one_line_error(result, "--resume tiny", "--data", "tiny.yaml")


def test_search_needs_space_and_data(tmp_path):
    one_line_error(run_nbtl("search", "--data", "digits", cwd=tmp_path), "SPACE")
    one_line_error(run_nbtl("search", str(TINY), cwd=tmp_path), "--data")


def test_storage_uri_is_refused_with_the_fix(tmp_path):
    result = run_nbtl("search", str(TINY), "--data", "digits", "--storage-path", "s3://bucket/results", cwd=tmp_path)
    one_line_error(result, "s3://bucket/results", "/mnt/nbtl/results")


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


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_data_flags_are_one_line_before_anything_starts(tmp_path, command, case):
    flags, fragment = BAD_FLAGS[case]
    if flags[0] == "--name" and command == "recommend":
        pytest.skip("nbtl recommend takes no --name")
    (tmp_path / "config.yaml").write_text(PLAIN_CONFIG)
    args = [a.replace("{config}", str(tmp_path / "config.yaml")) for a in DATA_COMMANDS[command]]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = ["--tracking-uri", uri] if command != "recommend" else []
    extra = ["--storage-path", str(tmp_path / "results")] if command == "search" else []
    result = run_nbtl(*args, *flags, *store, *extra, cwd=tmp_path, timeout=300)
    line = one_line_error(result, fragment, command=command)
    assert line.split(": error: ", 1)[1].startswith(flags[0]), line  # names the flag first
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def test_verbose_shows_debug_lines_and_quiet_hides_progress(tmp_path, tracking_uri):
    plain, verbose = run_nbtl("backbones", cwd=tmp_path), run_nbtl("backbones", "-v", cwd=tmp_path)
    assert plain.returncode == verbose.returncode == 0
    assert "debug nbtl.cli: nbtl " in verbose.stderr and "debug" not in plain.stderr
    (tmp_path / "config.yaml").write_text(PLAIN_CONFIG)
    train = (
        "train",
        "config.yaml",
        "--data",
        "digits",
        "--image-size",
        "16",
        "--per-class",
        "5",
        "--no-floor",
        "--tracking-uri",
        tracking_uri,
    )
    loud, quiet = run_nbtl(*train, cwd=tmp_path), run_nbtl("-q", *train, cwd=tmp_path)
    assert loud.returncode == quiet.returncode == 0, (loud.stderr[-2000:], quiet.stderr[-2000:])
    assert "data digits: " in loud.stdout and "epoch 1: val_accuracy" in loud.stdout
    assert "data digits" not in quiet.stdout and "epoch 1:" not in quiet.stdout and not quiet.stderr.strip()
    for result in (loud, quiet):  # the result still shows
        assert "best_val_accuracy " in result.stdout and "MLflow: " in result.stdout
    # a plain config trains with the default space's data settings (its augmentation included)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("train-digits").experiment_id])
    assert [r.data.params["augmentation"] for r in runs] == ['{"crop_padding": 4}'] * 2
    # bad input still ends in one line
    one_line_error(run_nbtl("-q", "train", "config.yaml", "--seed", "-5", cwd=tmp_path), "--seed", command="train")
