"""nbtl: hyperparameter search for non-binary transfer learning of image classifiers.

Heavy libraries (torch, Ray, MLflow) are imported by the submodules that need them, so
``import nbtl`` and ``nbtl --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["api", "recommend", "search", "zoo"]


def __getattr__(name):
    import importlib

    # nbtl.search and nbtl.zoo are packages that can be called: nbtl.search(space, data, ...) is nbtl.api.search,
    # nbtl.zoo(data, backbones, heads) nbtl.api.zoo; nbtl.recommend is nbtl.api.recommend (nbtl.api.train trains a
    # recommended config: nbtl.train is the module of one trial)
    if name in ("search", "zoo", "api"):
        return importlib.import_module(f"nbtl.{name}")
    if name == "recommend":
        return importlib.import_module("nbtl.api").recommend
    raise AttributeError(f"module 'nbtl' has no attribute {name!r}")
