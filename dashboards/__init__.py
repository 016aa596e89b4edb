"""Grafana dashboards for gaudi-exporter, written with grafanalib through our helper layer (panels.py)."""

from __future__ import annotations

from pathlib import Path

from dashboards import cost, efficiency, fleet, settings, spot
from dashboards.panels import Board

MODULES = (cost, fleet, efficiency, spot)


def boards(thresholds: Path | None = None) -> list[Board]:
    """Every dashboard, built against the budgets and target of the thresholds file."""
    s = settings.load(thresholds)
    return [m.build(s) for m in MODULES]
