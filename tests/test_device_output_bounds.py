"""Hostile or broken device output: every bad hl-smi cell is that device's counted error, series stay bounded,
a hung hl-smi leaves no process behind, and the daemon starts and keeps exporting through all of it."""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.backends.hlsmi import FIELDS, HlSmiBackend, HlSmiError, parse_output
from exporter.collectors.hpu import HpuCollector
from exporter.known_devices import KnownDevices
from exporter.loop import Loop
from exporter.readings import BackendResult, DeviceIdentity, DeviceReading
from tests.support.procs import REPO, exporter, wait_for

FAKE_HLSMI = REPO / "tests" / "fakes" / "hl-smi"
FIXTURE = REPO / "tests" / "fixtures" / "hlsmi" / "gaudi3-8x.csv"
HUGE = "9" * 400


def series(text: str, name: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def good_line(index: int, cells: dict[str, str] | None = None) -> str:
    """One nounits hl-smi line for FIELDS, with some cells replaced."""
    values = {"index": str(index), "uuid": f"UUID-{index}", "serial": f"SN{index}", "name": "HL-325L",
              "bus_id": f"0000:{index:02x}:00.0", "driver_version": "1.22.1", "utilization.aip": "50",
              "memory.used": "1024", "memory.total": "131072", "power.draw": "500", "power.max": "850",
              "temperature.aip": "60", "clocks.current.soc": "1600"}
    values.update(cells or {})
    return ", ".join(values[f] for f in FIELDS)


def damaged_fixture(path: Path, damage: dict[int, dict[str, str]]) -> None:
    """The 8 x Gaudi 3 capture with some cells of some devices replaced (the fake hl-smi prints them as given)."""
    lines = []
    header: list[str] = []
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            lines.append(line)
            continue
        cells = line.split(", ")
        if not header:
            header = [re.sub(r" \[.*\]$", "", c) for c in cells]
        elif int(cells[0]) in damage:
            for field, value in damage[int(cells[0])].items():
                cells[header.index(field)] = value
        lines.append(", ".join(cells))
    path.write_text("\n".join(lines) + "\n")


# --- item 7: one bad cell is one device's error, named, and never +Inf

@pytest.mark.parametrize(("cells", "field"), [
    ({"power.draw": HUGE}, "power.draw"),  # float() says inf: must not be exported as +Inf
    ({"memory.used": HUGE}, "memory.used"),  # round(inf) raised OverflowError out of the parser
    ({"memory.total": "1" + "0" * 330 + " GiB"}, "memory.total"),  # finite number, infinite once in bytes
    ({"index": HUGE}, "index"),  # int(inf) raised OverflowError: the whole read failed
    ({"index": "\u0663"}, "index"),  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit, not to hl-smi
    ({"index": "\u00b2"}, "index"),  # SUPERSCRIPT TWO: isdigit() but int() raised ValueError
    ({"utilization.aip": "\uff15\uff10"}, "utilization.aip"),  # full-width 50
    ({"ecc.errors.corrected.aggregate.total": "-3"}, "ecc.errors.corrected.aggregate.total"),  # a counter < 0
])
def test_a_malformed_cell_is_that_lines_error_naming_the_field(cells, field):
    fields = FIELDS + ("ecc.errors.corrected.aggregate.total",)
    lines = [good_line(0) + ", 0", good_line(1, cells) + f", {cells.get(fields[-1], '0')}", good_line(2) + ", 0"]
    result = parse_output("\n".join(lines) + "\n", fields, slow=True)
    assert [d.identity.index for d in result.devices] == [0, 2]
    [err] = result.errors
    assert field in err.message and "line 2" in err.message
    if field != "index":  # the line still says which device it is about
        assert (err.index, err.uuid) == (1, "UUID-1")
    else:
        assert err.index is None
    for d in result.devices:
        assert all(math.isfinite(x) for x in (d.power_watts, d.memory_used_bytes, d.utilization))


def test_a_line_repeating_a_device_is_an_error_not_a_duplicate_series():
    result = parse_output("\n".join([good_line(0), good_line(1), good_line(1)]) + "\n", FIELDS, slow=False)
    assert [d.identity.index for d in result.devices] == [0, 1]
    [err] = result.errors
    assert "HPU 1" in err.message and "earlier line" in err.message


def test_daemon_starts_and_runs_through_bad_cells_without_a_traceback(tmp_path):
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    capture = fixtures / "gaudi3-8x.csv"
    damaged_fixture(capture, {4: {"index": HUGE}, 5: {"index": "\u00b2"}, 6: {"memory.used": HUGE + " MiB"}})
    env = {"FAKE_HLSMI_SCENARIO": "normal", "FAKE_HLSMI_FIXTURES": str(fixtures)}
    args = ["--backend", "hlsmi", "--hlsmi.path", str(FAKE_HLSMI), "--interval", "0.5",
            "--pricing.static.usd-per-hour", "10"]
    with exporter(args, env=env) as (proc, base):
        text = requests.get(base + "/metrics", timeout=5).text
        assert "+Inf" not in text and "NaN" not in text
        assert series(text, "gaudi_exporter_collector_success")[(("collector", "hpu"),)] == 1
        up = series(text, "gaudi_hpu_up")
        assert {dict(k)["hpu"] for k, v in up.items() if v == 1} == {"0", "1", "2", "3", "7"}

        # mid-run, device 2's power becomes a 400-digit number: device 2 alone goes down, counted and named
        damaged_fixture(capture, {2: {"power.draw": HUGE + " W"}})

        def device_2_failing():
            t = requests.get(base + "/metrics", timeout=5).text
            errors = series(t, "gaudi_hpu_read_errors_total")
            return t if errors.get((("hpu", "2"), ("uuid", "01P4-HL3090A0-18-U4V193-22-07-02")), 0) >= 1 else None

        text = wait_for(device_2_failing, 15, what="device 2's read errors")
        assert "+Inf" not in text
        assert series(text, "gaudi_exporter_collector_success")[(("collector", "hpu"),)] == 1
        up = series(text, "gaudi_hpu_up")
        assert up[(("hpu", "2"), ("uuid", "01P4-HL3090A0-18-U4V193-22-07-02"))] == 0
        assert sum(up.values()) == 7  # the others, 4-6 included now that their lines are whole again
    log = proc.stdout.read().decode()
    assert "Traceback" not in log
    assert re.search(r"HPU 2 \(uuid 01P4-HL3090A0-18-U4V193-22-07-02, serial N16B3D0402\) could not be read: "
                     r".*power\.draw", log), log
    assert "field index" in log and "field memory.used is out of range" in log


# --- item 4: bounded series

def test_junk_lines_count_under_one_unknown_series(tmp_path, monkeypatch):
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    # half name a device that is not there (index 100 and up), half name nothing
    junk = [f"!raw {n + 100}, junk {n} ###" if n % 2 else f"!raw garbage line {n}" for n in range(20_000)]
    (fixtures / "gaudi3-8x.csv").write_text(FIXTURE.read_text() + "\n".join(junk) + "\n")
    monkeypatch.setenv("FAKE_HLSMI_SCENARIO", "normal")
    monkeypatch.setenv("FAKE_HLSMI_FIXTURES", str(fixtures))
    backend = HlSmiBackend(path=str(FAKE_HLSMI))
    backend.open()
    t = [1000.0]
    loop = Loop([HpuCollector(backend)], interval=1.0, version="test", backend="hlsmi", clock=lambda: t[0])
    for _ in range(2):
        text = loop.tick().text.decode()
        t[0] += 1
    errors = series(text, "gaudi_hpu_read_errors_total")
    assert len(errors) == 9  # 8 known HPUs at 0, and one series for the rest
    assert errors[(("hpu", "unknown"), ("uuid", ""))] == 40_000
    assert sum(v for k, v in errors.items() if dict(k)["hpu"] != "unknown") == 0
    assert len(series(text, "gaudi_hpu_up")) == 8


class ChangingUuids:
    """A backend whose devices report a new UUID every read (a broken driver, or hostile output)."""

    name = "test"

    def __init__(self, devices: int = 8) -> None:
        self.devices, self.reads, self.keep = devices, 0, False

    def read(self, *, slow: bool) -> BackendResult:
        self.reads += 1
        gen = 0 if self.keep else self.reads
        return BackendResult(devices=tuple(
            DeviceReading(DeviceIdentity(index=i, uuid=f"GEN{gen}-DEV{i}"), utilization=0.5)
            for i in range(self.devices)))


def test_vanished_uuids_are_forgotten_after_the_grace_period_and_capped():
    t = [1000.0]
    backend = ChangingUuids()
    loop = Loop([HpuCollector(backend)], interval=1.0, version="test", backend="test", clock=lambda: t[0],
                known_devices=KnownDevices(grace_seconds=30, max_lost=16))
    counts = []
    for _ in range(60):
        text = loop.tick().text.decode()
        t[0] += 1
        counts.append(len(series(text, "gaudi_hpu_up")))
    assert max(counts) == 8 + 16  # the 8 present and at most 16 lost ones, never 480
    assert len(series(text, "gaudi_hpu_read_errors_total")) == 8 + 16 + 1
    assert len(loop.accountant.devices) <= 8 + 16  # the cost engine forgets them too

    # a device that is lost (not shown at all) keeps gaudi_hpu_up 0 for the grace period, then its series end
    backend.keep, backend.devices = True, 8
    loop.tick()
    backend.devices = 7
    for _ in range(30):
        t[0] += 1
        up = series(loop.tick().text.decode(), "gaudi_hpu_up")
        assert up[(("hpu", "7"), ("uuid", "GEN0-DEV7"))] == 0
    t[0] += 2
    up = series(loop.tick().text.decode(), "gaudi_hpu_up")
    assert (("hpu", "7"), ("uuid", "GEN0-DEV7")) not in up
    assert sum(up.values()) == 7


def test_a_device_that_keeps_failing_stays_known():
    t = [1000.0]
    devices = KnownDevices(grace_seconds=10)
    ident = DeviceIdentity(index=3, uuid="U3")
    devices.observe(t[0], [DeviceReading(ident)], [])
    from exporter.readings import DeviceError

    for _ in range(100):
        t[0] += 1
        devices.observe(t[0], [], [DeviceError(3, "", "driver error")])
    assert devices.error_series() == {("3", "U3"): 100, ("unknown", ""): 0}


# --- item 5: a hung hl-smi and everything it started are killed

def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie is dead (reaped later by whoever adopted it)


def test_timeout_kills_the_wrapper_and_its_hung_children(tmp_path, monkeypatch):
    wrapper = tmp_path / "hl-smi"
    wrapper.write_text(f"""#!/bin/sh
if [ -e "{tmp_path}/hang" ]; then
  sleep 300 &
  echo $! >> "{tmp_path}/children"
  sh -c 'sleep 300' &
  echo $! >> "{tmp_path}/children"
  wait
fi
exec "{FAKE_HLSMI}" "$@"
""")
    wrapper.chmod(0o755)
    monkeypatch.setenv("FAKE_HLSMI_SCENARIO", "normal")
    backend = HlSmiBackend(path=str(wrapper), timeout=1.0)
    backend.open()
    (tmp_path / "hang").touch()
    started = time.monotonic()
    with pytest.raises(HlSmiError, match="did not answer within 1 s"):
        backend.read(slow=False)
    assert time.monotonic() - started < 8  # the pipes closed: nothing kept the read waiting
    pids = [int(p) for p in (tmp_path / "children").read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for p in left:  # do not leave them behind even when the test fails
        os.kill(p, 9)
    assert not left, f"orphaned hl-smi children still running: {left}"
