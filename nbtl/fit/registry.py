"""The fit-measure registry: every measure of how well frozen features fit a dataset, by name, as the head and
backbone registries hold heads and backbones.

A measure is a function registered with :func:`register_fit_measure`, declaring what it reads and the signals it
gives:

- ``reads="features"``: ``measure(features (N, D), labels) -> float``, computed on every block (one fit-table value
  per block); its signals are ``<signal>_best`` (over blocks) and ``<signal>_last`` (the last block).
- ``reads="source"``: ``measure(source_probs (N, Z), labels) -> float``, computed once per backbone from the source
  head's probabilities (NaN without one); its signal is ``<signal>``.

Higher is better. A measure may take keyword options that the fit table fills from its own: ``cv`` (stratified
folds; a measure that takes ``cv`` is cross-validated and is NaN when a class has a single image), ``random_state``
and ``k`` (neighbours, lowered to a training fold's size). :func:`nbtl.fit.fit_table`'s columns,
:func:`nbtl.heuristics.backbone_signals`, the signals a rules file may name and, for measures registered with
``learned=True``, the inputs of a newly fitted learned recommender all derive from this registry. A recommender
file names the inputs it was fitted on, so the shipped one keeps working when a measure is added.

nbtl's own measures are registered by reference (``module:function``); a new one is one file that calls
:func:`register_fit_measure`, imported before the fit table is computed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from nbtl.fit._validation import MeasureError
from nbtl.registry import Registry, resolve

__all__ = [
    "OPTIONS",
    "FitMeasure",
    "feature_measures",
    "fit_measure_names",
    "get_fit_measure",
    "register_fit_measure",
    "remove_fit_measure",
    "source_measures",
]

#: The keyword options a measure may take, filled by the fit table.
OPTIONS = ("cv", "random_state", "k")
_READS = ("features", "source")


@dataclass(frozen=True)
class FitMeasure:
    """A registered fit measure: its name (the fit table's column), what it reads, its signal name, whether the
    learned recommender reads it, and its function (a callable, or a ``module:function`` reference imported at the
    first call)."""

    name: str
    reads: str
    signal: str
    learned: bool
    function: Callable | str
    description: str = ""

    def resolve(self) -> Callable:
        """The function itself (a reference is imported)."""
        return resolve(self.function)

    def options(self) -> tuple[str, ...]:
        """The fit table's options (:data:`OPTIONS`) this measure takes as keywords."""
        parameters = inspect.signature(self.resolve()).parameters
        return tuple(name for name in OPTIONS if name in parameters)

    def signals(self) -> tuple[str, ...]:
        """The backbone signals it gives: ``<signal>_best`` and ``<signal>_last``, or ``<signal>`` for a source
        measure."""
        return (f"{self.signal}_best", f"{self.signal}_last") if self.reads == "features" else (self.signal,)

    @property
    def learned_input(self) -> str:
        """The signal a learned recommender reads from it: its best over blocks, or its one value."""
        return self.signals()[0]


MEASURES: Registry[FitMeasure] = Registry(
    "fit measure", error=MeasureError, hint=" (or register one: nbtl.fit.registry)"
)


def register_fit_measure(
    name: str,
    *,
    reads: str = "features",
    signal: str | None = None,
    learned: bool = False,
    description: str = "",
    function: Callable | str | None = None,
):
    """Register a fit measure named ``name``: as a decorator on its function, or with ``function=`` (a callable or a
    ``"module:function"`` reference).

    Parameters
    ----------
    name : str
        The fit table's column (letters, digits, underscores).
    reads : {"features", "source"}, default="features"
        One block's features, or the source head's probabilities.
    signal : str, optional
        The name its backbone signals start with (default ``name``).
    learned : bool, default=False
        Whether a newly fitted learned recommender reads it (its best over blocks, or its value).
    description : str
        One line for listings.

    Examples
    --------
    >>> @register_fit_measure("centroid_accuracy", description="nearest class mean, cross-validated")
    ... def centroid_accuracy(features, labels, *, cv=5, random_state=0):
    ...     ...                                                        # doctest: +SKIP
    """

    def add(measure: Callable | str) -> Callable | str:
        MEASURES.check_name(name)
        if signal is not None and not (isinstance(signal, str) and signal.replace("_", "").isalnum()):
            raise MeasureError(f"signal {signal!r}: use letters, digits and underscores")
        if reads not in _READS:
            raise MeasureError(f"fit measure {name!r}: reads must be one of {', '.join(_READS)}, got {reads!r}")
        entry = FitMeasure(name, reads, signal or name, bool(learned), measure, description)
        taken = {s for other in MEASURES.values() for s in other.signals()}
        if taken & set(entry.signals()):
            raise MeasureError(f"fit measure {name!r}: signal {entry.signal!r} is taken; choose another signal")
        MEASURES.add(name, entry)
        return measure

    return add(function) if function is not None else add


def remove_fit_measure(name: str) -> None:
    """Unregister the measure ``name`` (a notebook's or a test's own); nbtl's own cannot be removed."""
    MEASURES.remove(name)


def fit_measure_names() -> tuple[str, ...]:
    """The registered measures, in the order they were registered (nbtl's own first): the fit table's columns."""
    return MEASURES.names()


def feature_measures() -> tuple[FitMeasure, ...]:
    """The registered measures that read one block's features."""
    return tuple(entry for entry in MEASURES.values() if entry.reads == "features")


def source_measures() -> tuple[FitMeasure, ...]:
    """The registered measures that read the source head's probabilities."""
    return tuple(entry for entry in MEASURES.values() if entry.reads == "source")


def get_fit_measure(name: str) -> FitMeasure:
    """The registered measure ``name``; ``MeasureError`` naming the registered ones otherwise."""
    return MEASURES.get(name)


_OWN = "nbtl.fit.measures"
register_fit_measure("logme", signal="logme", learned=True, function=f"{_OWN}:logme", description="LogME evidence")
register_fit_measure("h_score", function=f"{_OWN}:h_score", description="H-score, Ledoit-Wolf shrunk")
register_fit_measure(
    "knn_accuracy", signal="knn", learned=True, function=f"{_OWN}:knn_accuracy", description="k-NN, cross-validated"
)
register_fit_measure(
    "linear_probe_accuracy",
    signal="probe",
    learned=True,
    function=f"{_OWN}:linear_probe_accuracy",
    description="logistic regression, cross-validated",
)
register_fit_measure("leep", reads="source", learned=True, function=f"{_OWN}:leep", description="LEEP")
register_fit_measure("nce", reads="source", function=f"{_OWN}:nce", description="negative conditional entropy")
BUILT_IN = MEASURES.seal()
