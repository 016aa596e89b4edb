"""The hlml backend through the REAL habana-pyhlml (lowest and highest release pyproject.toml allows) against the
C stand-in libhlml.so in tests/fakes/libhlml: struct layouts, missing symbols, error codes, as on a real node.
"""

from __future__ import annotations

import inspect
import logging
import re
import subprocess
import sys

import pytest
import requests

from exporter.backends.base import BackendUnavailable
from exporter.backends.hlml import LIBHLML_PATH, SYMBOLS, HlmlBackend
from tests.fakes import libhlml
from tests.fakes.libhlml import MIB, gaudi3, write_state
from tests.support import pyhlml_releases
from tests.support.procs import exporter, wait_for

# pyhlml 1.24 warns about its own legacy module on import; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:pyhlml.hlml_types is deprecated:DeprecationWarning")
OLDER_DRIVER = ("hlml_device_get_power_management_limit", "hlml_get_driver_version")
PORT_TIMEOUT = {"hlml_nic_get_link.5": 10}  # HLML_ERROR_TIMEOUT on port 5 only


@pytest.fixture(scope="session")
def libs(tmp_path_factory):
    out = tmp_path_factory.mktemp("libhlml")
    return {"current": libhlml.build(out), "older": libhlml.build(out, omit=OLDER_DRIVER),
            "old_pci": libhlml.build(out, old_pci_layout=True)}


@pytest.fixture(params=pyhlml_releases.RELEASES)
def pyhlml(request):
    release = request.param
    if pyhlml_releases.version(release) is None:
        pytest.skip(f"habana-pyhlml ({release} allowed release) is not installed here; scripts/test.sh installs "
                    f"the lowest into {pyhlml_releases.LOWEST_DIR}")
    with pyhlml_releases.imported(release) as mod:
        yield mod
        libhlml.point_pyhlml_at(mod, None)


@pytest.fixture
def state(tmp_path, monkeypatch):
    path = tmp_path / "hlml-state.txt"
    monkeypatch.setenv(libhlml.STATE_ENV, str(path))
    return path


def opened(pyhlml, lib) -> HlmlBackend:
    libhlml.point_pyhlml_at(pyhlml, lib)
    backend = HlmlBackend(module=pyhlml)
    backend.open()
    return backend


def by_index(result) -> dict:
    return {d.identity.index: d for d in result.devices}


# --- the loader we replace, and the installed releases


def test_pyhlml_still_loads_the_path_the_tests_replace(pyhlml):
    assert libhlml.loader_default(pyhlml) == libhlml.PYHLML_DEFAULT_PATH == LIBHLML_PATH


def test_both_ends_of_the_allowed_range_are_installed_for_the_suite():
    low, high = pyhlml_releases.allowed_range()
    lowest = pyhlml_releases.version("lowest")
    if lowest is None:
        pytest.skip(f"{pyhlml_releases.LOWEST_DIR} missing (scripts/test.sh installs it)")
    assert lowest.split(".")[:2] == low.split(".")[:2], "scripts/test.sh installs a release below/above the bound"
    pinned = re.search(r"^PYHLML_LOWEST=(\S+)$", (pyhlml_releases.REPO / "scripts" / "test.sh").read_text(), re.M)
    assert pinned and pinned.group(1) == lowest
    highest = pyhlml_releases.version("highest")
    assert highest is not None and highest.split(".")[0] < high.split(".")[0]


def test_the_symbol_table_matches_the_c_names_pyhlml_resolves(pyhlml):
    for fn_name, symbol in SYMBOLS.items():
        fn = getattr(pyhlml, fn_name, None)
        if fn is None:
            assert fn_name == "hlmlDeviceGetPowerManagementLimitConstraints"  # pyhlml wraps it from 1.22
            continue
        assert f'"{symbol}"' in inspect.getsource(fn), fn_name


# --- values and units


