"""A space's ``search:`` section as typed settings, each default written once, here.

:func:`nbtl.search.space_checks.check_settings` validates the section when the space is parsed; every reader then
takes :attr:`nbtl.search.space.SearchSpace.settings` (a :class:`SearchSettings`) instead of the raw mapping: the
sampler and scheduler factories, the learned prior, the plan, the parent run's params and the budget's shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from nbtl.errors import ConfigError
from nbtl.registry import Registry, resolve
from nbtl.search.algorithms import algorithm_names, get_algorithm
from nbtl.search.units import parse_duration

__all__ = [
    "RECOMMEND",
    "START_POINTS",
    "SUBSAMPLE_AUTO",
    "PriorSpec",
    "SamplerSpec",
    "SchedulerSpec",
    "SearchSettings",
    "StartPoint",
    "check_subsample",
    "get_start_point",
    "register_start_point",
    "remove_start_point",
    "start_point_names",
]

#: The start point that measures the fit of the space's backbones and enqueues ``nbtl recommend``'s configs (it also
#: ranks the backbones the recipes start from).
RECOMMEND = "recommend"

#: ``search.subsample: auto``: a CPU search with a time budget that affords no trial on all its images trains and
#: evaluates its trials on a share of them (:func:`nbtl.search.cost.auto_subsample`).
SUBSAMPLE_AUTO = "auto"


def check_subsample(value: Any, where: str) -> float | str:
    """``search.subsample`` (``--subsample``) checked: ``auto``, ``all`` (1.0) or a fraction in (0, 1]; a bad value
    raises one :class:`~nbtl.errors.ConfigError` that starts with ``where``."""
    if isinstance(value, str) and value.strip().lower() in (SUBSAMPLE_AUTO, "all"):
        return SUBSAMPLE_AUTO if value.strip().lower() == SUBSAMPLE_AUTO else 1.0
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not 0 < number <= 1:
        raise ConfigError(
            f"{where}: subsample must be auto (a share of the images when the time budget affords no trial on all "
            f"of them), all, or a fraction in (0, 1] of the images the trials train and evaluate on, got {value!r}"
        )
    return number


@dataclass(frozen=True)
class StartPoint:
    """A registered start point: a recipe ``recipe(backbone) -> config`` (a callable or a ``module:function``
    reference, imported when first used), run on the backbone ranked first."""

    name: str
    recipe: Callable[[str], dict[str, Any]] | str
    description: str = ""

    def config(self, backbone: str) -> dict[str, Any]:
        """The recipe's trial config for ``backbone``."""
        return dict(resolve(self.recipe)(backbone))


#: The recipe start points (``recommend``, which is no recipe, is not among them but is always a start point).
START_POINT_RECIPES: Registry[StartPoint] = Registry(
    "start point",
    hint=f" or {RECOMMEND} (or register one: nbtl.search.settings.register_start_point)",
    pattern=rf"(?!{RECOMMEND}$)[A-Za-z0-9_-]+",
    rule=f"use letters, digits, - and _ (and not {RECOMMEND!r})",
)


def register_start_point(name: str, recipe: Callable[[str], dict[str, Any]] | str, description: str = "") -> None:
    """Register a recipe as a start point a space may list in ``search.start_points``."""
    START_POINT_RECIPES.add(name, StartPoint(name, recipe, description))


def remove_start_point(name: str) -> None:
    """Unregister a start point of one's own (nbtl's own cannot be removed)."""
    START_POINT_RECIPES.remove(name)


def start_point_names() -> tuple[str, ...]:
    """What ``search.start_points`` may list: the registered recipes and ``recommend``."""
    return (*START_POINT_RECIPES.names(), RECOMMEND)


def get_start_point(name: str) -> StartPoint:
    """The registered recipe start point ``name``; ``ConfigError`` naming the registered ones otherwise."""
    return START_POINT_RECIPES.get(name)


register_start_point(
    "probe", "nbtl.heuristics.recipes:probe_config", "the linear probe: every block transferred and frozen"
)
register_start_point(
    "conventional",
    "nbtl.heuristics.recipes:conventional_config",
    "the conventional recipe: everything fine-tuned at one learning rate, plain L2",
)
START_POINT_RECIPES.seal()
#: The configs a search runs first unless its space says otherwise (``search.start_points``): the linear probe,
#: the conventional recipe and ``nbtl recommend``'s configs (see :mod:`nbtl.search.start`).
START_POINTS = ("probe", "conventional", RECOMMEND)


