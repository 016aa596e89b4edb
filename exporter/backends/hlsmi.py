"""HPU readings from the ``hl-smi`` CSV query mode, for nodes where libhlml cannot be loaded in-process.

hl-smi prints one line per device, values separated by ", ", with units ("131072 MiB", "226 W", "36 C",
"0 %", "1600 MHz") unless ``nounits`` was asked for; we accept both. A line we cannot parse is that device's
error, never the whole backend's; a failed or hung hl-smi is the whole backend's. hl-smi runs in its own process
group, so a timeout kills whatever it started too (a wrapper script's hung child included).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from exporter.backends.base import BackendUnavailable
from exporter.backends.hlml import DeviceModel, generation
from exporter.readings import BackendResult, DeviceError, DeviceIdentity, DeviceReading, SlowReading

log = logging.getLogger(__name__)

FIELDS = (
    "index", "uuid", "serial", "name", "bus_id", "driver_version", "utilization.aip", "memory.used",
    "memory.total", "power.draw", "power.max", "temperature.aip", "clocks.current.soc",
)
ECC_FIELDS = ("ecc.errors.corrected.aggregate.total", "ecc.errors.uncorrected.aggregate.total")
SLOW_FIELDS = FIELDS + ECC_FIELDS
# Fields that older hl-smi releases do not know (their docs list neither); without them the rest still works.
OPTIONAL_FIELDS = ("power.max", "clocks.current.soc")
# Health and parity fields (issue 11), read on slow ticks. Each is probed at open(): one a release rejects is
# left out alone, and an N/A answer costs that value only. Not mapped: stats.violation.* (hl-smi does not say
# in which unit) and row replacement (a separate --query-row-replacement command).
HEALTH_FIELDS = (
    "ecc.errors.corrected.volatile.total", "ecc.errors.uncorrected.volatile.total", "ecc.mode.current",
    "ecc.mode.pending", "pcie.link.gen.current", "pcie.link.gen.max", "pcie.link.width.current",
    "pcie.link.width.max", "clocks.max.soc",
)
FORMAT = "csv,noheader"
DEFAULT_TIMEOUT = 10.0

# What hl-smi prints for a value the device does not report (compared case-insensitively, brackets stripped).
NOT_AVAILABLE = {"n/a", "na", "not supported", "unsupported", "not available", "-"}

# Numeric field -> (unit hl-smi prints, assumed when none is, {lower-case unit: factor to our base unit}).
MIB = 1024**2
_UNITS: dict[str, tuple[str, dict[str, float]]] = {
    "index": ("", {"": 1}),
    "utilization.aip": ("%", {"%": 0.01}),  # -> ratio 0-1
    "memory.used": ("MiB", {"b": 1, "kib": 1024, "mib": MIB, "gib": 1024**3}),  # -> bytes
    "memory.total": ("MiB", {"b": 1, "kib": 1024, "mib": MIB, "gib": 1024**3}),
    "power.draw": ("W", {"w": 1, "mw": 0.001}),  # -> watts
    "power.max": ("W", {"w": 1, "mw": 0.001}),
    "temperature.aip": ("C", {"c": 1}),  # -> celsius
    "clocks.current.soc": ("MHz", {"hz": 1, "khz": 1e3, "mhz": 1e6, "ghz": 1e9}),  # -> hertz
    "ecc.errors.corrected.aggregate.total": ("", {"": 1}),
    "ecc.errors.uncorrected.aggregate.total": ("", {"": 1}),
    "ecc.errors.corrected.volatile.total": ("", {"": 1}),
    "ecc.errors.uncorrected.volatile.total": ("", {"": 1}),
    "pcie.link.gen.current": ("", {"": 1}),
    "pcie.link.gen.max": ("", {"": 1}),
    "clocks.max.soc": ("MHz", {"hz": 1, "khz": 1e3, "mhz": 1e6, "ghz": 1e9}),
}
# ASCII digits only: hl-smi prints nothing else, and a Unicode digit in a cell is damage, not a number.
_NUMBER = re.compile(r"^([-+]?[0-9]+(?:\.[0-9]+)?)\s*([A-Za-z%]*)$", re.ASCII)
_INDEX = re.compile(r"^[0-9]{1,5}$", re.ASCII)  # a device index: a small non-negative integer
MAX_INDEX = 65535
# Counts and sizes cannot be negative: a negative one would make an exported counter go down.
_NON_NEGATIVE = ("memory.", "ecc.")
_BANNER = re.compile(r"^\s*(#|habanalabs hl-smi)", re.IGNORECASE)  # version banner some releases print first


class HlSmiError(RuntimeError):
    """hl-smi itself failed (exit status, timeout): no device could be read this tick."""


class LineError(ValueError):
    """One CSV line could not be parsed; the message names the field.

    ``args`` is (message,) from parse_value, and (message, index or None, uuid, serial) from parse_line: who the
    line is about, as far as the line says.
    """


def parse_value(field: str, raw: str) -> float | str | None:
    """One CSV cell -> finite base-unit number, text, or None when hl-smi reports it unavailable.

    Anything else (not a number, a wrong unit, a Unicode digit, a value too large for a float) is a LineError
    naming the field: it must never reach the exposition as +Inf or escape as another exception.
    """
    value = raw.strip()
    if value.strip("[]").strip().lower() in NOT_AVAILABLE:
        return None
    if field not in _UNITS:
        return value
    if field == "index":
        if not _INDEX.match(value) or int(value) > MAX_INDEX:
            raise LineError(f"field index is not a device index (an integer 0-{MAX_INDEX}): {_clip(value, 40)!r}")
        return float(value)
    default_unit, factors = _UNITS[field]
    m = _NUMBER.match(value)
    if not m:
        raise LineError(f"field {field} is not a number: {_clip(value, 40)!r}")
    unit = (m.group(2) or default_unit).lower()
    if unit not in factors:
        raise LineError(f"field {field} has unit {m.group(2)!r}, expected {default_unit or 'none'}")
    number = float(m.group(1)) * factors[unit]
    if not math.isfinite(number):
        raise LineError(f"field {field} is out of range: {_clip(value, 40)!r}")
    if number < 0 and field.startswith(_NON_NEGATIVE):
        raise LineError(f"field {field} is negative: {_clip(value, 40)!r}")
    return number


@dataclass(frozen=True)
class _Row:
    index: int
    uuid: str
    values: dict[str, float | str | None]


def parse_line(line: str, fields: tuple[str, ...], line_number: int) -> _Row:
    """Split and convert one line; raises LineError naming the line and field, and who the line is about.

    The index and uuid it names are taken only from well-formed cells; a line that names no device has index None
    (the loop counts it as an unknown device's error, never as the device whose number is its line number).
    """
    cells = [c.strip() for c in line.split(",")]
    index_guess: int | None = None
    uuid_guess = ""
    if "index" in fields and fields.index("index") < len(cells):
        cell = cells[fields.index("index")]
        if _INDEX.match(cell) and int(cell) <= MAX_INDEX:
            index_guess = int(cell)
    serial_guess = ""
    if len(cells) == len(fields) and "uuid" in fields:
        uuid_guess = cells[fields.index("uuid")]
    if len(cells) == len(fields) and "serial" in fields:
        serial_guess = cells[fields.index("serial")]
    try:
        if len(cells) != len(fields):
            missing = f", missing {fields[len(cells)]} onwards" if len(cells) < len(fields) else ""
            raise LineError(f"expected {len(fields)} fields, got {len(cells)}{missing}")
        values = {f: parse_value(f, c) for f, c in zip(fields, cells, strict=True)}
    except LineError as e:
        who = f"HPU {index_guess}" if index_guess is not None else "no device named"
        where = f"hl-smi line {line_number + 1} ({who}: {_clip(line)!r})"
        raise LineError(f"{where}: {e.args[0]}", index_guess, uuid_guess, serial_guess) from e
    index = values.get("index")
    if not isinstance(index, float):
        where = f"hl-smi line {line_number + 1} ({_clip(line)!r})"
        raise LineError(f"{where}: field index is not available", None, uuid_guess, serial_guess)
    return _Row(int(index), str(values.get("uuid") or ""), values)


def _clip(line: str, limit: int = 160) -> str:
    """A cell or line short enough for a log line and an error message."""
    return line if len(line) <= limit else line[:limit] + "..."


def _number(values: dict, field: str) -> float | None:
    v = values.get(field)
    return v if isinstance(v, float) else None


def _int(values: dict, field: str) -> int | None:
    v = _number(values, field)
    return round(v) if v is not None else None


def _text(values: dict, field: str) -> str:
    v = values.get(field)
    return v if isinstance(v, str) else ""


def _enabled(values: dict, field: str) -> bool | None:
    v = _text(values, field).lower()
    return True if v in ("enabled", "enable", "on", "1") else False if v in ("disabled", "disable", "off", "0") \
        else None


def _health(v: dict) -> dict:
    """SlowReading keywords from the HEALTH_FIELDS present in the row (absent or N/A: left out)."""
    from exporter.backends.hlml import pcie_width

    link = [(name, int(n)) for name, n in (
        ("generation", _int(v, "pcie.link.gen.current")), ("max_generation", _int(v, "pcie.link.gen.max")),
        ("width", pcie_width(_text(v, "pcie.link.width.current"))),
        ("max_width", pcie_width(_text(v, "pcie.link.width.max")))) if n]
    mode = [(name, e) for name, e in (("current", _enabled(v, "ecc.mode.current")),
                                      ("pending", _enabled(v, "ecc.mode.pending"))) if e is not None]
    max_soc = _number(v, "clocks.max.soc")
    return {"ecc_volatile_corrected": _int(v, "ecc.errors.corrected.volatile.total"),
            "ecc_volatile_uncorrected": _int(v, "ecc.errors.uncorrected.volatile.total"),
            "ecc_mode": tuple(mode), "pcie_link": tuple(link),
            "clocks_max_hertz": (("soc", max_soc),) if max_soc is not None else ()}


def to_reading(row: _Row, slow: bool) -> DeviceReading:
    v = row.values
    name = _text(v, "name")
    temp = _number(v, "temperature.aip")
    soc = _number(v, "clocks.current.soc")
    util = _number(v, "utilization.aip")
    return DeviceReading(
        identity=DeviceIdentity(index=row.index, uuid=row.uuid, serial=_text(v, "serial"), name=name,
                                model=generation(name), pci_bus_id=_text(v, "bus_id"),
                                driver_version=_text(v, "driver_version")),
        utilization=min(1.0, max(0.0, util)) if util is not None else None,
        memory_used_bytes=_int(v, "memory.used"),
        memory_total_bytes=_int(v, "memory.total"),
        power_watts=_number(v, "power.draw"),
        power_limit_watts=_number(v, "power.max"),
        temperatures=(("aip", temp),) if temp is not None else (),
        clocks_hertz=(("soc", soc),) if soc is not None else (),
        slow=SlowReading(ecc_corrected=_int(v, "ecc.errors.corrected.aggregate.total"),
                         ecc_uncorrected=_int(v, "ecc.errors.uncorrected.aggregate.total"),
                         **_health(v)) if slow else None,
    )


def parse_output(stdout: str, fields: tuple[str, ...], slow: bool) -> BackendResult:
    """The whole CSV output -> readings and per-line errors; no line can fail the others."""
    devices: list[DeviceReading] = []
    errors: list[DeviceError] = []
    seen: set[str] = set()
    line_number = 0
    for line in stdout.splitlines():
        if not line.strip() or _BANNER.match(line):
            continue
        if line.split(",")[0].strip() == fields[0]:  # a header row, if this hl-smi ignored noheader
            continue
        try:
            reading = to_reading(parse_line(line, fields, line_number), slow)
            if reading.key in seen:  # the same device twice would export duplicate series
                raise LineError(f"hl-smi line {line_number + 1} ({_clip(line)!r}): HPU {reading.identity.index} "
                                f"({reading.identity.uuid or 'no uuid'}) is on an earlier line too",
                                reading.identity.index, reading.identity.uuid, reading.identity.serial)
            seen.add(reading.key)
            devices.append(reading)
        except LineError as e:
            message, index, uuid, serial = e.args
            errors.append(DeviceError(index, uuid, message, serial))
        except Exception as e:  # noqa: BLE001 - a parser bug costs one line, never the whole read
            log.error("hl-smi line %d could not be parsed (a bug, please report it): %r", line_number + 1, e)
            errors.append(DeviceError(None, "", f"hl-smi line {line_number + 1}: {type(e).__name__}: {e}"))
        line_number += 1
    return BackendResult(devices=tuple(devices), errors=tuple(errors))


def run_in_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a new session (its own process group); on timeout kill the whole group, then reap it.

    Killing only the direct child leaves a wrapper script's children running (and holding our pipes). The group
    is killed before the leader is reaped, so its id cannot have been reused by then.
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            proc.communicate(timeout=5)  # every writer in the group is dead: the pipes close, the leader is reaped
        except subprocess.TimeoutExpired:  # a process that left the group still holds a pipe: stop reading
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
        raise
    except BaseException:  # interrupted: leave nothing behind
        _kill_group(proc)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


class HlSmiBackend:
    name = "hlsmi"

    def __init__(self, path: str = "hl-smi", *, timeout: float = DEFAULT_TIMEOUT,
                 run: Callable[[list[str], float], subprocess.CompletedProcess] = run_in_group) -> None:
        self.path = path
        self.timeout = timeout
        self._run = run
        self._exe: str | None = None
        self.line_errors_total = 0  # garbled/partial lines since start (also in each result's errors)
        self.model: DeviceModel | None = None  # set by open() from the first device
        self.fields = FIELDS  # narrowed by open() when this hl-smi release rejects optional fields
        self.slow_fields = SLOW_FIELDS

    def open(self) -> None:
        exe = shutil.which(self.path)
        if exe is None:
            if os.sep in self.path and os.path.exists(self.path):
                why = "is not an executable file"
            else:
                why = "was not found" + ("" if os.sep in self.path else " on PATH")
            raise BackendUnavailable(f"hl-smi {self.path!r} {why}; install the Intel Gaudi software "
                                     "or point --hlsmi.path at hl-smi")
        self._exe = exe
        result, failure = None, None
        for fields in (FIELDS, tuple(f for f in FIELDS if f not in OPTIONAL_FIELDS)):
            self.fields = fields
            try:
                result = self.read(slow=False)
                break
            except HlSmiError as e:
                failure = e
        if result is None:
            self._exe = None
            raise BackendUnavailable(str(failure)) from failure
        if self.fields != FIELDS:
            log.warning("hl-smi rejected the query with %s (%s); reading without them", ", ".join(OPTIONAL_FIELDS),
                        failure)
            base = self.fields  # then each on its own: a field this release rejects costs that field only
            self.fields = base + self._accepted(base, OPTIONAL_FIELDS, slow=False)
        self.slow_fields = self.fields + ECC_FIELDS
        try:
            self.read(slow=True)
        except HlSmiError as e:
            self.slow_fields = self.fields + self._accepted(self.fields, ECC_FIELDS, slow=True)
            log.warning("hl-smi rejected the ECC fields together (%s); reading %s", e,
                        ", ".join(self.slow_fields[len(self.fields):]) or "none of them")
        self._probe_health_fields()
        if result.devices and result.devices[0].identity.name:
            ident = result.devices[0].identity
            self.model = DeviceModel(ident.name, ident.model)
        log.info("hlsmi backend: %s answers for %d device(s)", exe, len(result.devices) + len(result.errors))

    def _probe_health_fields(self) -> None:
        """Add the HEALTH_FIELDS this hl-smi accepts: all at once, else one by one (a rejected one costs itself)."""
        base = self.slow_fields
        self.slow_fields = base + HEALTH_FIELDS
        try:
            self.read(slow=True)
            return
        except HlSmiError:
            pass
        accepted = self._accepted(base, HEALTH_FIELDS, slow=True)
        self.slow_fields = base + accepted
        log.warning("this hl-smi rejects %s: those values are not exported",
                    ", ".join(f for f in HEALTH_FIELDS if f not in accepted))

    def _accepted(self, base: tuple[str, ...], extra: tuple[str, ...], *, slow: bool) -> tuple[str, ...]:
        """The fields of ``extra`` this hl-smi accepts, each tried alone after ``base`` (one run per field)."""
        attr = "slow_fields" if slow else "fields"
        accepted = []
        for f in extra:
            setattr(self, attr, base + (f,))
            try:
                self.read(slow=slow)
                accepted.append(f)
            except HlSmiError:
                continue
        setattr(self, attr, base)
        return tuple(accepted)

    def close(self) -> None:
        self._exe = None

    def command(self, slow: bool) -> list[str]:
        fields = self.slow_fields if slow else self.fields
        return [self._exe or self.path, "-Q", ",".join(fields), "-f", FORMAT]

    def read(self, *, slow: bool) -> BackendResult:
        if self._exe is None:
            raise HlSmiError("hlsmi backend read before open() succeeded")
        cmd = self.command(slow)
        try:
            proc = self._run(cmd, self.timeout)
        except subprocess.TimeoutExpired as e:
            raise HlSmiError(f"{self._exe} did not answer within {self.timeout:g} s") from e
        except OSError as e:
            raise HlSmiError(f"could not run {self._exe}: {e}") from e
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise HlSmiError(f"{self._exe} exited with status {proc.returncode}"
                             + (f": {_clip(' | '.join(detail[-3:]))}" if detail else ""))
        result = parse_output(proc.stdout, self.slow_fields if slow else self.fields, slow)
        if result.errors:
            self.line_errors_total += len(result.errors)
            for err in result.errors:  # the HPU collector reports them; this is for debugging the parser
                log.debug("HPU %s: %s", err.index, err.message)
        return result
