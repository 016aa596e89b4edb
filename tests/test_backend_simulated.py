"""The simulated backend: deterministic by seed, its profiles behave as documented, and it says it is simulated."""

from __future__ import annotations

import logging

import pytest

from exporter.backends import create
from exporter.backends.simulated import LOST_AFTER_TICKS, MODELS, SimulatedBackend


def run(ticks: int = 30, **kw) -> list:
    b = SimulatedBackend(interval=5.0, **kw)
    return [b.read(slow=(t % 12 == 0)) for t in range(ticks)]


def test_same_seed_same_values_other_seed_other_values():
    assert run(seed=7) == run(seed=7)
    assert run(seed=7) != run(seed=8)


def test_gaudi3_defaults_eight_devices_128_gib_900_w():
    r = run(ticks=1)[0]
    assert len(r.devices) == 8 and not r.errors
    for d in r.devices:
        assert d.identity.name == "HL-325L" and d.identity.model == "Gaudi 3"
        assert d.memory_total_bytes == 128 * 1024**3
        assert d.power_limit_watts == 900
        assert d.identity.driver_version == "simulated"  # visibly not a real driver
    assert len({d.identity.uuid for d in r.devices}) == 8


@pytest.mark.parametrize("profile, low, high", [("training", 0.85, 1.0), ("idle", 0.0, 0.05),
                                                ("degraded", 0.0, 0.25)])
def test_profiles_set_the_utilisation(profile, low, high):
    utils = [d.utilization for r in run(profile=profile) for d in r.devices]
    assert all(low <= u <= high for u in utils)


def test_bursty_alternates_busy_and_idle():
    utils = [d.utilization for r in run(profile="bursty", ticks=48) for d in r.devices if d.identity.index == 0]
    assert max(utils) > 0.7 and min(utils) < 0.05


def test_degraded_loses_one_device_and_shows_faults():
    results = run(profile="degraded", ticks=LOST_AFTER_TICKS + 3)
    assert len(results[0].devices) == 8
    last = results[-1]
    assert len(last.devices) == 7 and [e.index for e in last.errors] == [7]
    hot = last.devices[0]
    assert dict(hot.throttled)["thermal"] is True and dict(hot.temperatures)["aip"] > 95
    slow = results[0].devices
    assert slow[0].slow.ecc_uncorrected == 1
    assert (0, False) in slow[1].slow.nic_ports_up


def test_energy_grows_with_power_times_interval():
    b = SimulatedBackend(devices=1, interval=5.0)
    e = [b.read(slow=False).devices[0] for _ in range(3)]
    assert e[2].energy_joules == pytest.approx(e[1].energy_joules + 5.0 * e[2].power_watts, abs=0.5)  # both are rounded


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="profile"):
        SimulatedBackend(profile="gpu")
    with pytest.raises(ValueError, match="model"):
        SimulatedBackend(model="H100")
    assert set(MODELS) == {"HL-205", "HL-225", "HL-325L"}


def test_the_log_says_it_is_simulated(caplog):
    with caplog.at_level(logging.WARNING):
        b = create("simulated", simulated_devices=2)
    assert b.name == "simulated"
    assert "SIMULATED backend" in caplog.text and "not real readings" in caplog.text
