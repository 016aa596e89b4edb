"""HPU readings straight from the driver through HLML (the ``pyhlml`` bindings of libhlml).

pyhlml quirks this module absorbs (see the package source): the library is loaded in ``hlmlInit`` from a
hard-coded path, a failed load prints to stdout, the per-code error classes only exist after the first
``hlmlInit``, and calls after a failed init raise ``AttributeError``. Text results come back as ``bytes``.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from exporter.backends.base import BackendUnavailable
from exporter.readings import BackendResult, DeviceError, DeviceIdentity, DeviceReading, SlowReading

log = logging.getLogger(__name__)

LIBHLML_PATH = "/usr/lib/habanalabs/libhlml.so"  # where pyhlml loads it from; it has no override

# hlml_return_t codes (pyhlml_types_generated.HLML_RETURN), as ints: no pyhlml import needed to read them.
ERR_UNINITIALIZED = 1
ERR_NOT_SUPPORTED = 3
ERR_ALREADY_INITIALIZED = 5
ERR_DRIVER_NOT_LOADED = 9
ERR_AIP_IS_LOST = 15
ERROR_NAMES = {
    1: "uninitialized", 2: "invalid argument", 3: "not supported", 5: "already initialized", 6: "not found",
    7: "insufficient size", 9: "driver not loaded", 10: "timeout", 15: "AIP is lost", 20: "memory error",
    21: "no data", 49: "unknown error",
}

# HLML_TEMPERATURE_SENSORS: ON_AIP=0, ON_BOARD=1, OTHER=2, HBM=3, VRM=4, CTEMP=5
TEMPERATURE_SENSORS = (("aip", 0), ("board", 1), ("other", 2), ("hbm", 3), ("vrm", 4), ("ctemp", 5))
# HLML_TEMPERATURE_THRESHOLDS: SHUTDOWN=0, SLOWDOWN=1, MEM_MAX=2, GPU_MAX=3
TEMPERATURE_THRESHOLDS = (("shutdown", 0), ("slowdown", 1), ("memory_max", 2), ("aip_max", 3))
CLOCKS = (("soc", 0), ("ic", 1), ("mme", 2), ("tpc", 3))  # HLML_CLOCK_TYPE
CLOCK_SOC = 0
THROTTLE_POWER = 1 << 0
THROTTLE_THERMAL = 1 << 1
PERF_POLICIES = (("power", 0), ("thermal", 1))  # HLML_PERF_POLICY_TYPE, for the violation status
MEMORY_ERROR_CORRECTED, MEMORY_ERROR_UNCORRECTED = 0, 1
ECC_COUNTER_VOLATILE, ECC_COUNTER_AGGREGATE = 0, 1
ROW_REPLACEMENT_CAUSES = (("multiple_single_bit", 0), ("double_bit", 1))  # HLML_ROW_REPLACEMENT_CAUSE
PCIE_COUNTERS = (("tx", 0), ("rx", 1))  # HLML_PCIE_UTIL_COUNTER
# Assumed units where pyhlml does not state one (HLML mirrors NVML): violation time in nanoseconds, PCIe
# throughput in KiB/s. Not verifiable without hardware; docs/metrics.md says so.
VIOLATION_TIME_SECONDS = 1e-9
PCIE_THROUGHPUT_BYTES = 1024.0
UNKNOWN = "unknown"  # driver or firmware version the driver does not report

# pyhlml function -> the C symbol it resolves in libhlml (tests check this table against pyhlml's source).
SYMBOLS: dict[str, str] = {
    "hlmlDeviceGetCount": "hlml_device_get_count",
    "hlmlDeviceGetHandleByIndex": "hlml_device_get_handle_by_index",
    "hlmlDeviceGetUUID": "hlml_device_get_uuid",
    "hlmlDeviceGetUtilizationRates": "hlml_device_get_utilization_rates",
    "hlmlGetDriverVersion": "hlml_get_driver_version",
    "hlmlDeviceGetName": "hlml_device_get_name",
    "hlmlDeviceGetSerial": "hlml_device_get_serial",
    "hlmlDeviceGetPCIInfo": "hlml_device_get_pci_info",
    "hlmlDeviceGetMinorNumber": "hlml_device_get_minor_number",
    "hlmlDeviceGetFirmwareFITVersion": "hlml_get_firmware_fit_version",
    "hlmlDeviceGetFWOSVersion": "hlml_get_fw_os_version",
    "hlmlDeviceGetMemoryInfo": "hlml_device_get_memory_info",
    "hlmlDeviceGetPowerUsage": "hlml_device_get_power_usage",
    "hlmlDeviceGetPowerManagementLimit": "hlml_device_get_power_management_limit",
    "hlmlDeviceGetPowerManagementDefaultLimit": "hlml_device_get_power_management_default_limit",
    "hlmlDeviceGetPowerManagementLimitConstraints": "hlml_device_get_power_management_limit_constraints",
    "hlmlDeviceGetTotalEnergyConsumption": "hlml_device_get_total_energy_consumption",
    "hlmlDeviceGetTemperature": "hlml_device_get_temperature",
    "hlmlDeviceGetTemperatureThreshold": "hlml_device_get_temperature_threshold",
    "hlmlDeviceGetClockInfo": "hlml_device_get_clock_info",
    "hlmlDeviceGetMaxClockInfo": "hlml_device_get_max_clock_info",
    "hlmlDeviceGetCurrentClocksThrottleReasons": "hlml_device_get_current_clocks_throttle_reasons",
    "hlmlDeviceGetViolationStatus": "hlml_device_get_violation_status",
    "hlmlDeviceGetTotalECCErrors": "hlml_device_get_total_ecc_errors",
    "hlmlDeviceGetECCMode": "hlml_device_get_ecc_mode",
    "hlmlDeviceGetReplacedRowsCount": "hlml_device_get_replaced_rows",
    "hlmlDeviceGetReplacedRowsPendingStatus": "hlml_device_get_replaced_rows_pending_status",
    "hlmlDeviceGetPCIEReplayCounter": "hlml_device_get_pcie_replay_counter",
    "hlmlDeviceGetPCIEThroughput": "hlml_device_get_pcie_throughput",
    "hlmlDeviceGetCurrPCIELinkGeneration": "hlml_device_get_curr_pcie_link_generation",
    "hlmlDeviceGetCurrPCIELinkWidth": "hlml_device_get_curr_pcie_link_width",
    "hlmlDeviceGetMacAddrInfo": "hlml_get_mac_addr_info",
    "hlmlDeviceNicGetLink": "hlml_nic_get_link",
}
# The calls that identify or count devices: only these may fail a device (or, for count, the backend).
REQUIRED = ("hlmlDeviceGetCount", "hlmlDeviceGetHandleByIndex", "hlmlDeviceGetUUID",
            "hlmlDeviceGetUtilizationRates")
# What each optional call feeds, for the one log line when the driver's libhlml lacks it.
FEEDS: dict[str, str] = {
    "hlmlGetDriverVersion": "gaudi_hpu_info driver_version (says unknown)",
    "hlmlDeviceGetName": "gaudi_hpu_info name and model",
    "hlmlDeviceGetSerial": "gaudi_hpu_info serial",
    "hlmlDeviceGetPCIInfo": "gaudi_hpu_info pci_bus_id and gaudi_hpu_pcie_link_max_*",
    "hlmlDeviceGetMinorNumber": "the device minor number",
    "hlmlDeviceGetFirmwareFITVersion": "gaudi_hpu_info firmware_version",
    "hlmlDeviceGetFWOSVersion": "gaudi_hpu_info firmware_version",
    "hlmlDeviceGetMemoryInfo": "gaudi_hpu_memory_used_bytes and gaudi_hpu_memory_total_bytes",
    "hlmlDeviceGetPowerUsage": "gaudi_hpu_power_watts",
    "hlmlDeviceGetPowerManagementLimit": "gaudi_hpu_power_limit_watts",
    "hlmlDeviceGetPowerManagementDefaultLimit": "gaudi_hpu_power_default_limit_watts",
    "hlmlDeviceGetPowerManagementLimitConstraints": "gaudi_hpu_power_min_limit_watts and "
                                                    "gaudi_hpu_power_max_limit_watts",
    "hlmlDeviceGetTotalEnergyConsumption": "the driver's energy counter (energy is integrated from power)",
    "hlmlDeviceGetTemperature": "gaudi_hpu_temperature_celsius",
    "hlmlDeviceGetTemperatureThreshold": "gaudi_hpu_temperature_threshold_celsius",
    "hlmlDeviceGetClockInfo": "gaudi_hpu_clock_hertz",
    "hlmlDeviceGetMaxClockInfo": "gaudi_hpu_clock_max_hertz",
    "hlmlDeviceGetCurrentClocksThrottleReasons": "gaudi_hpu_throttled",
    "hlmlDeviceGetViolationStatus": "gaudi_hpu_throttle_seconds_total",
    "hlmlDeviceGetTotalECCErrors": "gaudi_hpu_ecc_errors_total and gaudi_hpu_ecc_volatile_errors_total",
    "hlmlDeviceGetECCMode": "gaudi_hpu_ecc_enabled",
    "hlmlDeviceGetReplacedRowsCount": "gaudi_hpu_hbm_replaced_rows",
    "hlmlDeviceGetReplacedRowsPendingStatus": "gaudi_hpu_hbm_row_replacement_pending",
    "hlmlDeviceGetPCIEReplayCounter": "gaudi_hpu_pcie_replays_total",
    "hlmlDeviceGetPCIEThroughput": "gaudi_hpu_pcie_throughput_bytes_per_second",
    "hlmlDeviceGetCurrPCIELinkGeneration": "gaudi_hpu_pcie_link_generation",
    "hlmlDeviceGetCurrPCIELinkWidth": "gaudi_hpu_pcie_link_width",
    "hlmlDeviceGetMacAddrInfo": "gaudi_hpu_nic_ports and gaudi_hpu_nic_port_up",
    "hlmlDeviceNicGetLink": "gaudi_hpu_nic_ports and gaudi_hpu_nic_port_up",
}

# Product name -> generation. HL-325L/HL-335 Gaudi 3 OAM, HL-338 PCIe, HL-328/HL-388 the China OAM/PCIe parts.
GENERATIONS = {
    "HL-205": "Gaudi 1",
    "HL-225": "Gaudi 2",
    "HL-325": "Gaudi 3", "HL-325L": "Gaudi 3", "HL-335": "Gaudi 3", "HL-338": "Gaudi 3", "HL-328": "Gaudi 3",
    "HL-388": "Gaudi 3",
}
_NAME_CODE = re.compile(r"HL-\d{3}")


def generation(name: str) -> str:
    """Gaudi generation of a product name (``HL-325L`` -> ``Gaudi 3``); "" when unknown, never a guess."""
    name = name.strip().upper()
    if name in GENERATIONS:
        return GENERATIONS[name]
    m = _NAME_CODE.match(name)  # variants with a suffix, e.g. HL-225B
    return GENERATIONS.get(m.group(0), "") if m else ""


def text(value: object) -> str:
    """HLML returns C strings as bytes (NUL-padded in structs)."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).split(b"\x00", 1)[0].decode("utf-8", "replace")
    return str(value).strip()


