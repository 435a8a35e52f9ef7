"""The sampler and scheduler registries: what a space's ``search.sampler.type`` and ``search.scheduler.type`` may
name, as the head, backbone and fit-measure registries hold theirs.

A sampler is an Optuna sampler built by ``build(seed, **options) -> optuna.samplers.BaseSampler``; a scheduler is a
Ray Tune trial scheduler built by ``build(options, max_epochs, budget, where) -> TrialScheduler`` (``max_epochs``:
the most epochs a trial of the space runs; ``budget``: the search's time budget in seconds, or None). Each declares
the keys its spec takes besides ``type``, their defaults (written once, here) and an optional
``check(options, where)`` (a scheduler's: ``check(options, max_epochs, where)``) run when the space is parsed, so a
bad value fails at load time in one line. Builders and checks may be ``module:function`` references, imported when
first used: naming Ray's schedulers never imports Ray (which must load after token authentication is set).

nbtl's own: samplers ``tpe`` (Optuna's ``TPESampler``, the default) and ``random``; schedulers ``asha`` (Ray Tune's
``ASHAScheduler``, rungs in epochs or seconds, the default) and ``fifo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nbtl.errors import ConfigError
from nbtl.ranking import METRIC, MODE
from nbtl.registry import Registry, resolve
from nbtl.search.cluster import SearchError

__all__ = [
    "Algorithm",
    "algorithm_names",
    "get_algorithm",
    "get_sampler",
    "get_scheduler",
    "register_sampler",
    "register_scheduler",
    "remove_sampler",
    "remove_scheduler",
    "sampler_names",
    "scheduler_names",
]


@dataclass(frozen=True)
class Algorithm:
    """A registered sampler or scheduler: its name, the keys its spec takes besides ``type``, their defaults, its
    builder and its check."""

    name: str
    kind: str  # "sampler" or "scheduler"
    keys: tuple[str, ...]
    build: Callable | str
    defaults: dict[str, Any] = field(default_factory=dict)
    check: Callable | str | None = None
    description: str = ""

    def make(self, *args: Any, **kwargs: Any) -> Any:
        """The sampler or scheduler itself (see the module's docstring for the arguments)."""
        return resolve(self.build)(*args, **kwargs)

    def validate(self, *args: Any) -> None:
        """Run its check, if it has one (raises ``ConfigError`` in one line)."""
        check = resolve(self.check)
        if check is not None:
            check(*args)


_REGISTRIES: dict[str, Registry[Algorithm]] = {
    "sampler": Registry("sampler", hint=" (or register one: nbtl.search.algorithms)"),
    "scheduler": Registry("scheduler", hint=" (or register one: nbtl.search.algorithms)"),
}


def _register(kind: str, name: str, keys, defaults, build, check, description) -> Algorithm:
    _REGISTRIES[kind].check_name(name)
    unknown = sorted(set(defaults or {}) - set(keys))
    if unknown:
        raise ConfigError(f"{kind} {name!r}: defaults for keys it does not take: {', '.join(unknown)}")
    return _REGISTRIES[kind].add(
        name, Algorithm(name, kind, tuple(keys), build, dict(defaults or {}), check, description)
    )


def register_sampler(name, *, build, keys=(), defaults=None, check=None, description="") -> Algorithm:
    """Register an Optuna sampler as ``search.sampler.type: <name>``: ``build(seed, **options)``."""
    return _register("sampler", name, keys, defaults, build, check, description)


def register_scheduler(name, *, build, keys=(), defaults=None, check=None, description="") -> Algorithm:
    """Register a Ray Tune scheduler as ``search.scheduler.type: <name>``: ``build(options, max_epochs, budget,
    where)``."""
    return _register("scheduler", name, keys, defaults, build, check, description)


def _remove(kind: str, name: str) -> None:
    _REGISTRIES[kind].remove(name)


def remove_sampler(name: str) -> None:
    """Unregister a sampler of one's own (nbtl's own cannot be removed)."""
    _remove("sampler", name)


def remove_scheduler(name: str) -> None:
    """Unregister a scheduler of one's own (nbtl's own cannot be removed)."""
    _remove("scheduler", name)


def sampler_names() -> tuple[str, ...]:
    """The registered samplers, the default first."""
    return _REGISTRIES["sampler"].names()


def scheduler_names() -> tuple[str, ...]:
    """The registered schedulers, the default first."""
    return _REGISTRIES["scheduler"].names()


def algorithm_names(kind: str) -> tuple[str, ...]:
    """The registered ``kind`` (``"sampler"`` or ``"scheduler"``) names, the default first."""
    return _REGISTRIES[kind].names()


def get_algorithm(kind: str, name: str) -> Algorithm:
    """The registered ``kind`` (``"sampler"`` or ``"scheduler"``) ``name``; ``ConfigError`` naming the registered
    ones otherwise."""
    return _REGISTRIES[kind].get(name)


def get_sampler(name: str) -> Algorithm:
    """The registered sampler ``name``; ``ConfigError`` naming the registered ones otherwise."""
    return get_algorithm("sampler", name)


def get_scheduler(name: str) -> Algorithm:
    """The registered scheduler ``name``; ``ConfigError`` naming the registered ones otherwise."""
    return get_algorithm("scheduler", name)


# --- nbtl's own ------------------------------------------------------------------------------------


def tpe_sampler(seed: int, **options: Any):
    """Optuna's TPE; ``constant_liar`` (a default) keeps parallel trials from all picking the same point."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, **options)


def random_sampler(seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def asha_scheduler(options: dict[str, Any], max_epochs: int, budget: float | None, where: str):
    """ASHA with rungs in epochs (``max_t`` the trials' epochs), or in seconds of a trial's wall time (``unit:
    seconds``: a cheap frozen-prefix trial runs many epochs by the first rung, a full fine-tune few, so the costly
    ones go on only when promising; ``max_t`` defaults to the time budget)."""
    from ray.tune.schedulers import ASHAScheduler

    if options["unit"] == "seconds":
        top = options.get("max_t") or budget
        if top is None:
            raise SearchError(
                f"{where}: search.scheduler unit: seconds needs max_t (seconds) or a --time-budget to end its rungs"
            )
        return ASHAScheduler(
            time_attr="time_total_s",
            metric=METRIC,
            mode=MODE,
            max_t=float(top),
            grace_period=float(options["grace_period"]),
            reduction_factor=options["reduction_factor"],
        )
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=METRIC,
        mode=MODE,
        max_t=max_epochs,
        grace_period=options["grace_period"],
        reduction_factor=options["reduction_factor"],
    )


def fifo_scheduler(options: dict[str, Any], max_epochs: int, budget: float | None, where: str):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


register_sampler(
    "tpe",
    keys=("n_startup_trials", "multivariate", "group", "constant_liar"),
    defaults={"constant_liar": True},
    build=tpe_sampler,
    check="nbtl.search.space_checks:check_sampler",
    description="Optuna's tree-structured Parzen estimator",
)
register_sampler("random", build=random_sampler, description="Optuna's random sampler")
register_scheduler(
    "asha",
    keys=("grace_period", "reduction_factor", "unit", "max_t"),
    defaults={"grace_period": 1, "reduction_factor": 2, "unit": "epochs"},
    build=asha_scheduler,
    check="nbtl.search.space_checks:check_scheduler",
    description="Ray Tune's asynchronous successive halving",
)
register_scheduler("fifo", build=fifo_scheduler, description="every trial runs all its epochs")
for _registry in _REGISTRIES.values():
    _registry.seal()
