"""Search spaces written in YAML, validated before any trial runs, compiled to an Optuna
define-by-run function for Ray Tune's ``OptunaSearch``.

A space file has four sections (see ``search_spaces/default.yaml``)::

    name: default
    data:        {image_size: 64, val_fraction: 0.15, test_fraction: 0.15, augmentation: {...}}
    search:      {trials: 12, max_concurrent: 2, seed: 0, resources: {cpu: 1, gpu: 0},
                  sampler: {type: tpe, ...}, scheduler: {type: asha, grace_period: 1, reduction_factor: 2}}
    parameters:                                  # trial config keys (nbtl.config.TrialConfig)
      backbone: {choices: [efficientnet_lite0, resnet18]}      # categorical
      transfer_blocks: {low: 0, high: all}       # 'all' = the chosen backbone's block count
      freeze_blocks: {low: 0, high: transfer_blocks}   # a bound may name an earlier parameter
      lr: {low: 1.0e-3, high: 0.1, log: true}    # float range (int range for integer keys)
      head_width: {low: 32, high: 256, log: true, when: {head: [mlp, spinal]}}   # conditional
      epochs: 4                                  # a fixed value
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nbtl.backbones import get_spec
from nbtl.config import TrialConfig
from nbtl.errors import ConfigError, NbtlError
from nbtl.resources import find_space, shipped_spaces
from nbtl.safe_yaml import load_yaml
from nbtl.search.parameter import BLOCK_KEYS, Parameter, field_kind, valid_all_minus
from nbtl.search.settings import SearchSettings
from nbtl.search.space_checks import (
    DATA_KEYS,
    SEARCH_KEYS,
    SECTIONS,
    SPEC_KEYS,
    check_configs,
    check_keys,
    check_settings,
)

#: ``batch_size: auto``: the largest power of two that still gives each epoch this many optimizer steps
#: (within AUTO_BATCH_RANGE). At batch 64 a 336-image training split makes 5 steps an epoch, too few for
#: re-initialised or fast-moving blocks to learn in a few epochs (see the README, "Why these ranges").
AUTO_BATCH_STEPS = 20
AUTO_BATCH_RANGE = (8, 64)


def auto_batch_size(n_train: int) -> int:
    """``batch_size: auto`` for a training split of ``n_train`` images: the largest power of two
    ``<= n_train / AUTO_BATCH_STEPS``, clipped to ``AUTO_BATCH_RANGE``."""
    low, high = AUTO_BATCH_RANGE
    size = low
    while size * 2 <= min(high, n_train / AUTO_BATCH_STEPS):
        size *= 2
    return size


def trial_seed(search_seed: int, number: int) -> int:
    """The training seed of a search's trial ``number`` (0-based, Optuna's ``trial.number``), derived
    from the search seed: the same search seed gives every trial the same seed again, another search
    seed gives other ones."""
    import numpy as np

    return int(np.random.SeedSequence([int(search_seed), int(number)]).generate_state(1)[0] % 2**31)


@dataclass
class SearchSpace:
    """A validated search space."""

    name: str
    parameters: list[Parameter]
    data: dict[str, Any]
    search: dict[str, Any]
    source: str = ""  # the YAML text, logged as an artifact
    path: str = "<string>"
    weights: dict[str, str] = field(default_factory=dict)  # backbone -> a local weights file (parameters.backbone)

    @property
    def max_epochs(self) -> int:
        for p in self.parameters:
            if p.name == "epochs":
                return int(max(p.candidates()))
        return TrialConfig.default("epochs")

    def backbones(self) -> list[str]:
        for p in self.parameters:
            if p.name == "backbone":
                return [str(v) for v in p.candidates()]
        return [TrialConfig.default("backbone")]

    def with_backbones(self, backbones: list[str]) -> SearchSpace:
        """This space with ``backbone`` searched over ``backbones`` instead (fixed when there is one)."""
        one = Parameter("backbone", value=backbones[0]) if len(backbones) == 1 else None
        backbone = one or Parameter("backbone", choices=list(backbones))
        parameters = [backbone if p.name == "backbone" else p for p in self.parameters]
        if not any(p.name == "backbone" for p in self.parameters):
            parameters.insert(0, backbone)
        return dataclasses.replace(self, parameters=parameters)

    def sample(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: suggest every active parameter on an Optuna ``trial``; return the fixed ones.

        Conditional parameters whose ``when`` does not hold are not suggested and keep the
        :class:`~nbtl.config.TrialConfig` default. A ``transfer_blocks`` / ``freeze_blocks``
        range is capped to what the trial can take, so every sampled config builds:
        ``transfer_blocks <= `` the chosen backbone's block count, ``freeze_blocks <=
        transfer_blocks`` (0 when ``pretrained`` is false).
        """
        chosen: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for p in self.parameters:
            if not p.active(chosen):
                continue
            if p.fixed:
                value = p.value
                fixed[p.name] = value
            elif p.choices is not None:
                value = trial.suggest_categorical(p.name, p.choices)
            else:
                low, high = p.bounds(chosen)
                if field_kind(p.name) == "int":
                    value = trial.suggest_int(p.name, int(low), int(high), log=p.log, step=p.step or 1)
                else:
                    value = trial.suggest_float(p.name, float(low), float(high), log=p.log, step=p.step)
            chosen[p.name] = value
        return fixed

    def define_by_run(self, seed: int | None = None) -> Callable[[Any], dict[str, Any]]:
        """The function Ray Tune's ``OptunaSearch`` calls per trial. Unless the space fixes or searches
        ``seed``, each trial trains with :func:`trial_seed` of the search ``seed`` and its number."""
        if seed is None or any(p.name == "seed" for p in self.parameters):
            return self.sample
        return _SeededSample(self, int(seed))

    def resolved(self, n_train: int) -> SearchSpace:
        """This space with data-dependent values fixed for a training split of ``n_train`` images
        (``batch_size: auto`` -> :func:`auto_batch_size`)."""
        parameters = [
            dataclasses.replace(p, value=auto_batch_size(n_train))
            if p.name == "batch_size" and p.fixed and p.value == "auto"
            else p
            for p in self.parameters
        ]
        return dataclasses.replace(self, parameters=parameters)

    @property
    def settings(self) -> SearchSettings:
        """The ``search:`` section as typed settings with their defaults (:class:`nbtl.search.settings.SearchSettings`)."""
        return SearchSettings.from_section(self.search)

    @property
    def prefix_cache(self) -> bool:
        """Whether trials train on the frozen blocks' cached outputs (``search.prefix_cache``, default true)."""
        return self.settings.prefix_cache

    @property
    def start_points(self) -> list[str]:
        """Which built-in start points the search runs first (``search.start_points``)."""
        return list(self.settings.start_points)

    def project(self, config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The point of this space nearest to a full trial ``config`` (a warm-start point for Optuna).

        Returns ``(point, changes)``: ``point`` holds the searched parameters only (the fixed ones
        come from the space); a value outside a range is clipped, a value not among the choices is
        replaced by the nearest numeric choice or left for the sampler; ``changes`` says what moved.
        """
        point: dict[str, Any] = {}
        changes: list[str] = []
        chosen: dict[str, Any] = {}
        for p in self.parameters:
            if not p.active(chosen):
                continue
            value = config.get(p.name)
            if p.fixed:
                chosen[p.name] = p.value
                if value is not None and value != p.value:
                    changes.append(f"{p.name}: {value!r} -> {p.value!r} (fixed by the space)")
                continue
            if value is None:
                continue
            if p.choices is not None:
                if value not in p.choices:
                    numeric = [c for c in p.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
                    if numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
                        nearest = min(numeric, key=lambda c: abs(c - value))
                        changes.append(f"{p.name}: {value!r} -> {nearest!r} (nearest choice)")
                        value = nearest
                    else:
                        changes.append(f"{p.name}: {value!r} is not a choice; left to the sampler")
                        continue
            else:
                low, high = p.bounds(chosen)
                clipped = min(max(value, low), high)
                if field_kind(p.name) == "int":
                    clipped = int(round(clipped))
                if clipped != value:
                    changes.append(f"{p.name}: {value!r} -> {clipped!r} (range {low}..{high})")
                value = clipped
            point[p.name] = value
            chosen[p.name] = value
        return point, changes

    def clip(self, config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A trial ``config`` moved inside this space: a fixed parameter set to the space's value, a range clipped
        to its bounds, a value that is not a choice moved to the nearest numeric choice, else to the space's
        first. A parameter the config leaves out is checked at TrialConfig's default, and added only when that
        default lies outside the space; keys the space leaves out, and inactive ones, are kept as they are.

        Returns ``(config, changes)``; ``changes`` says what moved, one ``"key: old -> new (why)"`` each."""
        clipped, changes, chosen = dict(config), [], {}
        for p in self.parameters:
            if not p.active({**config, **chosen}):
                continue
            value = config.get(p.name, TrialConfig.default(p.name, None))
            moved, why = value, None
            if p.fixed:
                moved, why = p.value, "fixed by the space"
            elif p.choices is not None:
                if value not in p.choices:
                    numeric = [c for c in p.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
                    if numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
                        moved, why = min(numeric, key=lambda c: abs(c - value)), "nearest choice"
                    else:
                        moved, why = p.choices[0], "not a choice; the space's first"
            elif value is not None:
                low, high = p.bounds(chosen)
                moved = min(max(value, low), high)
                moved = int(round(moved)) if field_kind(p.name) == "int" else moved
                why = f"range {low}..{high}"
            if moved != value:
                clipped[p.name] = moved
                changes.append(f"{p.name}: {value!r} -> {moved!r} ({why})")
            chosen[p.name] = moved
        return clipped, changes


@dataclass(frozen=True)
class _SeededSample:
    """``space.sample`` plus the trial's derived seed; a class, so Ray Tune can pickle the searcher."""

    space: SearchSpace
    seed: int

    def __call__(self, trial: Any) -> dict[str, Any]:
        return {**self.space.sample(trial), "seed": trial_seed(self.seed, trial.number)}


def as_space(space: str | Path | SearchSpace) -> SearchSpace:
    """``space`` itself when it is a :class:`SearchSpace`, else the space :func:`load_space` reads from it (the
    Python API takes either)."""
    return space if isinstance(space, SearchSpace) else load_space(str(space))


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search space YAML file (``yaml.safe_load``).

    ``path`` is a file, else the name of a space shipped with nbtl (``tiny``, ``default.yaml``,
    ``search_spaces/default.yaml``: see :func:`nbtl.resources.find_space`), so these work from any directory.
    """
    path = Path(path)
    if not path.is_file():
        found = find_space(path)
        if found is None:
            names = ", ".join(shipped_spaces()) or "none found"
            raise ConfigError(
                f"search space {path}: no such file; pass a YAML file, or the name of a space "
                f"shipped with nbtl ({names})"
            )
        path = found
    try:
        text = path.read_text()
        document = load_yaml(text, f"search space {path}")
    except (OSError, yaml.YAMLError) as error:
        detail = str(error).replace("\n", " ")
        raise ConfigError(f"search space {path}: not valid YAML ({detail}); fix the syntax") from None
    return parse_space(document, where=str(path), source=text)


def parse_space(document: Any, where: str = "search space", source: str = "") -> SearchSpace:
    """Validate a parsed YAML document; raise :class:`ConfigError` naming the first bad key."""
    if not isinstance(document, dict):
        raise ConfigError(f"{where}: must be a mapping with sections {', '.join(SECTIONS)}")
    check_keys(document, SECTIONS, where)
    data = _section(document, "data", DATA_KEYS, where)
    search = _section(document, "search", SEARCH_KEYS, where)
    raw = document.get("parameters")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: 'parameters' must be a mapping of trial config keys to values or ranges")
    raw, weights = _backbone_weights(dict(raw), where)
    names = list(raw)
    parameters = [_parse_parameter(name, raw[name], where, seen=names[:i]) for i, name in enumerate(names)]
    _check_conditions(parameters, where)
    _check_block_order(parameters, where)

    check_configs(parameters, where)
    space = SearchSpace(
        name=str(document.get("name") or Path(where).stem),
        parameters=parameters,
        data=data,
        search=search,
        source=source,
        path=where,
        weights=weights,
    )
    check_settings(space, where)
    return space


def _backbone_weights(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Your own weights in a space: ``backbone: {name: NAME, weights: FILE}`` (a fixed backbone), or ``backbone:
    {choices: [...], weights: {NAME: FILE, ...}}``. Returns the parameters with a plain backbone spec and the files
    by backbone, relative paths taken from the space file's folder (checked to exist when the space is a file)."""
    spec = raw.get("backbone")
    if not isinstance(spec, dict) or ("name" not in spec and "weights" not in spec):
        return raw, {}
    at = f"{where}: parameters.backbone"
    given = spec.get("weights")
    if "name" in spec:
        check_keys(spec, ("name", "weights"), at)
        raw["backbone"] = spec["name"]
        if given is not None and not isinstance(given, str):
            raise ConfigError(f"{at}.weights: give the path of one weights file (.pth), e.g. weights: ./mine.pth")
        files = {str(spec["name"]): given} if given is not None else {}
    else:
        raw["backbone"] = {k: v for k, v in spec.items() if k != "weights"}
        choices = [str(c) for c in (spec.get("choices") or [])]
        if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
            raise ConfigError(
                f"{at}.weights: with choices, map backbones to files, e.g. weights: {{resnet50: ./r50.pth}}"
            )
        unknown = [str(k) for k in given if str(k) not in choices]
        if unknown:
            raise ConfigError(f"{at}.weights: {unknown[0]!r} is not one of its choices ({', '.join(choices)})")
        files = {str(k): v for k, v in given.items()}
    base = Path(where).parent if Path(where).is_file() else None
    resolved = {}
    for name, file in files.items():
        path = Path(file).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        if base is not None and not path.is_file():
            raise ConfigError(
                f"{at}.weights: no file {path} for {name}; give the path of a saved state dict (.pth), absolute or "
                "relative to the space file"
            )
        resolved[name] = str(path.resolve()) if base is not None else str(path)
    return raw, resolved


def _section(document: dict, name: str, allowed: tuple[str, ...], where: str) -> dict:
    section = document.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: '{name}' must be a mapping")
    check_keys(section, allowed, f"{where}: {name}")
    return dict(section)


def _parse_parameter(name: str, spec: Any, where: str, seen: list[str]) -> Parameter:
    at = f"{where}: parameters.{name}"
    if name not in TrialConfig.keys():
        raise ConfigError(f"{at}: unknown parameter {name!r}; known parameters are {', '.join(TrialConfig.keys())}")
    if not isinstance(spec, dict):
        if name == "batch_size" and spec == "auto":
            return Parameter(name, value=spec)
        return _checked(Parameter(name, value=spec), at)
    check_keys(spec, SPEC_KEYS, at)
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{at}: 'when' must map an earlier parameter to the value(s) that enable this one")
    for key in when:
        if key not in seen:
            raise ConfigError(f"{at}: 'when' names {key!r}, which is not a parameter listed before {name!r}")
    when = {k: v if isinstance(v, list) else [v] for k, v in when.items()}
    if "choices" in spec:
        if "low" in spec or "high" in spec:
            raise ConfigError(f"{at}: give either 'choices' or 'low'/'high', not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{at}: 'choices' must be a non-empty list")
        return _checked(Parameter(name, choices=choices, when=when), at)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{at}: a range needs both 'low' and 'high' (or use 'choices', or a fixed value)")
    kind = field_kind(name)
    if kind not in ("int", "float"):
        raise ConfigError(f"{at}: {name} is not numeric; use 'choices' instead of a range")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    for label, bound in (("low", low), ("high", high)):
        if isinstance(bound, str):
            if name not in BLOCK_KEYS:
                raise ConfigError(
                    f"{at}: {label}={bound!r}: only {' / '.join(BLOCK_KEYS)} bounds may be 'all' or a parameter name"
                )
            if bound != "all" and not valid_all_minus(bound) and bound not in seen:
                raise ConfigError(
                    f"{at}: {label}={bound!r} must be 'all', 'all-N' (e.g. all-3) or a block parameter "
                    f"listed before {name!r}"
                )
        elif isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ConfigError(f"{at}: {label} must be a number, got {bound!r}")
        elif kind == "int" and not float(bound).is_integer():
            raise ConfigError(f"{at}: {label} must be an integer for {name}, got {bound!r}")
    if not isinstance(low, str) and not isinstance(high, str) and low > high:
        raise ConfigError(f"{at}: low ({low}) is greater than high ({high}); swap them")
    if log and (isinstance(low, str) or low <= 0):
        raise ConfigError(f"{at}: log scale needs low > 0, got low={low!r}")
    if step is not None and log:
        raise ConfigError(f"{at}: 'step' and 'log' cannot be combined (Optuna); drop one")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{at}: step must be a positive number, got {step!r}")
    if kind == "int":
        low = low if isinstance(low, str) else int(low)
        high = high if isinstance(high, str) else int(high)
    return _checked(Parameter(name, low=low, high=high, log=log, step=step, when=when), at)


def _check_conditions(parameters: list[Parameter], where: str) -> None:
    """A ``when`` value that the named parameter never takes would silently switch a parameter off."""
    by_name = {p.name: p for p in parameters}
    for p in parameters:
        for key, values in p.when.items():
            condition = by_name[key]
            if condition.choices is None and not condition.fixed:
                continue  # a range: any value may occur
            possible = condition.candidates()
            for value in values:
                if value not in possible:
                    raise ConfigError(
                        f"{where}: parameters.{p.name}: 'when' value {value!r} for {key} is never sampled; "
                        f"{key} takes {', '.join(map(repr, possible))}"
                    )


def _check_block_order(parameters: list[Parameter], where: str) -> None:
    """A block range is capped by the trial's backbone, ``pretrained`` (and ``transfer_blocks`` for
    ``freeze_blocks``), so those must be sampled first."""
    index = {p.name: i for i, p in enumerate(parameters)}
    for p in parameters:
        if p.name in BLOCK_KEYS and not p.fixed:
            dependencies = ("backbone", "pretrained") + (("transfer_blocks",) if p.name != "transfer_blocks" else ())
            for dependency in dependencies:
                if index.get(dependency, -1) > index[p.name]:
                    raise ConfigError(
                        f"{where}: parameters.{p.name}: its range depends on the trial's {dependency}; "
                        f"list {dependency!r} before {p.name!r}"
                    )


def _checked(parameter: Parameter, at: str) -> Parameter:
    """Check every literal value against the trial config's own rules."""
    for value in parameter.candidates():
        if parameter.name == "backbone":
            try:
                get_spec(value)
            except NbtlError as error:
                raise ConfigError(f"{at}: {error}") from None
        try:
            TrialConfig.from_dict({parameter.name: value}, where=at)
        except TypeError:
            raise ConfigError(f"{at}: value {value!r} has the wrong type") from None
    return parameter
