"""The Python face of nbtl: ``nbtl.search(space, data, ...)``, defined in :mod:`nbtl.search.api`, whose
docstring lists the arguments; ``nbtl.api.search`` is the same function."""

from nbtl.search.api import search

__all__ = ["search"]
