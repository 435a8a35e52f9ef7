"""Checks of a search space that span several parameters or settings, run once by
:func:`nbtl.search.space.parse_space` so that a space which could only fail later (in a trial, in Optuna's
sampler or in Ray Tune's scheduler) fails at load time instead: before data is decoded, Ray starts or an
MLflow run is opened.

- every config the space can give builds: block counts within each backbone's blocks, ``freeze_blocks``
  within ``transfer_blocks``, ``head_warmup_epochs`` below ``epochs``, ``block_lrs`` one per block;
- every ``search.points_to_evaluate`` entry is a point of the space (Optuna enqueues it as given);
- sampler, scheduler and prior settings are ones Optuna's samplers and Ray Tune's ``ASHAScheduler`` accept.

Every message is one line: the file, the key, the bad value and how to fix it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from nbtl.backbones import get_spec
from nbtl.config import TrialConfig
from nbtl.data import make_augmentation
from nbtl.data.settings import MAX_SEED, check_setting
from nbtl.data.splits import MIN_IMAGES_PER_CLASS
from nbtl.errors import ConfigError
from nbtl.search.algorithms import get_sampler, get_scheduler, sampler_names, scheduler_names
from nbtl.search.parameter import BLOCK_KEYS, Parameter, field_kind, resolve_bound, valid_all_minus
from nbtl.search.settings import START_POINTS, check_subsample, start_point_names
from nbtl.search.units import parse_duration

SECTIONS = ("name", "description", "data", "search", "parameters")
SPEC_KEYS = ("choices", "low", "high", "log", "step", "when")
DATA_KEYS = ("image_size", "val_fraction", "test_fraction", "per_class", "augmentation")
SEARCH_KEYS = (
    "trials",
    "max_concurrent",
    "seed",
    "resources",
    "sampler",
    "scheduler",
    "max_failures",
    "reuse_actors",
    "points_to_evaluate",
    "start_points",
    "time_budget",
    "prior",
    "reevaluate",
    "prefix_cache",
    "subsample",
)
PRIOR_KEYS = ("enabled", "n_candidates", "trials", "cost_aware")


def check_keys(mapping: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed keys are {', '.join(allowed)}")


logger = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num_blocks(backbone: str) -> int:
    return get_spec(backbone).num_blocks


def _literals(parameter: Parameter | None, default: Any) -> list[Any] | None:
    """The values a fixed or categorical parameter takes (``[default]`` when the space does not set it);
    ``None`` for a range."""
    if parameter is None:
        return [default]
    if parameter.fixed:
        return [parameter.value]
    if parameter.choices is not None:
        return list(parameter.choices)
    return None


# --- the configs a space (or one of its points) can give ---------------------------------------------


def check_configs(parameters: list[Parameter], where: str, label: str = "parameters", point: bool = False) -> None:
    """Raise :class:`ConfigError` when some config of ``parameters`` cannot be built, or when a block range
    cannot be honoured by any trial. ``label`` names the section in messages; ``point`` says the
    parameters are a ``points_to_evaluate`` entry substituted into the space (it changes the fix offered)."""
    by_name = {p.name: p for p in parameters}
    backbones = [str(b) for b in _literals(by_name.get("backbone"), TrialConfig.default("backbone")) or []]
    blocks = {b: _num_blocks(b) for b in backbones}
    fewest = min(blocks, key=blocks.get)
    most = max(blocks, key=blocks.get)
    pretrained = _literals(by_name.get("pretrained"), TrialConfig.default("pretrained")) or [True, False]

    for name in BLOCK_KEYS:
        p = by_name.get(name)
        if p is None:
            continue
        at = f"{where}: {label}.{name}"
        values = _literals(p, None)
        if values is not None:  # fixed or categorical: the trial takes the value as it is, uncapped
            for value in values:
                if value is not None and value > blocks[fewest]:
                    raise ConfigError(
                        f"{at}: {value} is more blocks than {fewest} has ({blocks[fewest]}); use at most "
                        f"{blocks[fewest]}, or a range such as {{low: 0, high: all}} that follows each backbone"
                    )
        elif _is_int(p.low) and p.low > blocks[most]:
            raise ConfigError(
                f"{at}: low {p.low} is more blocks than {most} has ({blocks[most]}), so no trial can take it; "
                f"lower low to at most {blocks[most]} (or use 'all-N', e.g. all-2)"
            )

    def transfer_range(backbone: str) -> tuple[int, int]:
        """The fewest and most blocks a trial on ``backbone`` transfers."""
        n = blocks[backbone]
        if True not in pretrained:
            return 0, 0
        p = by_name.get("transfer_blocks")
        values = _literals(p, None)
        if values is not None:
            resolved = [n if v is None else int(v) for v in values]
            low, high = min(resolved), max(resolved)
        else:
            high = min(int(resolve_bound(p.high, {}, n)), n)
            low = min(int(resolve_bound(p.low, {}, n)), high)
        return (0 if False in pretrained else low), high

    freeze = by_name.get("freeze_blocks")
    values = _literals(freeze, TrialConfig.default("freeze_blocks"))
    if freeze is not None and values is not None:
        most_frozen = max(v for v in values if v is not None)
        for backbone in backbones:
            fewest_kept, _ = transfer_range(backbone)
            if most_frozen <= fewest_kept:
                continue
            if False in pretrained:
                fix = (
                    "set pretrained: true in this point"
                    if point
                    else "make freeze_blocks a range {low: 0, high: transfer_blocks}, which is 0 for those trials"
                )
                raise ConfigError(
                    f"{where}: {label}.freeze_blocks: {most_frozen}, but pretrained can be false, and "
                    f"then no block is transferred and none can be frozen; {fix}"
                )
            transfer = by_name.get("transfer_blocks")
            if transfer is not None and transfer.fixed:
                fix = f"use freeze_blocks <= {fewest_kept}, or a range {{low: 0, high: transfer_blocks}}"
                raise ConfigError(
                    f"{where}: {label}.freeze_blocks: {most_frozen} is more than transfer_blocks "
                    f"({fewest_kept}): only transferred blocks can be frozen; {fix}"
                )
            fix = (
                f"set transfer_blocks >= {most_frozen} in this point too"
                if point
                else f"raise transfer_blocks' low to {most_frozen}, or make freeze_blocks a range "
                "{low: 0, high: transfer_blocks}"
            )
            raise ConfigError(
                f"{where}: {label}.freeze_blocks: {most_frozen}, but transfer_blocks can be as low as "
                f"{fewest_kept} ({backbone}): only transferred blocks can be frozen; {fix}"
            )
    elif freeze is not None and not (
        isinstance(freeze.low, str) and freeze.low != "all" and not valid_all_minus(freeze.low)
    ):
        # a range: capped to the trial's transfer_blocks, so its low must be reachable
        unreachable = []
        for backbone in backbones:
            most_kept = transfer_range(backbone)[1]
            low = int(resolve_bound(freeze.low, {"transfer_blocks": most_kept}, blocks[backbone]))
            if low > most_kept:
                unreachable.append((most_kept, low, backbone))
        if len(unreachable) == len(backbones):
            kept, low, backbone = max(unreachable)
            resolved = "" if _is_int(freeze.low) else f" ({low} for {backbone})"
            raise ConfigError(
                f"{where}: {label}.freeze_blocks: low {freeze.low!r}{resolved} is more than any trial "
                f"transfers (transfer_blocks is at most {kept}): only transferred blocks can be frozen; "
                f"lower low to at most {kept}"
            )

    warmups = _literals(by_name.get("head_warmup_epochs"), TrialConfig.default("head_warmup_epochs"))
    warmup_max = max(warmups) if warmups is not None else by_name["head_warmup_epochs"].high
    epochs = _literals(by_name.get("epochs"), TrialConfig.default("epochs"))
    epochs_min = min(epochs) if epochs is not None else by_name["epochs"].low
    if warmup_max >= epochs_min:
        raise ConfigError(
            f"{where}: {label}.head_warmup_epochs: {warmup_max} is not below epochs ({epochs_min}): "
            f"some epochs must train the unfrozen blocks; use head_warmup_epochs < {epochs_min}"
        )

    for value in _literals(by_name.get("block_lrs"), None) or []:
        if isinstance(value, list):
            for backbone, n in blocks.items():
                if len(value) != n:
                    raise ConfigError(
                        f"{where}: {label}.block_lrs: {len(value)} learning rates, but {backbone} has "
                        f"{n} blocks; give one per block"
                    )


# --- points_to_evaluate -------------------------------------------------------------------------------


def check_points(parameters: list[Parameter], points: list[dict[str, Any]], where: str) -> None:
    """Each ``search.points_to_evaluate`` entry must name searched parameters (checked before), give each a
    value of the right type (a choice, for a categorical one) that the trial config accepts, and make a
    config that builds. A number outside its range is allowed (Optuna runs an enqueued point as given),
    with a warning."""
    searched = {p.name: p for p in parameters if not p.fixed}
    for i, point in enumerate(points):
        label = f"search.points_to_evaluate[{i}]"
        for key, value in point.items():
            p = searched[key]
            at = f"{where}: {label}.{key}"
            if p.choices is not None:
                if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in p.choices):
                    raise ConfigError(
                        f"{at}: {value!r} is not one of its choices; use one of "
                        f"{', '.join(map(repr, p.choices))}, or add it to parameters.{key}.choices"
                    )
                continue
            kind = field_kind(key)
            if (kind == "int" and not _is_int(value)) or (kind == "float" and not _is_number(value)):
                must = "an integer" if kind == "int" else "a number"
                raise ConfigError(f"{at}: must be {must} (the space searches {p.low!r}..{p.high!r}), got {value!r}")
            if key not in BLOCK_KEYS:
                TrialConfig.from_dict({key: value}, where=at)
            low = p.low if not isinstance(p.low, str) else None
            high = p.high if not isinstance(p.high, str) else None
            if (low is not None and value < low) or (high is not None and value > high):
                logger.warning(
                    "%s: %r is outside the space's range %s..%s; Optuna runs the point as given",
                    at,
                    value,
                    p.low,
                    p.high,
                )
        substituted = [
            Parameter(p.name, value=point[p.name], when=p.when) if p.name in point else p for p in parameters
        ]
        check_configs(substituted, where, label=label, point=True)


# --- sampler, scheduler, prior ---------------------------------------------------------------------


def check_sampler(spec: dict[str, Any], where: str) -> None:
    """Values Optuna's ``TPESampler`` takes (``RandomSampler`` takes only the search seed)."""
    if spec.get("type", "tpe") != "tpe":
        return
    at = f"{where}: search.sampler"
    if "n_startup_trials" in spec and not (_is_int(spec["n_startup_trials"]) and spec["n_startup_trials"] >= 0):
        raise ConfigError(
            f"{at}.n_startup_trials must be an integer >= 0 (random trials before TPE models the "
            f"results), got {spec['n_startup_trials']!r}"
        )
    for key in ("multivariate", "group", "constant_liar"):
        if key in spec and not isinstance(spec[key], bool):
            raise ConfigError(f"{at}.{key} must be true or false, got {spec[key]!r}")
    if spec.get("group") and spec.get("multivariate") is False:
        raise ConfigError(
            f"{at}.group: true needs multivariate TPE, but multivariate is false; set multivariate: true or drop group"
        )