@dataclass(frozen=True)
class _Choice:
    """A registered sampler or scheduler (:mod:`nbtl.search.algorithms`; the registry's first by default) and its
    options, the registry's defaults filled in."""

    kind: ClassVar[str]
    type: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = self.type or algorithm_names(self.kind)[0]
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "options", {**get_algorithm(self.kind, kind).defaults, **self.options})

    @classmethod
    def from_section(cls, spec: dict[str, Any] | None):
        spec = dict(spec or {})
        return cls(type=str(spec.pop("type", "")), options=spec)

    def to_dict(self) -> dict[str, Any]:
        """As a space writes it, defaults included (the parent run's ``sampler`` / ``scheduler`` param)."""
        return {"type": self.type, **self.options}


@dataclass(frozen=True)
class SamplerSpec(_Choice):
    """``search.sampler``: TPE by default."""

    kind: ClassVar[str] = "sampler"

    def make(self, seed: int):
        """The Optuna sampler."""
        return get_algorithm(self.kind, self.type).make(seed, **self.options)


@dataclass(frozen=True)
class SchedulerSpec(_Choice):
    """``search.scheduler``: ASHA with rungs in epochs by default."""

    kind: ClassVar[str] = "scheduler"

    def make(self, max_epochs: int, budget: float | None, where: str):
        """The Ray Tune scheduler (Ray is imported here)."""
        return get_algorithm(self.kind, self.type).make(dict(self.options), max_epochs, budget, where)


@dataclass(frozen=True)
class PriorSpec:
    """``search.prior``: the learned prior over the sampler's candidates (:mod:`nbtl.search.prior`)."""

    # Off by default: at 2-minute budgets it cost 2.2 test-accuracy points [0.5, 4.0] on the tuning tasks (15 paired
    # searches; benchmarks/results/ablations_tuning_2m.jsonl) and 3.2 [0.6, 6.1] on the reporting tasks.
    enabled: bool = False
    n_candidates: int = 32
    trials: int | None = None  # trials over which it fades; None: the search's trials
    cost_aware: bool = False

    @classmethod
    def from_section(cls, spec: dict[str, Any] | None) -> PriorSpec:
        spec = spec or {}
        return cls(**{f.name: spec[f.name] for f in fields(cls) if f.name in spec})


@dataclass(frozen=True)
class SearchSettings:
    """The ``search:`` section of a space, with its defaults."""

    trials: int = 8
    max_concurrent: int = 2
    seed: int | None = None  # None: the data settings' seed (nbtl.data.settings.DataSettings)
    max_failures: int = 0
    # a finished trial's Ray actor (its process, torch imported) runs the next trial; false: a fresh process each
    reuse_actors: bool = True
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    prior: PriorSpec = field(default_factory=PriorSpec)
    start_points: tuple[str, ...] = START_POINTS
    time_budget: float | None = None  # seconds
    reevaluate_top: int = 0  # search.reevaluate.top: re-run the best K trials (nbtl.search.reevaluate) when >= 2
    reevaluate_resplit: bool = False  # search.reevaluate.resplit: the repeats on another train / val partition
    prefix_cache: bool = True
    # search.subsample: the share of the images trials train and evaluate on (nbtl.data.arrayfile.subsample_splits)
    subsample: float | str = SUBSAMPLE_AUTO
    points_to_evaluate: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> SearchSettings:
        """The settings of a ``search:`` section already checked by
        :func:`~nbtl.search.space_checks.check_settings`; a key it leaves out takes its default."""
        s = section or {}
        plain = {
            k: s[k]
            for k in ("trials", "max_concurrent", "seed", "max_failures", "reuse_actors", "prefix_cache")
            if k in s
        }
        defaults = cls()
        return cls(
            **plain,
            resources={**defaults.resources, **(s.get("resources") or {})},
            sampler=SamplerSpec.from_section(s.get("sampler")),
            scheduler=SchedulerSpec.from_section(s.get("scheduler")),
            prior=PriorSpec.from_section(s.get("prior")),
            start_points=tuple(s.get("start_points", START_POINTS)),
            time_budget=parse_duration(s["time_budget"]) if "time_budget" in s else None,
            reevaluate_top=int((s.get("reevaluate") or {}).get("top", 0)),
            reevaluate_resplit=bool((s.get("reevaluate") or {}).get("resplit", False)),
            points_to_evaluate=tuple(dict(p) for p in s.get("points_to_evaluate") or ()),
            subsample=check_subsample(s.get("subsample", SUBSAMPLE_AUTO), "search"),
        )

    @property
    def prior_enabled(self) -> bool:
        """Whether the learned prior wraps the sampler (``prior.enabled``; off by default)."""
        return bool(self.prior.enabled)

    @property
    def prior_trials(self) -> int:
        """Trials over which the prior fades: ``prior.trials``, else the search's trials."""
        return int(self.prior.trials or self.trials)
