"""End to end, node_exporter style: the daemon as a process, its /metrics against a golden file, promtool, and a real
Prometheus that scrapes it for a minute and must see 8 HPUs and the right cost.

Regenerate the golden file with UPDATE_GOLDEN=1 after an intended change, and review the diff.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.support.procs import exporter, prometheus, query, wait_for

GOLDEN = Path(__file__).parent / "golden" / "e2e-output.txt"
PRICE = 19.92
ARGS = ["--backend", "simulated", "--simulated.seed", "0", "--pricing.source", "static",
        "--pricing.static.usd-per-hour", str(PRICE), "--interval", "1"]
# series whose values are fixed by the simulated model and the seed; every other value is normalised
STABLE = re.compile(r"^(gaudi_exporter_build_info|gaudi_hpu_info|gaudi_hpu_up|gaudi_hpu_memory_total_bytes|"
                    r"gaudi_hpu_power_limit_watts|gaudi_exporter_collector_success|gaudi_hpu_nic_port_up|"
                    r"gaudi_node_price_usd_per_hour|gaudi_hpu_throttled|gaudi_hpu_pcie_replays_total|gaudi_hpu_nic_ports|"
                    r"gaudi_hpu_pcie_link_\w+|gaudi_hpu_hbm_\w+)\b")
VOLATILE = re.compile(r"^(# (HELP|TYPE) )?process_")


def normalise(text: str) -> str:
    out = []
    for line in text.splitlines():
        if VOLATILE.match(line):
            continue
        if not line.startswith("#") and not STABLE.match(line):
            line = line.rsplit(" ", 1)[0] + " <value>"
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def daemon():
    with exporter(ARGS) as (proc, base):
        wait_for(lambda: b"gaudi_hpu_busy_seconds_total" in requests.get(base + "/metrics", timeout=5).content,
                 10, what="a second tick")
        yield proc, base


def test_metrics_match_the_golden_file(daemon):
    _, base = daemon
    got = normalise(requests.get(base + "/metrics", timeout=5).text)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "exposition differs from tests/golden/e2e-output.txt (UPDATE_GOLDEN=1)"


def test_promtool_check_metrics_is_clean(daemon):
    _, base = daemon
    # promtool lints the text format (it reads OpenMetrics' family names as missing help)
    body = requests.get(base + "/metrics", timeout=5).content
    r = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=body,
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", (r.stdout, r.stderr)
    om = requests.get(base + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5).text
    assert "# TYPE gaudi_node_cost_usd counter" in om and "gaudi_node_cost_usd_total " in om


def test_simulated_data_is_labelled_as_such(daemon):
    proc, base = daemon
    text = requests.get(base + "/metrics", timeout=5).text
    assert 'gaudi_exporter_build_info{backend="simulated"' in text
    assert text.count('backend="simulated"') == 1 + 8  # build info and every HPU's info series


def test_a_real_prometheus_sees_8_hpus_and_the_cost_of_a_minute(daemon, tmp_path):
    _, base = daemon
    with prometheus(tmp_path, {"gaudi": [base.removeprefix("http://")]}) as prom:
        wait_for(lambda: len(query(prom, "gaudi_hpu_utilization_ratio")) == 8, 30, what="8 HPU series")
        result = query(prom, "gaudi_hpu_utilization_ratio")
        assert {r["metric"]["hpu"] for r in result} == {str(i) for i in range(8)}
        assert all(r["metric"]["job"] == "gaudi" for r in result)
        time.sleep(65)
        inc = query(prom, "increase(gaudi_node_cost_usd_total[1m])")
        assert len(inc) == 1
        assert float(inc[0]["value"][1]) == pytest.approx(PRICE / 60, rel=0.02)
        idle_plus_busy = query(prom, "sum(increase(gaudi_hpu_cost_usd_total[1m]))")
        assert float(idle_plus_busy[0]["value"][1]) == pytest.approx(PRICE / 60, rel=0.02)


def test_sigterm_stops_the_daemon_cleanly():
    with exporter(ARGS) as (proc, _):
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
    assert code == 0
    out = proc.stdout.read().decode()
    assert "received SIGTERM, stopping" in out
    assert "SIMULATED backend" in out
    print(f"stopped {elapsed:.2f}s after SIGTERM")