def test_values_and_units_through_the_real_binding(pyhlml, libs, state):
    write_state(state, [gaudi3(0), gaudi3(1, throttle_reasons=2)], driver_version="1.22.1-97ec1a4")
    backend = opened(pyhlml, libs["current"])
    try:
        result = backend.read(slow=True)
    finally:
        backend.close()
    assert result.errors == ()
    d0, d1 = by_index(result)[0], by_index(result)[1]
    ident = d0.identity
    assert (ident.uuid, ident.serial, ident.name, ident.model) == (
        "01P4-HL3090A0-18-U4V193-22-07-00", "N16B3D0400", "HL-325L", "Gaudi 3")
    assert ident.pci_bus_id == "0000:19:00.0" and ident.driver_version == "1.22.1-97ec1a4"
    assert ident.firmware_version == "1.22.1-fw-57.2.1-sec-9" and ident.minor == 0
    assert d0.utilization == pytest.approx(0.87) and d0.memory_utilization == pytest.approx(0.40)
    assert d0.memory_total_bytes == 131072 * MIB and d0.memory_used_bytes == 98304 * MIB
    assert d0.power_watts == pytest.approx(612.345) and d0.power_limit_watts == pytest.approx(850.0)
    assert d0.energy_joules == pytest.approx(123_456.789)
    assert dict(d0.temperatures) == {"aip": 61.0, "board": 44.0, "hbm": 52.0, "vrm": 50.0}
    assert dict(d0.clocks_hertz) == {"soc": 1.6e9, "mme": 1.5e9, "tpc": 1.55e9}
    assert dict(d0.throttled) == {"power": False, "thermal": False}
    assert dict(d1.throttled) == {"power": False, "thermal": True}
    assert dict(d0.throttle_seconds) == {"power": pytest.approx(2.5), "thermal": 0.0}
    assert dict(d0.pcie_throughput_bytes) == {"tx": 1000 * 1024.0, "rx": 2000 * 1024.0}
    s = d0.slow
    assert (s.ecc_corrected, s.ecc_uncorrected, s.ecc_volatile_corrected, s.ecc_volatile_uncorrected) == (17, 2, 4, 1)
    assert dict(s.ecc_mode) == {"current": True, "pending": True}
    assert dict(s.replaced_rows) == {"multiple_single_bit": 3, "double_bit": 1}
    assert s.row_replacement_pending is False
    assert dict(s.pcie_link) == {"generation": 5, "width": 16, "max_generation": 5, "max_width": 16}
    assert s.pcie_replays == 9
    assert dict(s.temperature_thresholds) == {"shutdown": 110.0, "slowdown": 100.0, "memory_max": 95.0}
    limits = dict(s.power_limits_watts)
    assert limits["default"] == pytest.approx(900.0)
    if hasattr(pyhlml, "hlmlDeviceGetPowerManagementLimitConstraints"):
        assert (limits["min"], limits["max"]) == (pytest.approx(450.0), pytest.approx(900.0))
    else:  # pyhlml < 1.22 has no wrapper for it: those two metrics only
        assert set(limits) == {"default"}
    assert dict(s.clocks_max_hertz) == {"soc": 1.8e9}
    ports = dict(s.nic_ports_up)
    assert sorted(ports) == list(range(24)) and all(ports.values())


def test_values_a_test_changes_between_reads_are_read_again(pyhlml, libs, state):
    write_state(state, [gaudi3(0)])
    backend = opened(pyhlml, libs["current"])
    try:
        assert backend.read(slow=False).devices[0].power_watts == pytest.approx(612.345)
        write_state(state, [gaudi3(0, power_mw=300_000, link={**{p: 1 for p in range(24)}, 7: 0})])
        [d] = backend.read(slow=True).devices
    finally:
        backend.close()
    assert d.power_watts == pytest.approx(300.0)
    assert dict(d.slow.nic_ports_up)[7] is False


# --- failure isolation through the real binding


