"""Your own weights: ``--weights NAME=PATH`` (a local ``.pth`` state dict, read with ``weights_only=True``) on
``nbtl fit``, ``nbtl recommend`` and ``nbtl search``: the file's weights are the ones measured and trained, a file
that does not fit the network or a bad flag is one line."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import REPO, new_store, run_nbtl
from nbtl.backbones import load_pretrained_state_dict, parse_weights
from nbtl.errors import ConfigError

LITE0 = "efficientnet_lite0"
DATA = ["--per-class", "10", "--image-size", "32"]


@pytest.fixture(scope="module")
def own_weights(tmp_path_factory):
    """Lite0's packaged weights with the stem and first stage halved: a real network, other features."""
    folder = tmp_path_factory.mktemp("weights")
    state = {k: (v * 0.5 if k.startswith(("blocks.0.", "blocks.1.")) and v.is_floating_point() else v)
             for k, v in load_pretrained_state_dict(LITE0).items()}  # fmt: skip
    torch.save(state, folder / "lite0_mine.pth")
    torch.save({"conv.weight": torch.zeros(3, 3)}, folder / "not_lite0.pth")
    return folder


def _logme(stdout: str) -> list[str]:
    return re.findall(rf"{LITE0}\s+\d+\s+\d+\s+(\S+)", stdout)  # the logme column


def test_fit_measures_the_given_weights(own_weights, tmp_path):
    env = {"NBTL_CACHE_DIR": str(tmp_path / "cache")}
    store = ["--tracking-uri", new_store(tmp_path)]
    packaged = run_nbtl("fit", "digits", "--backbones", LITE0, *DATA, *store, cwd=tmp_path, env=env)
    mine = run_nbtl(
        "fit", "digits", "--backbones", LITE0, *DATA, *store, "--weights", f"{LITE0}={own_weights / 'lite0_mine.pth'}",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert packaged.returncode == 0 and mine.returncode == 0, packaged.stderr[-2000:] + mine.stderr[-2000:]
    assert _logme(packaged.stdout) and len(_logme(mine.stdout)) == len(_logme(packaged.stdout))
    assert _logme(mine.stdout) != _logme(packaged.stdout)  # other weights, other features (not the cache's)


def test_a_search_refuses_a_weights_file_that_does_not_fit_in_one_line(own_weights, tmp_path):
    # a search that trains from a local weights file: tests/test_api.py
    uri = new_store(tmp_path)
    where = ["--tracking-uri", uri, "--storage-path", str(tmp_path / "results"), "--keep-weights", "0"]
    tiny = str(REPO / "search_spaces" / "tiny.yaml")
    bad = run_nbtl(
        "search", tiny, "--data", "digits", "--weights", f"{LITE0}={own_weights / 'not_lite0.pth'}", *where,
        cwd=tmp_path,
    )  # fmt: skip
    errors = [line for line in bad.stderr.splitlines() if "error" in line]
    assert bad.returncode == 2 and len(errors) == 1 and "not_lite0.pth" in errors[0], bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr and not list((tmp_path / "results").glob("tiny*/results.csv"))


def test_bad_weights_flags_are_one_line(tmp_path, own_weights):
    path = own_weights / "lite0_mine.pth"
    assert parse_weights([f"{LITE0}={path}"], [LITE0]) == {LITE0: str(path.resolve())}
    cases = {
        "lite0.pth": "give NAME=PATH",
        f"resnet50={path}": "not a backbone of this command",
        f"{LITE0}={tmp_path / 'nope.pth'}": "no file",
    }
    for value, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            parse_weights([value], [LITE0])
    with pytest.raises(ConfigError, match="twice"):
        parse_weights([f"{LITE0}={path}", f"{LITE0}={path}"], [LITE0])


def test_a_space_names_its_own_weights_files_relative_to_itself(tmp_path, own_weights):
    from nbtl.search.space import load_space

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mine.pth").write_bytes((own_weights / "lite0_mine.pth").read_bytes())
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(f"parameters:\n  backbone: {{name: {LITE0}, weights: w/mine.pth}}\n  lr: 0.01\n")
    space = load_space(fixed)
    assert space.backbones() == [LITE0] and space.weights == {LITE0: str(tmp_path / "w" / "mine.pth")}
    several = tmp_path / "several.yaml"
    several.write_text(
        "parameters:\n  backbone: {choices: [efficientnet_lite0, efficientnet_lite1], weights: "
        f"{{efficientnet_lite1: {tmp_path / 'w' / 'mine.pth'}}}}}\n"
    )
    assert load_space(several).weights == {"efficientnet_lite1": str(tmp_path / "w" / "mine.pth")}
    cases = {
        f"{{name: {LITE0}, weights: nope.pth}}": "no file .*nope.pth for efficientnet_lite0",
        "{choices: [efficientnet_lite0], weights: {resnet50: w/mine.pth}}": "'resnet50' is not one of its choices",
        f"{{name: {LITE0}, weights: [w/mine.pth]}}": "give the path of one weights file",
    }
    for spec, message in cases.items():
        (tmp_path / "bad.yaml").write_text(f"parameters:\n  backbone: {spec}\n")
        with pytest.raises(ConfigError, match=message):
            load_space(tmp_path / "bad.yaml")
