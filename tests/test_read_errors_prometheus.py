"""gaudi_hpu_read_errors_total exists at 0 for every known HPU from its first scrape, so a real Prometheus'
increase() over a window holding a device's first error burst counts all of it (a counter that appears at 1
loses its first value to increase())."""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import procs
from tests.test_device_output_bounds import FAKE_HLSMI, damaged_fixture

JOB = "gaudi-exporter"
HPU2 = '{hpu="2", uuid="01P4-HL3090A0-18-U4V193-22-07-02"}'


def exporter_count(base: str) -> float:
    for fam in text_string_to_metric_families(requests.get(base + "/metrics", timeout=5).text):
        for s in fam.samples:
            if s.name == "gaudi_hpu_read_errors_total" and s.labels.get("hpu") == "2":
                return s.value
    raise AssertionError("no gaudi_hpu_read_errors_total for HPU 2")


def one(prom: str, expr: str) -> float:
    result = procs.query(prom, expr)
    assert len(result) == 1, f"{expr}: {result}"
    return float(result[0]["value"][1])


@pytest.mark.slow
def test_increase_counts_the_first_error_burst_of_a_device(tmp_path):
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    capture = fixtures / "gaudi3-8x.csv"
    damaged_fixture(capture, {})
    port = procs.free_port()
    env = {"FAKE_HLSMI_SCENARIO": "normal", "FAKE_HLSMI_FIXTURES": str(fixtures)}
    args = ["--backend", "hlsmi", "--hlsmi.path", str(FAKE_HLSMI), "--interval", "1",
            "--pricing.static.usd-per-hour", "10"]
    with procs.prometheus(tmp_path / "prom", {JOB: [f"127.0.0.1:{port}"]}) as prom, \
            procs.exporter(args, env=env, port=port) as (_, base):
        started = time.time()
        procs.wait_for(lambda: procs.query(prom, f"count_over_time(gaudi_hpu_read_errors_total{HPU2}[1h]) >= 3"),
                       30, what="three scrapes of HPU 2's error counter")
        # from the first scrape on: a series for each of the 8 HPUs and one for errors naming no known HPU
        assert one(prom, "count(gaudi_hpu_read_errors_total)") == 9
        assert one(prom, f"max_over_time(gaudi_hpu_read_errors_total{HPU2}[1h])") == 0
        assert one(prom, f"count_over_time(gaudi_hpu_read_errors_total{HPU2}[1h])") == \
            one(prom, f"count_over_time(gaudi_hpu_up{HPU2}[1h])")

        damaged_fixture(capture, {2: {"power.draw": "7#4 W"}})  # a short burst: HPU 2's line is garbled
        procs.wait_for(lambda: exporter_count(base) >= 1, 15, what="HPU 2's first read error")
        damaged_fixture(capture, {})
        time.sleep(2.5)  # the last damaged read has been counted
        final = exporter_count(base)
        procs.wait_for(lambda: procs.query(prom, f"gaudi_hpu_read_errors_total{HPU2} == {final}"), 15,
                       what="Prometheus scraping the final count")
        time.sleep(3)
        window = f"{int(time.time() - started) + 30}s"  # holds the exporter's whole life, zeros included
        # evaluated at the last scrape, so increase() has nothing to extrapolate at either end (the series starts
        # at 0 inside the window): it must count the whole burst
        last = one(prom, f"timestamp(gaudi_hpu_read_errors_total{HPU2})")
        result = procs.query(prom, f"increase(gaudi_hpu_read_errors_total{HPU2}[{window}])", at=last)
        counted = float(result[0]["value"][1])
    assert final >= 1
    assert final <= counted <= final * 1.05, (counted, final)


def test_every_per_hpu_counter_is_there_at_0_from_the_first_tick():
    """Busy seconds and cost per HPU used to appear one tick late, already counting the first interval."""
    from exporter.backends.simulated import SimulatedBackend
    from exporter.collectors.hpu import HpuCollector
    from exporter.collectors.pricing import PricingCollector
    from exporter.loop import Loop
    from exporter.pricing.base import FixedSource, NodeIdentity, Price

    t = [1000.0]
    source = FixedSource("static", Price(10.0, "static", 0.0))
    pc = PricingCollector(source, NodeIdentity(), clock=lambda: t[0])
    pc.attempted.set()
    loop = Loop([HpuCollector(SimulatedBackend(devices=4, seed=1, interval=1.0)), pc], interval=1.0, version="t",
                backend="simulated", clock=lambda: t[0])
    first = loop.tick().text.decode()
    values: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(first):
        for s in fam.samples:
            values.setdefault(s.name, []).append(s.value)
    for name in ("gaudi_hpu_read_errors_total", "gaudi_hpu_busy_seconds_total", "gaudi_hpu_cost_usd_total",
                 "gaudi_hpu_idle_cost_usd_total"):
        assert len(values.get(name, [])) >= 4 and set(values[name]) == {0.0}, name
    assert values["gaudi_node_cost_usd_total"] == [0.0]
