"""The search's Optuna study in a database, where ``optuna-dashboard`` and ``optuna.load_study`` open it.

The sampler keeps its study in memory (Ray Tune's ``OptunaSearch``): an RDB-backed study would query the database
for every candidate the learned prior draws (about 7 times slower per proposal, measured on SQLite), on a driver
that shares the CPUs with the trials. :class:`StudyMirror`, a driver-side Ray Tune callback, writes each trial to
an RDB study as it ends instead: its searched parameters with the distributions the space's define-by-run function
gives them (replayed on a recording trial), its result (``best_val_accuracy``) as the value, COMPLETE, or FAIL for
a trial that raised; a resumed search adds only the trials the study does not hold yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune import Callback

from nbtl.ranking import METRIC, MODE
from nbtl.search.options import open_rdb

log = logging.getLogger(__name__)

#: The user attribute naming a study trial's Ray Tune trial (so a resumed search does not add it twice).
TRIAL_ID_ATTR = "nbtl.trial_id"


class _Recorder:
    """A stand-in for :class:`optuna.trial.Trial` that answers each ``suggest_*`` with the trial's config value and
    records the distribution the define-by-run function asked it for."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def _answer(self, name: str, distribution: BaseDistribution) -> Any:
        self.distributions[name] = distribution
        self.params[name] = self.config[name]
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False):
        return self._answer(name, FloatDistribution(low, high, log=log, step=step))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False):
        return self._answer(name, IntDistribution(low, high, log=log, step=step))

    def suggest_categorical(self, name: str, choices):
        return self._answer(name, CategoricalDistribution(tuple(choices)))


class StudyMirror(Callback):
    """Ray Tune callback: every ended trial written to the Optuna study ``study_name`` at ``url``.

    Parameters
    ----------
    url : str
        The database (``sqlite:///.../optuna.db``, ``postgresql://...``).
    study_name : str
        The study's name (the search's results folder).
    define_by_run : callable
        The space's define-by-run function (``SearchSpace.define_by_run(seed)``), replayed to learn each
        searched parameter's distribution.
    """

    def __init__(self, url: str, study_name: str, define_by_run: Callable[[Any], Any]) -> None:
        self.url, self.study_name, self.define_by_run = url, study_name, define_by_run
        self._study = None
        self._written: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # Ray Tune pickles its callbacks with the experiment
        return {**self.__dict__, "_study": None, "_written": set()}

    def study(self):
        if self._study is None:
            import optuna

            self._study = optuna.create_study(
                storage=open_rdb(self.url),
                study_name=self.study_name,
                direction="maximize" if MODE == "max" else "minimize",
                load_if_exists=True,
            )
            self._written = {str(t.user_attrs.get(TRIAL_ID_ATTR)) for t in self._study.get_trials(deepcopy=False)}
        return self._study

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._write(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._write(trial, failed=True)

    def _write(self, trial, failed: bool) -> None:
        import optuna

        try:
            study = self.study()
            if str(trial.trial_id) in self._written:
                return
            recorder = _Recorder(dict(trial.config))
            self.define_by_run(recorder)
            value = (trial.last_result or {}).get(METRIC)
            state = optuna.trial.TrialState.FAIL if failed or value is None else optuna.trial.TrialState.COMPLETE
            study.add_trial(
                optuna.trial.create_trial(
                    params=recorder.params,
                    distributions=recorder.distributions,
                    value=None if state == optuna.trial.TrialState.FAIL else float(value),
                    state=state,
                    user_attrs={TRIAL_ID_ATTR: str(trial.trial_id)},
                )
            )
            self._written.add(str(trial.trial_id))
        except Exception as error:  # noqa: BLE001  (the study is a view of the search: it must never stop it)
            log.warning("could not write trial %s to the Optuna study at %s: %s", trial.trial_id, self.url, error)
