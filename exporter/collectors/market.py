"""Market-watcher mode: spot and on-demand prices across regions, refreshed off the tick."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class MarketCollector:
    name = "market"

    def __init__(self, watcher: object, refresh_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.watcher = watcher  # exporter.market.fetch.MarketWatcher
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.attempted = threading.Event()  # set once the first refresh has run, good or bad

    def start_refresher(self, stop: threading.Event) -> threading.Thread:
        def run() -> None:
            while not stop.is_set():
                try:
                    self.watcher.refresh(self.clock())
                except Exception:  # noqa: BLE001
                    log.exception("market refresh failed")
                self.attempted.set()
                stop.wait(self.refresh_seconds)

        t = threading.Thread(target=run, name="market-refresh", daemon=True)
        t.start()
        return t

    def collect(self, now: float, partial: dict | None = None) -> object:
        attempted = self.attempted.is_set()
        snap = self.watcher.snapshot()
        if snap.last_success is None and attempted:
            from exporter.loop import PartialFailure

            raise PartialFailure("no market data yet (see the log for the source's errors)", snap)
        return snap
