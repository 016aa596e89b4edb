"""Live AWS prices: spot from ec2:DescribeSpotPriceHistory, on-demand from pricing:GetProducts.

The API helpers here are shared with the market watcher. Two rules the old guide got wrong: the spot API
pages (follow NextToken) and returns one row per price change per zone, so only the newest row per (zone,
type, product) is the price in force; with StartTime = now that newest row is the last change before now.
"""

from __future__ import annotations

import json
import logging
import math
import random as _random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter.pricing.base import Backoff, NodeIdentity, NodePrices, Price

log = logging.getLogger(__name__)

SPOT = "aws_spot"
ON_DEMAND = "aws_on_demand"

# Region code -> the Pricing API's "location" attribute. dl1.24xlarge is sold in us-east-1, us-west-2 and
# eu-central-1; the rest are the common regions. Unknown regions are matched by the regionCode attribute.
LOCATIONS: dict[str, str] = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-1": "US West (N. California)",
    "us-west-2": "US West (Oregon)",
    "ca-central-1": "Canada (Central)",
    "sa-east-1": "South America (Sao Paulo)",
    "eu-central-1": "EU (Frankfurt)",
    "eu-west-1": "EU (Ireland)",
    "eu-west-2": "EU (London)",
    "eu-west-3": "EU (Paris)",
    "eu-north-1": "EU (Stockholm)",
    "eu-south-1": "EU (Milan)",
    "ap-south-1": "Asia Pacific (Mumbai)",
    "ap-northeast-1": "Asia Pacific (Tokyo)",
    "ap-northeast-2": "Asia Pacific (Seoul)",
    "ap-northeast-3": "Asia Pacific (Osaka)",
    "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)",
    "me-south-1": "Middle East (Bahrain)",
    "af-south-1": "Africa (Cape Town)",
}

# Spot ProductDescription -> Pricing API operatingSystem.
OPERATING_SYSTEMS: dict[str, str] = {
    "Linux/UNIX": "Linux",
    "Linux/UNIX (Amazon VPC)": "Linux",
    "Red Hat Enterprise Linux": "RHEL",
    "Red Hat Enterprise Linux (Amazon VPC)": "RHEL",
    "SUSE Linux": "SUSE",
    "SUSE Linux (Amazon VPC)": "SUSE",
    "Windows": "Windows",
    "Windows (Amazon VPC)": "Windows",
}


class PriceDataError(ValueError):
    """A price answer (an API item, a price list document, a market file row) that is not what AWS documents."""


class NoData(Exception):
    """The API answered but had no price for what was asked (wrong type, zone or region)."""


@dataclass(frozen=True)
class SpotRow:
    zone: str
    instance_type: str
    product: str
    usd_per_hour: float
    timestamp: float  # unix time of the price change


def error_reason(exc: BaseException) -> str:
    """A short, bounded label for an error: the AWS error code, else the exception class."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)[:64]
    return type(exc).__name__[:64]


def _to_unix(ts: object) -> float:
    """A Timestamp as boto3 (datetime) or the CLI's JSON (ISO string) gives it -> finite unix time, or ValueError."""
    try:
        if isinstance(ts, datetime):
            out = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
        elif isinstance(ts, int | float) and not isinstance(ts, bool):
            out = float(ts)
        elif isinstance(ts, str):
            dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            out = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        else:
            raise ValueError(f"Timestamp must be a time, got {ts!r}")
    except OverflowError as e:
        raise ValueError(f"Timestamp {ts!r} out of range") from e
    if not math.isfinite(out):
        raise ValueError(f"Timestamp {ts!r} is not finite")
    return out


def parse_spot_row(item: dict) -> SpotRow:
    """One SpotPriceHistory item (boto3 or `aws ec2 describe-spot-price-history` JSON); PriceDataError if bad."""
    try:
        price = float(item["SpotPrice"])
        row = SpotRow(str(item["AvailabilityZone"]), str(item["InstanceType"]),
                      str(item["ProductDescription"]), price, _to_unix(item["Timestamp"]))
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise PriceDataError(f"bad SpotPriceHistory item {str(item)[:200]}: {str(e)[:200]}") from e
    if not price >= 0 or price == float("inf"):
        raise PriceDataError(f"bad SpotPrice {item.get('SpotPrice')!r}")
    return row


