"""The hl-smi backend running a fake hl-smi executable that prints real-format CSV from fixture captures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import backends
from exporter.backends.base import BackendUnavailable
from exporter.backends.hlsmi import FIELDS, SLOW_FIELDS, HlSmiBackend, HlSmiError, LineError, parse_value
from tests.fakes.fake_pyhlml import FakePyhlml

FAKE_HLSMI = Path(__file__).resolve().parent / "fakes" / "hl-smi"
MIB = 1024**2


@pytest.fixture
def scenario(monkeypatch):
    def set_scenario(name: str, devices: int | None = None) -> None:
        monkeypatch.setenv("FAKE_HLSMI_SCENARIO", name)
        if devices is None:
            monkeypatch.delenv("FAKE_HLSMI_DEVICES", raising=False)
        else:
            monkeypatch.setenv("FAKE_HLSMI_DEVICES", str(devices))

    set_scenario("normal")
    return set_scenario


def opened(**kw) -> HlSmiBackend:
    backend = HlSmiBackend(path=str(FAKE_HLSMI), **kw)
    backend.open()
    return backend


def by_index(result) -> dict:
    return {d.identity.index: d for d in result.devices}


# --- the fake behaves like hl-smi

def test_fake_is_executable_and_rejects_what_hl_smi_rejects(scenario):
    assert os.access(FAKE_HLSMI, os.X_OK)
    bad_field = subprocess.run([str(FAKE_HLSMI), "-Q", "index,utilization.memory", "-f", "csv"],
                               capture_output=True, text=True)
    assert bad_field.returncode != 0 and "utilization.memory" in bad_field.stderr
    ok = subprocess.run([str(FAKE_HLSMI), "-Q", ",".join(SLOW_FIELDS), "-f", "csv"], capture_output=True, text=True)
    assert ok.returncode == 0
    header = ok.stdout.splitlines()[0]
    assert header.startswith("index, uuid") and "memory.total [MiB]" in header


# --- values and units

def test_gaudi3_values_in_base_units(scenario):
    backend = opened()
    result = backend.read(slow=False)
    assert result.errors == ()
    devices = by_index(result)
    assert sorted(devices) == list(range(8))
    d = devices[0]
    ident = d.identity
    assert ident.uuid == "01P4-HL3090A0-18-U4V193-22-07-00"
    assert ident.serial == "N16B3D0400"
    assert ident.name == "HL-325L" and ident.model == "Gaudi 3"
    assert ident.pci_bus_id == "0000:19:00.0"
    assert ident.driver_version == "1.22.1-97ec1a4"
    assert d.utilization == pytest.approx(0.97)
    assert d.memory_used_bytes == 118272 * MIB
    assert d.memory_total_bytes == 137_438_953_472  # 128 GiB
    assert d.power_watts == 781.0 and d.power_limit_watts == 850.0
    assert dict(d.temperatures) == {"aip": 67.0}
    assert dict(d.clocks_hertz) == {"soc": 1.6e9}
    assert d.energy_joules is None  # hl-smi has no energy field
    assert d.slow is None
    assert devices[7].clocks_hertz == ()  # N/A is missing, not zero


def test_slow_read_asks_for_ecc(scenario):
    backend = opened()
    devices = by_index(backend.read(slow=True))
    assert devices[1].slow.ecc_corrected == 3 and devices[3].slow.ecc_corrected == 1
    assert devices[0].slow.ecc_corrected == 0
    assert all(d.slow.ecc_uncorrected == 0 for d in devices.values())
    assert devices[0].slow.nic_ports_up is None and devices[0].slow.pcie_replays is None


def test_idle_gaudi3_example_with_units(scenario):
    scenario("units")
    [d0, d1] = opened().read(slow=False).devices
    assert d0.memory_used_bytes == 672 * MIB and d0.memory_total_bytes == 131072 * MIB
    assert d0.power_watts == 226.0 and d0.power_limit_watts == 850.0
    assert d0.utilization == 0.0 and dict(d0.temperatures) == {"aip": 36.0}
    assert d1.power_watts == 228.0


def test_gaudi1_without_units(scenario):
    scenario("nounits")
    backend = opened()
    result = backend.read(slow=True)
    assert result.errors == ()
    devices = by_index(result)
    assert len(devices) == 8
    d = devices[0]
    assert d.identity.name == "HL-205" and d.identity.model == "Gaudi 1"
    assert d.memory_total_bytes == 32 * 1024**3 and d.memory_used_bytes == 512 * MIB
    assert d.power_watts == 103.0 and d.power_limit_watts == 350.0
    assert d.utilization == pytest.approx(0.15)
    assert dict(d.temperatures) == {"aip": 36.0}
    assert d.clocks_hertz == ()  # N/A on this driver
    assert devices[7].slow.ecc_uncorrected == 1


@pytest.mark.parametrize(("field", "raw", "expected"), [
    ("memory.total", "131072 MiB", 131072 * MIB),
    ("memory.total", "131072", 131072 * MIB),
    ("memory.used", "672MiB", 672 * MIB),
    ("power.draw", "226 W", 226.0),
    ("power.draw", "226.5", 226.5),
    ("temperature.aip", "36 C", 36.0),
    ("utilization.aip", "0 %", 0.0),
    ("utilization.aip", "55", 0.55),
    ("clocks.current.soc", "1600 MHz", 1.6e9),
    ("clocks.current.soc", "N/A", None),
    ("power.max", "[N/A]", None),
    ("temperature.aip", "[Not Supported]", None),
    ("ecc.errors.corrected.aggregate.total", "4", 4.0),
    ("name", "HL-325L", "HL-325L"),
])
def test_parse_value_units(field, raw, expected):
    value = parse_value(field, raw)
    if isinstance(expected, str) or expected is None:
        assert value == expected
    else:
        assert value == pytest.approx(expected)


@pytest.mark.parametrize(("field", "raw"), [("power.draw", "7#4 W"), ("temperature.aip", "64 W"),
                                            ("memory.used", ""), ("utilization.aip", "lots")])
def test_parse_value_rejects_garbage_naming_the_field(field, raw):
    with pytest.raises(LineError, match=field):
        parse_value(field, raw)


# --- broken output: device errors, never a crash

def test_garbled_lines_are_device_errors_and_counted(scenario):
    scenario("garbled")
    backend = opened()
    first = backend.line_errors_total  # open() reads once
    result = backend.read(slow=True)
    assert sorted(by_index(result)) == [0, 3]
    assert len(result.errors) == 3
    cells = {e.index: e for e in result.errors if "timed out" not in e.message}
    assert "power.draw" in cells[1].message and "7#4 W" in cells[1].message
    assert cells[1].uuid == "01P4-HL3090A0-18-U4V193-22-07-01"
    assert "temperature.aip" in cells[2].message and "'W', expected C" in cells[2].message
    [noise] = [e for e in result.errors if "timed out" in e.message]
    assert f"expected {len(backend.slow_fields)} fields" in noise.message
    assert noise.index is None and noise.uuid == ""  # names no device: never blamed on the HPU with its line number
    assert "line 4" in noise.message and "no device named" in noise.message
    assert backend.line_errors_total == first + 3
    backend.read(slow=False)
    assert backend.line_errors_total == first + 6


def test_partial_output_makes_the_cut_device_an_error(scenario):
    scenario("partial")
    result = opened().read(slow=False)
    assert sorted(by_index(result)) == list(range(7))
    [err] = result.errors
    assert err.index == 7
    assert f"expected {len(FIELDS)} fields" in err.message and "line 8" in err.message
    missing = re.search(r"missing (\S+) onwards", err.message)  # names the first field the cut line lacks
    assert missing and missing.group(1) in FIELDS


def test_device_that_disappears_is_gone(scenario):
    scenario("normal", devices=8)
    backend = opened()
    assert len(backend.read(slow=False).devices) == 8
    scenario("normal", devices=7)
    result = backend.read(slow=False)
    assert sorted(by_index(result)) == list(range(7)) and result.errors == ()


def test_failing_hl_smi_raises_with_its_message(scenario):
    backend = opened()
    scenario("fail")
    with pytest.raises(HlSmiError, match=r"exited with status 1.*driver not loaded"):
        backend.read(slow=False)


def test_hung_hl_smi_times_out(scenario):
    backend = opened(timeout=0.5)
    scenario("hang")
    with pytest.raises(HlSmiError, match="did not answer within 0.5 s"):
        backend.read(slow=False)


# --- open()

def test_open_missing_tool_is_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable, match="was not found"):
        HlSmiBackend(path=str(tmp_path / "hl-smi")).open()


def test_open_non_executable_is_unavailable(tmp_path):
    plain = tmp_path / "hl-smi"
    plain.write_text(FAKE_HLSMI.read_text())
    plain.chmod(0o644)
    with pytest.raises(BackendUnavailable, match="not an executable"):
        HlSmiBackend(path=str(plain)).open()


def test_open_when_hl_smi_fails_is_unavailable(scenario):
    scenario("fail")
    with pytest.raises(BackendUnavailable, match="driver not loaded"):
        opened()


# --- creation through exporter.backends

def test_create_hlsmi(scenario):
    scenario("nounits")
    backend = backends.create("hlsmi", hlsmi_path=str(FAKE_HLSMI))
    assert backend.name == "hlsmi"
    assert (backend.model.name, backend.model.generation) == ("HL-205", "Gaudi 1")
    assert len(backend.read(slow=False).devices) == 8


def test_create_auto_falls_back_to_hl_smi_on_path(scenario, monkeypatch, tmp_path):
    (tmp_path / "hl-smi").symlink_to(FAKE_HLSMI)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path), os.path.dirname(sys.executable), "/usr/bin"]))
    backend = backends.create("auto", hlml_module=FakePyhlml(library_present=False))
    assert backend.name == "hlsmi"


def test_create_auto_without_libhlml_or_hlsmi_names_both_and_suggests_simulated(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no hl-smi anywhere
    with pytest.raises(BackendUnavailable) as exc:
        backends.create("auto", hlml_module=FakePyhlml(library_present=False))
    msg = str(exc.value)
    assert "libhlml" in msg and "hl-smi" in msg and "not found" in msg
    assert "--backend simulated" in msg
    assert capfd.readouterr().out == ""


def test_an_older_hl_smi_without_the_newer_fields_still_works(scenario, monkeypatch, caplog):
    scenario("normal")
    monkeypatch.setenv("FAKE_HLSMI_OLD", "1")
    b = opened()
    assert "power.max" not in b.fields and "clocks.current.soc" not in b.fields
    assert "rejected the query" in caplog.text
    r = b.read(slow=True)
    assert len(r.devices) == 8 and not r.errors
    d = r.devices[0]
    assert d.memory_total_bytes == 131072 * 1024**2 and d.power_watts is not None
    assert d.power_limit_watts is None and d.clocks_hertz == ()  # not read, so not exported: never a made-up 0
    assert d.slow is not None and d.slow.ecc_uncorrected is not None  # the ECC fields are documented: kept


# --- health fields (issue 11): each one a release rejects or leaves N/A costs that value only

def test_health_fields_from_hl_smi(scenario):
    scenario("health")
    b = opened()
    [d0, d1] = sorted(b.read(slow=True).devices, key=lambda d: d.identity.index)
    assert (d0.slow.ecc_volatile_corrected, d0.slow.ecc_volatile_uncorrected) == (2, 0)
    assert dict(d0.slow.ecc_mode) == {"current": True, "pending": True}
    assert dict(d1.slow.ecc_mode) == {"current": True}  # N/A: that value only
    assert dict(d0.slow.pcie_link) == {"generation": 5, "max_generation": 5, "width": 16, "max_width": 16}
    assert dict(d1.slow.pcie_link)["width"] == 8
    assert dict(d0.slow.clocks_max_hertz) == {"soc": 1.8e9}
    assert d1.power_watts == 775 and d1.slow.ecc_uncorrected == 1


def test_health_fields_an_older_hl_smi_rejects_cost_those_fields_only(scenario, monkeypatch, caplog):
    scenario("health")
    monkeypatch.setenv("FAKE_HLSMI_OLD", "1")  # rejects pcie.* and clocks.*
    b = opened()
    assert "rejects pcie.link.gen.current, pcie.link.gen.max, pcie.link.width.current, pcie.link.width.max, " \
           "clocks.max.soc" in caplog.text
    [d0, _] = sorted(b.read(slow=True).devices, key=lambda d: d.identity.index)
    assert d0.slow.pcie_link == () and d0.slow.clocks_max_hertz == ()
    assert dict(d0.slow.ecc_mode) == {"current": True, "pending": True} and d0.slow.ecc_volatile_corrected == 2
    assert d0.utilization == pytest.approx(0.97)


def test_a_field_a_release_rejects_costs_that_field_only(scenario, monkeypatch):
    scenario("normal")
    monkeypatch.setenv("FAKE_HLSMI_REJECT", "power.max,ecc.errors.uncorrected.aggregate.total")
    b = opened()
    assert "power.max" not in b.fields and "clocks.current.soc" in b.fields
    [d] = [d for d in b.read(slow=True).devices if d.identity.index == 0]
    assert d.power_limit_watts is None and d.power_watts is not None
    assert dict(d.clocks_hertz) == {"soc": 1.6e9}  # not dropped with power.max
    assert d.slow.ecc_uncorrected is None and d.slow.ecc_corrected is not None