def error_code(e: BaseException) -> int | None:
    return getattr(e, "value", None)


def describe(e: BaseException) -> str:
    code = error_code(e)
    if code is None:
        return repr(e)
    return f"HLML error {code} ({ERROR_NAMES.get(code, 'unrecognised code')})"


_PCIE_GENERATIONS = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}  # GT/s per lane -> PCIe generation
_GTS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(GT/s)?\s*$", re.IGNORECASE)
_LANES = re.compile(r"^\s*[xX]?(\d+)\s*$")


def pcie_generation(caps_text: object) -> int | None:
    """``"32.0 GT/s"`` -> 5; None for anything else (a pyhlml >= 1.19 reading an older driver's struct sees bytes
    shifted by 4 past bus_id: those must not become a metric)."""
    m = _GTS.match(text(caps_text))
    return _PCIE_GENERATIONS.get(float(m.group(1))) if m else None


def pcie_width(caps_text: object) -> int | None:
    """``"x16"`` or ``"16"`` -> 16; None unless a real lane count."""
    m = _LANES.match(text(caps_text))
    n = int(m.group(1)) if m else 0
    return n if n in (1, 2, 4, 8, 12, 16, 32) else None


@dataclass(frozen=True)
class DeviceModel:
    """The node's device product, as ``backend.model`` (the daemon picks a built-in price by ``model.name``)."""

    name: str  # e.g. HL-325L
    generation: str  # e.g. Gaudi 3


