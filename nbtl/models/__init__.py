"""What a search hands over: trained models as MLflow pyfunc models (logged, registered, served), predictions
on new images, and ensembles of a search's best trials. The one package besides ``nbtl.tracking`` that imports
MLflow (lazily: :mod:`nbtl.models.classifier` is plain PyTorch, and importing this package imports neither)."""

#: How many of a search's best trials keep their weights by default, and so how many ``nbtl ensemble`` averages
#: (here, so that the command line's parsers read it without importing torch).
KEEP_WEIGHTS = 3

_CLASSIFIER = ("ClassifierError", "ImageClassifier", "Member", "load_classifier", "save_classifier")
__all__ = ["KEEP_WEIGHTS", *_CLASSIFIER]


def __getattr__(name):  # torch is imported only when a classifier is used
    if name in _CLASSIFIER:
        from nbtl.models import classifier

        return getattr(classifier, name)
    raise AttributeError(name)
