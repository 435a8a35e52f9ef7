"""A learned recommender: predicts a trial's validation accuracy from its config and its dataset's fit.

Fitted on a meta-dataset of finished trials (one row per trial: the config, the dataset's signals
and the signals of the trial's backbone, and its ``best_val_accuracy``), as Quick-Tune (Arango et
al., ICLR 2024) does at a larger scale. The model is scikit-learn's ridge regression on standardised
inputs and their degree-2 products (``PolynomialFeatures``), with the penalty chosen by
cross-validation (``RidgeCV``). A backbone enters only through its fit signals, so the model also
scores backbones it never saw fine-tuned.

It is saved as plain JSON (input names, scaling, exponents, coefficients): no pickle, readable by
any program, and :meth:`LearnedRecommender.predict` is a dot product in NumPy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nbtl.codec import decode, is_unset
from nbtl.config import TrialConfig
from nbtl.fit.registry import feature_measures, source_measures
from nbtl.heuristics.signals import HeuristicsError
from nbtl.regularizers import Knob, knob, learned_knobs
from nbtl.resources import shipped

__all__ = [
    "FORMAT",
    "LearnedRecommender",
    "default_inputs",
    "default_recommender_path",
    "encodable_inputs",
    "encode",
    "fit_recommender",
]

FORMAT = "nbtl-learned-recommender"
HEADS = ("linear", "mlp", "spinal")
TARGET = "best_val_accuracy"
#: Model selection keeps the candidates whose held-out ranking is within this of the best, then the lowest error.
RANK_SLACK = 0.02
#: The best trials of each meta-task kept as candidate configs (see :func:`build_portfolio`).
PORTFOLIO_PER_TASK = 3

#: Inputs that describe the dataset.
DATASET_INPUTS = ("log_images_per_class", "log_n_classes", "grayscale", "log_original_side", "log_image_size")
#: Inputs that describe the config, besides the regularisers' (:func:`config_inputs`).
CONFIG_INPUTS = (
    "transfer_fraction",
    "transfer_past_peak",
    "freeze_fraction",
    "log_lr",
    "lr_decay",
    "log_head_lr",
    "head_mlp",
    "head_spinal",
)


def config_inputs() -> tuple[str, ...]:
    """The inputs that describe a config: :data:`CONFIG_INPUTS` and every registered regulariser knob's
    ``learned_input`` (:func:`nbtl.regularizers.learned_knobs`)."""
    return (*CONFIG_INPUTS, *(k.learned_input for k in learned_knobs()))


def default_inputs() -> tuple[str, ...]:
    """The inputs a recommender is fitted on now: the dataset's, the backbone's fit (the learned fit measures of
    :mod:`nbtl.fit.registry`: the best of a block measure over blocks, a source measure's value; and where the fit
    curve peaks) and the config's. A fitted recommender keeps the list it was fitted on (its file names it)."""
    learned = [entry.learned_input for entry in feature_measures() if entry.learned]
    source = [entry.learned_input for entry in source_measures() if entry.learned]
    return (*DATASET_INPUTS, *learned, "fit_peak_fraction", *source, *config_inputs())


def encodable_inputs() -> tuple[str, ...]:
    """Every input :func:`encode` can compute: those of :func:`default_inputs` and every registered fit measure's."""
    measured = [entry.learned_input for entry in (*feature_measures(), *source_measures())]
    return (*DATASET_INPUTS, *measured, "fit_peak_fraction", *config_inputs())


def default_recommender_path() -> Path | None:
    """The shipped ``heuristics/recommender.json`` (installed copy, else the source tree's), or None when absent."""
    return shipped("heuristics/recommender.json")


def _number(row: dict[str, Any], key: str, default: float | None = None) -> float:
    value = row.get(key, default)
    if value is None or (isinstance(value, str) and is_unset(value)):  # a measured NaN (no probe on 3 images) stays
        if default is None:
            raise HeuristicsError(f"meta-data row lacks {key!r}; every row needs the config and fit signals")
        value = default
    return float(value)


