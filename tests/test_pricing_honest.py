"""Honest prices: a built-in price applies only to a node that is that offering; without a price the daemon runs,
exports all telemetry and no cost, and says which flag to set; a failing source stays failed until it succeeds.

The daemon runs against a real Prometheus with the generated rules, so GaudiCollectorFailing is seen firing.
"""

from __future__ import annotations

import time

import pytest
import requests
import yaml

from alerts import build
from exporter import pricing
from exporter.aws.imds import Imds
from exporter.collectors.spot import SpotCollector
from exporter.loop import Loop
from exporter.pricing import price_list
from exporter.pricing.base import NodeIdentity
from tests.fakes.imds_server import FakeImds
from tests.support import procs
from tests.test_alerts import ALERTS

HLSMI = str(procs.REPO / "tests" / "fakes" / "hl-smi")
JOB = "gaudi-exporter"


def test_a_built_in_price_needs_the_nodes_instance_type_never_its_device_model():
    tiber = pricing.create({"source": "static"}, NodeIdentity(instance_type="bm-gnr-gaudi3-smc"))
    assert tiber.prices(0).paid.usd_per_hour == 19.92
    assert tiber.prices(0).paid.source == "static:intel-tiber-bm-gnr-gaudi3-smc-2026"
    dl1 = pricing.create({"source": "static"}, NodeIdentity(instance_type="dl1.24xlarge"))
    assert dl1.prices(0).paid.source == "static:aws-dl1.24xlarge-us-east-1-2026-08"
    # an on-prem Gaudi 3 box, a Gaudi 1 box, a 2-card box: no instance type, so no built-in price
    for identity in (NodeIdentity(), NodeIdentity(instance_type="my-onprem-gaudi3"), NodeIdentity(region="x")):
        src = pricing.create({"source": "static"}, identity)
        assert src.prices(0).paid is None
        assert "--pricing.static.usd-per-hour" in src.problem and "--pricing.static.entry" in src.problem
    assert price_list.find("") is None
    # naming an entry is the operator saying "this node is that offering": it applies
    named = pricing.create({"source": "static", "static": {"entry": "intel-tiber-gaudi2-8x-2026"}}, NodeIdentity())
    assert named.prices(0).paid.usd_per_hour == 10.40


def test_the_demo_names_its_price_explicitly():
    text = (procs.REPO / "deploy" / "local" / "stack.py").read_text()
    assert '"--pricing.static.entry", PRICE_ENTRY' in text
    assert 'PRICE_ENTRY = "intel-tiber-bm-gnr-gaudi3-smc-2026"' in text


def test_spot_collector_stays_failed_between_polls_until_imds_answers(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")  # scripts/test.sh sets it; this test's IMDS is ours
    t = [1000.0]
    closed = procs.free_port()  # nothing listens: connection refused at once
    imds = Imds(endpoint=f"http://127.0.0.1:{closed}", timeout=0.5)
    loop = Loop([SpotCollector(imds, poll_seconds=5)], interval=1.0, version="test", backend="none",
                clock=lambda: t[0])
    seen = []
    for _ in range(12):
        loop.tick()
        seen.append(loop.exposition.text.decode().count('gaudi_exporter_collector_success{collector="spot"} 0.0'))
        t[0] += 1
    assert seen == [1] * 12  # failed on every tick, not only on the ticks that polled
    with FakeImds() as fake:
        imds.endpoint = fake.url
        for _ in range(6):
            loop.tick()
            t[0] += 1
        assert 'gaudi_exporter_collector_success{collector="spot"} 1.0' in loop.exposition.text.decode()


def _failing(prom: str) -> set[str]:
    alerts = requests.get(prom + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {a["labels"].get("collector", "") for a in alerts
            if a["labels"]["alertname"] == "GaudiCollectorFailing" and a["state"] == "firing"}


@pytest.mark.slow
def test_without_a_price_the_daemon_exports_telemetry_no_cost_and_the_failure_alerts(tmp_path):
    t = yaml.safe_load((ALERTS / "thresholds.yaml").read_text())
    t["exporter_selector"] = f'job="{JOB}"'
    t["health"]["collector_failing_for"] = "3s"
    (tmp_path / "thresholds.yaml").write_text(yaml.safe_dump(t))
    rules = tmp_path / "rules"
    assert build.main(["--thresholds", str(tmp_path / "thresholds.yaml"), "--out", str(rules)]) == 0
    port = procs.free_port()
    # a spot node of a type with no built-in price, whose hl-smi says Gaudi 3 (HL-325L): that alone is no price
    with FakeImds(instance_type="trn1.32xlarge", lifecycle="spot") as fake, \
            procs.prometheus(tmp_path / "prom", {JOB: [f"127.0.0.1:{port}"]},
                             rule_files=sorted(rules.glob("prometheus_*.yaml"))) as prom:
        env = {"AWS_EC2_METADATA_DISABLED": "false", "AWS_EC2_METADATA_SERVICE_ENDPOINT": fake.url,
               "FAKE_HLSMI_SCENARIO": "normal"}
        args = ["--backend", "hlsmi", "--hlsmi.path", HLSMI, "--interval", "1", "--spot.poll-seconds", "4",
                "--no-collector.checkpoint"]
        with procs.exporter(args, env=env, port=port) as (proc, base):
            procs.wait_for(lambda: "pricing" in _failing(prom), 40, what="GaudiCollectorFailing for pricing")
            body = requests.get(base + "/metrics", timeout=5).text
            assert 'gaudi_hpu_utilization_ratio{hpu="0"' in body  # all telemetry flows
            for name in ("gaudi_node_price_usd_per_hour", "gaudi_node_cost_usd_total", "gaudi_hpu_cost_usd_total",
                         "gaudi_hpu_idle_cost_usd_total", "gaudi_spot_savings_usd_total", "gaudi_cost_at_risk_usd"):
                assert f"\n{name}" not in body, f"{name} exported without a price"
            assert procs.query(prom, 'max_over_time(gaudi_exporter_collector_success{collector="pricing"}[1h])'
                               )[0]["value"][1] == "0"
            assert procs.query(prom, 'min_over_time(gaudi_exporter_collector_success{collector="spot"}[1h])'
                               )[0]["value"][1] == "1"

            # IMDS goes away: the spot collector fails and stays failed, tick after tick, so the alert can fire
            fake.__exit__(None, None, None)
            lost_at = time.time()
            procs.wait_for(lambda: "spot" in _failing(prom), 40, what="GaudiCollectorFailing for spot")
            time.sleep(max(0.0, lost_at + 12 - time.time()))  # three polls and many ticks in between
            window = f"{int(time.time() - lost_at) - 5}s"
            assert procs.query(prom, f'max_over_time(gaudi_exporter_collector_success{{collector="spot"}}[{window}])'
                               )[0]["value"][1] == "0"
            assert {"pricing", "spot"} <= _failing(prom)
    log = proc.stdout.read().decode()
    assert "collector pricing failed: no price configured" in log and "--pricing.static.usd-per-hour" in log
    assert log.count("collector spot failed") == 1  # one line, not one per poll
    assert "collector spot recovered" not in log.split("collector spot failed", 1)[1]
    assert "Traceback" not in log
