"""The node's price from the price source; network look-ups run in a background thread, never in the tick."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.accounting import Rates
from exporter.loop import PartialFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PricingResult:
    prices: object  # exporter.pricing.base.NodePrices
    identity: object  # exporter.pricing.base.NodeIdentity
    rates: Rates


class PricingCollector:
    name = "pricing"

    def __init__(self, source: object, identity: object, *, electricity_usd_per_kwh: float | None = None,
                 pue: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.source = source  # exporter.pricing.base.PriceSource
        self.identity = identity
        self.electricity_usd_per_kwh = electricity_usd_per_kwh
        self.pue = pue
        self.clock = clock
        self.attempted = threading.Event()  # set once the first refresh has run, good or bad

    def start_refresher(self, stop: threading.Event, every: float = 5.0) -> threading.Thread:
        """Calls source.refresh() off the tick: the source decides when a look-up is due and backs off itself."""

        def run() -> None:
            while not stop.is_set():
                try:
                    self.source.refresh(self.clock())
                except Exception:  # noqa: BLE001 - a refresh bug must not end price updates for good
                    log.exception("price refresh failed")
                self.attempted.set()
                stop.wait(every)

        t = threading.Thread(target=run, name="price-refresh", daemon=True)
        t.start()
        return t

    def collect(self, now: float, partial: dict | None = None) -> PricingResult:
        attempted = self.attempted.is_set()  # read first: a refresh landing in between must not look like a failure
        prices = self.source.prices(now)
        paid = prices.paid
        od = prices.on_demand
        rates = Rates(
            paid_usd_per_hour=paid.usd_per_hour if paid else None,
            on_demand_usd_per_hour=od.usd_per_hour if od else None,
            spot=getattr(self.identity, "lifecycle", "") == "spot",
            electricity_usd_per_kwh=self.electricity_usd_per_kwh,
            pue=self.pue,
        )
        result = PricingResult(prices, self.identity, rates)
        if paid is None and attempted:
            problem = getattr(self.source, "problem", None)  # a source that can never price says what to set
            raise PartialFailure(problem or f"no price yet from pricing source {self.source.name!r}; cost counters "
                                 "are not advancing (see gaudi_pricing_errors_total)", result)
        return result
