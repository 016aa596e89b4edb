"""Live AWS prices through real boto3 against the fake EC2 and Pricing endpoints on 127.0.0.1."""

from __future__ import annotations

import pytest

from exporter import pricing
from exporter.pricing import aws as aws_pricing
from exporter.pricing.base import NodeIdentity
from tests.fakes.aws_server import FakeAws, client
from tests.support.procs import free_port

T0 = 1_790_000_000.0  # the injected "now"; the fake answers relative to the StartTime boto3 sends
SPOT_NODE = NodeIdentity("dl1.24xlarge", "us-east-1", "us-east-1b", "spot", "imds")
OD_NODE = NodeIdentity("dl1.24xlarge", "us-east-1", "us-east-1b", "on-demand", "config")


pytestmark = pytest.mark.usefixtures("aws_env")  # tests/conftest.py: dummy credentials, no real account


@pytest.fixture
def fake():
    with FakeAws() as f:
        # Price changes per zone: the price in force at T0 is the last one before T0.
        for zone, changes in {"us-east-1a": [(T0 - 9000, 4.10), (T0 - 2000, 4.30)],
                              "us-east-1b": [(T0 - 7200, 3.90), (T0 - 3600, 4.05), (T0 - 600, 3.95)],
                              "us-east-1c": [(T0 - 5000, 4.60)]}.items():
            for ts, usd in changes:
                f.add_spot(zone, "dl1.24xlarge", usd, ts)
        f.add_spot("us-east-1b", "dl1.24xlarge", 9.99, T0 - 100, product="Windows")
        f.add_spot("us-east-1b", "p4d.24xlarge", 11.0, T0 - 100)
        f.add_spot("us-west-2b", "dl1.24xlarge", 2.00, T0 - 100)  # another region, same zone letter
        f.add_on_demand("us-east-1", "dl1.24xlarge", 13.109)
        # Products the filters must exclude.
        f.add_on_demand("us-east-1", "dl1.24xlarge", 19.5, operating_system="Windows")
        f.add_on_demand("us-east-1", "dl1.24xlarge", 14.42, tenancy="Dedicated")
        f.add_on_demand("us-east-1", "dl1.24xlarge", 13.109, capacitystatus="UnusedCapacityReservation")
        f.add_on_demand("us-east-1", "dl1.24xlarge", 15.0, pre_installed_sw="SQL Web")
        f.add_on_demand("us-west-2", "dl1.24xlarge", 13.2)
        f.add_on_demand("us-east-1", "p4d.24xlarge", 32.77)
        yield f


def source(fake, identity=SPOT_NODE, settings=None, clock=lambda: T0, **kw):
    s = {"source": "aws", "aws": settings or {}}
    return pricing.create(s, identity, clock=clock, ec2_client=client("ec2", identity.region, fake.url),
                          pricing_client=client("pricing", "us-east-1", fake.url), **kw)


def test_spot_node_pays_the_newest_spot_price_of_its_zone(fake):
    src = source(fake)
    assert src.prices(T0).paid is None  # nothing fetched yet: no made-up price
    src.refresh(T0)
    p = src.prices(T0)
    assert (p.paid.usd_per_hour, p.paid.source, p.paid.as_of) == (3.95, "aws_spot", T0)
    assert (p.on_demand.usd_per_hour, p.on_demand.source) == (13.109, "aws_on_demand")
    assert p.last_success == {"aws_spot": T0, "aws_on_demand": T0}
    assert p.errors == {}
    spot_calls = [r for r in fake.requests if r.service == "ec2"]
    assert spot_calls[0].params["AvailabilityZone"] == "us-east-1b"
    assert spot_calls[0].params["InstanceType.1"] == "dl1.24xlarge"
    assert spot_calls[0].params["ProductDescription.1"] == "Linux/UNIX"
    assert spot_calls[0].region == "us-east-1"


def test_on_demand_node_pays_on_demand_and_makes_no_spot_calls(fake):
    src = source(fake, OD_NODE)
    src.refresh(T0)
    p = src.prices(T0)
    assert (p.paid.usd_per_hour, p.paid.source) == (13.109, "aws_on_demand")
    assert fake.count("ec2") == 0
    assert fake.count("pricing", "GetProducts") == 1
    req = [r for r in fake.requests if r.service == "pricing"][0]
    filters = {f["Field"]: f["Value"] for f in req.params["Filters"]}
    assert filters["location"] == "US East (N. Virginia)"
    assert req.region == "us-east-1"


def test_refresh_cadence_spot_every_300s_on_demand_every_6h(fake):
    src = source(fake)
    for t in range(0, 3600 + 1, 10):  # an hour of a background thread calling refresh every 10 s
        src.refresh(T0 + t)
    assert fake.count("ec2") == 13  # at 0, 300, ..., 3600
    assert fake.count("pricing") == 1


def test_on_demand_for_a_region_without_known_location_uses_region_code(fake):
    fake.add_on_demand("ap-southeast-5", "dl1.24xlarge", 16.5, location="Asia Pacific (Malaysia)")
    src = source(fake, NodeIdentity("dl1.24xlarge", "ap-southeast-5", "ap-southeast-5a", "on-demand"))
    src.refresh(T0)
    assert src.prices(T0).paid.usd_per_hour == 16.5


