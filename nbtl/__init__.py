"""nbtl: hyperparameter search for non-binary transfer learning of image classifiers.

Heavy libraries (torch, Ray, MLflow) are imported by the submodules that need them, so
``import nbtl`` and ``nbtl --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["search"]


def __getattr__(name):
    # nbtl.search is the search package, which can be called: nbtl.search(space, data, ...) is nbtl.api.search
    if name == "search":
        import importlib

        return importlib.import_module("nbtl.search")
    raise AttributeError(f"module 'nbtl' has no attribute {name!r}")