def check_scheduler(spec: dict[str, Any], max_epochs: int, where: str) -> None:
    """Values Ray Tune's ``ASHAScheduler`` accepts (it asserts ``0 < grace_period <= max_t`` and
    ``reduction_factor > 1``); ``max_t`` is the most epochs a trial of the space runs."""
    if spec.get("type", "asha") != "asha":
        return
    defaults = get_scheduler("asha").defaults
    at = f"{where}: search.scheduler"
    unit = spec.get("unit", defaults["unit"])
    if unit not in ("epochs", "seconds"):
        raise ConfigError(f"{at}.unit must be epochs or seconds (what ASHA's rungs count), got {unit!r}")
    if unit == "seconds":
        grace, top = spec.get("grace_period"), spec.get("max_t")
        if not _is_number(grace) or grace <= 0:
            raise ConfigError(
                f"{at}.grace_period must be a number of seconds > 0 with unit: seconds (the wall time every trial "
                f"runs before ASHA may stop it), got {grace!r}"
            )
        if top is not None and (not _is_number(top) or top <= grace):
            raise ConfigError(f"{at}.max_t must be a number of seconds above grace_period ({grace}), got {top!r}")
        factor = spec.get("reduction_factor", defaults["reduction_factor"])
        if not _is_number(factor) or factor <= 1:
            raise ConfigError(f"{at}.reduction_factor must be a number > 1, got {factor!r}")
        return
    if "max_t" in spec:
        raise ConfigError(f"{at}.max_t is for unit: seconds; in epochs ASHA's max_t is the trials' epochs")
    grace = spec.get("grace_period", defaults["grace_period"])
    if not _is_int(grace) or grace < 1:
        raise ConfigError(
            f"{at}.grace_period must be an integer >= 1 (epochs every trial runs before ASHA may "
            f"stop it), got {grace!r}"
        )
    if grace > max_epochs:
        raise ConfigError(
            f"{at}.grace_period: {grace} is more than the trials' epochs ({max_epochs}), so ASHA "
            f"could never stop a trial; use grace_period <= {max_epochs}, or scheduler: {{type: fifo}}"
        )
    factor = spec.get("reduction_factor", defaults["reduction_factor"])
    if not _is_number(factor) or factor <= 1:
        raise ConfigError(
            f"{at}.reduction_factor must be a number > 1 (ASHA keeps 1 in reduction_factor trials "
            f"at each rung; 2 or 3 is usual), got {factor!r}"
        )


