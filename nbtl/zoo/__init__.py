"""Zoo studies: which pre-trained backbone, with which head, for this data — compared the way the papers do.

``frozen`` (Puls et al.): a new head on the frozen backbone's last-block features (``nbtl fit``'s cache),
``finetune`` (Albardi et al.): the whole network fine-tuned with one recipe and one augmentation for every
backbone; either way stratified, seeded k-fold cross-validation (:mod:`nbtl.zoo.cv`), per-cell mean ± sd of
accuracy and macro / weighted precision, recall and F1, and a paired comparison of the heads
(:mod:`nbtl.zoo.report`). :func:`nbtl.zoo.study.run_zoo` runs a study on Ray Tune, tracked in MLflow.

The maths (:mod:`~nbtl.zoo.cv`, :mod:`~nbtl.zoo.report`, :mod:`~nbtl.zoo.frozen`) imports neither Ray nor MLflow.

The package can be called: ``nbtl.zoo(["digits"], ["efficientnet_lite0"], ["linear", "mlp"])`` runs a study and
returns its result (:func:`nbtl.zoo.api.zoo`, whose docstring lists the arguments).
"""

import sys
import types

from nbtl.zoo.cv import Fold, fold_splits, study_folds
from nbtl.zoo.report import METRICS, classification_metrics, display_table, paired_comparison, summary_table

__all__ = [
    "METRICS",
    "Fold",
    "classification_metrics",
    "display_table",
    "fold_splits",
    "paired_comparison",
    "study_folds",
    "summary_table",
]


class _CallablePackage(types.ModuleType):
    """This package's type: ``nbtl.zoo(...)`` is :func:`nbtl.zoo.api.zoo`, while its modules stay modules."""

    def __call__(self, *args, **kwargs):
        from nbtl.zoo.api import zoo

        return zoo(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
