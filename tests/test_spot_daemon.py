"""A spot node end to end: the daemon (hl-smi backend against the fake tool) learns its identity from a fake IMDSv2,
reports spot notices switched on mid-run (logged once, loudly), and tracks cost at risk since the last checkpoint
reported over HTTP and by a touched file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.imds_server import FakeImds
from tests.support.procs import REPO, exporter, wait_for

HLSMI = str(REPO / "tests" / "fakes" / "hl-smi")


def scrape(base: str) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list] = {}
    for f in text_string_to_metric_families(requests.get(base + "/metrics", timeout=5).text):
        for s in f.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(m: dict, name: str) -> float | None:
    return m[name][0][1] if name in m else None


def test_spot_notices_checkpoints_and_cost_at_risk(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with FakeImds(zone="us-east-1b", lifecycle="spot") as imds:
        env = {"AWS_EC2_METADATA_DISABLED": "false", "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url}
        args = ["--backend", "hlsmi", "--hlsmi.path", HLSMI, "--interval", "1", "--spot.poll-seconds", "1",
                "--pricing.static.usd-per-hour", "3600", "--checkpoint.path", str(ckpt / "*.pt")]
        with exporter(args, env=env) as (proc, base):
            m = wait_for(lambda: (s := scrape(base)) and "gaudi_spot_interruption_pending" in s and s, 20,
                         what="spot gauges")
            labels, price = m["gaudi_node_price_usd_per_hour"][0]
            assert (labels["instance_type"], labels["zone"], labels["region"], labels["lifecycle"]) == \
                ("dl1.24xlarge", "us-east-1b", "us-east-1", "spot")
            assert price == 3600
            assert value(m, "gaudi_spot_interruption_pending") == 0
            assert value(m, "gaudi_spot_rebalance_recommended") == 0
            # no checkpoint yet: everything since the exporter started is at risk
            assert "gaudi_checkpoint_last_timestamp_seconds" not in m
            assert value(m, "gaudi_cost_at_risk_usd") == value(m, "gaudi_node_cost_usd_total")

            # a training job reports a checkpoint over HTTP: cost at risk restarts from ~0 and grows at $1/s
            t_ckpt = time.time()
            r = requests.post(base + "/api/v1/checkpoint", json={"timestamp": t_ckpt, "job": "llama"}, timeout=5)
            assert r.status_code == 204
            wait_for(lambda: value(scrape(base), "gaudi_checkpoint_last_timestamp_seconds") == t_ckpt, 10,
                     what="the checkpoint")
            time.sleep(3)
            m = scrape(base)
            since = value(m, "gaudi_exporter_last_collection_timestamp_seconds") - t_ckpt
            assert abs(value(m, "gaudi_cost_at_risk_usd") - since) < 1.5  # $3600/h = $1/s, within a tick

            # a newer checkpoint file lands: its mtime counts
            (ckpt / "step-100.pt").write_bytes(b"x")
            newer = time.time() + 1
            os.utime(ckpt / "step-100.pt", (newer, newer))
            m = wait_for(lambda: (s := scrape(base)) and
                         value(s, "gaudi_checkpoint_last_timestamp_seconds") == newer and s, 10,
                         what="the file checkpoint")

            # EC2 schedules an interruption and recommends rebalancing, mid-run
            when = time.time() + 120
            imds.set_rebalance(time.time())
            imds.set_instance_action("terminate", when)
            m = wait_for(lambda: (s := scrape(base)) and value(s, "gaudi_spot_interruption_pending") == 1 and s,
                         10, what="the interruption notice")
            assert abs(value(m, "gaudi_spot_interruption_time_seconds") - when) < 1
            assert value(m, "gaudi_spot_rebalance_recommended") == 1
            time.sleep(2)
            imds.clear_notices()
            wait_for(lambda: value(scrape(base), "gaudi_spot_interruption_pending") == 0, 10,
                     what="the notice cleared")
        out = proc.stdout.read().decode()
    assert out.count("SPOT INTERRUPTION NOTICE") == 1, out
    assert out.count("SPOT REBALANCE RECOMMENDED") == 1
    assert "identity from IMDS" in out or "imds" in out.lower()
    assert not Path(tmp_path / "leak").exists()
