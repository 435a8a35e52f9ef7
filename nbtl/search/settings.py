"""A space's ``search:`` section as typed settings, each default written once, here.

:func:`nbtl.search.space_checks.check_settings` validates the section when the space is parsed; every reader then
takes :attr:`nbtl.search.space.SearchSpace.settings` (a :class:`SearchSettings`) instead of the raw mapping: the
sampler and scheduler factories, the learned prior, the plan, the parent run's params and the budget's shares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nbtl.search.units import parse_duration

__all__ = ["START_POINTS", "PriorSpec", "SamplerSpec", "SchedulerSpec", "SearchSettings"]

#: The configs a search runs first unless its space says otherwise (``search.start_points``): the linear probe,
#: the conventional recipe and ``nbtl recommend``'s configs (see :mod:`nbtl.search.start`).
START_POINTS = ("probe", "conventional", "recommend")


@dataclass(frozen=True)
class SamplerSpec:
    """``search.sampler``: Optuna's TPE (the default) or random sampler; ``options`` are TPE's keywords
    (``n_startup_trials``, ``multivariate``, ``group``, ``constant_liar``)."""

    type: str = "tpe"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_section(cls, spec: dict[str, Any] | None) -> SamplerSpec:
        spec = dict(spec or {})
        return cls(type=str(spec.pop("type", cls.type)), options=spec)

    def to_dict(self) -> dict[str, Any]:
        """As a space writes it (the parent run's ``sampler`` param)."""
        return {"type": self.type, **self.options}


@dataclass(frozen=True)
class SchedulerSpec:
    """``search.scheduler``: Ray Tune's ASHA (the default; rungs in ``epochs`` or in ``seconds`` of a trial's wall
    time) or FIFO."""

    type: str = "asha"
    grace_period: float = 1
    reduction_factor: float = 2
    unit: str = "epochs"
    max_t: float | None = None  # seconds, with unit: seconds; default the time budget

    @classmethod
    def from_section(cls, spec: dict[str, Any] | None) -> SchedulerSpec:
        spec = spec or {}
        return cls(**{f.name: spec[f.name] for f in fields(cls) if f.name in spec})

    def to_dict(self) -> dict[str, Any]:
        """As a space writes it (the parent run's ``scheduler`` param): FIFO has no other keys."""
        if self.type != "asha":
            return {"type": self.type}
        return {k: v for k, v in asdict(self).items() if not (k == "max_t" and v is None)}


@dataclass(frozen=True)
class PriorSpec:
    """``search.prior``: the learned prior over the sampler's candidates (:mod:`nbtl.search.prior`)."""

    enabled: bool | None = None  # None: on for TPE, off for the random sampler
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
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    prior: PriorSpec = field(default_factory=PriorSpec)
    start_points: tuple[str, ...] = START_POINTS
    time_budget: float | None = None  # seconds
    reevaluate_top: int = 0  # search.reevaluate.top: re-run the best K trials (nbtl.search.reevaluate) when >= 2
    prefix_cache: bool = True
    points_to_evaluate: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> SearchSettings:
        """The settings of a ``search:`` section already checked by
        :func:`~nbtl.search.space_checks.check_settings`; a key it leaves out takes its default."""
        s = section or {}
        plain = {k: s[k] for k in ("trials", "max_concurrent", "seed", "max_failures", "prefix_cache") if k in s}
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
            points_to_evaluate=tuple(dict(p) for p in s.get("points_to_evaluate") or ()),
        )

    @property
    def prior_enabled(self) -> bool:
        """Whether the learned prior wraps the sampler: ``prior.enabled``, else on for TPE."""
        return self.prior.enabled if self.prior.enabled is not None else self.sampler.type == "tpe"

    @property
    def prior_trials(self) -> int:
        """Trials over which the prior fades: ``prior.trials``, else the search's trials."""
        return int(self.prior.trials or self.trials)
