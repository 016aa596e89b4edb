"""A stand-in for the ``pyhlml`` module that behaves like it does against a real libhlml.

Protocol points copied from habana-pyhlml (test_backend_hlml.py checks them against the installed package):
function names and signatures; ``HLMLError(value)`` with ``.value``, whose per-code subclasses
(``HLMLError_NotSupported`` ...) appear in ``hlml_error`` only after the first ``hlmlInit``; a failed library
load that prints "Failed to load libhlml" to stdout; ``AttributeError`` from calls after a failed init; ctypes
result structures with the same field names; handles as ``ctypes.c_void_p``; text results as ``bytes``.

Each ``FakePyhlml`` instance is one independent "module" with its own devices, so tests do not share state.
"""

from __future__ import annotations

import ctypes
import types
from collections import Counter
from dataclasses import dataclass, field
from string import capwords

from exporter.backends.hlml import SYMBOLS

# hlml_return_t (pyhlml_types_generated.HLML_RETURN)
RETURN_CODES = {
    "HLML_ERROR_UNINITIALIZED": 1, "HLML_ERROR_INVALID_ARGUMENT": 2, "HLML_ERROR_NOT_SUPPORTED": 3,
    "HLML_ERROR_ALREADY_INITIALIZED": 5, "HLML_ERROR_NOT_FOUND": 6, "HLML_ERROR_INSUFFICIENT_SIZE": 7,
    "HLML_ERROR_DRIVER_NOT_LOADED": 9, "HLML_ERROR_TIMEOUT": 10, "HLML_ERROR_AIP_IS_LOST": 15,
    "HLML_ERROR_MEMORY": 20, "HLML_ERROR_NO_DATA": 21, "HLML_ERROR_UNKNOWN": 49,
}
NOT_SUPPORTED, AIP_IS_LOST, UNKNOWN, UNINITIALIZED = 3, 15, 49, 1


# Result structures: same names and _fields_ as pyhlml_types_generated.
class c_hlml_pci_cap(ctypes.Structure):
    _fields_ = [("link_speed", ctypes.c_char * 10), ("link_width", ctypes.c_char * 10),
                ("link_max_speed", ctypes.c_char * 10), ("link_max_width", ctypes.c_char * 10)]


class c_hlml_pci_info(ctypes.Structure):
    _fields_ = [("bus", ctypes.c_uint), ("bus_id", ctypes.c_char * 19), ("device", ctypes.c_uint),
                ("domain", ctypes.c_uint), ("pci_device_id", ctypes.c_uint), ("caps", c_hlml_pci_cap),
                ("pci_rev", ctypes.c_uint), ("pci_subsys_id", ctypes.c_uint)]


class c_hlml_utilization(ctypes.Structure):
    _fields_ = [("aip", ctypes.c_uint), ("memory", ctypes.c_uint)]


