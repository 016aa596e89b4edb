"""IMDSv2 client against a fake metadata service with real token semantics."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request

import pytest

from exporter.aws.imds import Imds, ImdsError, SpotNotices, resolve_identity
from exporter.pricing.base import NodeIdentity
from tests.fakes.imds_server import FakeImds
from tests.support.procs import free_port


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def imds_env(monkeypatch):
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    monkeypatch.delenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", raising=False)


@pytest.fixture
def fake():
    with FakeImds(instance_type="dl1.24xlarge", zone="us-west-2b", region="us-west-2", lifecycle="spot") as f:
        yield f


def test_fake_refuses_requests_without_a_token(fake):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(fake.url + "/latest/meta-data/instance-type", timeout=2)
    assert e.value.code == 401


def test_identity_from_imds_with_one_token(fake):
    ident = Imds(fake.url).identity()
    assert ident == NodeIdentity("dl1.24xlarge", "us-west-2", "us-west-2b", "spot", "imds")
    assert fake.token_puts == 1  # one token serves every read
    assert all(status == 200 for _, status in fake.gets)


def test_endpoint_from_environment(fake, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.url + "/")
    assert Imds().identity().instance_type == "dl1.24xlarge"


def test_revoked_token_is_renewed_once(fake):
    imds = Imds(fake.url)
    assert imds.notices() == SpotNotices()
    fake.revoke_tokens()
    assert imds.notices() == SpotNotices()
    assert fake.token_puts == 2
    assert ("/latest/meta-data/spot/instance-action", 401) in fake.gets


def test_token_ttl_server_side_expiry_and_client_side_renewal(monkeypatch):
    server_clock, client_clock = Clock(), Clock()
    with FakeImds(clock=server_clock) as fake:
        imds = Imds(fake.url, token_ttl_seconds=300, clock=client_clock)
        imds.identity()
        assert fake.token_puts == 1
        server_clock.t += 301  # the token expired on the server: 401, then one renewal
        assert imds.get("/latest/meta-data/instance-type") == "dl1.24xlarge"
        assert fake.token_puts == 2
        # The client renews before its own view of the TTL runs out, without meeting a 401.
        n401 = sum(1 for _, s in fake.gets if s == 401)
        client_clock.t += 299
        server_clock.t += 299
        imds.get("/latest/meta-data/instance-type")
        assert fake.token_puts == 3
        assert sum(1 for _, s in fake.gets if s == 401) == n401


def test_notices_switched_on_mid_test(fake):
    imds = Imds(fake.url)
    assert imds.notices() == SpotNotices(False, None, None, False, None)
    when = float(int(time.time()) + 120)
    fake.set_rebalance(when - 600)
    n = imds.notices()
    assert n.rebalance_recommended and n.rebalance_time == when - 600 and not n.interruption_pending
    fake.set_instance_action("terminate", when)
    n = imds.notices()
    assert (n.interruption_pending, n.interruption_time, n.action) == (True, when, "terminate")
    fake.clear_notices()
    assert imds.notices() == SpotNotices()


def test_malformed_notice_is_an_error(fake):
    fake.paths["/latest/meta-data/spot/instance-action"] = "not json"
    with pytest.raises(ImdsError, match="instance-action"):
        Imds(fake.url).notices()


def test_disabled_by_environment_makes_no_request(fake, monkeypatch, caplog):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    imds = Imds(fake.url)
    assert imds.identity() is None
    with pytest.raises(ImdsError, match="disabled"):
        imds.notices()
    caplog.set_level(logging.INFO)
    ident = resolve_identity(imds, {"instance_type": "dl1.24xlarge", "zone": "eu-central-1a",
                                    "lifecycle": "on-demand"})
    assert ident == NodeIdentity("dl1.24xlarge", "eu-central-1", "eu-central-1a", "on-demand", "config")
    assert fake.token_puts == 0 and fake.gets == []
    assert "identity from config" in caplog.text


@pytest.mark.timeout(5)  # off EC2 the exporter must give up on IMDS quickly
def test_unreachable_imds_falls_back_to_config(caplog):
    caplog.set_level(logging.INFO)
    imds = Imds(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    assert imds.identity() is None
    assert "not on EC2" in caplog.text
    ident = resolve_identity(imds, {"instance_type": "bm-gnr-gaudi3-smc"})
    assert (ident.instance_type, ident.source, ident.lifecycle) == ("bm-gnr-gaudi3-smc", "config", "")
    with pytest.raises(ImdsError, match="unreachable"):
        imds.notices()


def test_resolve_identity_prefers_imds_and_logs_it(fake, caplog):
    caplog.set_level(logging.INFO)
    ident = resolve_identity(Imds(fake.url), {"instance_type": "other.type", "region": "us-east-1"})
    assert ident.source == "imds" and ident.instance_type == "dl1.24xlarge"
    assert "identity from IMDS" in caplog.text


def test_unusual_lifecycle_is_on_demand():
    with FakeImds(lifecycle="scheduled") as fake:
        assert Imds(fake.url).identity().lifecycle == "on-demand"


def test_bad_config_lifecycle_names_the_key():
    with pytest.raises(ValueError, match="node.lifecycle"):
        resolve_identity(None, {"lifecycle": "preemptible"})
