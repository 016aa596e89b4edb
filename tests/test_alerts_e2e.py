"""End to end: real exporter (simulated, degraded) -> real Prometheus with the generated rules -> real Alertmanager
with the shipped routing -> a webhook on 127.0.0.1.

The rules are built from a thresholds file made for the test (tiny budget, 2s `for`, 1m windows), so faults show
up in seconds. Run with -s to see the time from the exporter's start (the fault) to each notification.
"""

from __future__ import annotations

import time

import pytest
import requests
import yaml

from alerts import build
from tests.support import procs
from tests.test_alerts import ALERTS, Webhook, alertmanager_config_for_test

JOB = "gaudi-exporter"
EXPORTER_ARGS = ["--backend", "simulated", "--simulated.profile", "degraded", "--pricing.source", "static",
                 "--pricing.static.usd-per-hour", "19.92", "--interval", "1"]


def fast_thresholds() -> dict:
    t = yaml.safe_load((ALERTS / "thresholds.yaml").read_text())
    t["exporter_selector"] = f'job="{JOB}"'
    t["budgets"]["cluster"]["daily_usd"] = 0.01  # 19.92 USD/h spends that in about 2 s
    t["budgets"]["daily"].update(window="1m", forecast_horizon="30s", burn_rate_window="30s", forecast_for="2s",
                                 exceeded_for="2s")
    t["efficiency"]["for"] = "2s"
    t["idle"].update(utilization_floor=0.25, **{"for": "2s"})  # degraded devices run at 5-20%
    t["thermal"]["throttling_for"] = "2s"
    t["health"]["hpu_lost_for"] = "2s"
    t["health"]["read_errors_for"] = "4s"  # longer than hpu_lost_for, so GaudiHpuLost is there to inhibit it
    t["nic"]["port_down_for"] = "2s"
    t["hpu_health"].update(row_replacement_pending_for="2s", pcie_link_degraded_for="2s", throttle_share_window="1m",
                           throttle_share_for="2s", nic_ports_down_for="2s")
    return t


# alertname -> labels it must carry (besides alertname); hpu 0 is hot (throttled all the time) with an ECC error and
# a row replacement pending, hpu 1 has NIC port 0 down (the default per-device summary) and a PCIe link trained at
# x8, the last of 8 devices is lost after 2 ticks. (No GaudiHpuIdle: it pages for idle HPUs a pod holds, and
# this node runs without Kubernetes attribution; alerts/tests/efficiency.yaml covers it.)
EXPECTED = {
    "GaudiDailyBudgetExceeded": {"severity": "critical", "category": "budget", "period": "daily", "cluster": "test"},
    "GaudiEfficiencyBelowFloor": {"severity": "warning", "category": "efficiency", "cluster": "test", "job": JOB},
    "GaudiHpuThermalThrottling": {"severity": "warning", "category": "health", "hpu": "0", "reason": "thermal"},
    "GaudiHpuEccUncorrectable": {"severity": "critical", "category": "health", "hpu": "0", "type": "uncorrected"},
    "GaudiHpuNicPortsDown": {"severity": "warning", "category": "health", "hpu": "1", "state": "down"},
    "GaudiHpuRowReplacementPending": {"severity": "warning", "category": "health", "hpu": "0"},
    "GaudiHpuPcieLinkDegraded": {"severity": "warning", "category": "health", "hpu": "1"},
    "GaudiHpuThrottleTimeHigh": {"severity": "warning", "category": "health", "hpu": "0", "reason": "thermal"},
    "GaudiHpuLost": {"severity": "critical", "category": "health", "hpu": "7"},
}
RECEIVER = {"critical": "/gaudi-page", "warning": "/gaudi-team", "info": "/gaudi-info"}


@pytest.mark.slow
def test_degraded_node_alerts_reach_the_webhook(tmp_path):
    (tmp_path / "thresholds.yaml").write_text(yaml.safe_dump(fast_thresholds()))
    rules = tmp_path / "rules"
    # increments every 5s (not 5m) so that the 1m daily window fills within the test
    assert build.main(["--thresholds", str(tmp_path / "thresholds.yaml"), "--out", str(rules),
                       "--increment-step", "5s"]) == 0
    port = procs.free_port()
    instance = f"127.0.0.1:{port}"
    with Webhook() as hook, \
            procs.alertmanager(tmp_path / "am", alertmanager_config_for_test(hook.url)) as am, \
            procs.prometheus(tmp_path / "prom", {JOB: [instance]}, alertmanager=am,
                             rule_files=sorted(rules.glob("prometheus_*.yaml"))) as prom:
        procs.wait_for(lambda: requests.get(prom + "/api/v1/alertmanagers", timeout=5).json()["data"]
                       ["activeAlertmanagers"], timeout=30, what="Prometheus discovering Alertmanager")
        started = time.monotonic()
        with procs.exporter(EXPORTER_ARGS, port=port):
            def arrived():
                f = hook.firing()
                if set(EXPECTED) <= set(f) and len(f["GaudiDailyBudgetExceeded"][1]) == 2:
                    return f
                return None

            firing = procs.wait_for(arrived, timeout=120, what=f"webhook notifications for {sorted(EXPECTED)}")
            # a lost device's read errors are inhibited by GaudiHpuLost for the same device
            suppressed = procs.wait_for(
                lambda: [a for a in requests.get(am + "/api/v2/alerts", timeout=5).json()
                         if a["labels"]["alertname"] == "GaudiHpuReadErrors" and a["status"]["inhibitedBy"]],
                timeout=60, what="GaudiHpuReadErrors inhibited by GaudiHpuLost")

    print("\nfault (exporter start) -> webhook, seconds:")
    for name in sorted(EXPECTED, key=lambda n: firing[n][0]):
        print(f"  {name:32s} {firing[name][0] - started:5.1f}")
    for name, labels in EXPECTED.items():
        _, paths, alert = firing[name]
        got = alert["labels"]
        assert {k: got.get(k) for k in labels} == labels, name
        if name != "GaudiDailyBudgetExceeded":
            assert got["instance"] == instance, name
        assert alert["annotations"]["runbook_url"].endswith("#" + name.lower())
        assert alert["annotations"]["description"] and "{{" not in alert["annotations"]["description"]
        # critical budget alerts page and also reach the budget owners
        receivers = {RECEIVER[labels["severity"]]}
        if labels["category"] == "budget":
            receivers = {"/gaudi-page", "/gaudi-budget"}
        assert paths == receivers, name
    assert suppressed[0]["labels"]["hpu"] == "7"