def check_prior(spec: dict[str, Any], where: str) -> None:
    at = f"{where}: search.prior"
    for key in ("enabled", "cost_aware"):
        if key in spec and not isinstance(spec[key], bool):
            raise ConfigError(f"{at}.{key} must be true or false, got {spec[key]!r}")
    for key in ("n_candidates", "trials"):
        if key in spec and not (_is_int(spec[key]) and spec[key] >= 1):
            raise ConfigError(f"{at}.{key} must be an integer >= 1, got {spec[key]!r}")


def check_settings(space: Any, where: str) -> None:
    """The ``data:`` and ``search:`` sections of ``space`` (a :class:`~nbtl.search.space.SearchSpace`): every
    value of the right type and range, known keys only, and the sampler, scheduler, prior and start points valid."""
    d, s = space.data, space.search

    def positive_int(section: dict, key: str, label: str, minimum: int = 1) -> None:
        v = section.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
            raise ConfigError(f"{where}: {label}.{key} must be an integer >= {minimum}, got {v!r}")

    if d.get("image_size") is not None:
        check_setting("image_size", d["image_size"], f"{where}: data")
    positive_int(d, "per_class", "data", MIN_IMAGES_PER_CLASS)
    for key in ("val_fraction", "test_fraction"):
        v = d.get(key)
        if v is not None and (not isinstance(v, (int, float)) or not 0 < v < 0.5):
            raise ConfigError(f"{where}: data.{key} must be between 0 and 0.5, got {v!r}")
    try:
        make_augmentation(d.get("augmentation"))
    except ConfigError as error:
        raise ConfigError(f"{where}: data.augmentation: {error}") from None
    positive_int(s, "trials", "search")
    positive_int(s, "max_concurrent", "search")
    positive_int(s, "seed", "search", 0)
    if isinstance(s.get("seed"), int) and s["seed"] > MAX_SEED:
        raise ConfigError(f"{where}: search.seed must be at most 2**32 - 1, got {s['seed']}")
    positive_int(s, "max_failures", "search", 0)
    resources = s.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{where}: search.resources must be a mapping like {{cpu: 1, gpu: 0}}")
    check_keys(resources, ("cpu", "gpu"), f"{where}: search.resources")
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (key == "cpu" and value == 0):
            raise ConfigError(
                f"{where}: search.resources.{key} must be a number {'> 0' if key == 'cpu' else '>= 0'}, got {value!r}"
            )
    starts = s.get("start_points", list(START_POINTS))
    if not isinstance(starts, list) or any(v not in start_point_names() for v in starts):
        raise ConfigError(
            f"{where}: search.start_points must be a list of {', '.join(start_point_names())} (or []), got {starts!r}"
        )
    if "time_budget" in s:
        try:
            parse_duration(s["time_budget"])
        except ConfigError as error:
            raise ConfigError(f"{where}: search.time_budget: {error}") from None
    prior = s.get("prior") or {}
    if not isinstance(prior, dict):
        raise ConfigError(f"{where}: search.prior must be a mapping like {{enabled: true, n_candidates: 32}}")
    check_keys(prior, PRIOR_KEYS, f"{where}: search.prior")
    check_prior(prior, where)
    if not isinstance(s.get("prefix_cache", True), bool):
        raise ConfigError(
            f"{where}: search.prefix_cache must be true (frozen blocks' outputs computed once and shared) or "
            f"false (every trial runs every block), got {s['prefix_cache']!r}"
        )
    if "subsample" in s:
        check_subsample(s["subsample"], f"{where}: search")
    if not isinstance(s.get("reuse_actors", True), bool):
        raise ConfigError(
            f"{where}: search.reuse_actors must be true (a finished trial's worker runs the next trial) or false (a "
            f"fresh worker process for every trial), got {s['reuse_actors']!r}"
        )
    reevaluate = s.get("reevaluate") or {}
    if not isinstance(reevaluate, dict):
        raise ConfigError(f"{where}: search.reevaluate must be a mapping like {{top: 3}}")
    check_keys(reevaluate, ("top", "resplit"), f"{where}: search.reevaluate")
    positive_int(reevaluate, "top", "search.reevaluate", 0)
    if not isinstance(reevaluate.get("resplit", False), bool):
        raise ConfigError(
            f"{where}: search.reevaluate.resplit must be true (the repeats train and validate on another partition "
            f"of the training and validation images) or false (the same partition), got {reevaluate['resplit']!r}"
        )
    points = s.get("points_to_evaluate") or []
    searched = {p.name for p in space.parameters if not p.fixed}
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"{where}: search.points_to_evaluate must be a list of mappings {{parameter: value}}")
    for i, point in enumerate(points):
        unknown = sorted(set(point) - searched)
        if unknown:
            raise ConfigError(
                f"{where}: search.points_to_evaluate[{i}] sets {', '.join(unknown)}, which the space "
                f"does not search; use only: {', '.join(sorted(searched))}"
            )
    check_points(space.parameters, points, where)
    entries = {}
    for name, names, get in (("sampler", sampler_names, get_sampler), ("scheduler", scheduler_names, get_scheduler)):
        spec = s.get(name) or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: search.{name} must be a mapping with a 'type'")
        kind = spec.get("type", names()[0])
        if kind not in names():
            raise ConfigError(f"{where}: search.{name}.type must be one of {', '.join(names())}, got {kind!r}")
        entries[name] = get(kind)
        check_keys(spec, ("type", *entries[name].keys), f"{where}: search.{name}")
    entries["sampler"].validate(s.get("sampler") or {}, where)
    entries["scheduler"].validate(s.get("scheduler") or {}, space.max_epochs, where)
