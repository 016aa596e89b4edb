"""Market watcher (AWS through real boto3 against the fake, or a file) and `report regions`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from exporter.market.fetch import MarketWatcher, load_market_file
from exporter.market.report import main as report_main
from tests.fakes.aws_server import FakeAws, client

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "deploy" / "local" / "sample-spot-price-history.json"
T0 = 1_790_000_000.0
TYPES = ["dl1.24xlarge", "trn1.32xlarge"]
# zone -> type -> [(seconds before T0, price)]; the price at T0 is the last change before it.
HISTORY = {
    "us-east-1a": {"dl1.24xlarge": [(9000, 4.1), (2000, 4.3)], "trn1.32xlarge": [(4000, 6.0)]},
    "us-east-1b": {"dl1.24xlarge": [(7200, 3.9), (3600, 4.05), (600, 3.95)]},
    "us-east-1c": {"dl1.24xlarge": [(5000, 4.6)], "trn1.32xlarge": [(300, 5.5)]},
    "us-east-1d": {"dl1.24xlarge": [(8000, 4.0)]},
    "us-west-2a": {"dl1.24xlarge": [(6000, 3.6), (100, 3.7)]},
    "us-west-2b": {"dl1.24xlarge": [(6000, 3.4)]},
    "us-west-2d": {"dl1.24xlarge": [(2500, 3.8)], "trn1.32xlarge": [(2500, 5.9)]},
    "eu-central-1a": {"dl1.24xlarge": [(4000, 4.9)]},
}
REGIONS = ["us-east-1", "us-west-2", "eu-central-1"]


def expected_now() -> set[tuple[str, str, float]]:
    return {(zone, itype, changes[-1][1] if changes[-1][0] > 0 else changes[-2][1])
            for zone, types in HISTORY.items() for itype, changes in types.items()}


pytestmark = pytest.mark.usefixtures("aws_env")  # tests/conftest.py: dummy credentials, no real account


@pytest.fixture
def fake():
    with FakeAws(page_size=2) as f:
        for zone, types in HISTORY.items():
            for itype, changes in types.items():
                for before, usd in changes:
                    f.add_spot(zone, itype, usd, T0 - before)
        f.add_spot("us-east-1a", "p4d.24xlarge", 30.0, T0 - 100)  # not asked for
        f.add_spot("us-east-1a", "dl1.24xlarge", 8.0, T0 - 100, product="Windows")  # other product
        f.add_on_demand("us-east-1", "dl1.24xlarge", 13.109)
        f.add_on_demand("us-west-2", "dl1.24xlarge", 13.2)
        yield f


def watcher(fake, regions=REGIONS, clock=lambda: T0):
    return MarketWatcher(regions, TYPES, "aws", "Linux/UNIX", clock, lambda service, region: client(service, region,
                                                                                                      fake.url))


def test_one_paged_query_sequence_per_region_finds_every_zone(fake):
    w = watcher(fake)
    w.refresh(T0)
    snap = w.snapshot()
    assert snap.source == "aws" and snap.last_success == T0 and snap.errors == {}
    assert {(z, t, usd) for _, z, t, _, usd in snap.spot} == expected_now()
    assert all(region == z[:-1] for region, z, *_ in snap.spot)
    for region in REGIONS:
        reqs = [r for r in fake.requests if r.service == "ec2" and r.region == region]
        # one query: its first page has no NextToken, every later page continues it
        assert [("NextToken" in r.params) for r in reqs] == [False] + [True] * (len(reqs) - 1)
        assert {r.params["InstanceType.1"] for r in reqs} == {"dl1.24xlarge"}
        assert all(r.params["InstanceType.2"] == "trn1.32xlarge" and "AvailabilityZone" not in r.params
                   for r in reqs)
    assert fake.count("ec2", region="us-east-1") > 1  # it did page
    assert sorted(snap.on_demand) == [("us-east-1", "dl1.24xlarge", 13.109), ("us-west-2", "dl1.24xlarge", 13.2)]


def test_on_demand_is_cached_for_hours_spot_is_not(fake):
    w = watcher(fake)
    w.refresh(T0)
    pricing_calls = fake.count("pricing")
    assert pricing_calls == len(REGIONS) * len(TYPES)
    starts = fake.count("ec2")
    w.refresh(T0 + 300)
    assert fake.count("pricing") == pricing_calls
    assert fake.count("ec2") == 2 * starts
    w.refresh(T0 + 6 * 3600 + 1)
    assert fake.count("pricing") == 2 * pricing_calls


def test_a_throttled_region_keeps_its_last_data_and_counts_errors(fake):
    w = watcher(fake)
    w.refresh(T0)
    before = {row for row in w.snapshot().spot if row[0] == "us-west-2"}
    fake.throttle_ec2 = {"us-west-2"}
    fake.add_spot("us-west-2b", "dl1.24xlarge", 9.9, T0 + 100)
    fake.add_spot("us-east-1d", "dl1.24xlarge", 4.4, T0 + 100)
    w.refresh(T0 + 300)
    w.refresh(T0 + 600)
    snap = w.snapshot()
    assert {row for row in snap.spot if row[0] == "us-west-2"} == before
    assert ("us-east-1", "us-east-1d", "dl1.24xlarge", "Linux/UNIX", 4.4) in snap.spot
    assert snap.errors == {("us-west-2", "RequestLimitExceeded"): 2}
    assert snap.last_success == T0 + 600  # the other regions answered
    assert snap.region_last_success["us-east-1"] == T0 + 600 and snap.region_last_success["us-west-2"] == T0
    fake.throttle_ec2 = False
    w.refresh(T0 + 900)
    snap = w.snapshot()
    assert ("us-west-2", "us-west-2b", "dl1.24xlarge", "Linux/UNIX", 9.9) in snap.spot
    assert snap.region_last_success["us-west-2"] == T0 + 900
    assert snap.errors == {("us-west-2", "RequestLimitExceeded"): 2}


def spot_file(tmp_path, rows, on_demand=None, **top) -> Path:
    doc = {"SpotPriceHistory": [
        {"AvailabilityZone": z, "InstanceType": t, "ProductDescription": "Linux/UNIX", "SpotPrice": f"{p:.6f}",
         "Timestamp": f"2026-08-15T{h:02d}:00:00+00:00"} for z, t, p, h in rows], **top}
    if on_demand:
        doc["OnDemand"] = on_demand
    path = tmp_path / "spot.json"
    path.write_text(json.dumps(doc))
    return path


def test_file_source_newest_row_per_zone(tmp_path):
    path = spot_file(tmp_path, [("us-east-1a", "dl1.24xlarge", 4.0, 1), ("us-east-1a", "dl1.24xlarge", 4.2, 5),
                                ("us-west-2b", "dl1.24xlarge", 3.3, 2)],
                     [{"Region": "us-east-1", "InstanceType": "dl1.24xlarge", "USD": 13.109}])
    w = MarketWatcher([], ["dl1.24xlarge"], str(path), "Linux/UNIX", lambda: T0)
    w.refresh(T0)
    snap = w.snapshot()
    assert snap.source == "file"
    assert snap.spot == [("us-east-1", "us-east-1a", "dl1.24xlarge", "Linux/UNIX", 4.2),
                         ("us-west-2", "us-west-2b", "dl1.24xlarge", "Linux/UNIX", 3.3)]
    assert snap.on_demand == [("us-east-1", "dl1.24xlarge", 13.109)]


def test_sample_file_is_labelled_sample():
    f = load_market_file(str(SAMPLE))
    assert f.sample and "sample" in f.comment.lower()
    w = MarketWatcher([], ["dl1.24xlarge"], str(SAMPLE), "Linux/UNIX", lambda: T0)
    w.refresh(T0)
    snap = w.snapshot()
    assert snap.source == "sample"
    assert {z for _, z, *_ in snap.spot} == {r.zone for r in f.rows}


@pytest.mark.parametrize(("content", "match"), [
    ("{not json", "not JSON"),
    ('{"Items": []}', "SpotPriceHistory"),
    ('{"SpotPriceHistory": [{"AvailabilityZone": "us-east-1a"}]}', r"SpotPriceHistory\[0\]"),
    ('{"SpotPriceHistory": [], "OnDemand": [{"Region": "us-east-1", "InstanceType": "x", "USD": -1}]}',
     r"OnDemand\[0\]"),
])
def test_bad_file_is_named_and_does_not_stop_the_watcher(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        load_market_file(str(path))
    assert str(path) in str(e.value)
    w = MarketWatcher([], ["dl1.24xlarge"], str(path), "Linux/UNIX", lambda: T0)
    w.refresh(T0)
    w.refresh(T0 + 300)
    assert w.snapshot().errors == {("file", "BadFile"): 2}


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines()
            if ln.startswith("| ") and ln[2:3].isdigit()]


def test_report_from_file_is_cheapest_first_with_time_weighted_stats(tmp_path):
    # Window 12:00-24:00 (12 h ending at the newest row, 24:00 = next day 00:00).
    rows = [("us-east-1a", "dl1.24xlarge", 5.0, 6),  # 5.0 all the window
            ("us-west-2b", "dl1.24xlarge", 3.0, 11),  # 3.0 all the window
            ("eu-central-1a", "dl1.24xlarge", 2.0, 10),  # 2.0 for 6 h then 6.0 for 6 h: average 4.0
            ("eu-central-1a", "dl1.24xlarge", 6.0, 18),
            ("us-west-2b", "dl1.24xlarge", 3.0, 23)]
    path = spot_file(tmp_path, rows, [{"Region": "us-west-2", "InstanceType": "dl1.24xlarge", "USD": 12.0}])
    doc = json.loads(path.read_text())
    doc["SpotPriceHistory"][-1]["Timestamp"] = "2026-08-16T00:00:00+00:00"  # the window's end
    path.write_text(json.dumps(doc))
    out = io.StringIO()
    assert report_main(["regions", "--hours", "12", "--source", str(path)], out=out) == 0
    text = out.getvalue()
    got = table_rows(text)
    assert [r[2] for r in got] == ["us-west-2b", "eu-central-1a", "us-east-1a"]
    eu = got[1]
    assert [float(x) for x in eu[4:8]] == [6.0, 2.0, 4.0, 6.0]  # now, min, avg, max
    assert got[0][8] == "12.000" and got[0][9] == "75%"  # 3.0 against 12.0 on demand
    assert "SAMPLE DATA" not in text and str(path) in text


def test_report_of_the_sample_file_says_sample_data():
    out = io.StringIO()
    assert report_main(["--hours", "24", "--source", str(SAMPLE)], out=out) == 0
    text = out.getvalue()
    assert "SAMPLE DATA" in text
    avgs = [float(r[6]) for r in table_rows(text)]
    assert avgs and avgs == sorted(avgs)


def test_report_from_aws(fake):
    out = io.StringIO()
    rc = report_main(["regions", "--hours", "1", "--source", "aws", "--regions", ",".join(REGIONS),
                      "--instance-types", "dl1.24xlarge"], clock=lambda: T0, out=out,
                     client_factory=lambda service, region: client(service, region, fake.url))
    assert rc == 0
    got = table_rows(out.getvalue())
    zones = {z for z, types in HISTORY.items() if "dl1.24xlarge" in types}
    assert {r[2] for r in got} == zones
    avgs = [float(r[6]) for r in got]
    assert avgs == sorted(avgs)
    west2a = next(r for r in got if r[2] == "us-west-2a")
    # 3.6 from T0-3600 to T0-100, then 3.7: time-weighted.
    assert float(west2a[6]) == pytest.approx((3.6 * 3500 + 3.7 * 100) / 3600, abs=1e-4)
    assert (float(west2a[5]), float(west2a[7])) == (3.6, 3.7)


def test_report_bad_file_exits_2(tmp_path, capsys):
    assert report_main(["--source", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
