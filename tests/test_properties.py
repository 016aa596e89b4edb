"""Property-based tests of the parsers that read outside input: hl-smi lines, the config file, IMDS answers and
price JSON (AWS API items, GetProducts documents, market files). Whatever the input, only the project's own error
types come out (each naming the field or the source), and nothing non-finite gets through.

Fixed seed (derandomize) and a bounded number of cases, so a run is repeatable and its cost is known.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.aws.imds import Imds, ImdsError, SpotNotices
from exporter.backends.hlsmi import FIELDS, SLOW_FIELDS, LineError, parse_line, parse_output, parse_value
from exporter.config import BY_KEY, ConfigError, load_file, resolve
from exporter.market.fetch import MarketFileError, MarketWatcher, load_market_file
from exporter.pricing.aws import PriceDataError, SpotRow, parse_on_demand, parse_spot_row
from exporter.pricing.base import NodeIdentity
from tests.fakes.imds_server import FakeImds

BOUNDED = settings(derandomize=True, database=None, max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(BOUNDED, max_examples=60)  # cases that each run an HTTP exchange or write a file

# --- shared strategies: near-misses of real values are where parsers break
DIGITS = st.sampled_from(["0", "7", "42", "1600", "9" * 400, "1" + "0" * 330, "-3", "+5", "1.5", "007", "\u0663",
                          "\u00b2", "\uff15", "1e5", "inf", "nan", "NaN", "0x10", "", " "])
UNITS = st.sampled_from(["", " W", " MiB", " GiB", " C", " %", " MHz", "W", " mW", " kib", " parsecs", " \u00b5W"])
CELL = st.one_of(
    st.builds(lambda d, u: d + u, DIGITS, UNITS),
    st.sampled_from(["N/A", "[N/A]", "[Not Supported]", "-", "HL-325L", "0000:19:00.0", "1.22.1-97ec1a4"]),
    st.text(max_size=30),
)


def finite_row(row) -> bool:
    return all(math.isfinite(v) for v in row.values.values() if isinstance(v, float))


# --- hl-smi

@BOUNDED
@given(field=st.sampled_from(SLOW_FIELDS + ("name", "not.a.field")), raw=CELL)
def test_hlsmi_cell_is_a_finite_value_or_a_line_error_naming_the_field(field, raw):
    try:
        value = parse_value(field, raw)
    except LineError as e:
        assert field in str(e)
        return
    assert value is None or isinstance(value, str) or math.isfinite(value)


@BOUNDED
@given(cells=st.lists(CELL, min_size=0, max_size=len(FIELDS) + 2), line_number=st.integers(0, 10**6))
def test_hlsmi_line_parses_or_raises_a_line_error_saying_who_and_where(cells, line_number):
    line = ", ".join(cells)
    try:
        row = parse_line(line, FIELDS, line_number)
    except LineError as e:
        message, index, uuid, serial = e.args
        assert f"line {line_number + 1}" in message
        assert index is None or 0 <= index <= 65535
        assert isinstance(uuid, str) and isinstance(serial, str)
        return
    assert 0 <= row.index <= 65535 and finite_row(row)


@BOUNDED
@given(lines=st.lists(st.one_of(st.lists(CELL, min_size=len(FIELDS), max_size=len(FIELDS)).map(", ".join),
                                st.text(max_size=80)), max_size=12),
       slow=st.booleans())
def test_hlsmi_output_never_raises_and_every_line_is_a_reading_or_an_error(lines, slow):
    fields = SLOW_FIELDS if slow else FIELDS
    result = parse_output("\n".join(lines) + "\n", fields, slow)
    keys = [d.key for d in result.devices]
    assert len(keys) == len(set(keys))  # never two readings of one device
    for d in result.devices:
        for v in (d.utilization, d.power_watts, d.power_limit_watts, d.memory_used_bytes, d.memory_total_bytes):
            assert v is None or math.isfinite(v)
        assert all(math.isfinite(x) for _, x in d.temperatures + d.clocks_hertz)
    for e in result.errors:
        assert e.index is None or 0 <= e.index <= 65535


# --- the config file

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["1e400", "-inf", "nan", "\u0663", "true", "0x10"]))
KEY_PARTS = sorted({p for k in BY_KEY for p in k.split(".")} | {"bogus", ""})


def _tree(children):
    return st.dictionaries(st.sampled_from(KEY_PARTS), children, max_size=4)


CONFIG_TREES = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=3), _tree(c)), max_leaves=12)
RAW_CONFIGS = st.one_of(
    st.binary(max_size=200),  # invalid UTF-8 included
    st.sampled_from([b"[" * 5000 + b"]" * 5000, b"{a: " * 3000 + b"1" + b"}" * 3000, b"\xff\xfe\x00",
                     b"a: &x [1]\nb: *x\n", b"!!python/object:os.system ls\n", b"interval: 2020-01-01\n",
                     b"? [1, 2]\n: 3\n", b"interval: .inf\n", b"simulated: {devices: 1e400}\n"]),
)


@BOUNDED
@given(tree=st.one_of(CONFIG_TREES, _tree(CONFIG_TREES)))
def test_config_file_loads_or_raises_config_error_naming_the_file(tree):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.yaml"
        path.write_text(yaml.safe_dump(tree))
        _load_and_resolve(path)


@FEW
@given(raw=RAW_CONFIGS)
def test_config_file_bytes_load_or_raise_config_error_naming_the_file(raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.yaml"
        path.write_bytes(raw)
        _load_and_resolve(path)


def _load_and_resolve(path: Path) -> None:
    try:
        load_file(path)
    except ConfigError as e:
        assert str(path) in str(e)
    with contextlib.suppress(ConfigError):  # any other exception fails the test
        resolve({}, str(path), env={})


# --- IMDS answers

IMDS_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", "spot", "on-demand", "scheduled", "us-east-1a",
                                                             "dl1.24xlarge", "\u0000", "a" * 5000]))
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                       lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(
                           st.sampled_from(["action", "time", "noticeTime", "x"]), c, max_size=3)), max_leaves=6)
NOTICE = st.one_of(st.none(), IMDS_TEXT, JSONISH.map(json.dumps),
                   st.sampled_from(['{"action": "terminate", "time": "2026-12-01T22:00:00Z"}',
                                    '{"action": "stop", "time": 5}', '{"noticeTime": "9999-12-31T23:59:59Z"}',
                                    '{"noticeTime": "0001-01-01T00:00:00"}', '{"noticeTime": null}']))
FAKE_IMDS: list[FakeImds] = []


def _imds() -> FakeImds:
    if not FAKE_IMDS:  # one server for every case (started lazily, stopped at exit)
        fake = FakeImds().__enter__()
        FAKE_IMDS.append(fake)
    return FAKE_IMDS[0]


def teardown_module() -> None:
    for fake in FAKE_IMDS:
        fake.__exit__(None, None, None)
    teardown_module_aws()


@FEW
@given(itype=IMDS_TEXT, zone=IMDS_TEXT, region=st.one_of(st.none(), IMDS_TEXT), lifecycle=IMDS_TEXT,
       action=NOTICE, rebalance=NOTICE)
def test_imds_answers_give_an_identity_or_none_and_notices_or_imds_error(itype, zone, region, lifecycle, action,
                                                                        rebalance):
    fake = _imds()
    paths = {"/latest/meta-data/instance-type": itype, "/latest/meta-data/placement/availability-zone": zone,
             "/latest/meta-data/placement/region": region, "/latest/meta-data/instance-life-cycle": lifecycle,
             "/latest/meta-data/spot/instance-action": action,
             "/latest/meta-data/events/recommendations/rebalance": rebalance}
    for path, body in paths.items():
        if body is None:
            fake.paths.pop(path, None)
        else:
            fake.paths[path] = body
    imds = Imds(endpoint=fake.url, timeout=2)
    ident = imds.identity()
    assert ident is None or (isinstance(ident, NodeIdentity) and ident.instance_type
                             and ident.lifecycle in ("spot", "on-demand", ""))
    try:
        notices = imds.notices()
    except ImdsError:
        return
    assert isinstance(notices, SpotNotices)
    for t in (notices.interruption_time, notices.rebalance_time):
        assert t is None or math.isfinite(t)


# --- price JSON: AWS API items, GetProducts documents, market files

PRICE_VALUES = st.one_of(JSONISH, st.sampled_from(["1.5", "1e400", "inf", "-1", "nan", "0", "abc", 10**400, -0.0,
                                                   "2026-12-01T00:00:00Z", "2026-13-01", 1e308]))
SPOT_ITEMS = st.one_of(JSONISH, st.fixed_dictionaries({}, optional={
    k: PRICE_VALUES for k in ("SpotPrice", "AvailabilityZone", "InstanceType", "ProductDescription", "Timestamp")}))


@BOUNDED
@given(item=SPOT_ITEMS)
def test_spot_item_parses_to_a_finite_row_or_raises_price_data_error(item):
    try:
        row = parse_spot_row(item)
    except PriceDataError:
        return
    assert isinstance(row, SpotRow)
    assert math.isfinite(row.usd_per_hour) and row.usd_per_hour >= 0 and math.isfinite(row.timestamp)


def _products(usd):
    return {"terms": {"OnDemand": {"T": {"priceDimensions": {"D": {"unit": "Hrs", "pricePerUnit": {"USD": usd}}}}}}}


PRODUCTS = st.one_of(JSONISH, PRICE_VALUES.map(_products),
                     st.recursive(st.just({}), lambda c: st.dictionaries(
                         st.sampled_from(["terms", "OnDemand", "priceDimensions", "pricePerUnit", "USD", "unit"]),
                         st.one_of(c, PRICE_VALUES), max_size=3), max_leaves=8))


@BOUNDED
@given(docs=st.lists(st.one_of(PRODUCTS.map(json.dumps), PRODUCTS, st.text(max_size=20)), max_size=3))
def test_get_products_documents_give_finite_prices_or_price_data_error(docs):
    try:
        prices = parse_on_demand(docs)
    except PriceDataError:
        return
    assert all(math.isfinite(p) and p > 0 for p in prices)


MARKET_DOCS = st.one_of(
    JSONISH,
    st.fixed_dictionaries({}, optional={"SpotPriceHistory": st.one_of(JSONISH, st.lists(SPOT_ITEMS, max_size=3)),
                                        "OnDemand": st.one_of(JSONISH, st.lists(st.fixed_dictionaries({}, optional={
                                            k: PRICE_VALUES for k in ("Region", "InstanceType", "USD")}),
                                            max_size=2)),
                                        "Comment": PRICE_VALUES, "_sample": PRICE_VALUES}),
)
RAW_MARKET = st.one_of(MARKET_DOCS.map(lambda d: json.dumps(d).encode()), st.binary(max_size=100),
                       st.just(b"[" * 100_000 + b"]" * 100_000))


@FEW
@given(raw=RAW_MARKET)
def test_market_file_loads_or_raises_market_file_error_naming_the_file_and_refresh_never_raises(raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "market.json"
        path.write_bytes(raw)
        try:
            market = load_market_file(str(path))
        except MarketFileError as e:
            assert str(path) in str(e)
        else:
            assert all(math.isfinite(r.usd_per_hour) for r in market.rows)
            assert all(math.isfinite(v) for v in market.on_demand.values())
        watcher = MarketWatcher([], [], source=str(path), clock=lambda: 0.0)
        watcher.refresh(1000.0)  # a bad file is counted, never raised
        snap = watcher.snapshot()
        assert all(math.isfinite(s[-1]) for s in snap.spot) and all(math.isfinite(o[-1]) for o in snap.on_demand)



FAKE_AWS: list = []


def _aws():
    """One fake AWS server and one real boto3 client per service for every case (started lazily)."""
    if not FAKE_AWS:
        from tests.fakes.aws_server import FakeAws, client

        aws = FakeAws().__enter__()
        FAKE_AWS.extend([aws, {s: client(s, "us-east-1", aws.url) for s in ("ec2", "pricing")}])
    return FAKE_AWS


def teardown_module_aws() -> None:
    if FAKE_AWS:
        FAKE_AWS[0].__exit__(None, None, None)


@FEW
@given(spot=st.lists(st.sampled_from([0.0, 1.5, 1e308, math.inf, -1.0, math.nan, 3.14159]), max_size=3),
       usd=st.lists(PRICE_VALUES, max_size=2), terms=st.one_of(st.none(), PRODUCTS))
def test_market_fetch_from_aws_answers_keeps_only_finite_prices_and_never_raises(spot, usd, terms):
    aws, clients = _aws()
    with aws._lock:
        aws.spot.clear()
        aws.products.clear()
    for i, price in enumerate(spot):
        aws.add_spot(f"us-east-1{'abc'[i]}", "dl1.24xlarge", price, 1_790_000_000.0 - i)
    for value in usd:
        aws.add_on_demand("us-east-1", "dl1.24xlarge", 1.0)
        doc = aws.products[-1]
        if terms is not None:
            doc["terms"] = terms.get("terms", terms) if isinstance(terms, dict) else terms
        else:
            dims = doc["terms"]["OnDemand"]
            next(iter(next(iter(dims.values()))["priceDimensions"].values()))["pricePerUnit"]["USD"] = value
    watcher = MarketWatcher(["us-east-1"], ["dl1.24xlarge"], clock=lambda: 1_790_000_100.0,
                            client_factory=lambda service, region: clients[service])
    watcher.refresh(1_790_000_100.0)  # errors are counted per region, never raised
    snap = watcher.snapshot()
    assert all(math.isfinite(s[-1]) and s[-1] >= 0 for s in snap.spot)
    assert all(math.isfinite(o[-1]) and o[-1] > 0 for o in snap.on_demand)