class _DeviceFailed(Exception):
    """One device could not be read; carries what the DeviceError says."""


@dataclass
class _Device:
    """What the backend remembers about one device index between ticks."""

    handle: Any = None
    identity: DeviceIdentity | None = None  # last known: kept while the device fails, for errors and logs
    unsupported: set[tuple] = field(default_factory=set)  # calls that answered NOT_SUPPORTED since the last slow tick
    told_unsupported: set[tuple] = field(default_factory=set)  # logged once
    failing: dict[tuple, str] = field(default_factory=dict)  # optional calls failing now -> message (logged once)


class HlmlBackend:
    """Reads every device through pyhlml; one failing call costs one metric, never the device's other readings.

    Only the calls that count or identify devices (``REQUIRED``) fail a device. A C symbol the driver's libhlml
    lacks is found once at open() (pyhlml would raise INVALID_ARGUMENT for it on every call) and never called.
    NOT_SUPPORTED is asked again on every slow tick, so a transient answer does not lose a metric until restart.
    """

    name = "hlml"

    def __init__(self, module: Any | None = None, *, library_path: str = LIBHLML_PATH) -> None:
        self._module = module
        self._library_path = library_path  # only for messages: pyhlml always loads its fixed path
        self._hlml: Any = None
        self._driver_version = ""
        self._devices: dict[int, _Device] = {}
        self._missing: set[str] = set()  # pyhlml functions whose C symbol (or Python wrapper) is absent
        self.model: DeviceModel | None = None  # set by open() from the first device

    # lifecycle

    def open(self) -> None:
        mod = self._module
        if mod is None:
            try:
                import pyhlml as mod
            except ImportError as e:
                raise BackendUnavailable(
                    f"the pyhlml package is not installed ({e}); "
                    "install it with `pip install '.[hlml]'` in a clone of gaudi-exporter"
                ) from e
        errors = self._error_types(mod)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # pyhlml prints "Failed to load libhlml" on stdout
                mod.hlmlInit()
        except errors as e:
            if error_code(e) != ERR_ALREADY_INITIALIZED:
                raise BackendUnavailable(self._init_failure(e, printed.getvalue())) from e
        finally:
            if printed.getvalue().strip():
                log.debug("pyhlml printed during hlmlInit: %s", printed.getvalue().strip())
        self._hlml = mod
        self._find_missing(mod)
        try:
            count = mod.hlmlDeviceGetCount()
        except errors as e:
            self.close()
            raise BackendUnavailable(f"HLML initialised but cannot count devices: {describe(e)}") from e
        self._driver_version = UNKNOWN
        if "hlmlGetDriverVersion" not in self._missing:
            try:
                self._driver_version = text(mod.hlmlGetDriverVersion()) or UNKNOWN
            except errors as e:
                log.warning("hlmlGetDriverVersion failed (%s): gaudi_hpu_info says driver_version=\"unknown\"",
                            describe(e))
        if count:
            first = self.read(slow=False).devices
            if first and first[0].identity.name:
                self.model = DeviceModel(first[0].identity.name, first[0].identity.model)
        log.info("hlml backend: %d device(s) %s, driver %s", count, self.model.name if self.model else "",
                 self._driver_version)

    def _find_missing(self, mod: Any) -> None:
        """Which calls this driver cannot answer: absent C symbols (hasattr on the loaded CDLL) or pyhlml wrappers."""
        self._missing = set()
        lib = _loaded_library(mod)
        if lib is None:
            log.debug("cannot see pyhlml's loaded library: a missing C symbol will show as invalid argument")
        for fn_name, symbol in SYMBOLS.items():
            if getattr(mod, fn_name, None) is None:
                why = f"this pyhlml has no {fn_name}"
            elif lib is not None and not hasattr(lib, symbol):
                why = f"this driver's libhlml has no {symbol}"
            else:
                continue
            if fn_name in REQUIRED:
                self.close()
                raise BackendUnavailable(f"{why}; the exporter cannot list devices without it (library "
                                         f"{self._library_path}); use --backend hlsmi")
            self._missing.add(fn_name)
            log.warning("%s: metric %s not exported", why, FEEDS.get(fn_name, fn_name))

    def _init_failure(self, e: BaseException, printed: str) -> str:
        code = error_code(e)
        lib = self._library_path
        load_failed = "Failed to load" in printed or isinstance(e, OSError | AttributeError)
        if load_failed or code == ERR_UNINITIALIZED:
            return (f"the driver library {lib} could not be loaded ({describe(e)}); install the Intel Gaudi "
                    "(habanalabs) driver, or use --backend hlsmi")
        if code == ERR_DRIVER_NOT_LOADED:
            return (f"{lib} loaded but the habanalabs kernel driver is not loaded ({describe(e)}); "
                    "load the driver (modprobe habanalabs)")
        return f"hlmlInit failed: {describe(e)} (library {self._library_path})"

    def close(self) -> None:
        mod, self._hlml = self._hlml, None
        self._devices.clear()
        if mod is not None:
            with contextlib.suppress(*self._error_types(mod)):
                mod.hlmlShutdown()

    @staticmethod
    def _error_types(mod: Any) -> tuple[type[BaseException], ...]:
        base = getattr(mod, "HLMLError", None)
        return (base, AttributeError, OSError) if isinstance(base, type) else (AttributeError, OSError)

    # reading

    def read(self, *, slow: bool) -> BackendResult:
        mod = self._hlml
        if mod is None:
            raise RuntimeError("hlml backend read before open() succeeded")
        try:
            count = mod.hlmlDeviceGetCount()
        except self._error_types(mod) as e:
            raise RuntimeError(f"hlmlDeviceGetCount failed: {describe(e)}") from e
        for gone in [i for i in self._devices if i >= count]:
            del self._devices[gone]

        devices: list[DeviceReading] = []
        errors: list[DeviceError] = []
        for i in range(count):
            dev = self._devices.setdefault(i, _Device())
            if slow:
                dev.unsupported.clear()  # NOT_SUPPORTED is asked again on the slow cadence
            try:
                devices.append(self._read_device(mod, i, dev, slow))
            except _DeviceFailed as e:
                dev.handle = None  # a fresh handle (and identity check) next tick; the identity is kept
                known = dev.identity
                errors.append(DeviceError(i, known.uuid if known else "", str(e),
                                          serial=known.serial if known else ""))
        return BackendResult(devices=tuple(devices), errors=tuple(errors))

    def _call(self, i: int, dev: _Device, fn_name: str, *args: Any, required: bool = False) -> Any:
        """``pyhlml.<fn_name>(handle, *args)``; None when this metric cannot be had this tick.

        AIP_IS_LOST, and any failure of a required call, fails the device (raises _DeviceFailed).
        """
        if fn_name in self._missing:
            return None
        key = (fn_name, *args)
        if key in dev.unsupported:
            return None
        mod = self._hlml
        fn = getattr(mod, fn_name)
        try:
            value = fn(dev.handle, *args)
        except (*self._error_types(mod), ctypes.ArgumentError, ValueError, TypeError) as e:
            code = error_code(e)
            what = f"{fn_name}{args if args else ''}"
            if code == ERR_AIP_IS_LOST:
                raise _DeviceFailed(f"device lost (HLML AIP is lost) during {what}") from e
            if required:
                raise _DeviceFailed(f"{what} failed: {describe(e)}") from e
            if code == ERR_NOT_SUPPORTED:
                dev.unsupported.add(key)
                if key not in dev.told_unsupported:
                    dev.told_unsupported.add(key)
                    log.info("HPU %s does not support %s (%s): asking again on the slow cadence", self._who(i, dev),
                             what, FEEDS.get(fn_name, fn_name))
                return None
            message = describe(e)
            if dev.failing.get(key) != message:
                log.warning("HPU %s: %s failed: %s; %s not exported while it fails", self._who(i, dev), what,
                            message, FEEDS.get(fn_name, fn_name))
                dev.failing[key] = message
            return None
        if key in dev.failing:
            del dev.failing[key]
            log.info("HPU %s: %s answers again", self._who(i, dev), f"{fn_name}{args if args else ''}")
        if key in dev.told_unsupported:
            dev.told_unsupported.discard(key)
            log.info("HPU %s now supports %s", self._who(i, dev), f"{fn_name}{args if args else ''}")
        return value

    @staticmethod
    def _who(i: int, dev: _Device) -> str:
        ident = dev.identity
        if ident is None:
            return str(i)
        return f"{i} (uuid {ident.uuid or 'unknown'}, serial {ident.serial or 'unknown'})"

    def _handle(self, mod: Any, i: int, dev: _Device) -> None:
        if dev.handle is not None:
            return
        try:
            dev.handle = mod.hlmlDeviceGetHandleByIndex(i)
        except self._error_types(mod) as e:
            what = "device lost (HLML AIP is lost)" if error_code(e) == ERR_AIP_IS_LOST else describe(e)
            raise _DeviceFailed(f"hlmlDeviceGetHandleByIndex({i}) failed: {what}") from e
        dev.identity = self._identity(i, dev)  # a new handle: read who it is (a replaced card has a new uuid)

    def _firmware(self, i: int, dev: _Device) -> str | None:
        for fn_name in ("hlmlDeviceGetFirmwareFITVersion", "hlmlDeviceGetFWOSVersion"):
            value = self._call(i, dev, fn_name)
            if value is not None and text(value):
                return text(value)
        return None

    def _identity(self, i: int, dev: _Device) -> DeviceIdentity:
        uuid = text(self._call(i, dev, "hlmlDeviceGetUUID", required=True) or b"")
        old = dev.identity
        if old is not None and old.uuid == uuid:
            return old
        name = text(self._call(i, dev, "hlmlDeviceGetName") or b"")
        pci = self._call(i, dev, "hlmlDeviceGetPCIInfo")
        return DeviceIdentity(
            index=i,
            uuid=uuid,
            serial=text(self._call(i, dev, "hlmlDeviceGetSerial") or b""),
            name=name,
            model=generation(name),
            pci_bus_id=text(pci.bus_id) if pci is not None else "",
            driver_version=self._driver_version or UNKNOWN,
            firmware_version=self._firmware(i, dev) or UNKNOWN,
            minor=self._call(i, dev, "hlmlDeviceGetMinorNumber"),
        )

    def _read_device(self, mod: Any, i: int, dev: _Device, slow: bool) -> DeviceReading:
        self._handle(mod, i, dev)
        ident = dev.identity
        assert ident is not None

        def call(fn_name: str, *args: Any) -> Any:
            return self._call(i, dev, fn_name, *args)

        util = self._call(i, dev, "hlmlDeviceGetUtilizationRates", required=True)
        mem = call("hlmlDeviceGetMemoryInfo")
        power_mw = call("hlmlDeviceGetPowerUsage")
        limit_mw = call("hlmlDeviceGetPowerManagementLimit")
        energy_mj = call("hlmlDeviceGetTotalEnergyConsumption")
        temps = tuple((sensor, float(c)) for sensor, code in TEMPERATURE_SENSORS
                      if (c := call("hlmlDeviceGetTemperature", code)) is not None)
        clocks = tuple((clock, float(mhz) * 1e6) for clock, code in CLOCKS
                       if (mhz := call("hlmlDeviceGetClockInfo", code)) is not None)
        reasons = call("hlmlDeviceGetCurrentClocksThrottleReasons")
        throttle_seconds = []
        for reason, policy in PERF_POLICIES:
            v = call("hlmlDeviceGetViolationStatus", policy)
            if v is not None:
                throttle_seconds.append((reason, int(v.violation_time) * VIOLATION_TIME_SECONDS))
        pcie = tuple((direction, float(kib) * PCIE_THROUGHPUT_BYTES) for direction, counter in PCIE_COUNTERS
                     if (kib := call("hlmlDeviceGetPCIEThroughput", counter)) is not None)
        memory_util = getattr(util, "memory", None)  # pyhlml >= 1.19's struct; 0 where the driver does not fill it

        return DeviceReading(
            identity=ident,
            utilization=min(1.0, max(0.0, util.aip / 100.0)),
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            power_watts=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_watts=limit_mw / 1000.0 if limit_mw is not None else None,
            energy_joules=energy_mj / 1000.0 if energy_mj is not None else None,
            temperatures=temps,
            clocks_hertz=clocks,
            throttled=(("power", bool(reasons & THROTTLE_POWER)),
                       ("thermal", bool(reasons & THROTTLE_THERMAL))) if reasons is not None else (),
            slow=self._read_slow(i, dev) if slow else None,
            memory_utilization=min(1.0, max(0.0, memory_util / 100.0)) if memory_util is not None else None,
            throttle_seconds=tuple(throttle_seconds),
            pcie_throughput_bytes=pcie,
        )

    def _read_slow(self, i: int, dev: _Device) -> SlowReading:
        def call(fn_name: str, *args: Any) -> Any:
            return self._call(i, dev, fn_name, *args)

        ecc = "hlmlDeviceGetTotalECCErrors"
        mode = call("hlmlDeviceGetECCMode")
        pci = call("hlmlDeviceGetPCIInfo")
        link: list[tuple[str, int]] = []
        for name, value in (("generation", call("hlmlDeviceGetCurrPCIELinkGeneration")),
                            ("width", call("hlmlDeviceGetCurrPCIELinkWidth")),
                            ("max_generation", pcie_generation(pci.caps.link_max_speed) if pci else None),
                            ("max_width", pcie_width(pci.caps.link_max_width) if pci else None)):
            if value is not None and (not isinstance(value, int) or 0 < value <= 64):  # sanity: no garbage
                link.append((name, int(value)))
        limits = []
        default_mw = call("hlmlDeviceGetPowerManagementDefaultLimit")
        if default_mw is not None:
            limits.append(("default", default_mw / 1000.0))
        constraints = call("hlmlDeviceGetPowerManagementLimitConstraints")
        if constraints is not None:
            lo, hi = constraints
            limits += [("min", lo / 1000.0), ("max", hi / 1000.0)]
        pending = call("hlmlDeviceGetReplacedRowsPendingStatus")
        return SlowReading(
            ecc_corrected=call(ecc, MEMORY_ERROR_CORRECTED, ECC_COUNTER_AGGREGATE),
            ecc_uncorrected=call(ecc, MEMORY_ERROR_UNCORRECTED, ECC_COUNTER_AGGREGATE),
            pcie_replays=call("hlmlDeviceGetPCIEReplayCounter"),
            nic_ports_up=self._nic_links(i, dev),
            firmware_version=self._firmware(i, dev),
            ecc_volatile_corrected=call(ecc, MEMORY_ERROR_CORRECTED, ECC_COUNTER_VOLATILE),
            ecc_volatile_uncorrected=call(ecc, MEMORY_ERROR_UNCORRECTED, ECC_COUNTER_VOLATILE),
            ecc_mode=(("current", int(mode.current) == 1), ("pending", int(mode.pending) == 1))
            if mode is not None else (),
            replaced_rows=tuple((cause, int(n)) for cause, code in ROW_REPLACEMENT_CAUSES
                                if (n := call("hlmlDeviceGetReplacedRowsCount", code)) is not None),
            row_replacement_pending=bool(pending) if pending is not None else None,
            pcie_link=tuple(link),
            temperature_thresholds=tuple((name, float(c)) for name, code in TEMPERATURE_THRESHOLDS
                                         if (c := call("hlmlDeviceGetTemperatureThreshold", code)) is not None),
            power_limits_watts=tuple(limits),
            clocks_max_hertz=tuple((clock, float(mhz) * 1e6) for clock, code in CLOCKS
                                   if (mhz := call("hlmlDeviceGetMaxClockInfo", code)) is not None),
        )

    def _nic_links(self, i: int, dev: _Device) -> tuple[tuple[int, bool], ...] | None:
        masks = self._call(i, dev, "hlmlDeviceGetMacAddrInfo")
        if masks is None:
            return None
        (lo, hi), (ext_lo, ext_hi) = masks
        bitmap = (int(lo) | int(hi) << 64) | (int(ext_lo) | int(ext_hi) << 64)
        links = []
        for port in (p for p in range(128) if bitmap >> p & 1):
            up = self._call(i, dev, "hlmlDeviceNicGetLink", port)
            if up is not None:  # a port that fails costs that port's series only
                links.append((port, bool(up)))
        return tuple(links)


def _loaded_library(mod: Any) -> Any:
    """The ctypes.CDLL pyhlml loaded (``pyhlml.main._hlmlOBJ.lib``), or None if this pyhlml hides it."""
    main = getattr(mod, "main", None)
    if main is None and isinstance(getattr(mod, "__name__", None), str):
        main = sys.modules.get(mod.__name__ + ".main")
    return getattr(getattr(main, "_hlmlOBJ", None), "lib", None)
