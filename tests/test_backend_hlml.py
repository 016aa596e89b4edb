"""The HLML backend against a protocol-faithful fake pyhlml, and the real pyhlml without a driver."""

from __future__ import annotations

import ctypes
import inspect
import os

import pytest

from exporter import backends
from exporter.backends.base import BackendUnavailable
from exporter.backends.hlml import LIBHLML_PATH, HlmlBackend, generation
from tests.fakes.fake_pyhlml import FUNCTIONS, MIB, FakeDevice, FakePyhlml

HAS_DRIVER = os.path.exists(LIBHLML_PATH)


def three_devices() -> list[FakeDevice]:
    return [
        FakeDevice(uuid=f"01P4-HL3090A0-18-U4V193-22-07-0{i}".encode(), serial=f"N16B3D040{i}".encode(),
                   bus_id=f"0000:{0x19 + 0x10 * i:02x}:00.0".encode(), minor=i, power_mw=600_000 + i * 1000)
        for i in range(3)
    ]


def opened(fake: FakePyhlml) -> HlmlBackend:
    backend = HlmlBackend(module=fake)
    backend.open()
    return backend


def by_index(result) -> dict:
    return {d.identity.index: d for d in result.devices}


# --- the fake is faithful to the installed pyhlml


def test_fake_has_the_real_pyhlml_functions_and_signatures():
    pyhlml = pytest.importorskip("pyhlml")
    fake = FakePyhlml()
    for fn_name in FUNCTIONS:
        real = inspect.signature(getattr(pyhlml, fn_name))
        ours = inspect.signature(getattr(fake, fn_name))
        assert [(p.name, p.default) for p in ours.parameters.values()] == \
            [(p.name, p.default) for p in real.parameters.values()], fn_name


def test_fake_structures_have_the_real_field_names():
    generated = pytest.importorskip("pyhlml.pyhlml_types_generated")
    from tests.fakes import fake_pyhlml

    for struct in ("c_hlml_pci_info", "c_hlml_pci_cap", "c_hlml_utilization", "c_hlml_memory"):
        real = [name for name, _ in getattr(generated, struct)._fields_]
        assert [name for name, _ in getattr(fake_pyhlml, struct)._fields_] == real, struct


def test_fake_error_classes_appear_only_after_init_like_the_real_ones(capfd):
    pyhlml = pytest.importorskip("pyhlml")
    fake = FakePyhlml()
    assert not [n for n in vars(fake.hlml_error) if n.startswith("HLMLError_")]
    no_lib = FakePyhlml(library_present=False)
    with pytest.raises(no_lib.HLMLError) as failed:
        no_lib.hlmlInit()
    assert failed.value.value == 1 and type(failed.value).__name__ == "HLMLError_Uninitialized"
    with pytest.raises(AttributeError):  # like pyhlml after a failed load
        no_lib.hlmlDeviceGetCount()
    fake.hlmlInit()
    if not HAS_DRIVER:
        with pytest.raises(pyhlml.HLMLError):
            pyhlml.hlmlInit()
    capfd.readouterr()
    real_names = {n for n in dir(pyhlml.hlml_error) if n.startswith("HLMLError_")}
    assert {n for n in vars(fake.hlml_error) if n.startswith("HLMLError_")} == real_names
    err = fake.HLMLError(3)
    assert type(err).__name__ == "HLMLError_NotSupported" and err.value == 3
    assert str(err) == str(pyhlml.HLMLError(3))


# --- the real pyhlml on this machine


@pytest.mark.skipif(HAS_DRIVER, reason="libhlml is installed here")
def test_real_pyhlml_without_driver_is_unavailable_and_prints_nothing(capfd):
    pytest.importorskip("pyhlml")
    backend = HlmlBackend()
    with pytest.raises(BackendUnavailable) as exc:
        backend.open()
    assert LIBHLML_PATH in str(exc.value)
    assert "could not be loaded" in str(exc.value)
    out, _ = capfd.readouterr()
    assert out == ""
    backend.close()  # after a failed open, close must not touch the half-initialised library
    assert capfd.readouterr().out == ""


def test_missing_library_in_fake_is_unavailable_and_prints_nothing(capfd):
    with pytest.raises(BackendUnavailable, match="could not be loaded"):
        opened(FakePyhlml(library_present=False))
    assert capfd.readouterr().out == ""


def test_kernel_driver_not_loaded_says_so():
    with pytest.raises(BackendUnavailable, match="kernel driver is not loaded"):
        opened(FakePyhlml(init_error=9))


# --- values and units