def newest_per_key(rows: Iterable[SpotRow]) -> dict[tuple[str, str, str], SpotRow]:
    """The price in force now: the newest row per (zone, instance type, product)."""
    out: dict[tuple[str, str, str], SpotRow] = {}
    for r in rows:
        k = (r.zone, r.instance_type, r.product)
        if k not in out or r.timestamp > out[k].timestamp:
            out[k] = r
    return out


def spot_history(ec2_client, instance_types: list[str], product: str, start: float, end: float | None = None,
                 zone: str | None = None) -> list[SpotRow]:
    """Every row the API returns, all pages. StartTime = now gives the last change before now per zone."""
    kwargs: dict = {"InstanceTypes": list(instance_types), "ProductDescriptions": [product],
                    "StartTime": datetime.fromtimestamp(start, UTC)}
    if end is not None:
        kwargs["EndTime"] = datetime.fromtimestamp(end, UTC)
    if zone:
        kwargs["AvailabilityZone"] = zone
    rows: list[SpotRow] = []
    for page in ec2_client.get_paginator("describe_spot_price_history").paginate(**kwargs):
        rows.extend(parse_spot_row(item) for item in page.get("SpotPriceHistory", []))
    return rows


def on_demand_filters(region: str, instance_type: str, product: str = "Linux/UNIX") -> list[dict]:
    os_name = OPERATING_SYSTEMS.get(product, "Linux")
    where = ({"Type": "TERM_MATCH", "Field": "location", "Value": LOCATIONS[region]} if region in LOCATIONS
             else {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region})
    return [
        {"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type},
        where,
        {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": os_name},
        {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
        {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
        {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
    ]


def parse_on_demand(price_list: Iterable[object]) -> list[float]:
    """Hourly USD prices in the OnDemand terms of GetProducts' PriceList (each item is a JSON string).

    A document that is not shaped like a price list product is a PriceDataError naming what is wrong, never another
    exception; a price that is not a finite number > 0 is skipped.
    """
    prices: list[float] = []
    for i, raw in enumerate(price_list):
        try:
            doc = json.loads(raw) if isinstance(raw, str | bytes) else raw
        except (ValueError, RecursionError) as e:
            raise PriceDataError(f"PriceList[{i}] is not JSON: {str(e)[:200]}") from None
        terms = _mapping(_mapping(doc, f"PriceList[{i}]").get("terms", {}), f"PriceList[{i}].terms")
        for term in _mapping(terms.get("OnDemand") or {}, f"PriceList[{i}].terms.OnDemand").values():
            dims = _mapping(_mapping(term, f"PriceList[{i}] OnDemand term").get("priceDimensions") or {},
                            f"PriceList[{i}] priceDimensions")
            for dim in dims.values():
                dim = _mapping(dim, f"PriceList[{i}] price dimension")
                usd = _mapping(dim.get("pricePerUnit", {}), f"PriceList[{i}] pricePerUnit").get("USD")
                if usd is None or dim.get("unit", "Hrs") not in ("Hrs", "Hours"):
                    continue
                try:
                    v = float(usd)
                except (TypeError, ValueError, OverflowError):
                    raise PriceDataError(f"PriceList[{i}] pricePerUnit.USD is not a number: {str(usd)[:40]!r}") \
                        from None
                if math.isfinite(v) and v > 0:
                    prices.append(v)
    return prices


def _mapping(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise PriceDataError(f"{where} is not an object: {str(value)[:80]!r}")
    return value


def on_demand_price(pricing_client, region: str, instance_type: str, product: str = "Linux/UNIX") -> float:
    """The on-demand hourly price of a type in a region; NoData when the price list has none."""
    prices: list[float] = []
    paginator = pricing_client.get_paginator("get_products")
    for page in paginator.paginate(ServiceCode="AmazonEC2", FormatVersion="aws_v1",
                                   Filters=on_demand_filters(region, instance_type, product)):
        prices.extend(parse_on_demand(page.get("PriceList", [])))
    if not prices:
        raise NoData(f"no on-demand price for {instance_type} in {region}")
    if len(set(prices)) > 1:
        log.info("pricing: %d on-demand prices for %s in %s, taking the lowest", len(prices), instance_type,
                 region)
    return min(prices)


def make_client(service: str, region: str, max_attempts: int = 3):
    """A boto3 client with the standard credential chain; AWS_ENDPOINT_URL_* are honoured by boto3 itself."""
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"mode": "standard", "total_max_attempts": max_attempts}, connect_timeout=5,
                 read_timeout=15, user_agent_extra="gaudi-exporter")
    return boto3.client(service, region_name=region, config=cfg)


class AwsSource:
    """This node's price from AWS: spot (spot nodes) and on-demand, each on its own cadence and backoff."""

    name = "aws"

    def __init__(self, identity: NodeIdentity, *, ec2_client, pricing_client,
                 spot_refresh_seconds: float = 300, on_demand_refresh_seconds: float = 21600,
                 product_description: str = "Linux/UNIX",
                 random: Callable[[], float] = _random.random, backoff_base: float = 30.0,
                 backoff_cap: float = 3600.0) -> None:
        self.identity = identity
        self.spot_enabled = identity.lifecycle == "spot"
        self.product = product_description
        self._ec2 = ec2_client
        self._pricing = pricing_client
        self._lock = threading.Lock()  # guards the cached state below; never held across a network call
        self._refreshing = threading.Lock()
        self._spot: Price | None = None
        self._on_demand: Price | None = None
        self._last_success: dict[str, float] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self.spot_schedule = Backoff(spot_refresh_seconds, base=backoff_base, cap=backoff_cap, random=random)
        self.on_demand_schedule = Backoff(on_demand_refresh_seconds, base=backoff_base, cap=backoff_cap,
                                          random=random)

    def prices(self, now: float) -> NodePrices:
        with self._lock:
            paid = self._spot if self.spot_enabled else self._on_demand
            return NodePrices(paid=paid, on_demand=self._on_demand, last_success=dict(self._last_success),
                              errors=dict(self._errors))

    def refresh(self, now: float) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # another thread is already refreshing
        try:
            if self.spot_enabled and self.spot_schedule.due(now):
                self._attempt(SPOT, self.spot_schedule, now, self._fetch_spot)
            if self.on_demand_schedule.due(now):
                self._attempt(ON_DEMAND, self.on_demand_schedule, now, self._fetch_on_demand)
        finally:
            self._refreshing.release()

    def _fetch_spot(self, now: float) -> float:
        i = self.identity
        rows = spot_history(self._ec2, [i.instance_type], self.product, start=now, zone=i.zone)
        newest = newest_per_key(r for r in rows if r.zone == i.zone and r.instance_type == i.instance_type)
        if not newest:
            raise NoData(f"no spot price for {i.instance_type} in {i.zone} ({self.product})")
        return max(newest.values(), key=lambda r: r.timestamp).usd_per_hour

    def _fetch_on_demand(self, now: float) -> float:
        return on_demand_price(self._pricing, self.identity.region, self.identity.instance_type, self.product)

    def _attempt(self, source: str, schedule: Backoff, now: float, fetch: Callable[[float], float]) -> None:
        try:
            value = fetch(now)
        except Exception as e:  # a failure must leave the daemon and the last good price alone
            reason = "NoData" if isinstance(e, NoData) else error_reason(e)
            delay = schedule.failure(now)
            with self._lock:
                self._errors[(source, reason)] = self._errors.get((source, reason), 0) + 1
            log.warning("pricing: %s failed (%s: %s); retry in %.0fs", source, reason, str(e)[:200], delay)
            return
        schedule.success(now)
        with self._lock:
            price = Price(value, source, now)
            if source == SPOT:
                self._spot = price
            else:
                self._on_demand = price
            self._last_success[source] = now
        log.debug("pricing: %s = %.4f USD/h", source, value)
