"""nbtl as a user installs it, not as this checkout runs it.

The sdist, and the wheel built from that sdist (what ``python -m build`` and ``pip install nbtl`` do), carry the
rules, the learned recommender, the meta-dataset and every search space; the wheel installed with ``--no-deps``
into a fresh venv (which borrows this environment's dependencies, but not its editable nbtl) runs
``nbtl recommend`` and a tiny ``nbtl search`` by space name from a directory that is not the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from nbtl.tracking import search_experiment

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]

#: The files an installed nbtl reads from its package (paths as in the repository).
SHIPPED = [
    "heuristics/rules.yaml",
    "heuristics/recommender.json",
    "heuristics/meta_dataset.csv",
    *sorted(f"search_spaces/{p.name}" for p in (REPO / "search_spaces").glob("*.yaml")),
]
#: Where a wheel carries a shipped file (nbtl.resources.PACKAGE_DIR).
IN_WHEEL = "nbtl/_shipped/"
#: What a checkout holds beside the sources: never copied into a build.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    "build",
    "dist",
    "mlruns",
    "mlartifacts",
    "nbtl_results",
    "nbtl_meta",
    "mlflow.db",
    ".pytest_cache",
)


def build_wheel(source: Path, out: Path) -> Path:
    """The wheel pip builds from ``source`` (a source folder or an sdist), with this environment's build backend."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"pip wheel {source} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    (wheel,) = out.glob("nbtl-*.whl")
    return wheel


def build_sdist(source: Path, out: Path) -> Path:
    """The sdist of ``source``, through the PEP 517 hook of the backend pyproject.toml names."""
    backend = tomllib.loads((source / "pyproject.toml").read_text())["build-system"]["build-backend"]
    out.mkdir(parents=True, exist_ok=True)
    code = f"import {backend.split(':')[0]} as b, sys; print(b.build_sdist(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"build_sdist failed:\n{done.stderr[-3000:]}"
    return out / done.stdout.strip().splitlines()[-1]


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def missing_from_wheel(wheel: Path) -> list[str]:
    files = wheel_files(wheel)
    return [name for name in SHIPPED if IN_WHEEL + name not in files]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel built from that sdist) of a copy of this checkout, so the build writes nothing here."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    sdist = build_sdist(source, root / "sdist")
    return sdist, build_wheel(sdist, root / "wheel")


def test_sdist_and_its_wheel_ship_heuristics_and_search_spaces(built):
    sdist, wheel = built
    assert len(SHIPPED) > 4 and "search_spaces/tiny.yaml" in SHIPPED
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        in_sdist = {name.partition("/")[2] for name in archive.getnames()}
    assert top.startswith("nbtl-")
    assert [name for name in SHIPPED if name not in in_sdist] == [], "the sdist lacks shipped files"
    assert missing_from_wheel(wheel) == [], f"{wheel.name} lacks shipped files"
    # the wheel's copies are the repository's files, byte for byte (one source of truth, copied at build time)
    with zipfile.ZipFile(wheel) as archive:
        for name in SHIPPED:
            assert archive.read(IN_WHEEL + name) == (REPO / name).read_bytes(), name
    # nothing outside the package: no top-level heuristics/ or search_spaces/ in site-packages
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {name.split("/")[0] for name in wheel_files(wheel)} == {"nbtl", dist_info}


def test_named_spaces_resolve_from_any_directory(tmp_path, monkeypatch):
    from nbtl.errors import ConfigError
    from nbtl.resources import find_space, shipped
    from nbtl.search import load_space

    monkeypatch.chdir(tmp_path)
    tiny = (REPO / "search_spaces" / "tiny.yaml").read_text()
    for spec in ("tiny", "tiny.yaml", "search_spaces/tiny.yaml"):
        assert load_space(spec).source == tiny, spec
    assert find_space("elsewhere/tiny.yaml") is None and find_space("/tiny.yaml") is None
    assert shipped("heuristics/../pyproject.toml") is None and shipped("pyproject.toml") is None
    # a file of that name here wins over the shipped space
    (tmp_path / "tiny.yaml").write_text(tiny.replace("name: tiny", "name: mine"))
    assert load_space("tiny.yaml").name == "mine"
    with pytest.raises(ConfigError, match=r"search space nope: no such file; .*default.*tiny"):
        load_space("nope")


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A venv holding only ``wheel`` (installed with --no-deps); this environment's packages come after its own.
    Returns the venv's site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # a .pth line only appends a folder to sys.path: this environment's own .pth files (its editable nbtl) stay off
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(own) / "zz_borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            "-q",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(own)


@pytest.mark.e2e  # starts Ray
def test_installed_wheel_recommends_and_searches_from_another_directory(built, tmp_path):
    _, wheel = built
    venv = tmp_path / "venv"
    site = fresh_venv(venv, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

    def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout)

    # the wheel's nbtl is the one imported, and it finds its files inside itself
    probe = run(
        str(venv / "bin" / "python"),
        "-c",
        "import nbtl, nbtl.resources as r; print(nbtl.__file__); print(r.shipped('heuristics/rules.yaml'))",
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    module, rules = probe.stdout.split()
    assert Path(module) == site / "nbtl" / "__init__.py", f"nbtl imported from {module}, not the wheel"
    assert Path(rules) == site / IN_WHEEL / "heuristics" / "rules.yaml"

    nbtl = str(venv / "bin" / "nbtl")
    done = run(
        nbtl,
        "recommend",
        "digits",
        "--image-size",
        "16",
        "--per-class",
        "10",
        "--backbones",
        "efficientnet_lite0",
        "--no-cache",
        "--out",
        "rec.yaml",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = yaml.safe_load((elsewhere / "rec.yaml").read_text())
    assert document["format"] == "nbtl-recommendation" and document["configs"][0]["source"] == "rules"
    # the learned recommender shipped in the wheel was loaded (absent, recommend silently uses the rules alone)
    assert Path(document["recommender"]) == site / IN_WHEEL / "heuristics" / "recommender.json"
    assert 0.0 <= document["configs"][0]["predicted_val_accuracy"] <= 1.0

    uri = f"sqlite:///{elsewhere / 'mlflow.db'}"
    done = run(
        nbtl,
        "search",
        "tiny",
        "--data",
        "digits",
        "--trials",
        "1",
        "--image-size",
        "16",
        "--tracking-uri",
        uri,
        "--storage-path",
        str(elsewhere / "results"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(search_experiment("tiny"))
    runs = client.search_runs([experiment.experiment_id])
    roles = sorted((r.data.tags.get("nbtl.role"), r.info.status) for r in runs)
    assert roles == [("search", "FINISHED"), ("trial", "FINISHED")], roles
    parent = next(r for r in runs if r.data.tags.get("nbtl.role") == "search")
    logged = client.download_artifacts(parent.info.run_id, "search_space.yaml", str(tmp_path))
    assert Path(logged).read_text() == (REPO / "search_spaces" / "tiny.yaml").read_text()
