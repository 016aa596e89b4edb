"""Load and validate alerts/thresholds.yaml, the one file that drives the rules, the alerts and the dashboards.

Validation is strict (unknown key, missing key, wrong type -> ValueError naming the key) because a typo in a
threshold would otherwise silently leave an alert at its old value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parent / "thresholds.yaml"

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
# One or more PromQL label matchers, comma separated: name="v", name!="v", name=~"re", name!~"re".
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR = re.compile(rf"^({_MATCHER}(,{_MATCHER})*)?$")


class _Type:
    """A leaf of the schema: checks one value and says what it expected."""

    def __init__(self, what: str, check, nullable: bool = False) -> None:
        self.what, self.check, self.nullable = what, check, nullable

    def validate(self, key: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        if not self.check(value):
            raise ValueError(f"thresholds: {key} must be {self.what}" + (" or null" if self.nullable else "")
                             + f", got {value!r}")
        return value


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0


def _ratio(v: Any) -> bool:
    return _number(v) and v <= 1


DURATION = _Type("a Prometheus duration such as 30s, 5m, 1h, 1d", lambda v: isinstance(v, str) and bool(
    _DURATION.match(v)))
USD = _Type("a non-negative number of USD", _number)
USD_OR_NULL = _Type("a non-negative number of USD", _number, nullable=True)
NUMBER = _Type("a non-negative number", _number)
RATIO = _Type("a ratio between 0 and 1", _ratio)
SELECTOR = _Type('PromQL label matchers such as job="gaudi-exporter"',
                 lambda v: isinstance(v, str) and bool(_SELECTOR.match(v)))
LABEL = _Type("a Prometheus label name such as cluster",
              lambda v: isinstance(v, str) and bool(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v)))
URL = _Type("an http(s) URL", lambda v: isinstance(v, str) and v.startswith(("http://", "https://")))
PORTS = _Type("a list of port numbers", lambda v: isinstance(v, list) and all(
    isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in v))


class _MapOf:
    """A mapping of free-form names (namespaces) to one sub-schema."""

    def __init__(self, schema: dict) -> None:
        self.schema = schema


_BUDGET = {"daily_usd": USD_OR_NULL, "monthly_usd": USD_OR_NULL}
_PERIOD = {"window": DURATION, "forecast_horizon": DURATION, "burn_rate_window": DURATION,
           "forecast_for": DURATION, "exceeded_for": DURATION}

SCHEMA: dict[str, Any] = {
    "exporter_selector": SELECTOR,
    "training_selector": SELECTOR,
    "cluster_label": LABEL,
    "node_label": LABEL,
    "runbook_url": URL,
    "budgets": {"cluster": _BUDGET, "namespaces": _MapOf(_BUDGET), "daily": _PERIOD, "monthly": _PERIOD},
    "efficiency": {"target": RATIO, "floor": RATIO, "for": DURATION},
    "idle": {"utilization_floor": RATIO, "for": DURATION, "cost_share_max": RATIO, "cost_share_window": DURATION,
             "cost_share_for": DURATION},
    "spot": {"cost_at_risk_max_usd": USD, "cost_at_risk_for": DURATION},
    "pricing": {"max_age": DURATION, "on_demand_max_age": DURATION, "for": DURATION},
    "health": {"exporter_down_for": DURATION, "exporter_absent_for": DURATION, "collector_failing_for": DURATION,
               "read_errors_window": DURATION, "read_errors_max": NUMBER, "read_errors_for": DURATION,
               "hpu_lost_for": DURATION},
    "thermal": {"throttling_for": DURATION, "aip_temperature_max_celsius": NUMBER, "temperature_for": DURATION},
    "ecc": {"uncorrected_max": NUMBER, "corrected_window": DURATION, "corrected_max": NUMBER},
    "nic": {"port_down_for": DURATION, "ignore_ports": PORTS},
    "hpu_health": {"row_replacement_pending_for": DURATION, "pcie_link_degraded_for": DURATION,
                   "pcie_generation_busy_utilization": RATIO, "throttle_share_window": DURATION,
                   "throttle_share_max": RATIO, "throttle_share_for": DURATION, "nic_ports_down_max": NUMBER,
                   "nic_ports_down_for": DURATION},
}


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration ("1h30m" -> 5400)."""
    if not _DURATION.match(text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for a whole number of seconds (93600 -> "1d2h")."""
    s = int(round(seconds))
    if s <= 0:
        raise ValueError(f"duration must be positive, got {seconds}s")
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, s = divmod(s, size)
        if n:
            out += f"{n}{unit}"
    return out


def _validate(schema: Any, value: Any, key: str) -> Any:
    if isinstance(schema, _Type):
        return schema.validate(key, value)
    if isinstance(schema, _MapOf):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"thresholds: {key} must be a mapping, got {type(value).__name__}")
        out = {}
        for name, sub in value.items():
            if not isinstance(name, str) or not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name):
                raise ValueError(f"thresholds: {key}.{name} is not a valid namespace name")
            sub = {} if sub is None else sub
            if not isinstance(sub, dict):
                raise ValueError(f"thresholds: {key}.{name} must be a mapping, got {type(sub).__name__}")
            for k in sub:
                if k not in schema.schema:
                    raise ValueError(f"thresholds: unknown key {key}.{name}.{k}")
            out[name] = {k: _validate(s, sub.get(k), f"{key}.{name}.{k}") for k, s in schema.schema.items()}
        return out
    if not isinstance(value, dict):
        raise ValueError(f"thresholds: {key or 'the file'} must be a mapping, got {type(value).__name__}")
    for k in value:
        if k not in schema:
            raise ValueError(f"thresholds: unknown key {key + '.' if key else ''}{k}")
    out = {}
    for k, sub in schema.items():
        full = f"{key}.{k}" if key else k
        if k not in value:
            raise ValueError(f"thresholds: missing key {full}")
        out[k] = _validate(sub, value[k], full)
    return out


def _check_consistency(t: dict) -> None:
    for period in ("daily", "monthly"):
        p = t["budgets"][period]
        if duration_seconds(p["forecast_horizon"]) >= duration_seconds(p["window"]):
            raise ValueError(f"thresholds: budgets.{period}.forecast_horizon must be shorter than "
                             f"budgets.{period}.window")
    h = t["health"]
    if duration_seconds(h["read_errors_for"]) <= duration_seconds(h["hpu_lost_for"]):
        # otherwise read errors of a lost HPU fire before GaudiHpuLost exists to inhibit them
        raise ValueError("thresholds: health.read_errors_for must be longer than health.hpu_lost_for")
    if t["efficiency"]["target"] <= 0:
        raise ValueError("thresholds: efficiency.target must be above 0")


def validate(data: Any) -> dict:
    """Validate parsed thresholds; returns a plain dict with every key present."""
    t = _validate(SCHEMA, data, "")
    _check_consistency(t)
    return t


def load(path: str | Path | None = None) -> dict:
    """Read and validate a thresholds file (default: the repo's alerts/thresholds.yaml)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"thresholds: {p.name} is not valid YAML: {e}") from e
    return validate(data)
