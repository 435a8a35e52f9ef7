"""Search: YAML spaces compiled for Optuna, trials scheduled by Ray Tune. The one package that knows Ray.

The package can be called: ``nbtl.search("default", "digits", time_budget="10m")`` runs a search and returns its
result (:func:`nbtl.search.api.search`, whose docstring lists the arguments).
"""

import sys
import types

from nbtl.search.space import Parameter, SearchSpace, load_space, parse_space

__all__ = ["Parameter", "SearchSpace", "load_space", "parse_space", "run_search", "SearchOptions"]


def __getattr__(name):  # Ray is imported only when a search runs
    if name in ("run_search", "SearchOptions", "SearchResult"):
        from nbtl.search import runner

        return getattr(runner, name)
    raise AttributeError(name)


class _CallablePackage(types.ModuleType):
    """This package's type: ``nbtl.search(...)`` is :func:`nbtl.search.api.search` (the call a notebook makes), while
    ``nbtl.search.runner`` and the rest stay modules of the package."""

    def __call__(self, *args, **kwargs):
        from nbtl.search.api import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