class c_hlml_memory(ctypes.Structure):
    _fields_ = [("free", ctypes.c_ulonglong), ("total", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class c_hlml_violation_time(ctypes.Structure):
    _fields_ = [("reference_time", ctypes.c_ulonglong), ("violation_time", ctypes.c_ulonglong)]


class hlml_ecc_mode(ctypes.Structure):
    _fields_ = [("current", ctypes.c_uint), ("pending", ctypes.c_uint)]


def _make_error_base() -> type[Exception]:
    """A fresh class shaped like pyhlml.hlml_error.HLMLError (one per fake, so tests stay independent)."""

    class HLMLError(Exception):
        _cMap: dict[int, type] = {}

        def __new__(typ, value):
            if typ == HLMLError:
                typ = HLMLError._cMap.get(value, typ)
            obj = Exception.__new__(typ)
            obj.value = value
            return obj

        def __str__(self) -> str:
            return f"HLML Error with code {self.value}"

        def __eq__(self, other) -> bool:  # like pyhlml (which also leaves the class unhashable)
            return self.value == other.value

    HLMLError._cMap = {}
    return HLMLError


MIB = 1024**2


@dataclass
class FakeDevice:
    """One HPU's raw driver values, in the units HLML returns (mW, mJ, MHz, percent, bytes)."""

    name: bytes = b"HL-325L"
    uuid: bytes = b"01P4-HL3090A0-18-U4V193-22-07-00"
    serial: bytes = b"N16B3D0400"
    bus_id: bytes = b"0000:19:00.0"
    minor: int = 0
    util_aip: int = 87
    memory_total: int = 131072 * MIB
    memory_used: int = 98304 * MIB
    power_mw: int = 612_345
    power_limit_mw: int = 850_000
    energy_mj: int = 123_456_789
    temperatures: dict[int, int] = field(default_factory=lambda: {0: 61, 1: 44, 3: 52, 2: 40, 4: 50})
    clocks_mhz: dict[int, int] = field(default_factory=lambda: {0: 1600})
    throttle_reasons: int = 0
    # (error type corrected=0/uncorrected=1, counter volatile=0/aggregate=1) -> count
    ecc: dict[tuple[int, int], int] = field(
        default_factory=lambda: {(0, 1): 2, (1, 1): 0, (0, 0): 1, (1, 0): 0})
    pcie_replays: int = 3
    # ((mask_lo, mask_hi), (ext_mask_lo, ext_mask_hi)): 24 ports, the last 3 external (scale-out)
    mac_masks: tuple[tuple[int, int], tuple[int, int]] = ((0x00FFFFFF, 0), (0x00E00000, 0))
    links: dict[int, bool] = field(default_factory=lambda: {p: True for p in range(24)})
    fit_version: bytes = b"1.22.1-fw-57.2.1-sec-9"
    fw_os_version: bytes = b"1.22.1-fw-57.2.1"
    unsupported: set[str] = field(default_factory=set)  # function names that answer NOT_SUPPORTED
    failing: dict[str, int] = field(default_factory=dict)  # function name -> error code it answers with
    lost: bool = False  # every call on this device answers AIP_IS_LOST
    util_memory: int = 40
    thresholds: dict[int, int] = field(default_factory=lambda: {0: 105, 1: 95})
    max_clocks_mhz: dict[int, int] = field(default_factory=lambda: {0: 1800})
    violation_ns: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})  # perf policy -> ns throttled
    ecc_mode: tuple[int, int] = (1, 1)
    replaced_rows: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    rows_pending: int = 0
    pcie_kib: dict[int, int] = field(default_factory=lambda: {0: 1000, 1: 2000})
    pcie_gen: int = 5
    pcie_width: int = 16
    power_default_limit_mw: int = 850_000
    power_constraints_mw: tuple[int, int] = (450_000, 850_000)


