"""Files that ship with nbtl: the rules, the learned recommender, the meta-dataset and the search spaces.

They live in two top-level folders of the repository, ``heuristics/`` and ``search_spaces/``, the one copy
of each. A wheel (and the sdist it is built from) carries both inside the package, as
``nbtl/_shipped/heuristics/`` and ``nbtl/_shipped/search_spaces/`` (``setup.py`` maps them there at build
time). :func:`shipped` finds a file in either place: the installed copy first, else the source tree that
an editable install or a checkout runs from.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["SHIPPED_DIRS", "find_space", "shipped", "shipped_spaces"]

#: The top-level folders that ship with the package, and the package folder a wheel carries them in.
SHIPPED_DIRS = ("heuristics", "search_spaces")
PACKAGE_DIR = "_shipped"


def _roots() -> list[Path]:
    """Where shipped folders may be: the installed package's ``_shipped/``, then the source tree's root."""
    roots = []
    installed = resources.files("nbtl") / PACKAGE_DIR
    if isinstance(installed, os.PathLike):  # a package on disk (a zipped one carries no _shipped/ we can open)
        roots.append(Path(installed))
    source = Path(__file__).resolve().parents[1]
    # only nbtl's own checkout: an installed nbtl's parent is site-packages, which must not be searched
    if (source / "pyproject.toml").is_file() and (source / "nbtl" / "__init__.py").is_file():
        roots.append(source)
    return roots


def shipped(relative: str | Path) -> Path | None:
    """The shipped file ``relative`` (e.g. ``"heuristics/rules.yaml"``), or None when nbtl carries no such file.

    ``relative`` is a path relative to the repository root, under one of :data:`SHIPPED_DIRS`; any other path
    (absolute, elsewhere, or climbing out with ``..``) names no shipped file.
    """
    path = Path(relative)
    parts = path.parts
    if path.is_absolute() or not parts or parts[0] not in SHIPPED_DIRS or ".." in parts:
        return None
    for root in _roots():
        candidate = root.joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def shipped_spaces() -> dict[str, Path]:
    """The shipped search spaces by name (``default``, ``tiny``, ...), from the first place that has any."""
    for root in _roots():
        folder = root / "search_spaces"
        spaces = {p.stem: p for p in sorted(folder.glob("*.yaml")) if p.is_file()} if folder.is_dir() else {}
        if spaces:
            return spaces
    return {}


def find_space(spec: str | Path) -> Path | None:
    """The shipped space that ``spec`` names, or None.

    A bare name (``tiny``), a file name (``tiny.yaml``) or the repository path (``search_spaces/tiny.yaml``)
    all name ``search_spaces/tiny.yaml``; anything else (another folder, an absolute path) names no shipped
    space. Callers look for ``spec`` as a file first, so a file of that name in the working directory wins.
    """
    path = Path(spec)
    if path.is_absolute() or path.suffix not in ("", ".yaml", ".yml"):
        return None
    if len(path.parts) == 2 and path.parts[0] == "search_spaces":
        path = Path(path.parts[1])
    if len(path.parts) != 1:
        return None
    return shipped_spaces().get(path.stem if path.suffix else path.name)
