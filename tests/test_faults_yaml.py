"""YAML a user hands nbtl is read without expanding aliases (issue 19: a 1.2 KB alias bomb as a space's name hung
`nbtl search` at 1.5 GB and rising) and with a size cap; the real `nbtl` command and the real readers."""

from __future__ import annotations

import time

import pytest

from conftest import run_nbtl
from nbtl.errors import NbtlError
from nbtl.heuristics.recommend import load_recommendation
from nbtl.heuristics.rules import load_rules
from nbtl.safe_yaml import MAX_YAML_BYTES, load_yaml
from nbtl.search import load_space

CHAIN = "abcdefghi"


def bomb(key: str = "name") -> str:
    """Nine anchors, each nine aliases of the one before: 9**9 strings once expanded, 1.2 KB written."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, current in zip(CHAIN, CHAIN[1:]):
        label = key if current == CHAIN[-1] else current
        lines.append(f"{label}: &{current} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\nparameters: {lr: 0.1}\n"


def test_the_alias_bomb_is_refused_in_one_line_at_once(tmp_path):
    space = tmp_path / "bomb.yaml"
    space.write_text(bomb())
    assert len(space.read_bytes()) < 1300
    started = time.monotonic()
    done = run_nbtl("search", str(space), "--data", "digits", cwd=tmp_path, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"search space {space}: line 2: YAML aliases (*a) are not accepted" in lines[0]
    assert time.monotonic() - started < 60


def test_every_reader_refuses_aliases_and_oversized_files(tmp_path):
    for key in ("name", "search", "configs"):
        path = tmp_path / f"{key}.yaml"
        path.write_text(bomb(key))
        for read in (load_space, load_rules, load_recommendation):
            with pytest.raises(NbtlError, match=r"YAML aliases \(\*a\) are not accepted"):
                read(path)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_YAML_BYTES + "\nparameters: {lr: 0.1}\n")
    with pytest.raises(NbtlError, match="over the 1,000,000 nbtl reads"):
        load_space(big)
    # anchors without aliases, and plain YAML, read as safe_load reads them
    assert load_yaml("a: &x 1\nb: [2, 3]\n", "test") == {"a": 1, "b": [2, 3]}


def test_an_oversized_csv_listing_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from nbtl.data import listing, load_dataset

    csv = tmp_path / "images.csv"
    csv.write_text("path,label\n" + "a.png,0\n" * 100)
    monkeypatch.setattr(listing, "MAX_CSV_BYTES", 500)  # the cap is 200 MB; a file that size would slow the suite
    with pytest.raises(NbtlError, match=r"images.csv': 811 bytes, over the 500 nbtl reads"):
        load_dataset(csv, image_size=16)
