"""A learned prior for the search: rank cheap candidate configs with a performance model, propose the best.

In the spirit of Quick-Tune (Arango et al., ICLR 2024) and ZAP (Öztürk et al., ICML 2022): a model fitted on
a meta-dataset of past trials (:class:`~nbtl.heuristics.learned.LearnedRecommender`) predicts the validation
accuracy of a config on this task from the task's own signals. :class:`PriorSampler` wraps Optuna's TPE or
random sampler: for every new trial it lets the wrapped sampler draw ``n_candidates`` complete configs (by
running the space's define-by-run function against a throw-away proxy trial), drops the ones the model
predicts at chance level, and proposes one of the best-ranked. TPE keeps learning from what the trials really
score, the prior only chooses among TPE's own draws, and its say fades as the task's observations accumulate.

Used through ``optuna.create_study(sampler=PriorSampler(...))``, ``study.ask()``, ``space.sample(trial)`` and
``study.tell(...)``, which is what Ray Tune's ``OptunaSearch`` does; no Ray code is involved here.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    _get_single_value,
)
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from nbtl.config import TrialConfig
from nbtl.heuristics.learned import LearnedRecommender, default_recommender_path

__all__ = [
    "PRIOR_CANDIDATES_ATTR",
    "PRIOR_SCORE_ATTR",
    "PriorSampler",
    "RecommenderScore",
    "build_prior",
    "recommender_score",
]

log = logging.getLogger(__name__)

#: User attribute of every trial the prior proposed: the model's predicted validation accuracy of the proposal.
PRIOR_SCORE_ATTR = "nbtl.prior_score"
#: User attribute: how many candidates the proposal was chosen from (1 once the prior has faded out).
PRIOR_CANDIDATES_ATTR = "nbtl.prior_candidates"

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class _ProxyTrial:
    """Just enough of :class:`optuna.trial.Trial` for a define-by-run function, without touching the study.

    A suggestion is resolved as :meth:`optuna.trial.Trial._suggest` resolves it (single-valued distribution,
    then the wrapped sampler's relative sample, then its ``sample_independent``), on a private copy of the
    real trial, so no trial or parameter is written to the storage.
    """

    def __init__(self, base: BaseSampler, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base = base
        self._study = study
        self._frozen = copy.deepcopy(trial)
        self._relative_space = base.infer_relative_search_space(study, self._frozen)
        self._relative = base.sample_relative(study, self._frozen, self._relative_space) if self._relative_space else {}

    @property
    def number(self) -> int:
        return self._frozen.number

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._frozen.params)

    def _suggest(self, name: str, distribution: BaseDistribution) -> Any:
        if name in self._frozen.params:
            return self._frozen.params[name]
        if distribution.single():
            value = _get_single_value(distribution)
        elif name in self._relative and name in self._relative_space and _contains(distribution, self._relative[name]):
            value = self._relative[name]
        else:
            value = self._base.sample_independent(self._study, self._frozen, name, distribution)
        self._frozen.params[name] = value
        self._frozen.distributions[name] = distribution
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._suggest(name, CategoricalDistribution(choices=choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self._suggest(name, IntDistribution(low=low, high=high, log=log, step=step)))

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return float(self._suggest(name, FloatDistribution(low=low, high=high, log=log, step=step)))


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


class PriorSampler(BaseSampler):
    """Optuna sampler: the wrapped sampler's draws, filtered and ranked by a learned performance model.

    For each new trial that was not enqueued (``study.enqueue_trial``; those, and any parameter they leave
    open, go to the wrapped sampler untouched), the wrapped sampler draws ``n`` complete candidate configs
    through a proxy trial: TPE from its current model of this study, random uniformly. ``score`` predicts
    each candidate's validation accuracy; candidates predicted below ``1 / n_classes + chance_margin`` are
    dropped unless all are; the proposal is drawn uniformly, with a generator seeded by ``seed``, from the
    best ``max(1, round(n / 8))`` of the rest. The real trial's ``suggest_*`` calls then return the
    proposal's values (:meth:`sample_independent`), and the prior's score is stored as the trial's user
    attribute ``nbtl.prior_score`` (with ``nbtl.prior_candidates``, how many candidates were drawn).

    Why the top eighth and not the argmax: the model is a ridge regression fitted on a few dozen trials
    of a handful of tasks; it is most confident where it extrapolates (its predictions clip at 1.0), so
    always taking its maximum would chase its errors (the optimizer's curse) and propose near-copies of one
    config, from which TPE learns little. Drawing among the top eighth of 32 still removes the configs
    it predicts to be poor, while keeping the proposals as varied as the wrapped sampler's draws.

    Fading: with ``k`` finished (complete or pruned) trials in the study, ``n = round(n_candidates **
    max(0, 1 - k / fade_trials))``. Choosing among the top of ``n`` draws moves a proposal to about the
    ``1 - c/n`` quantile of the model's ranking, so the prior's pull grows with ``log n``; the schedule
    lowers ``log n`` linearly from ``log n_candidates`` (no observation of this task yet: trust the
    meta-learned model) to 0 after ``fade_trials`` observations, from where every proposal is the wrapped
    sampler's own draw (``n = 1``), its score still recorded. ``fade_trials=None`` keeps full strength.
    One thing outlives the fading: the veto. While every draw of a trial is predicted at chance level,
    more are drawn (``n`` at a time, ``n_candidates`` at most), so a faded prior is the wrapped sampler
    restricted to configs the model does not predict dead (``nbtl.prior_candidates`` counts the draws).

    Parameters
    ----------
    base : optuna.samplers.BaseSampler
        The sampler that draws the candidates (TPE or random); ``before_trial`` / ``after_trial`` and, for
        enqueued trials, relative sampling are forwarded to it.
    space : SearchSpace or callable
        The search space (its ``sample`` method is used) or any Optuna define-by-run function ``f(trial)``
        returning the fixed values of the config.
    score : callable
        ``score(configs) -> array`` of predicted accuracies, one per full candidate config (the searched
        parameters merged with the fixed values the space returns); NaN for a config it cannot score
        (ranked last, never dropped as chance). See :func:`recommender_score`.
    n_classes : int, optional
        The task's number of classes; without it no candidate is dropped as chance level.
    n_candidates : int, default=32
    chance_margin : float, default=0.05
    fade_trials : int or None, default=20
    seed : int, default=0
        Seeds the choice among the top candidates (the wrapped sampler has its own seed).
    cost : callable, optional
        ``cost(configs) -> array`` of each candidate's predicted seconds (:class:`nbtl.search.cost.CostModel`).
        With it candidates are ranked by expected gain per second, Quick-Tune's cost-aware acquisition
        (Arango et al., ICLR 2024): the expected improvement of the predicted accuracy over the study's best
        value so far (a normal of standard deviation ``sigma`` around the prediction), divided by the
        predicted cost; so where predicted gains tie, the cheaper candidate comes first.
    sigma : float, default=0.1
        The predicted accuracy's standard deviation in the expected improvement.
    """

    def __init__(
        self,
        base: BaseSampler,
        space: Any,
        score: Callable[[list[dict[str, Any]]], np.ndarray],
        *,
        n_classes: int | None = None,
        n_candidates: int = 32,
        chance_margin: float = 0.05,
        fade_trials: int | None = 20,
        seed: int = 0,
        cost: Callable[[list[dict[str, Any]]], np.ndarray] | None = None,
        sigma: float = 0.1,
    ) -> None:
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        if fade_trials is not None and fade_trials < 1:
            raise ValueError(f"fade_trials must be >= 1 or None, got {fade_trials}")
        self.base = base
        self.space = space
        self.score = score
        self.n_classes = n_classes
        self.n_candidates = int(n_candidates)
        self.chance_margin = float(chance_margin)
        self.fade_trials = fade_trials
        self.seed = seed
        self.cost = cost
        self.sigma = float(sigma)
        self._rng = np.random.RandomState(seed)
        self._proposals: dict[int, dict[str, Any]] = {}  # trial id -> proposed params
        self._warned = False

    def __str__(self) -> str:
        return f"PriorSampler({self.base}, n_candidates={self.n_candidates})"

    # -- the prior --------------------------------------------------------------------------------------

    @property
    def chance_level(self) -> float | None:
        """Scores below this are treated as chance level (None without ``n_classes``)."""
        return None if not self.n_classes else 1.0 / self.n_classes + self.chance_margin

    def candidates_for(self, study: optuna.Study) -> int:
        """How many candidates the next proposal is chosen from (see the class docstring, "Fading")."""
        if self.fade_trials is None:
            return self.n_candidates
        done = len(study.get_trials(deepcopy=False, states=_FINISHED))
        return max(1, int(round(self.n_candidates ** max(0.0, 1.0 - done / self.fade_trials))))

    def _define_by_run(self) -> Callable[[Any], Any]:
        return self.space.sample if hasattr(self.space, "sample") else self.space

    def _draw(self, study: optuna.Study, trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, Any]]:
        proxy = _ProxyTrial(self.base, study, trial)
        fixed = self._define_by_run()(proxy) or {}
        params = proxy.params
        return params, {**fixed, **params}

    def choose(self, scores: np.ndarray, top: int | None = None, ranking: np.ndarray | None = None) -> int:
        """Index of the proposal among candidates with these ``scores``: chance-level ones dropped (unless
        all are), then drawn with the seeded generator among the best ``top`` (default: an eighth of them) by
        ``ranking`` (default: the scores; with a cost model, the expected gain per second)."""
        scores = np.asarray(scores, dtype=float)
        finite = np.isfinite(scores)
        keep = np.ones(len(scores), dtype=bool)
        if self.chance_level is not None:
            keep = ~(finite & (scores < self.chance_level))
            if not keep.any():
                keep[:] = True
        ranking = scores if ranking is None else np.asarray(ranking, dtype=float)
        ranked = np.where(np.isfinite(ranking), ranking, -np.inf)
        order = [i for i in sorted(range(len(scores)), key=lambda i: -ranked[i]) if keep[i]]
        best = order[: max(1, int(round(len(scores) / 8)) if top is None else top)]
        return int(best[self._rng.randint(len(best))]) if len(best) > 1 else int(best[0])

    def gain_per_second(self, scores: np.ndarray, seconds: np.ndarray, best: float | None) -> np.ndarray:
        """Expected improvement over ``best`` (the study's best value; None: nothing finished yet, so the
        chance level, else 0) of accuracies predicted as ``scores`` (NaN stays NaN), per predicted second."""
        from scipy.stats import norm

        incumbent = best if best is not None else (self.chance_level or 0.0)
        z = (np.asarray(scores, dtype=float) - incumbent) / self.sigma
        improvement = self.sigma * (z * norm.cdf(z) + norm.pdf(z))
        return improvement / np.maximum(np.asarray(seconds, dtype=float), 1e-3)

    def _ranking(self, study: optuna.Study, configs: list[dict[str, Any]], scores: np.ndarray) -> np.ndarray:
        """What :meth:`choose` ranks by: the predicted accuracies, or with ``cost`` the expected gain per second
        (chance-level candidates still dropped by their accuracy)."""
        if self.cost is None:
            return scores
        try:
            seconds = np.asarray(self.cost(configs), dtype=float).reshape(len(configs))
        except Exception as error:  # a broken cost model must not stop a search: rank by accuracy alone
            log.warning("the cost model cannot price candidates (%s); ranked by predicted accuracy", error)
            return scores
        finished = [
            t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None
        ]
        return self.gain_per_second(scores, seconds, max(finished) if finished else None)

    def _at_chance(self, scores: np.ndarray) -> np.ndarray:
        if self.chance_level is None:
            return np.zeros(len(scores), dtype=bool)
        return np.isfinite(scores) & (scores < self.chance_level)

    def _propose(self, study: optuna.Study, trial: FrozenTrial) -> None:
        n = self.candidates_for(study)
        drawn: list[tuple[dict[str, Any], dict[str, Any]]] = []
        scores = np.empty(0)
        # The veto outlives the fading: while every draw so far is predicted at chance level, draw more
        # (in batches of n, at most n_candidates in all).
        while not drawn or (self._at_chance(scores).all() and len(drawn) < self.n_candidates):
            batch = [self._draw(study, trial) for _ in range(min(n, self.n_candidates - len(drawn)) or 1)]
            drawn += batch
            try:
                batch_scores = np.asarray(self.score([config for _, config in batch]), dtype=float).reshape(len(batch))
            except Exception as error:  # a broken prior must not stop a search: fall back to the plain draw
                if not self._warned:
                    log.warning("the search prior cannot score candidates (%s); trials use the plain sampler", error)
                    self._warned = True
                self._proposals[trial._trial_id] = drawn[0][0]
                return
            scores = np.concatenate([scores, batch_scores])
        index = self.choose(
            scores, top=max(1, int(round(n / 8))), ranking=self._ranking(study, [c for _, c in drawn], scores)
        )
        self._proposals[trial._trial_id] = drawn[index][0]
        attrs: dict[str, Any] = {PRIOR_CANDIDATES_ATTR: len(drawn)}
        if math.isfinite(scores[index]):
            attrs[PRIOR_SCORE_ATTR] = float(scores[index])
        for key, value in attrs.items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
            trial.user_attrs[key] = value  # the live Trial's cached copy, as Trial.set_user_attr does

    # -- BaseSampler --------------------------------------------------------------------------------------

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)
        if "fixed_params" in trial.system_attrs:  # enqueued: passes through untouched
            return
        self._propose(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if trial._trial_id in self._proposals:  # the proxy already used the base's relative sample
            return {}
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if trial._trial_id in self._proposals or not search_space:
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        proposal = self._proposals.get(trial._trial_id)
        if proposal is not None and param_name in proposal and _contains(param_distribution, proposal[param_name]):
            return proposal[param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._proposals.pop(trial._trial_id, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = np.random.RandomState()


class RecommenderScore:
    """``score(configs)`` of :func:`recommender_score` (a class, so a study holding it can be pickled)."""

    def __init__(self, model: Any, task_rows: dict[str, dict[str, Any]], fixed: dict[str, Any] | None = None) -> None:
        self.model = model
        self.task_rows = {str(k): dict(v) for k, v in task_rows.items()}
        self.defaults = TrialConfig().to_dict()
        self.fixed = dict(fixed or {})

    def rows(self, configs: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """The model's input row of each config (None where its backbone has no task signals)."""
        rows = []
        for config in configs:
            config = {**self.defaults, **self.fixed, **config}
            signals = self.task_rows.get(str(config.get("backbone")))
            rows.append(None if signals is None else {**config, **signals})
        return rows

    def __call__(self, configs: list[dict[str, Any]]) -> np.ndarray:
        rows = self.rows(configs)
        scores = np.full(len(rows), np.nan)
        known = [i for i, row in enumerate(rows) if row is not None]
        if known:
            scores[known] = self.model.predict_rows([rows[i] for i in known])
        return scores


def recommender_score(
    model: Any, task_rows: dict[str, dict[str, Any]], fixed: dict[str, Any]
) -> Callable[[list[dict[str, Any]]], np.ndarray]:
    """A ``score`` for :class:`PriorSampler`: the learned recommender's predicted validation accuracy.

    Parameters
    ----------
    model : LearnedRecommender
        Anything with ``predict_rows(rows) -> array``.
    task_rows : dict
        Backbone name -> this task's signals with that backbone (``TaskFit.row(backbone)``: dataset
        signals such as ``images_per_class``, ``n_classes``, ``image_size`` and the backbone's fit
        signals such as ``num_blocks``, ``fit_peak_block``, ``logme_best``, ``probe_best``).
    fixed : dict
        The space's fixed values (``epochs``, ``batch_size``, ...), under each candidate's own values;
        :class:`~nbtl.config.TrialConfig` defaults fill whatever neither sets.

    A candidate whose backbone is not in ``task_rows`` scores NaN (not rated; never dropped as chance).
    """
    return RecommenderScore(model, task_rows, fixed)


def build_prior(
    space: Any,
    base_sampler: BaseSampler,
    task_rows: dict[str, dict[str, Any]] | None,
    n_classes: int | None,
    *,
    model: Any = None,
    seed: int = 0,
    n_candidates: int = 32,
    fade_trials: int | None = None,
    chance_margin: float = 0.05,
    cost: Callable[[list[dict[str, Any]]], np.ndarray] | None = None,
) -> PriorSampler | None:
    """The :class:`PriorSampler` of a search, or None when there is no recommender or no task signals.

    ``model`` is a :class:`~nbtl.heuristics.learned.LearnedRecommender`, a path to one, or None for
    ``heuristics/recommender.json`` of the source tree. ``fade_trials`` defaults to the space's
    ``search.prior.trials``, else its ``search.trials`` (the prior hands over to the wrapped sampler by the
    end of the budget), else 20.
    """
    if not task_rows:
        return None
    if model is None or isinstance(model, (str, Path)):
        path = default_recommender_path() if model is None else Path(model)
        if path is None or not Path(path).is_file():
            return None
        model = LearnedRecommender.load(path)
    parameters = getattr(space, "parameters", [])
    fixed = {p.name: p.value for p in parameters if getattr(p, "fixed", False) and not getattr(p, "when", None)}
    backbones = space.backbones() if hasattr(space, "backbones") else list(task_rows)
    if not any(b in task_rows for b in backbones):
        return None
    if fade_trials is None:
        fade_trials = space.settings.prior_trials if hasattr(space, "settings") else 20
    return PriorSampler(
        base_sampler,
        space,
        recommender_score(model, task_rows, fixed),
        n_classes=n_classes,
        n_candidates=n_candidates,
        chance_margin=chance_margin,
        fade_trials=fade_trials,
        seed=seed,
        cost=cost,
    )