def test_an_older_driver_without_power_limit_and_driver_version_exports_the_rest(pyhlml, libs, state, caplog):
    write_state(state, [gaudi3(i) for i in range(4)])
    with caplog.at_level(logging.WARNING, logger="exporter.backends.hlml"):
        backend = opened(pyhlml, libs["older"])
        try:
            results = [backend.read(slow=True) for _ in range(3)]
            cached = dict(pyhlml.main._hlmlOBJ.func_ptr_cache)
        finally:
            backend.close()
    for result in results:
        assert result.errors == () and len(result.devices) == 4
        for d in result.devices:
            assert d.power_limit_watts is None
            assert d.identity.driver_version == "unknown"
            assert d.power_watts is not None and d.memory_used_bytes is not None and d.utilization is not None
            assert d.temperatures and d.slow.nic_ports_up and d.slow.ecc_corrected == 17
    assert "hlml_device_get_power_management_limit" not in cached  # never asked for after open()
    assert "hlml_get_driver_version" not in cached
    told = [r.getMessage() for r in caplog.records if "libhlml has no" in r.getMessage()]
    assert told == ["this driver's libhlml has no hlml_get_driver_version: metric gaudi_hpu_info driver_version "
                    "(says unknown) not exported",
                    "this driver's libhlml has no hlml_device_get_power_management_limit: metric "
                    "gaudi_hpu_power_limit_watts not exported"]


# what the oldest public hlml.h (HabanaAI/gohlml) lacks, plus the calls pyhlml wrapped later
OLDEST_DRIVER = OLDER_DRIVER + (
    "hlml_get_firmware_fit_version", "hlml_get_fw_os_version", "hlml_get_mac_addr_info", "hlml_nic_get_link",
    "hlml_device_get_module_id", "hlml_device_get_power_management_limit_constraints",
    "hlml_device_get_power_management_default_limit", "hlml_device_get_violation_status",
    "hlml_device_get_replaced_rows", "hlml_device_get_replaced_rows_pending_status", "hlml_device_get_pcie_throughput",
    "hlml_device_get_curr_pcie_link_generation", "hlml_device_get_curr_pcie_link_width", "hlml_device_get_ecc_mode",
    "hlml_device_get_temperature_threshold", "hlml_device_get_max_clock_info")


def test_the_oldest_driver_still_gives_the_basic_readings(pyhlml, tmp_path_factory, state):
    lib = libhlml.build(tmp_path_factory.mktemp("oldest"), omit=OLDEST_DRIVER)
    write_state(state, [gaudi3(0), gaudi3(1)])
    backend = opened(pyhlml, lib)
    try:
        result = backend.read(slow=True)
    finally:
        backend.close()
    assert result.errors == () and len(result.devices) == 2
    d = result.devices[0]
    assert d.identity.firmware_version == "unknown" and d.identity.driver_version == "unknown"
    assert d.utilization == pytest.approx(0.87) and d.power_watts == pytest.approx(612.345)
    assert d.memory_used_bytes == 98304 * MIB and dict(d.temperatures)["aip"] == 61.0
    assert d.slow.ecc_corrected == 17 and d.slow.pcie_replays == 9
    assert d.slow.nic_ports_up is None and d.throttle_seconds == () and d.slow.replaced_rows == ()
    assert dict(d.slow.pcie_link) == {"max_generation": 5, "max_width": 16}  # from the PCI info struct only


def test_a_driver_without_a_call_that_lists_devices_is_unavailable(pyhlml, tmp_path_factory, state):
    lib = libhlml.build(tmp_path_factory.mktemp("nouuid"), omit=("hlml_device_get_uuid",))
    write_state(state, [gaudi3(0)])
    with pytest.raises(BackendUnavailable, match="has no hlml_device_get_uuid.*--backend hlsmi"):
        opened(pyhlml, lib)


def test_a_timing_out_nic_port_costs_that_port_only(pyhlml, libs, state):
    write_state(state, [gaudi3(0, fail=PORT_TIMEOUT), gaudi3(1)])
    backend = opened(pyhlml, libs["current"])
    try:
        result = backend.read(slow=True)
    finally:
        backend.close()
    assert result.errors == ()
    d0 = by_index(result)[0]
    assert sorted(dict(d0.slow.nic_ports_up)) == [p for p in range(24) if p != 5]
    assert d0.power_watts == pytest.approx(612.345) and d0.memory_used_bytes == 98304 * MIB
    assert d0.utilization == pytest.approx(0.87)


