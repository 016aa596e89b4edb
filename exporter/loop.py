"""The collection loop: read every source, integrate, render once, cache the bytes.

Scrapes never reach a device or an API: they get the bytes of the last tick. Each collector is timed and isolated, so
a failing one marks itself failed and the rest keeps flowing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.accounting import Accountant, Rates
from exporter.exposition import CollectorStat, Exposition, Renderer, View
from exporter.known_devices import KnownDevices
from exporter.readings import BackendResult, HostReading, Snapshot

log = logging.getLogger(__name__)


class PartialFailure(Exception):
    """A collector that failed but still has something to report (e.g. the last good price and its errors)."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Attribution:
    """What an attribution collector returns: device key -> label values, and the label names."""

    labels: tuple[str, ...]
    owners: dict[str, tuple[str, ...]] = field(default_factory=dict)


class Loop:
    def __init__(self, collectors: list, *, interval: float, version: str, backend: str, mode: str = "node",
                 accountant: Accountant | None = None, renderer: Renderer | None = None,
                 attribution_labels: tuple[str, ...] = (), clock: Callable[[], float] = time.time,
                 known_devices: KnownDevices | None = None) -> None:
        self.collectors = collectors
        self.interval = interval
        self.version, self.backend, self.mode = version, backend, mode
        self.accountant = accountant or Accountant()
        self.renderer = renderer or Renderer()
        self.attribution_labels = attribution_labels
        self.clock = clock
        self.ticks = 0
        self.last_tick_finished: float | None = None  # monotonic
        self.devices = known_devices or KnownDevices()
        self._failing: dict[str, str] = {}
        self._last: dict[str, object] = {}
        self.exposition: Exposition = self.renderer.render(View(version=version, backend=backend, mode=mode))

    # --- one tick
    def tick(self) -> Exposition:
        now = self.clock()
        results: dict[str, object] = {}
        stats: dict[str, CollectorStat] = {}
        for c in self.collectors:
            t0 = time.perf_counter()
            ok = True
            try:
                results[c.name] = c.collect(now, results)
            except PartialFailure as e:
                ok = False
                results[c.name] = e.result
                self._report_failure(c.name, str(e))
            except Exception as e:  # noqa: BLE001 - isolation is the point: one source never stops the rest
                ok = False
                results[c.name] = None
                self._report_failure(c.name, f"{type(e).__name__}: {e}")
            if ok and c.name in self._failing:
                log.info("collector %s recovered", c.name)
                del self._failing[c.name]
            stats[c.name] = CollectorStat(time.perf_counter() - t0, ok)

        hpu = results.get("hpu")
        devices = hpu.devices if isinstance(hpu, BackendResult) else ()
        errors = hpu.errors if isinstance(hpu, BackendResult) else ()
        if "hpu" in stats and stats["hpu"].success:  # a failed backend read says nothing about single devices
            forgotten = self.devices.observe(now, devices, errors)
            if forgotten:
                log.info("forgot %d HPU(s) lost for over %gs (or beyond the %d lost HPUs kept): %s", len(forgotten),
                         self.devices.grace_seconds, self.devices.max_lost, ", ".join(forgotten[:8]))
                self.accountant.forget(forgotten)
        host = results.get("host")
        snapshot = Snapshot(timestamp=now, devices=tuple(devices), errors=tuple(errors),
                            host=host if isinstance(host, HostReading) else None)

        pricing = results.get("pricing")
        rates = getattr(pricing, "rates", None) or Rates()
        owners: dict[str, tuple[str, ...]] = {}
        for name in ("kubernetes", "hpc"):
            attr = results.get(name)
            if isinstance(attr, Attribution):
                owners = attr.owners
        ns_index = 0 if self.attribution_labels[:1] == ("namespace",) else None
        self.accountant.advance(now, devices, rates, owners, ns_index)

        self.ticks += 1
        view = View(
            version=self.version, backend=self.backend, mode=self.mode, snapshot=snapshot, stats=stats,
            accountant=self.accountant, attribution_labels=self.attribution_labels, owners=owners,
            known_devices=dict(self.devices.identities),
            read_errors=self.devices.error_series() if "hpu" in stats else {},
            prices=getattr(pricing, "prices", None), identity=getattr(pricing, "identity", None),
            notices=results.get("spot"), checkpoint_time=results.get("checkpoint"),  # type: ignore[arg-type]
            market=results.get("market"), ticks=self.ticks, last_collection=self.clock(),
        )
        self.exposition = self.renderer.render(view)
        self.last_tick_finished = time.monotonic()
        return self.exposition

    def _report_failure(self, name: str, message: str) -> None:
        # log on the first failure and when the reason changes, not on every tick
        if self._failing.get(name) != message:
            log.error("collector %s failed: %s", name, message)
            self._failing[name] = message

    # --- the background thread
    def healthy(self) -> bool:
        """Alive and recent: the last tick finished within three intervals (plus slack for a slow source)."""
        if self.last_tick_finished is None:
            return False
        return time.monotonic() - self.last_tick_finished <= 3 * self.interval + 10

    def run(self, stop: threading.Event) -> None:
        # a tick that already ran (the daemon ticks once before serving) counts: the next one is an interval later
        next_at = time.monotonic() if self.last_tick_finished is None else self.last_tick_finished + self.interval
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must outlive any bug in one tick
                log.exception("collection tick failed")
            next_at += self.interval
            if next_at < time.monotonic():  # fell behind (a slow source or a paused process): skip, do not burst
                next_at = time.monotonic()

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="collection-loop", daemon=True)
        t.start()
        return t
