"""Host CPU and memory: a small set; node_exporter does the rest."""

from __future__ import annotations

import psutil

from exporter.readings import HostReading


class HostCollector:
    name = "host"

    def __init__(self, ps: object = psutil) -> None:
        self._ps = ps
        self._ps.cpu_percent(interval=None)  # primes the counter: the first real reading covers one tick

    def collect(self, now: float, partial: dict | None = None) -> HostReading:
        mem = self._ps.virtual_memory()
        return HostReading(
            cpu_utilization=self._ps.cpu_percent(interval=None) / 100.0,
            memory_used_bytes=int(mem.total - mem.available),
            memory_total_bytes=int(mem.total),
        )