@pytest.mark.parametrize(("fail", "lost_metric"), [
    ({"hlml_device_get_temperature.3": 2}, "hbm temperature"),  # INVALID_ARGUMENT on an optional sensor
    ({"hlml_device_get_clock_info.2": 10}, "mme clock"),
    ({"hlml_device_get_power_usage": 10}, "power"),
    ({"hlml_device_get_memory_info": 49}, "memory"),
])
def test_an_optional_call_failing_costs_that_metric_only(pyhlml, libs, state, fail, lost_metric):
    write_state(state, [gaudi3(0, fail=fail)])
    backend = opened(pyhlml, libs["current"])
    try:
        [d] = backend.read(slow=True).devices
    finally:
        backend.close()
    got = {"hbm temperature": "hbm" in dict(d.temperatures), "mme clock": "mme" in dict(d.clocks_hertz),
           "power": d.power_watts is not None, "memory": d.memory_used_bytes is not None}
    assert got == {k: k != lost_metric for k in got}
    assert d.utilization == pytest.approx(0.87)


def test_a_failing_utilisation_read_fails_the_device_which_keeps_its_identity(pyhlml, libs, state):
    write_state(state, [gaudi3(0), gaudi3(1)])
    backend = opened(pyhlml, libs["current"])
    try:
        write_state(state, [gaudi3(0), gaudi3(1, fail={"hlml_device_get_utilization_rates": 10})])
        results = [backend.read(slow=False) for _ in range(2)]
        write_state(state, [gaudi3(0), gaudi3(1)])
        healed = backend.read(slow=False)
    finally:
        backend.close()
    for result in results:
        assert sorted(by_index(result)) == [0]
        [err] = result.errors
        assert (err.index, err.uuid, err.serial) == (1, "01P4-HL3090A0-18-U4V193-22-07-01", "N16B3D0401")
    assert sorted(by_index(healed)) == [0, 1] and healed.errors == ()


def test_a_device_whose_uuid_cannot_be_read_fails_alone(pyhlml, libs, state):
    write_state(state, [gaudi3(0), gaudi3(1, fail={"hlml_device_get_uuid": 49})])
    backend = opened(pyhlml, libs["current"])
    try:
        result = backend.read(slow=False)
        write_state(state, [gaudi3(0), gaudi3(1)])
        healed = backend.read(slow=False)
    finally:
        backend.close()
    assert sorted(by_index(result)) == [0]
    [err] = result.errors
    assert err.index == 1 and "hlmlDeviceGetUUID" in err.message and "49" in err.message
    assert sorted(by_index(healed)) == [0, 1] and by_index(healed)[1].identity.uuid.endswith("-01")


def test_a_lost_device_keeps_its_identity_then_disappears(pyhlml, libs, state):
    write_state(state, [gaudi3(0), gaudi3(1), gaudi3(2)])
    backend = opened(pyhlml, libs["current"])
    try:
        write_state(state, [gaudi3(0), gaudi3(1), gaudi3(2, lost=1)])
        lost = backend.read(slow=True)
        write_state(state, [gaudi3(0), gaudi3(1)])  # then the driver stops listing it
        gone = backend.read(slow=False)
    finally:
        backend.close()
    assert sorted(by_index(lost)) == [0, 1]
    [err] = lost.errors
    assert err.uuid == "01P4-HL3090A0-18-U4V193-22-07-02" and "lost" in err.message
    assert sorted(by_index(gone)) == [0, 1] and gone.errors == ()


def test_not_supported_is_asked_again_on_the_slow_cadence(pyhlml, libs, state):
    dev = gaudi3(0)
    del dev["energy_mj"]
    write_state(state, [dev])
    backend = opened(pyhlml, libs["current"])
    try:
        assert backend.read(slow=False).devices[0].energy_joules is None
        write_state(state, [gaudi3(0)])  # a firmware update later, or a transient answer
        assert backend.read(slow=False).devices[0].energy_joules is None  # not asked between slow ticks
        assert backend.read(slow=True).devices[0].energy_joules == pytest.approx(123_456.789)
    finally:
        backend.close()


