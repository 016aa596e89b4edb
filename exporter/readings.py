"""Immutable readings: what a backend returns and what one tick's snapshot holds.

Backends fill these and know nothing else; the cost engine and the exposition only read them. ``None`` means "not
supported or not read on this device", never zero: a missing value is skipped, not exported as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceIdentity:
    index: int
    uuid: str
    serial: str = ""
    name: str = ""  # hl-smi/HLML product name, e.g. HL-325L
    model: str = ""  # generation, e.g. "Gaudi 3"
    pci_bus_id: str = ""
    driver_version: str = ""
    firmware_version: str = ""
    minor: int | None = None


def device_key(identity: DeviceIdentity) -> str:
    """How every part of the exporter names a device: its UUID, else its index (counters and owners join on it)."""
    return identity.uuid or f"index-{identity.index}"


@dataclass(frozen=True)
class SlowReading:
    """Readings that change rarely and may be slow to fetch; read on their own cadence."""

    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    pcie_replays: int | None = None
    nic_ports_up: tuple[tuple[int, bool], ...] | None = None  # (port, up)
    firmware_version: str | None = None
    # health and parity signals (issue 11 section 3); None / () where the device or driver does not report them
    ecc_volatile_corrected: int | None = None  # since the last driver load, beside the aggregate counts above
    ecc_volatile_uncorrected: int | None = None
    ecc_mode: tuple[tuple[str, bool], ...] = ()  # ("current" | "pending", enabled)
    replaced_rows: tuple[tuple[str, int], ...] = ()  # (cause, HBM rows replaced)
    row_replacement_pending: bool | None = None  # rows wait for a device reset to be replaced
    pcie_link: tuple[tuple[str, int], ...] = ()  # ("generation" | "max_generation" | "width" | "max_width", n)
    temperature_thresholds: tuple[tuple[str, float], ...] = ()  # (threshold, celsius)
    power_limits_watts: tuple[tuple[str, float], ...] = ()  # ("default" | "min" | "max", watts)
    clocks_max_hertz: tuple[tuple[str, float], ...] = ()  # (clock, hertz)


@dataclass(frozen=True)
class DeviceReading:
    identity: DeviceIdentity
    utilization: float | None = None  # 0-1
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None  # the driver's counter since driver load, if it has one
    temperatures: tuple[tuple[str, float], ...] = ()  # (sensor, celsius)
    clocks_hertz: tuple[tuple[str, float], ...] = ()  # (clock, hertz)
    throttled: tuple[tuple[str, bool], ...] = ()  # (reason, active)
    slow: SlowReading | None = None  # filled by the backend only on slow ticks
    memory_utilization: float | None = None  # 0-1, memory-interface utilisation (HLML, same call as AIP's)
    throttle_seconds: tuple[tuple[str, float], ...] = ()  # (reason, seconds throttled; the driver's running total)
    pcie_throughput_bytes: tuple[tuple[str, float], ...] = ()  # ("tx" | "rx", bytes per second)

    @property
    def key(self) -> str:
        return device_key(self.identity)


@dataclass(frozen=True)
class DeviceError:
    """A device that could not be read this tick (it stays in the device list, its series pause).

    ``index`` is None and ``uuid`` "" when the backend cannot tell which device the failure is about (a line of
    hl-smi noise): the loop counts those under one "unknown" series.
    """

    index: int | None
    uuid: str
    message: str
    serial: str = ""  # the last known serial: a failing device keeps its identity in logs

    @property
    def key(self) -> str:
        if self.uuid:
            return self.uuid
        return f"index-{self.index}" if self.index is not None else "unknown"


@dataclass(frozen=True)
class BackendResult:
    devices: tuple[DeviceReading, ...] = ()
    errors: tuple[DeviceError, ...] = ()


@dataclass(frozen=True)
class HostReading:
    cpu_utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything one tick read, stamped with the tick's wall-clock time."""

    timestamp: float
    devices: tuple[DeviceReading, ...] = ()
    errors: tuple[DeviceError, ...] = ()
    host: HostReading | None = None
    extra: dict[str, object] = field(default_factory=dict)
