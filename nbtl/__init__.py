"""nbtl: hyperparameter search for non-binary transfer learning of image classifiers.

Heavy libraries (torch, Ray, MLflow) are imported by the submodules that need them, so
``import nbtl`` and ``nbtl --help`` stay fast.
"""

__version__ = "0.1.0"
