"""Rules written as data (``heuristics/rules.yaml``) that turn signals into transfer settings.

A rules file has a ``defaults`` config (the starting point, with its reason) and an ordered list of
``rules``. Each rule has an ``id``, an optional ``when`` (every condition must hold) or
``when_any`` (at least one mapping of conditions must hold), the settings it ``set``\\s, a
``because`` sentence and its ``evidence``. Later rules override earlier ones; every setting
remembers the last rule that set it, which is the reason ``nbtl recommend`` prints.

Conditions map a signal name to a literal (equality) or to ``{min: x, max: y}`` (inclusive).
Settings map a config key to a literal, to ``{signal: NAME, plus: k}`` (a signal's value plus
``k``, rounded for integer keys), or to ``{scale: f}`` (the current value times ``f``); the last two
take optional ``min`` / ``max`` clamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nbtl.config import TrialConfig
from nbtl.fit.registry import feature_measures
from nbtl.heuristics.signals import DATASET_SIGNALS, HeuristicsError, backbone_signal_names
from nbtl.resources import shipped
from nbtl.safe_yaml import load_yaml

__all__ = ["Rule", "Rules", "default_rules_path", "load_rules", "parse_rules"]


def signal_names() -> tuple[str, ...]:
    """The signals a rule may read: the dataset's, the backbone's (from the fit-measure registry) and its rank."""
    return DATASET_SIGNALS + backbone_signal_names() + ("backbone_rank",)


INTEGER_KEYS = (
    "transfer_blocks",
    "freeze_blocks",
    "l2sp_blocks",
    "head_width",
    "epochs",
    "batch_size",
    "head_warmup_epochs",
)


def default_rules_path() -> Path:
    """The shipped ``heuristics/rules.yaml``: the copy installed with the package, else the source tree's."""
    path = shipped("heuristics/rules.yaml")
    if path is None:
        raise HeuristicsError(
            "heuristics/rules.yaml is missing from this nbtl install; pass --rules FILE "
            "or reinstall nbtl (pip install nbtl)"
        )
    return path


@dataclass
class Rule:
    id: str
    set: dict[str, Any]
    because: str
    evidence: list[str]
    when: dict[str, Any] = field(default_factory=dict)
    when_any: list[dict[str, Any]] = field(default_factory=list)

    def signals_read(self) -> list[str]:
        """The signals this rule's conditions and settings read, in order of first use."""
        names = [n for group in [self.when, *self.when_any] for n in group]
        names += [spec["signal"] for spec in self.set.values() if isinstance(spec, dict) and "signal" in spec]
        return list(dict.fromkeys(names))

    def holds(self, signals: dict[str, float]) -> bool:
        if self.when and not _all_hold(self.when, signals):
            return False
        return not self.when_any or any(_all_hold(group, signals) for group in self.when_any)