class FakePyhlml:
    """Module-like object: ``backend = HlmlBackend(module=FakePyhlml([...]))``."""

    def __init__(self, devices: list[FakeDevice] | None = None, *, library_present: bool = True,
                 driver_version: bytes = b"1.22.1-97ec1a4", init_error: int | None = None,
                 missing_symbols: frozenset[str] = frozenset()) -> None:
        self.devices: list[FakeDevice] = list(devices) if devices is not None else [FakeDevice()]
        self.library_present = library_present
        self.driver_version = driver_version
        self.init_error = init_error  # hlml_init itself returns this code
        self.calls: Counter[str] = Counter()
        self.HLMLError = _make_error_base()
        self.hlml_error = types.SimpleNamespace(HLMLError=self.HLMLError)  # lazy classes land here
        self._lib_loaded = False  # pyhlml's _hlmlOBJ is not None
        self._initialised = False
        self._handles: dict[int, FakeDevice] = {}
        self._next_handle = 0x1000
        # pyhlml.main._hlmlOBJ.lib: the loaded CDLL, where hasattr tells an absent C symbol (like ctypes.CDLL)
        self.missing_symbols = set(missing_symbols)
        lib = types.SimpleNamespace(**{sym: object() for sym in SYMBOLS.values() if sym not in missing_symbols})
        self.main = types.SimpleNamespace(_hlmlOBJ=types.SimpleNamespace(lib=lib))

    # pyhlml internals

    def ErrorsAsClass(self) -> None:
        for err, code in RETURN_CODES.items():
            class_name = "HLMLError_" + capwords(err.replace("HLML_ERROR_", ""), "_").replace("_", "")
            base = self.HLMLError

            def new(typ, _v=code, _base=base):
                return _base.__new__(typ, _v)

            cls = type(class_name, (base,), {"__new__": new})
            setattr(self.hlml_error, class_name, cls)
            base._cMap[code] = cls

    def _enter(self, c_name: str) -> None:
        """What _hlmlOBJ.get_func_ptr does: AttributeError before a load, UNINITIALIZED after shutdown."""
        self.calls[c_name] += 1
        if not self._lib_loaded:
            raise AttributeError("'NoneType' object has no attribute 'get_func_ptr'")
        if not self._initialised:
            raise self.HLMLError(UNINITIALIZED)

    def _device(self, fn: str, handle: ctypes.c_void_p) -> FakeDevice:
        self._enter(fn)
        if SYMBOLS.get(fn) in self.missing_symbols:  # pyhlml's get_func_ptr on an absent symbol
            raise self.HLMLError(2)
        dev = self._handles.get(handle.value)
        if dev is None or dev not in self.devices or dev.lost:
            raise self.HLMLError(AIP_IS_LOST)
        if fn in dev.unsupported:
            raise self.HLMLError(NOT_SUPPORTED)
        if fn in dev.failing:
            raise self.HLMLError(dev.failing[fn])
        return dev

    # lifecycle

    def hlmlInit(self) -> None:
        self.ErrorsAsClass()
        self.calls["hlmlInit"] += 1
        if not self.library_present:
            print("Failed to load libhlml")
            raise self.HLMLError(UNINITIALIZED)
        self._lib_loaded = True
        if self.init_error is not None:
            raise self.HLMLError(self.init_error)
        self._initialised = True

    def hlmlInitWithFlags(self, flags=0) -> None:
        self.hlmlInit()

    def hlmlShutdown(self) -> None:
        self._enter("hlmlShutdown")
        self._initialised = False

    def hlmlGetDriverVersion(self) -> bytes:
        self._enter("hlmlGetDriverVersion")
        if "hlml_get_driver_version" in self.missing_symbols:
            raise self.HLMLError(2)
        return self.driver_version

    def hlmlGetHLMLVersion(self) -> bytes:
        self._enter("hlmlGetHLMLVersion")
        return b"1.22.1"

    # enumeration / identity

    def hlmlDeviceGetCount(self) -> int:
        self._enter("hlmlDeviceGetCount")
        return len(self.devices)

    def hlmlDeviceGetHandleByIndex(self, index: int) -> ctypes.c_void_p:
        self._enter("hlmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.devices):
            raise self.HLMLError(2)  # INVALID_ARGUMENT
        dev = self.devices[index]
        if dev.lost:
            raise self.HLMLError(AIP_IS_LOST)
        self._next_handle += 8
        self._handles[self._next_handle] = dev
        return ctypes.c_void_p(self._next_handle)

    def hlmlDeviceGetName(self, device) -> bytes:
        return self._device("hlmlDeviceGetName", device).name

    def hlmlDeviceGetUUID(self, device) -> bytes:
        return self._device("hlmlDeviceGetUUID", device).uuid

    def hlmlDeviceGetSerial(self, device) -> bytes:
        return self._device("hlmlDeviceGetSerial", device).serial

    def hlmlDeviceGetMinorNumber(self, device) -> int:
        return self._device("hlmlDeviceGetMinorNumber", device).minor

    def hlmlDeviceGetPCIInfo(self, device) -> c_hlml_pci_info:
        dev = self._device("hlmlDeviceGetPCIInfo", device)
        info = c_hlml_pci_info()
        info.bus_id = dev.bus_id
        info.bus = int(dev.bus_id.split(b":")[1], 16)
        info.caps.link_max_speed = b"32.0 GT/s"
        info.caps.link_max_width = b"x16"
        return info

    def hlmlDeviceGetFirmwareFITVersion(self, device) -> bytes:
        return self._device("hlmlDeviceGetFirmwareFITVersion", device).fit_version

    def hlmlDeviceGetFWOSVersion(self, device) -> bytes:
        return self._device("hlmlDeviceGetFWOSVersion", device).fw_os_version

    # utilisation, memory, power, thermal, clocks

    def hlmlDeviceGetUtilizationRates(self, device) -> c_hlml_utilization:
        dev = self._device("hlmlDeviceGetUtilizationRates", device)
        return c_hlml_utilization(aip=dev.util_aip, memory=dev.util_memory)

    def hlmlDeviceGetMemoryInfo(self, device) -> c_hlml_memory:
        dev = self._device("hlmlDeviceGetMemoryInfo", device)
        free = dev.memory_total - dev.memory_used
        return c_hlml_memory(free=free, total=dev.memory_total, used=dev.memory_used)

    def hlmlDeviceGetPowerUsage(self, device) -> int:
        return self._device("hlmlDeviceGetPowerUsage", device).power_mw

    def hlmlDeviceGetPowerManagementLimit(self, device) -> int:
        return self._device("hlmlDeviceGetPowerManagementLimit", device).power_limit_mw

    def hlmlDeviceGetTotalEnergyConsumption(self, device) -> int:
        return self._device("hlmlDeviceGetTotalEnergyConsumption", device).energy_mj

    def hlmlDeviceGetTemperature(self, device, sensor_type) -> int:
        dev = self._device("hlmlDeviceGetTemperature", device)
        if sensor_type not in dev.temperatures:
            raise self.HLMLError(NOT_SUPPORTED)
        return dev.temperatures[sensor_type]

    def hlmlDeviceGetClockInfo(self, device, clock_type=0) -> int:
        dev = self._device("hlmlDeviceGetClockInfo", device)
        if clock_type not in dev.clocks_mhz:
            raise self.HLMLError(NOT_SUPPORTED)
        return dev.clocks_mhz[clock_type]

    def hlmlDeviceGetCurrentClocksThrottleReasons(self, device) -> int:
        return self._device("hlmlDeviceGetCurrentClocksThrottleReasons", device).throttle_reasons

    # ECC, PCIe, NIC

    def hlmlDeviceGetTotalECCErrors(self, device, error_type, counter_type) -> int:
        dev = self._device("hlmlDeviceGetTotalECCErrors", device)
        return dev.ecc[(error_type, counter_type)]

    def hlmlDeviceGetPCIEReplayCounter(self, device) -> int:
        return self._device("hlmlDeviceGetPCIEReplayCounter", device).pcie_replays

    def hlmlDeviceGetMacAddrInfo(self, device):
        return self._device("hlmlDeviceGetMacAddrInfo", device).mac_masks

    def hlmlDeviceNicGetLink(self, device, port: int) -> bool:
        dev = self._device("hlmlDeviceNicGetLink", device)
        if port not in dev.links:
            raise self.HLMLError(2)  # INVALID_ARGUMENT: no such port
        return dev.links[port]


    # health and parity signals

    def _indexed(self, fn: str, device, table_name: str, key: int) -> int:
        table = getattr(self._device(fn, device), table_name)
        if key not in table:
            raise self.HLMLError(NOT_SUPPORTED)
        return table[key]

    def hlmlDeviceGetTemperatureThreshold(self, device, threshold_type) -> int:
        return self._indexed("hlmlDeviceGetTemperatureThreshold", device, "thresholds", threshold_type)

    def hlmlDeviceGetMaxClockInfo(self, device, clock_type=0) -> int:
        return self._indexed("hlmlDeviceGetMaxClockInfo", device, "max_clocks_mhz", clock_type)

    def hlmlDeviceGetViolationStatus(self, device, perf_policy) -> c_hlml_violation_time:
        ns = self._indexed("hlmlDeviceGetViolationStatus", device, "violation_ns", perf_policy)
        return c_hlml_violation_time(reference_time=1_700_000_000_000_000, violation_time=ns)

    def hlmlDeviceGetECCMode(self, device) -> hlml_ecc_mode:
        current, pending = self._device("hlmlDeviceGetECCMode", device).ecc_mode
        return hlml_ecc_mode(current=current, pending=pending)

    def hlmlDeviceGetReplacedRowsCount(self, device, cause) -> int:
        return self._indexed("hlmlDeviceGetReplacedRowsCount", device, "replaced_rows", cause)

    def hlmlDeviceGetReplacedRowsPendingStatus(self, device) -> int:
        return self._device("hlmlDeviceGetReplacedRowsPendingStatus", device).rows_pending

    def hlmlDeviceGetPCIEThroughput(self, device, counter_type) -> int:
        return self._indexed("hlmlDeviceGetPCIEThroughput", device, "pcie_kib", counter_type)

    def hlmlDeviceGetCurrPCIELinkGeneration(self, device) -> int:
        return self._device("hlmlDeviceGetCurrPCIELinkGeneration", device).pcie_gen

    def hlmlDeviceGetCurrPCIELinkWidth(self, device) -> int:
        return self._device("hlmlDeviceGetCurrPCIELinkWidth", device).pcie_width

    def hlmlDeviceGetPowerManagementDefaultLimit(self, device) -> int:
        return self._device("hlmlDeviceGetPowerManagementDefaultLimit", device).power_default_limit_mw

    def hlmlDeviceGetPowerManagementLimitConstraints(self, device) -> tuple[int, int]:
        return self._device("hlmlDeviceGetPowerManagementLimitConstraints", device).power_constraints_mw


# The functions above, checked against the real package's signatures by the tests.
FUNCTIONS = tuple(n for n in vars(FakePyhlml) if n.startswith("hlml") or n == "ErrorsAsClass")
