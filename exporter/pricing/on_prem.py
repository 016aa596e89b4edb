"""On-premises price: hardware amortised over its life plus fixed opex (power is counted apart, by energy)."""

from __future__ import annotations

from collections.abc import Callable

from exporter.pricing.base import FixedSource, Price, positive

HOURS_PER_YEAR = 8766.0  # 365.25 days: leap years included, as amortisation schedules do


def hourly(hardware_usd: float, amortization_years: float, opex_usd_per_hour: float) -> float:
    return hardware_usd / (amortization_years * HOURS_PER_YEAR) + opex_usd_per_hour


def create_on_prem(settings: dict, clock: Callable[[], float]) -> FixedSource:
    hw = positive(settings.get("hardware_usd"), "pricing.on_prem.hardware_usd")
    years = positive(settings.get("amortization_years"), "pricing.on_prem.amortization_years")
    opex = positive(settings.get("opex_usd_per_hour", 0.0), "pricing.on_prem.opex_usd_per_hour",
                    allow_zero=True)
    return FixedSource("on_prem", Price(hourly(hw, years, opex), "on_prem", clock()))