def test_reads_identity_and_values_in_base_units():
    dev = FakeDevice(util_aip=87, memory_total=131072 * MIB, memory_used=98304 * MIB, power_mw=612_345,
                     power_limit_mw=850_000, energy_mj=123_456_789, temperatures={0: 61, 1: 44, 2: 40, 3: 52},
                     clocks_mhz={0: 1600, 1: 1200})
    backend = opened(FakePyhlml([dev], driver_version=b"1.22.1-97ec1a4"))
    result = backend.read(slow=False)
    assert result.errors == ()
    [d] = result.devices
    ident = d.identity
    assert ident.index == 0
    assert ident.uuid == "01P4-HL3090A0-18-U4V193-22-07-00"
    assert ident.serial == "N16B3D0400"
    assert ident.name == "HL-325L"
    assert ident.model == "Gaudi 3"
    assert ident.pci_bus_id == "0000:19:00.0"
    assert ident.driver_version == "1.22.1-97ec1a4"
    assert ident.firmware_version == "1.22.1-fw-57.2.1-sec-9"
    assert ident.minor == 0
    assert d.utilization == pytest.approx(0.87)
    assert d.memory_total_bytes == 137_438_953_472  # 128 GiB
    assert d.memory_used_bytes == 103_079_215_104  # 96 GiB
    assert d.power_watts == pytest.approx(612.345)
    assert d.power_limit_watts == pytest.approx(850.0)
    assert d.energy_joules == pytest.approx(123_456.789)
    assert dict(d.temperatures) == {"aip": 61.0, "board": 44.0, "other": 40.0, "hbm": 52.0}
    assert dict(d.clocks_hertz) == {"soc": 1.6e9, "ic": 1.2e9}
    assert dict(d.throttled) == {"power": False, "thermal": False}
    assert d.slow is None  # only slow ticks carry ECC / NIC / PCIe


@pytest.mark.parametrize(("mask", "power", "thermal"), [(0b00, False, False), (0b01, True, False),
                                                       (0b10, False, True), (0b11, True, True)])
def test_throttle_reason_bits(mask, power, thermal):
    backend = opened(FakePyhlml([FakeDevice(throttle_reasons=mask)]))
    [d] = backend.read(slow=False).devices
    assert dict(d.throttled) == {"power": power, "thermal": thermal}


def test_slow_read_has_aggregate_ecc_pcie_nic_links_and_firmware():
    links = {p: p != 5 for p in range(24)}
    links[70] = False
    dev = FakeDevice(ecc={(0, 1): 17, (1, 1): 2, (0, 0): 4, (1, 0): 1}, pcie_replays=9,
                     mac_masks=((0x00FFFFFF, 0), (0x00E00000, 1 << 6)), links=links)  # port 70: ext mask only
    backend = opened(FakePyhlml([dev]))
    [d] = backend.read(slow=True).devices
    assert d.slow.ecc_corrected == 17 and d.slow.ecc_uncorrected == 2
    assert d.slow.pcie_replays == 9
    ports = dict(d.slow.nic_ports_up)
    assert sorted(ports) == [*range(24), 70]
    assert ports[5] is False and ports[70] is False and ports[0] is True
    assert d.slow.firmware_version == "1.22.1-fw-57.2.1-sec-9"


@pytest.mark.parametrize(("name", "gen"), [
    ("HL-205", "Gaudi 1"), ("HL-225", "Gaudi 2"), ("HL-325L", "Gaudi 3"), ("HL-335", "Gaudi 3"),
    ("HL-338", "Gaudi 3"), ("HL-328", "Gaudi 3"), ("HL-388", "Gaudi 3"), ("HL-999", ""),
])
def test_model_generation_from_name(name, gen):
    assert generation(name) == gen
    backend = opened(FakePyhlml([FakeDevice(name=name.encode())]))
    [d] = backend.read(slow=False).devices
    assert d.identity.model == gen


# --- unsupported calls, errors, lost devices


def test_unsupported_calls_are_skipped_between_slow_ticks_and_asked_again_on_them():
    devs = three_devices()
    devs[0].unsupported = {"hlmlDeviceGetTotalEnergyConsumption", "hlmlDeviceGetMacAddrInfo"}
    devs[0].temperatures = {0: 60, 1: 40}  # no HBM sensor
    fake = FakePyhlml(devs)
    backend = opened(fake)  # open() reads once: device 0 learns what it lacks
    assert fake.calls["hlmlDeviceGetTotalEnergyConsumption"] == 3
    fake.calls.clear()
    for _ in range(3):
        result = backend.read(slow=False)
        assert result.errors == ()
        d0, d1 = by_index(result)[0], by_index(result)[1]
        assert d0.energy_joules is None and d1.energy_joules is not None
        assert dict(d0.temperatures) == {"aip": 60.0, "board": 40.0}
        assert d0.power_watts == pytest.approx(600.0)
    # between slow ticks device 0 is not asked again for energy; devices 1 and 2 on every read
    assert fake.calls["hlmlDeviceGetTotalEnergyConsumption"] == 2 * 3
    fake.calls.clear()
    # a slow tick asks again: a transient NOT_SUPPORTED does not lose the metric until restart
    devs[0].unsupported = set()
    [d0] = [d for d in backend.read(slow=True).devices if d.identity.index == 0]
    assert fake.calls["hlmlDeviceGetTotalEnergyConsumption"] == 3
    assert d0.energy_joules is not None and d0.slow.nic_ports_up is not None