@pytest.mark.parametrize("oldest_first", [False, True])
def test_spot_pages_are_followed_and_every_zone_found(fake, oldest_first):
    fake.page_size = 2
    fake.oldest_first = oldest_first
    ec2 = client("ec2", "us-east-1", fake.url)
    rows = aws_pricing.spot_history(ec2, ["dl1.24xlarge"], "Linux/UNIX", start=T0 - 8000, end=T0)
    assert fake.count("ec2") >= 3  # six rows two per page
    newest = aws_pricing.newest_per_key(rows)
    assert {k[0]: r.usd_per_hour for k, r in newest.items()} == {"us-east-1a": 4.30, "us-east-1b": 3.95,
                                                                "us-east-1c": 4.60}


def test_throttling_keeps_last_price_counts_errors_backs_off_then_recovers(fake):
    src = source(fake, random=lambda: 1.0)  # jitter pinned to its maximum: delays are the backoff ceiling
    src.refresh(T0)
    good = src.prices(T0)
    assert good.paid.usd_per_hour == 3.95

    fake.throttle_ec2 = True
    fake.add_spot("us-east-1b", "dl1.24xlarge", 5.55, T0 + 400)  # a change the node cannot see while throttled
    attempts = []
    t = T0
    while t < T0 + 2400:
        t += 5
        before = fake.count("ec2")
        src.refresh(t)
        if fake.count("ec2") > before:
            attempts.append(t)
        p = src.prices(t)
        assert p.paid == good.paid  # last good value, same source and as_of
        assert p.last_success["aws_spot"] == T0  # stops advancing
    errors = src.prices(t).errors
    assert errors[("aws_spot", "RequestLimitExceeded")] == len(attempts)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert len(gaps) >= 3
    assert all(b > a for a, b in zip(gaps, gaps[1:], strict=False)), gaps  # backoff grows

    fake.throttle_ec2 = False
    recovered_at = None
    while recovered_at is None and t < T0 + 10_000:
        t += 5
        src.refresh(t)
        if src.prices(t).last_success["aws_spot"] > T0:
            recovered_at = t
    p = src.prices(t)
    assert recovered_at is not None
    assert (p.paid.usd_per_hour, p.paid.as_of) == (5.55, recovered_at)
    assert p.errors[("aws_spot", "RequestLimitExceeded")] == len(attempts)  # counters never go back
    assert p.last_success["aws_on_demand"] == T0


def test_backoff_jitter_spreads_retries():
    from exporter.pricing.base import Backoff

    low, high = Backoff(300, random=lambda: 0.0), Backoff(300, random=lambda: 0.999)
    d_low = [low.failure(0) for _ in range(4)]
    d_high = [high.failure(0) for _ in range(4)]
    assert all(a < b for a, b in zip(d_low, d_high, strict=True))
    assert d_high == sorted(d_high) and d_low == sorted(d_low)
    for _ in range(20):
        high.failure(0)
    assert high.last_delay <= 3600  # capped


def test_pricing_throttled_is_counted_by_its_own_reason(fake):
    fake.throttle_pricing = True
    src = source(fake, OD_NODE)
    src.refresh(T0)
    p = src.prices(T0)
    assert p.paid is None
    assert p.errors == {("aws_on_demand", "ThrottlingException"): 1}


def test_unreachable_endpoint_is_an_error_not_a_crash():
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    src = pricing.create({"source": "aws"}, SPOT_NODE, clock=lambda: T0,
                         ec2_client=client("ec2", "us-east-1", url), pricing_client=client("pricing", "us-east-1", url))
    src.refresh(T0)
    p = src.prices(T0)
    assert p.paid is None and p.on_demand is None
    assert p.errors == {("aws_spot", "EndpointConnectionError"): 1, ("aws_on_demand", "EndpointConnectionError"): 1}


def test_no_data_for_the_zone_is_counted(fake):
    src = source(fake, NodeIdentity("dl1.24xlarge", "us-east-1", "us-east-1f", "spot"))
    src.refresh(T0)
    assert src.prices(T0).errors == {("aws_spot", "NoData"): 1}


def test_create_builds_its_own_clients_and_boto3_honours_endpoint_env(fake, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", fake.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", fake.url)
    src = pricing.create({"source": "aws", "aws": {"max_attempts": 1}}, SPOT_NODE, clock=lambda: T0)
    src.refresh(T0)
    p = src.prices(T0)
    assert (p.paid.usd_per_hour, p.on_demand.usd_per_hour) == (3.95, 13.109)


def test_aws_settings_are_validated():
    with pytest.raises(ValueError, match="pricing.aws.spot_refresh_seconds"):
        pricing.create({"source": "aws", "aws": {"spot_refresh_seconds": 0}}, SPOT_NODE)
    with pytest.raises(ValueError, match="pricing.aws.pricing_region"):
        pricing.create({"source": "aws", "aws": {"pricing_region": "us-west-2"}}, SPOT_NODE)
