"""What a search hands over: trained models as MLflow pyfunc models (logged, registered, served), predictions
on new images, and ensembles of a search's best trials. The one package besides ``nbtl.tracking`` that imports
MLflow (lazily: :mod:`nbtl.models.classifier` is plain PyTorch, and importing this package imports neither)."""

__all__ = ["ClassifierError", "ImageClassifier", "Member", "load_classifier", "save_classifier"]


def __getattr__(name):  # torch is imported only when a classifier is used
    if name in __all__:
        from nbtl.models import classifier

        return getattr(classifier, name)
    raise AttributeError(name)
