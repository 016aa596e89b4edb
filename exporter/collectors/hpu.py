"""HPU telemetry from the device backend, with the slow-changing readings on their own cadence."""

from __future__ import annotations

import logging
from dataclasses import replace

from exporter.backends.base import Backend
from exporter.readings import BackendResult, DeviceReading, SlowReading

log = logging.getLogger(__name__)


class HpuCollector:
    """Wraps a backend; asks for slow readings every ``slow_interval`` seconds and reuses them in between."""

    name = "hpu"

    def __init__(self, backend: Backend, slow_interval: float = 60.0) -> None:
        self.backend = backend
        self.slow_interval = slow_interval
        self._last_slow_at: float | None = None
        self._slow: dict[str, SlowReading] = {}
        self._failing: set[str] = set()

    def collect(self, now: float, partial: dict | None = None) -> BackendResult:
        slow = self._last_slow_at is None or now - self._last_slow_at >= self.slow_interval
        result = self.backend.read(slow=slow)
        if slow:
            self._last_slow_at = now
        devices: list[DeviceReading] = []
        for d in result.devices:
            if d.slow is not None:
                self._slow[d.key] = d.slow
            elif d.key in self._slow:
                d = replace(d, slow=self._slow[d.key])
            devices.append(d)
        failing = {e.key for e in result.errors}
        for e in result.errors:
            if e.key not in self._failing:
                log.error("HPU %d (%s) could not be read: %s", e.index, e.uuid or "no uuid", e.message)
        for key in self._failing - failing:
            log.info("HPU %s is readable again", key)
        self._failing = failing
        return BackendResult(devices=tuple(devices), errors=result.errors)
