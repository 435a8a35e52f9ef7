"""Recommend transfer settings without a search: rules over fit signals and a learned model.

- :mod:`~nbtl.heuristics.signals`: the numbers read from fit tables and meta-features;
- :mod:`~nbtl.heuristics.rules`: rules written as data in ``heuristics/rules.yaml``, each with its evidence;
- :mod:`~nbtl.heuristics.learned`: a ridge model of validation accuracy, saved as JSON;
- :mod:`~nbtl.heuristics.meta`: the meta-dataset of finished trials, and learning from it;
- :mod:`~nbtl.heuristics.recommend`: ``nbtl recommend`` end to end.

No Ray or MLflow here: the trials come in as plain rows (:func:`nbtl.tracking.finished_trials`).
"""

from nbtl.heuristics.learned import LearnedRecommender, default_recommender_path, fit_recommender
from nbtl.heuristics.rules import Rules, default_rules_path, load_rules, parse_rules
from nbtl.heuristics.signals import HeuristicsError, backbone_signals, dataset_signals, rank_backbones

__all__ = [
    "HeuristicsError",
    "LearnedRecommender",
    "Rules",
    "backbone_signals",
    "dataset_signals",
    "default_recommender_path",
    "default_rules_path",
    "fit_recommender",
    "load_rules",
    "parse_rules",
    "rank_backbones",
]