@pytest.mark.parametrize("code", [10, 2, 49])  # TIMEOUT, INVALID_ARGUMENT, UNKNOWN
def test_a_failing_optional_call_costs_that_metric_only(code):
    devs = three_devices()
    devs[1].failing = {"hlmlDeviceGetPowerUsage": code}
    fake = FakePyhlml(devs)
    backend = opened(fake)
    result = backend.read(slow=False)
    assert result.errors == ()
    d1 = by_index(result)[1]
    assert d1.power_watts is None
    assert d1.utilization == pytest.approx(0.87) and d1.memory_used_bytes is not None
    devs[1].failing = {}
    assert by_index(backend.read(slow=False))[1].power_watts == pytest.approx(601.0)


def test_a_failing_required_call_fails_the_device_which_keeps_its_identity():
    devs = three_devices()
    fake = FakePyhlml(devs)
    backend = opened(fake)
    devs[1].failing = {"hlmlDeviceGetUtilizationRates": 10}
    for _ in range(3):  # the device keeps failing: its uuid and serial stay on the error
        result = backend.read(slow=False)
        assert sorted(by_index(result)) == [0, 2]
        [err] = result.errors
        assert err.index == 1 and err.uuid == "01P4-HL3090A0-18-U4V193-22-07-01" and err.serial == "N16B3D0401"
        assert "hlmlDeviceGetUtilizationRates" in err.message and "10" in err.message
    handles_before = fake.calls["hlmlDeviceGetHandleByIndex"]
    devs[1].failing = {}
    result = backend.read(slow=False)
    assert result.errors == () and sorted(by_index(result)) == [0, 1, 2]
    assert fake.calls["hlmlDeviceGetHandleByIndex"] == handles_before + 1  # only the failed device's


def test_a_missing_c_symbol_is_found_once_logged_once_and_never_called(caplog):
    fake = FakePyhlml(three_devices(), missing_symbols=frozenset({"hlml_device_get_power_management_limit",
                                                                   "hlml_get_driver_version"}))
    with caplog.at_level("WARNING"):
        backend = opened(fake)
        for _ in range(3):
            result = backend.read(slow=True)
    assert result.errors == () and len(result.devices) == 3
    for d in result.devices:
        assert d.power_limit_watts is None and d.power_watts is not None and d.identity.driver_version == "unknown"
    assert fake.calls["hlmlDeviceGetPowerManagementLimit"] == 0
    assert fake.calls["hlmlGetDriverVersion"] == 0
    lines = [r.getMessage() for r in caplog.records if "has no" in r.getMessage()]
    assert lines == ["this driver's libhlml has no hlml_get_driver_version: metric gaudi_hpu_info driver_version "
                     "(says unknown) not exported",
                     "this driver's libhlml has no hlml_device_get_power_management_limit: metric "
                     "gaudi_hpu_power_limit_watts not exported"]


def test_device_lost_mid_run_then_gone():
    devs = three_devices()
    fake = FakePyhlml(devs)
    backend = opened(fake)
    assert len(backend.read(slow=False).devices) == 3

    devs[2].lost = True  # the driver answers AIP_IS_LOST for it
    result = backend.read(slow=True)
    assert sorted(by_index(result)) == [0, 1]
    [err] = result.errors
    assert err.index == 2 and err.uuid == "01P4-HL3090A0-18-U4V193-22-07-02"
    assert "lost" in err.message

    fake.devices.pop()  # then the device count drops
    result = backend.read(slow=False)
    assert sorted(by_index(result)) == [0, 1] and result.errors == ()


def test_whole_library_failure_raises_from_read():
    fake = FakePyhlml(three_devices())
    backend = opened(fake)
    backend.close()
    with pytest.raises(RuntimeError, match="before open"):
        backend.read(slow=False)
    fake2 = FakePyhlml(three_devices())
    backend2 = opened(fake2)
    fake2.hlmlShutdown()  # library torn down under us: every call answers UNINITIALIZED
    with pytest.raises(RuntimeError, match="hlmlDeviceGetCount"):
        backend2.read(slow=False)


def test_close_shuts_hlml_down():
    fake = FakePyhlml()
    backend = opened(fake)
    backend.close()
    assert fake.calls["hlmlShutdown"] == 1
    with pytest.raises(fake.HLMLError):
        fake.hlmlDeviceGetCount()


def test_handles_are_ctypes_pointers_like_pyhlml():
    fake = FakePyhlml()
    fake.hlmlInit()
    assert isinstance(fake.hlmlDeviceGetHandleByIndex(0), ctypes.c_void_p)


# --- creation through exporter.backends


def test_create_hlml_with_injected_module():
    backend = backends.create("hlml", hlml_module=FakePyhlml(three_devices()))
    try:
        assert backend.name == "hlml"
        assert (backend.model.name, backend.model.generation) == ("HL-325L", "Gaudi 3")
        assert len(backend.read(slow=False).devices) == 3
    finally:
        backend.close()


def test_create_auto_without_libhlml_or_hlsmi_names_both_and_suggests_simulated(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no hl-smi anywhere
    with pytest.raises(BackendUnavailable) as exc:
        backends.create("auto", hlml_module=FakePyhlml(library_present=False))
    msg = str(exc.value)
    assert "hlml" in msg and LIBHLML_PATH in msg
    assert "hl-smi" in msg
    assert "--backend simulated" in msg
    assert capfd.readouterr().out == ""
