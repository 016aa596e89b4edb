"""HPU readings straight from the driver through HLML (the ``pyhlml`` bindings of libhlml).

pyhlml quirks this module absorbs (see the package source): the library is loaded in ``hlmlInit`` from a
hard-coded path, a failed load prints to stdout, the per-code error classes only exist after the first
``hlmlInit``, and calls after a failed init raise ``AttributeError``. Text results come back as ``bytes``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass
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

TEMPERATURE_SENSORS = (("aip", 0), ("board", 1), ("hbm", 3))  # HLML_TEMPERATURE_ON_AIP / ON_BOARD / HBM
CLOCK_SOC = 0
THROTTLE_POWER = 1 << 0
THROTTLE_THERMAL = 1 << 1
MEMORY_ERROR_CORRECTED, MEMORY_ERROR_UNCORRECTED = 0, 1
ECC_COUNTER_AGGREGATE = 1

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


@dataclass(frozen=True)
class DeviceModel:
    """The node's device product, as ``backend.model`` (the daemon picks a built-in price by ``model.name``)."""

    name: str  # e.g. HL-325L
    generation: str  # e.g. Gaudi 3


class _DeviceFailed(Exception):
    """One device could not be read; carries what the DeviceError says."""


class HlmlBackend:
    name = "hlml"

    def __init__(self, module: Any | None = None, *, library_path: str = LIBHLML_PATH) -> None:
        self._module = module
        self._library_path = library_path  # only for messages: pyhlml always loads its fixed path
        self._hlml: Any = None
        self._driver_version = ""
        self._handles: dict[int, Any] = {}
        self._identities: dict[int, DeviceIdentity] = {}
        self._unsupported: dict[int, set[tuple]] = {}  # per device index: (function name, args) NotSupported
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
                    "install it with `pip install gaudi-exporter[hlml]`"
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
        try:
            count = mod.hlmlDeviceGetCount()
            self._driver_version = text(mod.hlmlGetDriverVersion())
        except errors as e:
            self.close()
            raise BackendUnavailable(f"HLML initialised but cannot list devices: {describe(e)}") from e
        if count:
            first = self.read(slow=False).devices
            if first and first[0].identity.name:
                self.model = DeviceModel(first[0].identity.name, first[0].identity.model)
        log.info("hlml backend: %d device(s) %s, driver %s", count, self.model.name if self.model else "",
                 self._driver_version or "unknown")

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
        self._handles.clear()
        self._identities.clear()
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
        errors_t = self._error_types(mod)
        try:
            count = mod.hlmlDeviceGetCount()
        except errors_t as e:
            raise RuntimeError(f"hlmlDeviceGetCount failed: {describe(e)}") from e
        known = set(self._handles) | set(self._identities) | set(self._unsupported)
        for gone in [i for i in known if i >= count]:
            self._forget(gone, unsupported=True)

        devices: list[DeviceReading] = []
        errors: list[DeviceError] = []
        for i in range(count):
            try:
                devices.append(self._read_device(mod, i, slow))
            except _DeviceFailed as e:
                known = self._identities.get(i)
                self._forget(i)  # a fresh handle next tick
                errors.append(DeviceError(i, known.uuid if known else "", str(e)))
        return BackendResult(devices=tuple(devices), errors=tuple(errors))

    def _forget(self, index: int, *, unsupported: bool = False) -> None:
        self._handles.pop(index, None)
        self._identities.pop(index, None)
        if unsupported:
            self._unsupported.pop(index, None)

    def _call(self, index: int, fn_name: str, *args: Any) -> Any:
        """Call ``pyhlml.<fn_name>``; None if the device does not support it (remembered, not asked again)."""
        key = (fn_name, *(a for a in args if isinstance(a, int)))
        unsupported = self._unsupported.setdefault(index, set())
        if key in unsupported:
            return None
        mod = self._hlml
        fn = getattr(mod, fn_name, None)
        if fn is None:  # an older pyhlml without this call: same as the device not supporting it
            unsupported.add(key)
            log.info("pyhlml has no %s; HPU %d skips that reading", fn_name, index)
            return None
        try:
            return fn(*args)
        except self._error_types(mod) as e:
            code = error_code(e)
            if code == ERR_NOT_SUPPORTED:
                unsupported.add(key)
                log.info("HPU %d does not support %s%s; not asking again", index, fn_name, key[1:] or "")
                return None
            if code == ERR_AIP_IS_LOST:
                raise _DeviceFailed(f"device lost (HLML AIP is lost) during {fn_name}") from e
            raise _DeviceFailed(f"{fn_name} failed: {describe(e)}") from e

    def _handle(self, mod: Any, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            try:
                handle = mod.hlmlDeviceGetHandleByIndex(index)
            except self._error_types(mod) as e:
                what = "device lost (HLML AIP is lost)" if error_code(e) == ERR_AIP_IS_LOST else describe(e)
                raise _DeviceFailed(f"hlmlDeviceGetHandleByIndex({index}) failed: {what}") from e
            self._handles[index] = handle
        return handle

    def _firmware(self, index: int, h: Any) -> str | None:
        for fn_name in ("hlmlDeviceGetFirmwareFITVersion", "hlmlDeviceGetFWOSVersion"):
            value = self._call(index, fn_name, h)
            if value is not None and text(value):
                return text(value)
        return None

    def _identity(self, index: int, h: Any) -> DeviceIdentity:
        cached = self._identities.get(index)
        if cached is not None:
            return cached
        name = text(self._call(index, "hlmlDeviceGetName", h) or b"")
        pci = self._call(index, "hlmlDeviceGetPCIInfo", h)
        ident = DeviceIdentity(
            index=index,
            uuid=text(self._call(index, "hlmlDeviceGetUUID", h) or b""),
            serial=text(self._call(index, "hlmlDeviceGetSerial", h) or b""),
            name=name,
            model=generation(name),
            pci_bus_id=text(pci.bus_id) if pci is not None else "",
            driver_version=self._driver_version,
            firmware_version=self._firmware(index, h) or "",
            minor=self._call(index, "hlmlDeviceGetMinorNumber", h),
        )
        self._identities[index] = ident
        return ident

    def _read_device(self, mod: Any, i: int, slow: bool) -> DeviceReading:
        h = self._handle(mod, i)
        ident = self._identity(i, h)

        def call(fn_name: str, *args: Any) -> Any:
            return self._call(i, fn_name, h, *args)

        util = call("hlmlDeviceGetUtilizationRates")
        mem = call("hlmlDeviceGetMemoryInfo")
        power_mw = call("hlmlDeviceGetPowerUsage")
        limit_mw = call("hlmlDeviceGetPowerManagementLimit")
        energy_mj = call("hlmlDeviceGetTotalEnergyConsumption")
        temps = []
        for sensor, code in TEMPERATURE_SENSORS:
            celsius = call("hlmlDeviceGetTemperature", code)
            if celsius is not None:
                temps.append((sensor, float(celsius)))
        soc_mhz = call("hlmlDeviceGetClockInfo", CLOCK_SOC)
        reasons = call("hlmlDeviceGetCurrentClocksThrottleReasons")

        return DeviceReading(
            identity=ident,
            utilization=min(1.0, max(0.0, util.aip / 100.0)) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            power_watts=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_watts=limit_mw / 1000.0 if limit_mw is not None else None,
            energy_joules=energy_mj / 1000.0 if energy_mj is not None else None,
            temperatures=tuple(temps),
            clocks_hertz=(("soc", float(soc_mhz) * 1e6),) if soc_mhz is not None else (),
            throttled=(("power", bool(reasons & THROTTLE_POWER)),
                       ("thermal", bool(reasons & THROTTLE_THERMAL))) if reasons is not None else (),
            slow=self._read_slow(i, h) if slow else None,
        )

    def _read_slow(self, i: int, h: Any) -> SlowReading:
        ecc = "hlmlDeviceGetTotalECCErrors"
        corrected = self._call(i, ecc, h, MEMORY_ERROR_CORRECTED, ECC_COUNTER_AGGREGATE)
        uncorrected = self._call(i, ecc, h, MEMORY_ERROR_UNCORRECTED, ECC_COUNTER_AGGREGATE)
        return SlowReading(
            ecc_corrected=corrected,
            ecc_uncorrected=uncorrected,
            pcie_replays=self._call(i, "hlmlDeviceGetPCIEReplayCounter", h),
            nic_ports_up=self._nic_links(i, h),
            firmware_version=self._firmware(i, h),
        )

    def _nic_links(self, i: int, h: Any) -> tuple[tuple[int, bool], ...] | None:
        masks = self._call(i, "hlmlDeviceGetMacAddrInfo", h)
        if masks is None:
            return None
        (lo, hi), (ext_lo, ext_hi) = masks
        bitmap = (int(lo) | int(hi) << 64) | (int(ext_lo) | int(ext_hi) << 64)
        links = []
        for port in (p for p in range(128) if bitmap >> p & 1):
            up = self._call(i, "hlmlDeviceNicGetLink", h, port)
            if up is not None:
                links.append((port, bool(up)))
        return tuple(links)