@dataclass
class Rules:
    """A parsed rules file."""

    defaults: dict[str, Any]
    defaults_because: str
    rules: list[Rule]
    fit_curve: str = "logme"
    peak_tolerance: float = 0.0
    rank_by: str = "logme_best"
    path: str = "<string>"

    def apply(self, signals: dict[str, float], backbone: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The config for ``backbone`` given its ``signals``, and the reason for each setting."""
        config = {"backbone": backbone, **self.defaults}
        reasons = {key: self.defaults_because for key in config}
        reasons["backbone"] = f"ranked first of the backbones by {self.rank_by}"
        for rule in self.rules:
            if not rule.holds(signals):
                continue
            evidence = ", ".join(f"{name}={_show(signals.get(name))}" for name in rule.signals_read())
            for key, spec in rule.set.items():
                config[key] = _value(key, spec, config.get(key), signals, rule.id)
                # a rule that reads no signal (it always holds) has no evidence to show: no empty "()"
                reasons[key] = f"{rule.id} ({evidence}): {rule.because}" if evidence else f"{rule.id}: {rule.because}"
        num_blocks = int(signals["num_blocks"])
        transfer = config.get("transfer_blocks")
        transfer = num_blocks if transfer in (None, "all") else max(0, min(int(transfer), num_blocks))
        config["transfer_blocks"] = transfer
        config["freeze_blocks"] = max(0, min(int(config.get("freeze_blocks") or 0), transfer))
        TrialConfig.from_dict(config, where=f"rules {self.path}")  # every rule outcome must be a valid config
        return config, reasons


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _all_hold(conditions: dict[str, Any], signals: dict[str, float]) -> bool:
    for name, condition in conditions.items():
        value = signals.get(name, math.nan)
        if isinstance(condition, dict):
            if value is None or not math.isfinite(value):
                return False
            if "min" in condition and value < condition["min"]:
                return False
            if "max" in condition and value > condition["max"]:
                return False
        elif float(condition) != value:
            return False
    return True


def _value(key: str, spec: Any, current: Any, signals: dict[str, float], rule_id: str) -> Any:
    if not isinstance(spec, dict):
        return spec
    if "signal" in spec:
        value = signals[spec["signal"]] + spec.get("plus", 0)
    else:
        if current is None or isinstance(current, str):
            raise HeuristicsError(
                f"rule {rule_id}: cannot scale {key} (it has no numeric value yet); "
                "set it in defaults or an earlier rule"
            )
        value = current * spec["scale"]
    if "min" in spec:
        value = max(value, spec["min"])
    if "max" in spec:
        value = min(value, spec["max"])
    return int(round(value)) if key in INTEGER_KEYS else float(value)


def load_rules(path: str | Path | None = None) -> Rules:
    """Read and validate a rules YAML (default :func:`default_rules_path`)."""
    path = Path(path) if path is not None else default_rules_path()
    try:
        text = path.read_text()
    except OSError as error:
        raise HeuristicsError(f"rules file {path}: cannot read it ({error.strerror}); check the path") from None
    try:
        document = load_yaml(text, f"rules file {path}")
    except yaml.YAMLError as error:
        raise HeuristicsError(f"rules file {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return parse_rules(document, str(path))


def parse_rules(document: Any, where: str = "<string>") -> Rules:
    """Validate a parsed rules document; every error names the rule and the key."""
    if not isinstance(document, dict):
        raise HeuristicsError(f"rules file {where}: expected a mapping with defaults and rules")
    _keys(document, ("version", "fit_curve", "peak_tolerance", "rank_by", "defaults", "rules"), where)
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict) or not isinstance(defaults.get("config"), dict):
        raise HeuristicsError(f"rules file {where}: defaults.config must be a mapping of config keys")
    config_keys = set(TrialConfig.keys())
    signals = signal_names()
    for key in defaults["config"]:
        if key not in config_keys:
            raise HeuristicsError(f"rules file {where}: defaults.config has unknown key {key!r}")
    rules, seen = [], set()
    for position, item in enumerate(document.get("rules") or []):
        at = f"rules file {where}: rules[{position}]"
        if not isinstance(item, dict):
            raise HeuristicsError(f"{at} must be a mapping")
        _keys(item, ("id", "when", "when_any", "set", "because", "evidence"), at)
        for required in ("id", "set", "because", "evidence"):
            if not item.get(required):
                raise HeuristicsError(f"{at} needs {required!r} (every rule says what it sets, why, and its evidence)")
        if item["id"] in seen:
            raise HeuristicsError(f"{at}: id {item['id']!r} is used twice")
        seen.add(item["id"])
        at = f"rules file {where}: rule {item['id']}"
        groups = [item.get("when") or {}] + list(item.get("when_any") or [])
        for group in groups:
            if not isinstance(group, dict):
                raise HeuristicsError(f"{at}: when / when_any entries must be mappings of signal: condition")
            for name, condition in group.items():
                if name not in signals:
                    raise HeuristicsError(f"{at}: unknown signal {name!r}; signals are {', '.join(signals)}")
                if isinstance(condition, dict):
                    _keys(condition, ("min", "max"), f"{at}: condition on {name}")
        for key, spec in item["set"].items():
            if key not in config_keys:
                raise HeuristicsError(f"{at}: sets unknown config key {key!r}")
            if isinstance(spec, dict):
                _keys(spec, ("signal", "plus", "scale", "min", "max"), f"{at}: {key}")
                if ("signal" in spec) == ("scale" in spec):
                    raise HeuristicsError(f"{at}: {key} needs exactly one of signal or scale")
                if "signal" in spec and spec["signal"] not in signals:
                    raise HeuristicsError(f"{at}: {key} reads unknown signal {spec['signal']!r}")
        evidence = item["evidence"]
        rules.append(
            Rule(
                id=str(item["id"]),
                set=dict(item["set"]),
                because=str(item["because"]).strip(),
                evidence=[str(e) for e in (evidence if isinstance(evidence, list) else [evidence])],
                when=dict(item.get("when") or {}),
                when_any=list(item.get("when_any") or []),
            )
        )
    rank_by = str(document.get("rank_by", "logme_best"))
    if rank_by not in backbone_signal_names():
        raise HeuristicsError(
            f"rules file {where}: rank_by {rank_by!r} is not a backbone signal ({', '.join(backbone_signal_names())})"
        )
    fit_curve = str(document.get("fit_curve", "logme"))
    curves = [entry.name for entry in feature_measures()]
    if fit_curve not in curves:
        raise HeuristicsError(
            f"rules file {where}: fit_curve {fit_curve!r} is not a block fit measure ({', '.join(curves)})"
        )
    return Rules(
        defaults=dict(defaults["config"]),
        defaults_because=str(defaults.get("because", "default")).strip(),
        rules=rules,
        fit_curve=fit_curve,
        peak_tolerance=float(document.get("peak_tolerance", 0.0)),
        rank_by=rank_by,
        path=where,
    )


def _keys(mapping: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise HeuristicsError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")
