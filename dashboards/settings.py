"""Budgets, targets and limits the dashboards draw against, from the thresholds file the alerts use.

alerts/thresholds.yaml (loaded and validated by ``alerts.thresholds.load``) is the one place these numbers live, so a
threshold line on a panel and the alert that pages on it never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alerts import thresholds


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
    ecc_uncorrected_max: float  # GaudiHpuEccUncorrectable fires above it; the fleet panel counts the same HPUs
    source: str  # where the numbers came from, for panel descriptions


def _usd(value: float | None) -> float | None:
    return None if value is None else float(value)


def load(path: Path | None = None) -> Settings:
    """The dashboards' numbers from a thresholds file; ValueError naming the key when it is invalid."""
    t = thresholds.load(path)
    return Settings(
        daily_budget_usd=_usd(t["budgets"]["cluster"]["daily_usd"]),
        monthly_budget_usd=_usd(t["budgets"]["cluster"]["monthly_usd"]),
        daily_window=t["budgets"]["daily"]["window"],
        monthly_window=t["budgets"]["monthly"]["window"],
        efficiency_target=float(t["efficiency"]["target"]),
        efficiency_floor=float(t["efficiency"]["floor"]),
        idle_share_max=float(t["idle"]["cost_share_max"]),
        aip_temperature_max_celsius=float(t["thermal"]["aip_temperature_max_celsius"]),
        cost_at_risk_max_usd=float(t["spot"]["cost_at_risk_max_usd"]),
        ecc_uncorrected_max=float(t["ecc"]["uncorrected_max"]),
        source="alerts/thresholds.yaml" if path is None else Path(path).name,
    )
