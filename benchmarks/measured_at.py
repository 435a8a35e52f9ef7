"""Which commit a benchmark measured: the one lookup every script's result rows use (and ``report.py`` prints).

A row names the full commit of the checkout it ran in and ``dirty``: whether tracked files differed from that
commit (untracked files, such as the results file being written, do not count). A copy of the tree without
``.git`` (a device machine's) names its commit in ``NBTL_COMMIT``, and says ``dirty`` there with a trailing
``*``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _git(*command: str) -> str | None:
    try:
        done = subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def commit() -> tuple[str, bool]:
    """The full commit measured (``"unknown"`` outside a checkout) and whether tracked files differ from it."""
    named = os.environ.get("NBTL_COMMIT", "").strip()
    if named:
        return named.rstrip("*"), named.endswith("*")
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return "unknown", False
    return sha, bool(_git("status", "--porcelain", "--untracked-files=no"))


#: What a user installs and runs: a figure measured where these are the same as at ``HEAD`` is a figure of what ships
#: (issue 17: every README figure measured again on the product that resolves it). ``TEST_ONLY`` files among them
#: (the tests' tiny space) do not count.
PRODUCT = ("nbtl", "search_spaces", "heuristics", "pyproject.toml")
TEST_ONLY = ("search_spaces/tiny.yaml",)


def _same_yaml(path: str, sha: str, against: str) -> bool:
    """Whether a YAML file of the product (a space, the shipped rules) parses to the same data at both commits: a
    changed comment changes nothing a user runs. False where either side is missing or is not YAML."""
    if not path.endswith((".yaml", ".yml")):
        return False
    texts = [_git("show", f"{ref}:{path}") for ref in (sha, against)]
    if None in texts:
        return False
    try:
        return yaml.safe_load(texts[0]) == yaml.safe_load(texts[1])
    except yaml.YAMLError:
        return False


def product_changes(sha: str, against: str = "HEAD") -> list[str] | None:
    """The paths of ``PRODUCT`` with a file (not ``TEST_ONLY``) that differs between commit ``sha`` and ``against``
    (``git diff``; a YAML file whose data is the same, only its comments changed, does not count), or None where
    ``sha`` is not a commit of this repository (a shallow clone, a typo)."""
    changed = changed_files(sha, against)
    if changed is None:
        return None
    return [path for path in PRODUCT if any(f == path or f.startswith(f"{path}/") for f in changed)]


def changed_files(sha: str, against: str = "HEAD") -> list[str] | None:
    """The files of ``PRODUCT`` that :func:`product_changes` counts as changed between ``sha`` and ``against``."""
    if not sha or _git("cat-file", "-e", f"{sha}^{{commit}}") is None:
        return None
    listed = _git("diff", "--name-only", sha, against, "--", *PRODUCT) or ""
    return [f for f in listed.splitlines() if f not in TEST_ONLY and not _same_yaml(f, sha, against)]


def product_commits(sha: str, against: str = "HEAD") -> list[str]:
    """The commits after ``sha`` up to ``against`` (first parents) that touch a file of ``PRODUCT`` differing between
    the two (:func:`changed_files`: a change undone later is no difference), oldest first."""
    files = changed_files(sha, against)
    if not files:
        return []
    listed = _git("rev-list", "--reverse", "--first-parent", f"{sha}..{against}", "--", *files) or ""
    return listed.split()


#: Product changes shown not to reach the benchmarks' runs: each names its commit, what it changed, why the runs
#: never reach it, and the test that checks that condition (``INERT`` below; ``report.py --shipped`` reads it).
INERT = Path(__file__).with_name("inert_changes.yaml")


def inert_changes(path: Path | None = None) -> dict[str, dict]:
    """``{full commit: entry}`` of :data:`INERT` (empty where the file is missing). An entry has ``commit``,
    ``changed``, ``why`` and ``check`` (a test, ``tests/FILE::NAME``, or a list of them), and where the change
    reaches some report blocks but not the others, ``reaches`` (those blocks' names: they count the change) or
    ``reaches_sizes`` (the image sizes whose runs count it, in any block)."""
    path = INERT if path is None else path
    if not path.exists():
        return {}
    entries = yaml.safe_load(path.read_text()) or []
    resolved = {}
    for entry in entries:
        sha = _git("rev-parse", "--verify", "--quiet", f"{entry['commit']}^{{commit}}")
        resolved[sha or str(entry["commit"])] = entry
    return resolved


def label(sha: str | None, dirty: bool = False) -> str:
    """How tables print a row's commit: 7 characters, with ``*`` where its tracked files differed."""
    return f"{(sha or '?')[:7]}{'*' if dirty else ''}"
