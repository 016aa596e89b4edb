"""The HPU collector between backend and loop: throttle time that never decreases, and honest recovery logs."""

from __future__ import annotations

import logging

import pytest

from exporter.collectors.hpu import HpuCollector
from exporter.readings import BackendResult, DeviceError, DeviceIdentity, DeviceReading


class Scripted:
    """A backend that returns the results a test lists, one per read."""

    name = "scripted"

    def __init__(self, results: list[BackendResult]) -> None:
        self.results = list(results)

    def read(self, *, slow: bool) -> BackendResult:
        return self.results.pop(0)


def reading(i: int, **kw) -> DeviceReading:
    return DeviceReading(identity=DeviceIdentity(index=i, uuid=f"U{i}", serial=f"S{i}"), utilization=0.5, **kw)


def test_throttle_seconds_stay_monotonic_across_a_driver_reload():
    raw = [100.0, 130.0, 5.0, 20.0]  # the driver restarted its count between the 2nd and 3rd reads
    c = HpuCollector(Scripted([BackendResult(devices=(reading(0, throttle_seconds=(("thermal", r),)),))
                               for r in raw]))
    totals = [dict(c.collect(float(t)).devices[0].throttle_seconds)["thermal"] for t in range(4)]
    assert totals == [100.0, 130.0, 135.0, 150.0]


def test_readable_again_only_when_it_is(caplog):
    err = DeviceError(1, "U1", "hlmlDeviceGetUtilizationRates failed: HLML error 10 (timeout)", serial="S1")
    c = HpuCollector(Scripted([
        BackendResult(devices=(reading(0),), errors=(err,)),
        BackendResult(devices=(reading(0),), errors=(err,)),  # still failing: nothing new logged
        BackendResult(devices=(reading(0), reading(1))),  # readable again
        BackendResult(devices=(reading(0),), errors=(err,)),
        BackendResult(devices=(reading(0),)),  # then the driver stops listing it: not "readable again"
    ]))
    with caplog.at_level(logging.INFO, logger="exporter.collectors.hpu"):
        for t in range(5):
            c.collect(float(t))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "HPU 1 (uuid U1, serial S1) could not be read: hlmlDeviceGetUtilizationRates failed: HLML error 10 (timeout)",
        "HPU U1 is readable again",
        "HPU 1 (uuid U1, serial S1) could not be read: hlmlDeviceGetUtilizationRates failed: HLML error 10 (timeout)",
        "HPU U1 is no longer listed by the driver",
    ]


@pytest.mark.parametrize("mode", ["summary", "per-port"])
def test_nic_port_knob_series(mode):
    from exporter.backends.simulated import SimulatedBackend
    from exporter.exposition import Renderer
    from exporter.loop import Loop

    loop = Loop([HpuCollector(SimulatedBackend(devices=8), 60.0)], interval=5.0, version="t", backend="simulated",
                renderer=Renderer(process_metrics=False, nic_ports=mode))
    text = loop.tick().text.decode()
    per_port = [x for x in text.splitlines() if x.startswith("gaudi_hpu_nic_port_up{")]
    summary = [x for x in text.splitlines() if x.startswith("gaudi_hpu_nic_ports{")]
    assert len(summary) == 8 * 2
    assert len(per_port) == (8 * 24 if mode == "per-port" else 0)


def test_nic_port_knob_from_flag_environment_and_yaml(tmp_path):
    from exporter.config import ConfigError, resolve

    assert resolve({}, None, env={})["collectors.hpu.nic_ports"] == "summary"  # the 1,000-node default
    assert resolve({"collectors.hpu.nic_ports": "per-port"}, None, env={})["collectors.hpu.nic_ports"] == "per-port"
    env = {"GAUDI_EXPORTER_COLLECTORS_HPU_NIC_PORTS": "per-port"}
    assert resolve({}, None, env=env)["collectors.hpu.nic_ports"] == "per-port"
    f = tmp_path / "c.yaml"
    f.write_text("collectors:\n  hpu.nic_ports: per-port\n  host: false\n")
    s = resolve({}, str(f), env={})
    assert s["collectors.hpu.nic_ports"] == "per-port" and s["collectors.hpu"] is True
    with pytest.raises(ConfigError, match="collectors.hpu.nic_ports must be one of summary, per-port"):
        resolve({"collectors.hpu.nic_ports": "ports"}, None, env={})


def test_nic_port_flag_is_node_exporter_style():
    from exporter.cli import build_parser

    args = vars(build_parser().parse_args(["--collector.hpu.nic-ports", "per-port", "--no-collector.host"]))
    assert args["collectors.hpu.nic_ports"] == "per-port" and args["collectors.host"] is False