def encode(row: dict[str, Any], inputs: tuple[str, ...] | list[str] | None = None) -> np.ndarray:
    """The ``inputs`` (default :func:`default_inputs`) of one row: a config merged with dataset and backbone
    signals. A source measure's signal is 0 where it is missing or NaN (no source head)."""
    inputs = default_inputs() if inputs is None else tuple(inputs)
    blocks = _number(row, "num_blocks")
    source = {entry.learned_input for entry in source_measures()}

    regularised = {k.learned_input: k for k in learned_knobs()}

    def value(name: str) -> float:
        if name in source:
            number = _number(row, name, 0.0)
            return number if math.isfinite(number) else 0.0
        if name in _DATASET_OR_CONFIG:
            return _DATASET_OR_CONFIG[name](row, blocks)
        if name in regularised:
            return regularised[name].encode(_knob_value(row, regularised[name]))
        return _number(row, name)

    return np.array([value(name) for name in inputs], dtype=float)


def _transfer(row: dict[str, Any], blocks: float) -> float:
    transfer = row.get("transfer_blocks")
    return blocks if is_unset(transfer) or transfer == "all" else float(transfer)


def _head_lr(row: dict[str, Any]) -> float:
    head_lr = row.get("head_lr")
    return _number(row, "lr") if is_unset(head_lr) else float(head_lr)


def _knob_value(row: dict[str, Any], item: Knob) -> float:
    """A regulariser knob's value in ``row``: a missing one is its default, a None its ``fallback`` knob's."""
    value = row.get(item.name)
    if is_unset(value):
        fallback = knob(item.fallback) if item.fallback else None
        return _knob_value(row, fallback) if fallback is not None else float(item.default or 0.0)
    return float(value)


#: How each dataset or config input is computed from a row and the backbone's block count.
_DATASET_OR_CONFIG: dict[str, Any] = {
    "log_images_per_class": lambda row, blocks: math.log(_number(row, "images_per_class")),
    "log_n_classes": lambda row, blocks: math.log(_number(row, "n_classes")),
    "grayscale": lambda row, blocks: _number(row, "grayscale"),
    "log_original_side": lambda row, blocks: math.log(_number(row, "original_side")),
    "log_image_size": lambda row, blocks: math.log(_number(row, "image_size")),
    "transfer_fraction": lambda row, blocks: _transfer(row, blocks) / blocks,
    "transfer_past_peak": lambda row, blocks: (_transfer(row, blocks) - (_number(row, "fit_peak_block") + 1)) / blocks,
    "freeze_fraction": lambda row, blocks: _number(row, "freeze_blocks", 0.0) / blocks,
    "log_lr": lambda row, blocks: math.log10(_number(row, "lr")),
    "lr_decay": lambda row, blocks: _number(row, "lr_decay", 1.0),
    "log_head_lr": lambda row, blocks: math.log10(_head_lr(row)),
    "head_mlp": lambda row, blocks: float(str(row.get("head", "linear")) == "mlp"),
    "head_spinal": lambda row, blocks: float(str(row.get("head", "linear")) == "spinal"),
}


