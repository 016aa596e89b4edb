"""The HPUs this node has shown, and their read errors: bounded, whatever the device output says.

A device becomes known when it is read once. Read errors are counted against a known device (matched by uuid, else
by index); an error that names no known device is counted under one ``hpu="unknown"`` series, so junk output
cannot create a series per line. A device that neither answers nor fails for ``grace_seconds`` is forgotten (its
``gaudi_hpu_up 0`` and error series end), and at most ``max_lost`` lost devices are kept, oldest forgotten first,
so changing UUIDs cannot grow the series either.
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.readings import DeviceError, DeviceIdentity, DeviceReading

UNKNOWN = ("unknown", "")  # (hpu, uuid) label values of errors that name no known device
DEFAULT_GRACE_SECONDS = 3600.0
DEFAULT_MAX_LOST = 64


class KnownDevices:
    def __init__(self, grace_seconds: float = DEFAULT_GRACE_SECONDS, max_lost: int = DEFAULT_MAX_LOST) -> None:
        self.grace_seconds = grace_seconds
        self.max_lost = max_lost
        self.identities: dict[str, DeviceIdentity] = {}  # device key -> identity, in order of first sight
        self.read_errors: dict[str, int] = {}  # device key -> failed reads since it became known
        self.unknown_errors = 0  # failed reads that named no known device
        self._last_seen: dict[str, float] = {}  # device key -> last tick it was read or failed

    def observe(self, now: float, devices: Iterable[DeviceReading], errors: Iterable[DeviceError]) -> list[str]:
        """Record one tick's reads and errors; returns the keys of devices forgotten now."""
        present: set[str] = set()
        for d in devices:
            self.identities[d.key] = d.identity
            self.read_errors.setdefault(d.key, 0)  # exported at 0 from the start: increase() sees the first error
            self._last_seen[d.key] = now
            present.add(d.key)
        for e in errors:
            key = self.match(e)
            if key is None:
                self.unknown_errors += 1
                continue
            self.read_errors[key] += 1
            self._last_seen[key] = now  # failing is not vanishing: it stays known (and GaudiHpuLost keeps firing)
            present.add(key)
        return self._prune(now, present)

    def match(self, error: DeviceError) -> str | None:
        """The known device an error is about: same uuid, else the most recently seen device with its index."""
        if error.uuid and error.uuid in self.identities:
            return error.uuid
        if error.index is None:
            return None
        same_index = [k for k, ident in self.identities.items() if ident.index == error.index]
        return max(same_index, key=lambda k: self._last_seen[k]) if same_index else None

    def _prune(self, now: float, present: set[str]) -> list[str]:
        lost = sorted((k for k in self.identities if k not in present), key=lambda k: self._last_seen[k])
        expired = [k for k in lost if now - self._last_seen[k] > self.grace_seconds]
        over = max(0, len(lost) - len(expired) - self.max_lost)
        forget = expired + [k for k in lost if k not in expired][:over]
        for key in forget:
            del self.identities[key], self.read_errors[key], self._last_seen[key]
        return forget

    def error_series(self) -> dict[tuple[str, str], int]:
        """(hpu, uuid) label values -> count, every known device and the unknown series included (0 when none)."""
        out = {(str(ident.index), ident.uuid): self.read_errors[key] for key, ident in self.identities.items()}
        out[UNKNOWN] = out.get(UNKNOWN, 0) + self.unknown_errors
        return out
