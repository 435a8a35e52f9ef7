"""The code MLflow runs to load an nbtl classifier (an MLflow "model from code": nothing is unpickled)."""

import mlflow.models

from nbtl.models.pyfunc import ClassifierModel

mlflow.models.set_model(ClassifierModel())