def test_an_old_pci_struct_gives_the_bus_id_and_no_garbage_link_values(pyhlml, libs, state):
    write_state(state, [gaudi3(0)])
    backend = opened(pyhlml, libs["old_pci"])
    try:
        [d] = backend.read(slow=True).devices
    finally:
        backend.close()
    assert d.identity.pci_bus_id == "0000:19:00.0"
    link = dict(d.slow.pcie_link)
    assert link == {"generation": 5, "width": 16}  # the dedicated calls; the shifted caps strings are dropped


def test_kernel_driver_not_loaded_is_unavailable_and_prints_nothing(pyhlml, libs, state, capfd):
    write_state(state, [gaudi3(0)], init_error=9)
    with pytest.raises(BackendUnavailable, match="kernel driver is not loaded"):
        opened(pyhlml, libs["current"])
    assert capfd.readouterr().out == ""


# --- the daemon, scraped over HTTP


def _series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


@pytest.mark.parametrize("release", pyhlml_releases.RELEASES)
def test_daemon_on_an_older_driver_exports_every_hpu_and_survives_a_timing_out_port(release, libs, tmp_path):
    if pyhlml_releases.version(release) is None:
        pytest.skip(f"habana-pyhlml ({release}) not installed here")
    state = tmp_path / "state.txt"
    write_state(state, [gaudi3(i) for i in range(8)])
    env = libhlml.subprocess_env(libs["older"], state, pyhlml_releases.directory(release))
    where = subprocess.run([sys.executable, "-c", "import pyhlml.hlml_lib as m; print(m.__file__, "
                            "m.LibHLML.__init__.__defaults__[0])"], env={**_base_env(), **env},
                           capture_output=True, text=True, check=True).stdout.split()
    assert where[1] == str(libs["older"])
    assert (str(pyhlml_releases.LOWEST_DIR) in where[0]) == (release == "lowest")
    args = ["--backend", "hlml", "--interval", "0.5", "--slow-interval", "0.5", "--no-collector.pricing",
            "--no-collector.spot", "--no-collector.checkpoint", "--collector.hpu.nic-ports", "per-port"]
    with exporter(args, env=env) as (proc, base):
        text = requests.get(base + "/metrics", timeout=5).text
        for name in ("gaudi_hpu_power_watts", "gaudi_hpu_memory_used_bytes", "gaudi_hpu_utilization_ratio",
                     "gaudi_hpu_pcie_link_width", "gaudi_hpu_hbm_replaced_rows"):
            assert len({s.split('hpu="')[1].split('"')[0] for s in _series(text, name)}) == 8, name
        assert _series(text, "gaudi_hpu_power_limit_watts") == []
        assert all('driver_version="unknown"' in s for s in _series(text, "gaudi_hpu_info"))
        assert len(_series(text, "gaudi_hpu_nic_port_up")) == 8 * 24

        write_state(state, [gaudi3(i, fail=PORT_TIMEOUT if i == 3 else {}) for i in range(8)])

        def port_5_gone() -> str | None:
            body = requests.get(base + "/metrics", timeout=5).text
            return body if not any('hpu="3"' in s and 'port="5"' in s
                                   for s in _series(body, "gaudi_hpu_nic_port_up")) else None

        text = wait_for(port_5_gone, 15, what="port 5 of HPU 3 to drop out")
        assert len(_series(text, "gaudi_hpu_nic_port_up")) == 8 * 24 - 1
        for name in ("gaudi_hpu_power_watts", "gaudi_hpu_memory_used_bytes", "gaudi_hpu_utilization_ratio"):
            assert any('hpu="3"' in s for s in _series(text, name)), name
        assert 'gaudi_hpu_up{hpu="3",uuid="01P4-HL3090A0-18-U4V193-22-07-03"} 1.0' in text


def _base_env() -> dict[str, str]:
    import os

    return dict(os.environ)
