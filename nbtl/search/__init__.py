"""Search: YAML spaces compiled for Optuna, trials scheduled by Ray Tune. The one package that knows Ray."""

from nbtl.search.space import Parameter, SearchSpace, load_space, parse_space

__all__ = ["Parameter", "SearchSpace", "load_space", "parse_space", "run_search", "SearchOptions"]


def __getattr__(name):  # Ray is imported only when a search runs
    if name in ("run_search", "SearchOptions", "SearchResult"):
        from nbtl.search import runner

        return getattr(runner, name)
    raise AttributeError(name)
