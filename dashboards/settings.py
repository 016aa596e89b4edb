"""Budgets, targets and limits the dashboards draw against, from the thresholds file the alerts use.

alerts/thresholds.yaml (loaded and validated by ``alerts.thresholds.load``) is the one place these numbers live, so a
threshold line on a panel and the alert that pages on it never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "alerts" / "thresholds.yaml"


@dataclass(frozen=True)
class Settings:
    daily_budget_usd: float | None
    monthly_budget_usd: float | None
    daily_window: str
    monthly_window: str
    efficiency_target: float  # the divisor inside the score: score 1 = at target
    efficiency_floor: float  # the score below which the efficiency alert fires
    idle_share_max: float
    aip_temperature_max_celsius: float
    cost_at_risk_max_usd: float
    source: str  # where the numbers came from, for panel descriptions


def _read(path: Path | None) -> dict[str, Any]:
    """The validated thresholds; the alerts package's loader when importable, else the YAML as it is."""
    try:
        from alerts import thresholds as alert_thresholds
    except ImportError:  # dashboards installed without alerts: read the file ourselves
        p = path or DEFAULT_PATH
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"thresholds: {p} must be a mapping") from None
        return data
    return alert_thresholds.load(path)


def _get(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"thresholds: missing key {key}")
        node = node[part]
    return node


def _num(data: dict[str, Any], key: str, *, nullable: bool = False) -> float | None:
    v = _get(data, key)
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"thresholds: {key} must be a number, got {v!r}")
    return float(v)


def load(path: Path | None = None) -> Settings:
    data = _read(path)
    return Settings(
        daily_budget_usd=_num(data, "budgets.cluster.daily_usd", nullable=True),
        monthly_budget_usd=_num(data, "budgets.cluster.monthly_usd", nullable=True),
        daily_window=str(_get(data, "budgets.daily.window")),
        monthly_window=str(_get(data, "budgets.monthly.window")),
        efficiency_target=_num(data, "efficiency.target"),
        efficiency_floor=_num(data, "efficiency.floor"),
        idle_share_max=_num(data, "idle.cost_share_max"),
        aip_temperature_max_celsius=_num(data, "thermal.aip_temperature_max_celsius"),
        cost_at_risk_max_usd=_num(data, "spot.cost_at_risk_max_usd"),
        source="alerts/thresholds.yaml" if path is None else Path(path).name,
    )
