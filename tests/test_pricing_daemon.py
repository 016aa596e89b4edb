"""The daemon with live AWS prices (real boto3, fake AWS on 127.0.0.1): a minute of throttling, then recovery.

The price stays at the last good value, errors are counted, the staleness timestamp stops and resumes, the cost keeps
growing at the last good price, and /metrics answers throughout.
"""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.aws_server import FakeAws
from tests.support.procs import exporter, wait_for

THROTTLE_SECONDS = 60


def scrape(base: str) -> dict[tuple, float]:
    r = requests.get(base + "/metrics", timeout=5)
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.text) for s in f.samples}


def one(samples: dict, name: str, **labels) -> float | None:
    for (n, ls), v in samples.items():
        if n == name and all(dict(ls).get(k) == val for k, val in labels.items()):
            return v
    return None


@pytest.mark.slow
def test_throttled_aws_keeps_the_last_price_and_recovers(tmp_path):
    now = time.time()
    with FakeAws() as aws:
        aws.add_spot("us-east-1b", "dl1.24xlarge", 3.95, now - 600)
        aws.add_spot("us-east-1a", "dl1.24xlarge", 4.30, now - 600)
        aws.add_on_demand("us-east-1", "dl1.24xlarge", 13.109)
        env = {"AWS_ENDPOINT_URL": aws.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
        args = ["--backend", "simulated", "--interval", "1", "--pricing.source", "aws",
                "--node.instance-type", "dl1.24xlarge", "--node.region", "us-east-1", "--node.zone", "us-east-1b",
                "--node.lifecycle", "spot", "--pricing.aws.spot-refresh-seconds", "10",
                "--pricing.aws.backoff-base-seconds", "1", "--pricing.aws.backoff-max-seconds", "5",
                "--pricing.aws.max-attempts", "1"]
        with exporter(args, env=env) as (proc, base):
            s = wait_for(lambda: (m := scrape(base)) and one(m, "gaudi_node_price_usd_per_hour") and m, 30,
                         what="a spot price")
            assert one(s, "gaudi_node_price_usd_per_hour", source="aws_spot", zone="us-east-1b",
                       lifecycle="spot") == 3.95
            assert one(s, "gaudi_node_on_demand_price_usd_per_hour") == 13.109
            good = one(s, "gaudi_pricing_last_success_timestamp_seconds", source="aws_spot")

            aws.throttle_ec2 = True
            aws.add_spot("us-east-1b", "dl1.24xlarge", 3.20, time.time())  # a change nobody can see yet
            t_end = time.monotonic() + THROTTLE_SECONDS
            cost, errors = 0.0, 0.0
            while time.monotonic() < t_end:
                s = scrape(base)  # asserts 200: the daemon keeps serving
                assert one(s, "gaudi_node_price_usd_per_hour") == 3.95
                assert one(s, "gaudi_node_cost_usd_total") >= cost
                cost = one(s, "gaudi_node_cost_usd_total")
                errors = one(s, "gaudi_pricing_errors_total", reason="RequestLimitExceeded") or 0.0
                time.sleep(1)
            stalled = one(s, "gaudi_pricing_last_success_timestamp_seconds", source="aws_spot")
            assert errors >= 5  # retried with backoff (1 s doubling, capped at 5 s) for a minute
            assert stalled <= good + 11  # at most the one refresh that ran before the throttle began
            assert one(s, "gaudi_exporter_collector_success", collector="pricing") == 1  # last good price in use

            aws.throttle_ec2 = False
            s = wait_for(lambda: (m := scrape(base)) and one(m, "gaudi_node_price_usd_per_hour") == 3.20 and m, 30,
                         what="recovery to the new spot price")
            assert one(s, "gaudi_pricing_last_success_timestamp_seconds", source="aws_spot") > stalled
            assert one(s, "gaudi_pricing_errors_total", reason="RequestLimitExceeded") >= errors
            assert proc.poll() is None