def _terms(z: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """Polynomial terms: ``terms[i, t] = prod_j z[i, j] ** powers[t, j]``."""
    return np.prod(z[:, None, :] ** powers[None, :, :], axis=2)


@dataclass
class LearnedRecommender:
    """Ridge regression on degree-2 features of its standardised ``inputs`` (named by :func:`encode`), as plain
    arrays."""

    mean: np.ndarray
    scale: np.ndarray
    powers: np.ndarray  # (n_terms, n_inputs) exponents of each polynomial term
    coef: np.ndarray  # (n_terms,)
    intercept: float
    alpha: float
    info: dict[str, Any] = field(default_factory=dict)
    portfolio: list[dict[str, Any]] = field(default_factory=list)  # configs that did well on the meta-tasks
    inputs: tuple[str, ...] = field(default_factory=default_inputs)  # what it was fitted on, in order

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Predicted validation accuracy of each row, clipped to [0, 1]."""
        if not rows:
            return np.empty(0)
        inputs = np.stack([encode(row, self.inputs) for row in rows])
        return self.predict(inputs)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        z = (np.asarray(inputs, dtype=float) - self.mean) / self.scale
        return np.clip(_terms(z, self.powers) @ self.coef + self.intercept, 0.0, 1.0)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": 1,
                "inputs": list(self.inputs),
                "target": TARGET,
                "model": "ridge regression on degree-2 polynomial features of standardised inputs (scikit-learn RidgeCV)",
                "alpha": self.alpha,
                "intercept": self.intercept,
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "powers": self.powers.astype(int).tolist(),
                "coef": self.coef.tolist(),
                "info": self.info,
                "portfolio": self.portfolio,
            },
            indent=1,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.to_json())
        except OSError as error:
            raise HeuristicsError(
                f"cannot write the recommender to {path} ({error.strerror}); choose a writable path"
            ) from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> LearnedRecommender:
        """Read a recommender written by :meth:`save` (JSON; nothing is unpickled)."""
        path = Path(path)
        try:
            document = json.loads(path.read_text())
        except OSError as error:
            raise HeuristicsError(
                f"recommender {path}: cannot read it ({error.strerror}); check the path, or build "
                "one with nbtl heuristics learn"
            ) from None
        except json.JSONDecodeError as error:
            raise HeuristicsError(f"recommender {path}: not JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise HeuristicsError(f"recommender {path}: not an nbtl recommender (format {FORMAT!r} expected)")
        inputs = document.get("inputs")
        known = encodable_inputs()
        if (
            not isinstance(inputs, list)
            or not all(isinstance(name, str) and name in known for name in inputs)
            or len(inputs) != len(document.get("mean") or ())
        ):
            raise HeuristicsError(
                f"recommender {path}: built for inputs this nbtl version cannot compute ({inputs!r}; "
                "a fit measure that is not registered?); rebuild it with nbtl heuristics learn"
            )
        return cls(
            mean=np.array(document["mean"], dtype=float),
            scale=np.array(document["scale"], dtype=float),
            powers=np.array(document["powers"], dtype=float),
            coef=np.array(document["coef"], dtype=float),
            intercept=float(document["intercept"]),
            alpha=float(document["alpha"]),
            info=dict(document.get("info") or {}),
            portfolio=list(document.get("portfolio") or []),
            inputs=tuple(inputs),
        )


def fit_recommender(rows: list[dict[str, Any]], alphas=None, groups: list[str] | None = None) -> LearnedRecommender:
    """Fit a :class:`LearnedRecommender` on meta-dataset rows (each with :data:`TARGET`).

    Parameters
    ----------
    rows : list of dict
        Meta-dataset rows: config keys, dataset and backbone signals, and ``best_val_accuracy``.
    alphas : sequence of float, optional
        Ridge penalties to choose from (default ``10**[-2..4]``).
    groups : list of str, optional
        The task of each row: the penalty is then chosen by leave-one-task-out cross-validation
        (``GroupKFold``), which rewards models that carry over to a new dataset.
    """
    from scipy.stats import spearmanr
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    keep = [i for i, row in enumerate(rows) if row.get(TARGET) not in (None, "") and math.isfinite(float(row[TARGET]))]
    usable = [rows[i] for i in keep]
    if len(usable) < 5:
        raise HeuristicsError(
            f"the meta-dataset has {len(usable)} finished trials with {TARGET}; "
            "at least 5 are needed: run more searches and learn again"
        )
    names = default_inputs()
    inputs = np.stack([encode(row, names) for row in usable])
    target = np.array([float(row[TARGET]) for row in usable])
    alphas = list(alphas if alphas is not None else np.logspace(-2, 4, 13))
    scaler = StandardScaler().fit(inputs)
    scale = np.where(inputs.std(axis=0) > 1e-9, scaler.scale_, 1.0)  # constant inputs stay 0 after centring
    z = (inputs - scaler.mean_) / scale
    poly = PolynomialFeatures(degree=2, include_bias=False).fit(z)
    # Two model structures, both without products of two task-level inputs (with a handful of tasks those
    # fit each task's level exactly and extrapolate wildly to a new one): "additive" (task inputs linear;
    # config terms, their squares and products) and "interactions" (plus config x task products, which say
    # which settings suit which data but need many tasks to be estimated). Leave-one-task-out picks.
    described = set(config_inputs())
    task_inputs = np.array([name not in described for name in names])
    on_task, on_config = poly.powers_[:, task_inputs].sum(axis=1), poly.powers_[:, ~task_inputs].sum(axis=1)
    structures = {
        "additive": poly.powers_[(on_task == 0) | ((on_task == 1) & (on_config == 0))],
        "interactions": poly.powers_[on_task <= 1],
    }
    info: dict[str, Any] = {"rows": len(usable)}
    task_groups = None if groups is None else np.array([str(groups[i]) for i in keep])
    if task_groups is not None and len(set(task_groups)) >= 3:
        # Score each penalty and structure by how well its predictions rank each held-out task's trials (mean
        # Spearman correlation: a recommendation needs the order within a task) and by its absolute error.
        folds = list(GroupKFold(n_splits=len(set(task_groups))).split(z, target, task_groups))

        def scores(terms, alpha):
            correlations, errors = [], []
            for train, test in folds:
                predicted = Ridge(alpha=alpha).fit(terms[train], target[train]).predict(terms[test])
                errors.append(np.mean(np.abs(predicted - target[test])))
                if len(test) > 2 and np.ptp(target[test]) > 0 and np.ptp(predicted) > 0:
                    correlations.append(spearmanr(predicted, target[test]).statistic)
            return (float(np.mean(correlations)) if correlations else -1.0), float(np.mean(errors))

        table = {
            (name, a): scores(_terms(z, powers.astype(float)), a) for name, powers in structures.items() for a in alphas
        }
        # Of the candidates that rank within RANK_SLACK of the best, the one with the lowest error: ranking
        # alone favours a penalty so strong that every prediction sits at the mean.
        top = max(score[0] for score in table.values())
        structure, alpha = min((k for k in table if table[k][0] >= top - RANK_SLACK), key=lambda k: table[k][1])
        info.update(
            tasks=len(set(task_groups)),
            selection="leave-one-task-out",
            structure=structure,
            cv_spearman_within_task=round(table[structure, alpha][0], 4),
            cv_mean_absolute_error=round(table[structure, alpha][1], 5),
        )
        powers = structures[structure]
        terms = _terms(z, powers.astype(float))
        model = Ridge(alpha=alpha).fit(terms, target)
    else:
        structure, powers = "additive", structures["additive"]
        terms = _terms(z, powers.astype(float))
        model = RidgeCV(alphas=alphas).fit(terms, target)
        alpha = float(model.alpha_)
        info.update(selection="leave-one-out (RidgeCV)", structure=structure)
    info["terms"] = int(len(powers))
    fitted = model.predict(terms)
    info["train_mean_absolute_error"] = round(float(np.mean(np.abs(fitted - target))), 5)
    return LearnedRecommender(
        mean=scaler.mean_.copy(),
        scale=scale,
        powers=powers.astype(float),
        coef=np.asarray(model.coef_, dtype=float),
        intercept=float(model.intercept_),
        alpha=float(alpha),
        info=info,
        portfolio=build_portfolio(usable, task_groups),
        inputs=names,
    )


def build_portfolio(rows: list[dict[str, Any]], groups, per_task: int = PORTFOLIO_PER_TASK) -> list[dict[str, Any]]:
    """The best ``per_task`` trials of every task, as candidate configs for a new task.

    Choosing among configs that really trained well somewhere keeps the recommendation where the model has
    data; searching the model's optimum over the whole space instead finds its extrapolation errors
    (the optimizer's curse). Block counts are kept as fractions, so a config moves to a backbone with
    another number of blocks.
    """
    import dataclasses

    integer_keys = {
        f.name for f in dataclasses.fields(TrialConfig) if "int" in str(f.type) and "float" not in str(f.type)
    }
    groups = list(groups) if groups is not None else ["all"] * len(rows)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for group, row in zip(groups, rows):
        by_task.setdefault(str(group), []).append(row)
    portfolio = []
    for task, members in sorted(by_task.items()):
        for row in sorted(members, key=lambda r: -float(r[TARGET]))[:per_task]:
            values = {
                k: _plain_value(row[k])
                for k in TrialConfig.keys()
                if k in row and _plain_value(row[k]) is not None and k != "block_lrs"
            }
            # a CSV column with gaps (a knob older rows lack) reads back as floats: 0.0 epochs is 0
            values = {
                k: int(v) if k in integer_keys and isinstance(v, float) and v.is_integer() else v
                for k, v in values.items()
            }
            config = TrialConfig.from_dict(values, where=f"meta-dataset row of {task}").to_dict()
            blocks = float(row["num_blocks"])
            transfer = config["transfer_blocks"]
            portfolio.append(
                {
                    "task": task,
                    TARGET: round(float(row[TARGET]), 4),
                    "transfer_fraction": (blocks if transfer is None else transfer) / blocks,
                    "freeze_fraction": config["freeze_blocks"] / blocks,
                    "config": config,
                }
            )
    return portfolio


def _plain_value(value: Any) -> Any:
    """A meta-dataset cell as the config type it stands for (CSV and MLflow hand back strings): the codec's
    :func:`nbtl.codec.decode`; floats stay floats (lr=1.0), integer keys are converted by the caller."""
    return decode(value)
