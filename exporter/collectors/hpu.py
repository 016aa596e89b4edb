"""HPU telemetry from the device backend, with the slow-changing readings on their own cadence."""

from __future__ import annotations

import logging
from dataclasses import replace

from exporter.backends.base import Backend
from exporter.readings import BackendResult, DeviceReading, SlowReading

log = logging.getLogger(__name__)

MAX_LOGGED_ERRORS = 10  # new read errors logged per tick; the rest are counted
MAX_TRACKED_FAILING = 1024  # failing keys remembered (for "readable again"); junk output must not grow it


class HpuCollector:
    """Wraps a backend; asks for slow readings every ``slow_interval`` seconds and reuses them in between."""

    name = "hpu"

    def __init__(self, backend: Backend, slow_interval: float = 60.0) -> None:
        self.backend = backend
        self.slow_interval = slow_interval
        self._last_slow_at: float | None = None
        self._slow: dict[str, SlowReading] = {}
        self._failing: set[str] = set()
        self._throttle: dict[tuple[str, str], tuple[float, float]] = {}  # (device, reason) -> (last raw, total)

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
        new = [e for e in result.errors if e.key not in self._failing]
        for e in new[:MAX_LOGGED_ERRORS]:
            who = f"HPU {e.index}" if e.index is not None else "an unnamed HPU"
            log.error("%s (uuid %s, serial %s) could not be read: %s", who, e.uuid or "unknown",
                      e.serial or "unknown", e.message)
        if len(new) > MAX_LOGGED_ERRORS:  # junk output must not flood the log: say how much was left out
            log.error("%d more HPU read errors this tick (see gaudi_hpu_read_errors_total)",
                      len(new) - MAX_LOGGED_ERRORS)
        readable = {d.key for d in devices}
        for key in sorted(self._failing - failing)[:MAX_LOGGED_ERRORS]:
            if key in readable:  # not when it merely stopped being listed
                log.info("HPU %s is readable again", key)
            else:
                log.warning("HPU %s is no longer listed by the driver", key)
        self._failing = failing if len(failing) <= MAX_TRACKED_FAILING else set()
        return BackendResult(devices=tuple(self._monotonic_throttle(d) for d in devices), errors=result.errors)

    def _monotonic_throttle(self, d: DeviceReading) -> DeviceReading:
        """The driver's throttle time restarts at a driver reload; gaudi_hpu_throttle_seconds_total must not."""
        if not d.throttle_seconds:
            return d
        totals = []
        for reason, raw in d.throttle_seconds:
            key = (d.key, reason)
            last_raw, total = self._throttle.get(key, (None, 0.0))
            # first reading: the driver's total so far; a lower reading: the driver restarted from zero
            total += raw - last_raw if last_raw is not None and raw >= last_raw else raw
            self._throttle[key] = (raw, total)
            totals.append((reason, total))
        return replace(d, throttle_seconds=tuple(totals))
