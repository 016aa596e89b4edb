"""The cost engine against exact integrals, driven by a controllable clock."""

from __future__ import annotations

import math

import pytest

from exporter.accounting import Accountant, Rates
from exporter.readings import DeviceIdentity, DeviceReading


def dev(i: int, util: float, *, energy: float | None = None, power: float | None = None,
        mem: tuple[int, int] = (50, 100)) -> DeviceReading:
    return DeviceReading(identity=DeviceIdentity(index=i, uuid=f"U{i}"), utilization=util, energy_joules=energy,
                         power_watts=power, memory_used_bytes=mem[0], memory_total_bytes=mem[1])


def utilisation(i: int, t: float) -> float:
    """True utilisation of device i at time t: a square wave, with a different phase on each device."""
    return 0.9 if (t // 60 + i) % 3 else 0.1


def reading(i: int, t: float) -> float:
    """What the driver reports at tick t: the utilisation of the moments just before it."""
    return utilisation(i, t - 1e-9)


def exact(f, a: float, b: float, step: float = 0.5) -> float:
    """Integral of f over [a, b] by the midpoint rule on a grid fine enough for these step functions."""
    n = round((b - a) / step)
    return sum(f(a + (k + 0.5) * step) for k in range(n)) * step


def test_counters_match_the_exact_integral_through_a_price_step_and_a_paused_tick():
    # ticks every 5 s for 2 h; the process is paused from 1205 s to 1255 s (one 50 s tick); the price steps
    # from 10 to 16 USD/h at 3602.5 s, mid-interval: the engine sees it at the next tick, the past is not repriced
    times = [float(t) for t in range(0, 7200, 5) if not 1205 < t < 1255]
    step_at = 3602.5
    price_at = lambda t: 10.0 if t < step_at else 16.0  # noqa: E731
    acct = Accountant()
    observed = 10.0
    for t in times:
        observed = price_at(t)  # the price source is read at each tick
        acct.advance(t, [dev(i, reading(i, t)) for i in range(4)], Rates(paid_usd_per_hour=observed))

    end = times[-1]
    node = exact(lambda t: price_at(t) / 3600, 0, end)
    assert acct.node_cost_usd == pytest.approx(node, rel=1e-3)
    for i in range(4):
        c = acct.devices[(f"U{i}", ())]
        busy = exact(lambda t, i=i: utilisation(i, t), 0, end)
        idle = exact(lambda t, i=i: price_at(t) / 4 / 3600 * (1 - utilisation(i, t)), 0, end)
        assert c.busy_seconds == pytest.approx(busy, rel=1e-3)
        assert c.idle_cost_usd == pytest.approx(idle, rel=1e-3)
    assert sum(c.cost_usd for c in acct.devices.values()) == pytest.approx(acct.node_cost_usd, rel=1e-9)


def test_the_paused_interval_is_integrated_once_over_real_elapsed_time():
    acct = Accountant()
    acct.advance(0, [dev(0, 1.0)], Rates(paid_usd_per_hour=36.0))
    acct.advance(5, [dev(0, 1.0)], Rates(paid_usd_per_hour=36.0))
    acct.advance(605, [dev(0, 1.0)], Rates(paid_usd_per_hour=36.0))  # 600 s pause
    assert acct.node_cost_usd == pytest.approx(36.0 * 605 / 3600)
    acct.advance(605, [dev(0, 1.0)], Rates(paid_usd_per_hour=36.0))  # same instant again: nothing added
    assert acct.node_cost_usd == pytest.approx(36.0 * 605 / 3600)


def test_counters_never_decrease_and_are_never_nan_whatever_the_input():
    acct = Accountant()
    bad = [float("nan"), float("inf"), -5.0, 2.0, None]
    prev = (0.0, 0.0, 0.0)
    for k in range(50):
        u = bad[k % len(bad)]
        price = [float("nan"), -1.0, 12.0, None, float("inf")][k % 5]
        acct.advance(k * 5.0, [dev(0, u, power=u)], Rates(paid_usd_per_hour=price, on_demand_usd_per_hour=price,
                                                           spot=True, electricity_usd_per_kwh=price))
        c = acct.devices.get(("U0", ()))
        now = (acct.node_cost_usd, c.idle_cost_usd if c else 0.0, acct.energy["U0"].total_joules)
        assert all(math.isfinite(x) for x in now)
        assert all(b >= a for a, b in zip(prev, now, strict=True))
        prev = now


def test_energy_counter_survives_a_driver_reload_and_falls_back_to_power():
    acct = Accountant()
    acct.advance(0, [dev(0, 0.5, energy=1000.0)], Rates())
    acct.advance(5, [dev(0, 0.5, energy=3000.0)], Rates())
    acct.advance(10, [dev(0, 0.5, energy=500.0)], Rates())  # driver reloaded: its counter restarted
    assert acct.energy["U0"].total_joules == pytest.approx(1000 + 2000 + 500)
    acct.advance(0, [dev(1, 0.5, power=100.0)], Rates())
    b = Accountant()
    b.advance(0, [dev(1, 0.5, power=100.0)], Rates())
    b.advance(10, [dev(1, 0.5, power=300.0)], Rates())
    assert b.energy["U1"].total_joules == pytest.approx(3000.0)


def test_energy_cost_spot_savings_and_cost_at_risk():
    acct = Accountant()
    r = Rates(paid_usd_per_hour=4.0, on_demand_usd_per_hour=13.109, spot=True, electricity_usd_per_kwh=0.2, pue=1.5)
    acct.advance(0, [dev(0, 1.0, power=1000.0)], r)
    acct.advance(3600, [dev(0, 1.0, power=1000.0)], r)  # one hour at 1 kW
    assert acct.energy_cost_usd == pytest.approx(1.0 * 0.2 * 1.5)
    assert acct.spot_savings_usd == pytest.approx(13.109 - 4.0)
    acct.advance(7200, [dev(0, 1.0, power=1000.0)], r)
    assert acct.cost_at_risk(5400) == pytest.approx(4.0 * 0.5)  # cost since a checkpoint half an hour ago
    assert acct.cost_at_risk(-100) == pytest.approx(acct.node_cost_usd)
    assert acct.cost_at_risk(None) is None


def test_namespace_costs_add_up_to_node_cost_minus_unallocated_across_pod_churn():
    acct = Accountant()
    owners_by_time = [
        {"U0": ("ml", "a", "c"), "U1": ("ml", "a", "c")},
        {"U0": ("ml", "a", "c"), "U2": ("research", "b", "c")},
        {"U3": ("research", "b", "c")},  # pod b moved to device 3, pod a ended
        {},
    ]
    t = 0.0
    history: dict = {}
    for owners in owners_by_time:
        for _ in range(10):
            acct.advance(t, [dev(i, 0.5) for i in range(4)], Rates(paid_usd_per_hour=8.0), owners, 0)
            for key, c in acct.devices.items():
                assert c.cost_usd >= history.get(key, 0.0)
                history[key] = c.cost_usd
            t += 5
    ns_total = sum(acct.namespace_cost_usd.values())
    assert ns_total + acct.unallocated_cost_usd == pytest.approx(acct.node_cost_usd)
    assert set(acct.namespace_cost_usd) == {"ml", "research"}
    assert ("U3", ("research", "b", "c")) in acct.devices


def test_efficiency_follows_the_design_formula():
    acct = Accountant(efficiency_target=0.8)
    acct.advance(0, [dev(0, 0.4, mem=(50, 100)), dev(1, 1.0, mem=(100, 100))], Rates())
    expected = (min(1, (0.7 * 0.4 + 0.3 * 0.5) / 0.8) + 1.0) / 2
    assert acct.efficiency == pytest.approx(expected)
