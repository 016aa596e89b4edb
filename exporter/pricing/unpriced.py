"""No price: what a node without a configured price runs on. Telemetry flows; cost is not invented.

A missing price never stops the daemon (a DaemonSet in CrashLoopBackOff would lose the telemetry too): the pricing
collector reports this source's ``problem`` as its failure on every tick, so GaudiCollectorFailing fires, and no
cost series are exported until a price is configured.
"""

from __future__ import annotations

from exporter.pricing.base import NodePrices


class Unpriced:
    name = "static"

    def __init__(self, problem: str) -> None:
        self.problem = problem  # what to set, for the collector's failure message and the start-up log

    def prices(self, now: float) -> NodePrices:
        return NodePrices()

    def refresh(self, now: float) -> None:
        return None
