"""Market data: spot and on-demand prices of some instance types across regions and zones, from AWS or a file.

One paged DescribeSpotPriceHistory query per region per refresh (all types in one filter, all zones), so
the market watcher's API cost does not grow with the fleet. On-demand prices change rarely and are cached for
hours. A file in the `aws ec2 describe-spot-price-history` JSON form stands in for AWS offline; a file that says
it is a sample is labelled "sample" wherever its prices appear.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.pricing.aws import (
    NoData,
    SpotRow,
    error_reason,
    make_client,
    newest_per_key,
    on_demand_price,
    parse_spot_row,
    spot_history,
)

log = logging.getLogger(__name__)

DEFAULT_REGIONS = ("us-east-1", "us-west-2", "eu-central-1")  # where dl1.24xlarge is sold
DEFAULT_TYPES = ("dl1.24xlarge",)

ClientFactory = Callable[[str, str], object]  # (service, region) -> boto3 client


def region_of_zone(zone: str) -> str:
    """us-east-1a -> us-east-1; us-west-2-lax-1a -> us-west-2 (local zones belong to their parent region)."""
    m = re.match(r"^([a-z]{2}(?:-[a-z]+)+-\d+)", zone)
    return m.group(1) if m else zone


class MarketFileError(ValueError):
    """A market file that cannot be used; the message names the file and the bad field."""


@dataclass(frozen=True)
class MarketSnapshot:
    spot: list[tuple[str, str, str, str, float]]  # (region, zone, instance_type, product, usd_per_hour)
    on_demand: list[tuple[str, str, float]]  # (region, instance_type, usd_per_hour)
    source: str  # "aws" | "file" | "sample"
    last_success: float | None  # last refresh in which any region answered (per region: region_last_success)
    errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (region, reason) -> cumulative count
    region_last_success: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MarketFile:
    rows: list[SpotRow]
    on_demand: dict[tuple[str, str], float]  # (region, instance_type) -> USD/h
    sample: bool
    comment: str


def load_market_file(path: str) -> MarketFile:
    """Read a describe-spot-price-history JSON file; MarketFileError naming the file and the bad field."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise MarketFileError(f"market file {path}: cannot read: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise MarketFileError(f"market file {path}: not JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise MarketFileError(f"market file {path}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise MarketFileError(f"market file {path}: nested too deeply to be a price history") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("SpotPriceHistory"), list):
        raise MarketFileError(f"market file {path}: expected an object with a SpotPriceHistory list, as printed "
                         "by `aws ec2 describe-spot-price-history`")
    rows = []
    for i, item in enumerate(doc["SpotPriceHistory"]):
        try:
            rows.append(parse_spot_row(item))
        except ValueError as e:
            raise MarketFileError(f"market file {path}: SpotPriceHistory[{i}]: {e}") from e
    on_demand: dict[tuple[str, str], float] = {}
    if not isinstance(doc.get("OnDemand") or [], list):
        raise MarketFileError(f"market file {path}: OnDemand must be a list of {{Region, InstanceType, USD}}")
    for i, item in enumerate(doc.get("OnDemand") or []):
        try:
            usd = float(item["USD"])
            if not math.isfinite(usd) or usd <= 0:
                raise ValueError("USD must be > 0")
            on_demand[(str(item["Region"]), str(item["InstanceType"]))] = usd
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise MarketFileError(f"market file {path}: OnDemand[{i}] needs Region, InstanceType, USD > 0: {e}") \
                from e
    comment = str(doc.get("Comment") or doc.get("_sample") or "")
    sample = bool(doc.get("_sample")) or "sample" in comment.lower()
    return MarketFile(rows, on_demand, sample, comment)


class MarketWatcher:
    def __init__(self, regions, instance_types, source: str = "aws", product_description: str = "Linux/UNIX",
                 clock: Callable[[], float] = time.time, client_factory: ClientFactory | None = None, *,
                 pricing_region: str = "us-east-1", on_demand_refresh_seconds: float = 21600) -> None:
        self.regions = [r for r in (regions or ()) if r] or (list(DEFAULT_REGIONS) if source == "aws" else [])
        self.instance_types = [t for t in (instance_types or ()) if t] or list(DEFAULT_TYPES)
        self.source = source
        self.product = product_description
        self.clock = clock
        self.pricing_region = pricing_region
        self.on_demand_refresh_seconds = on_demand_refresh_seconds
        self._factory = client_factory or (lambda service, region: make_client(service, region))
        self._clients: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._spot: dict[str, dict[tuple[str, str, str], SpotRow]] = {}  # region -> newest rows
        self._on_demand: dict[tuple[str, str], float] = {}
        self._on_demand_checked: dict[tuple[str, str], float] = {}  # when last answered (price or none)
        self._errors: dict[tuple[str, str], int] = {}
        self._region_ok: dict[str, float] = {}
        self._last_success: float | None = None
        self._kind = "aws" if source == "aws" else "file"
        self._file_mtime: float | None = None
        self._file: MarketFile | None = None

    # --- public
    def refresh(self, now: float) -> None:
        """Fetch what is due; never raises (errors are counted per region, last good data kept)."""
        if self.source == "aws":
            self._refresh_aws(now)
        else:
            self._refresh_file(now)

    def snapshot(self) -> MarketSnapshot:
        with self._lock:
            spot = sorted((region_of_zone(r.zone), r.zone, r.instance_type, r.product, r.usd_per_hour)
                          for rows in self._spot.values() for r in rows.values())
            od = sorted((reg, t, usd) for (reg, t), usd in self._on_demand.items())
            return MarketSnapshot(spot, od, self._kind, self._last_success, dict(self._errors),
                                  dict(self._region_ok))

    def history(self, start: float, end: float) -> tuple[list[SpotRow], dict[str, str]]:
        """Every price change in [start, end] (plus the one in force at start), and per-region errors."""
        if self.source != "aws":
            f = self._load()
            return [r for r in self._wanted(f.rows) if r.timestamp <= end], {}
        rows: list[SpotRow] = []
        errors: dict[str, str] = {}
        for region in self.regions:
            try:
                rows.extend(self._wanted(spot_history(self._client("ec2", region), self.instance_types,
                                                      self.product, start=start, end=end)))
            except Exception as e:
                errors[region] = f"{error_reason(e)}: {str(e)[:200]}"
        return rows, errors

    def on_demand_now(self, now: float) -> dict[tuple[str, str], float]:
        if self.source == "aws":
            self._refresh_on_demand(now)
        else:
            self._refresh_file(now)
        with self._lock:
            return dict(self._on_demand)

    # --- AWS
    def _client(self, service: str, region: str):
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self._factory(service, region)
        return self._clients[key]

    def _count(self, region: str, reason: str) -> None:
        with self._lock:
            self._errors[(region, reason)] = self._errors.get((region, reason), 0) + 1

    def _wanted(self, rows) -> list[SpotRow]:
        regions = set(self.regions)
        return [r for r in rows if r.instance_type in self.instance_types and r.product == self.product
                and (not regions or region_of_zone(r.zone) in regions)]

    def _refresh_aws(self, now: float) -> None:
        any_ok = False
        for region in self.regions:
            try:
                rows = spot_history(self._client("ec2", region), self.instance_types, self.product, start=now)
            except Exception as e:  # one region failing must not stop the others
                reason = error_reason(e)
                self._count(region, reason)
                log.warning("market: spot prices of %s failed (%s: %s); keeping the last good data", region,
                            reason, str(e)[:200])
                continue
            newest = newest_per_key(self._wanted(rows))
            with self._lock:
                self._spot[region] = newest
                self._region_ok[region] = now
            any_ok = True
        self._refresh_on_demand(now)
        if any_ok:
            with self._lock:
                self._last_success = now

    def _refresh_on_demand(self, now: float) -> None:
        for region in self.regions:
            for itype in self.instance_types:
                key = (region, itype)
                checked = self._on_demand_checked.get(key)
                if checked is not None and now - checked < self.on_demand_refresh_seconds:
                    continue
                try:
                    client = self._client("pricing", self.pricing_region)
                    usd = on_demand_price(client, region, itype, self.product)
                except NoData:
                    usd = None  # the type is not sold in that region: an answer, not an error
                except Exception as e:
                    reason = error_reason(e)
                    self._count(region, f"on_demand:{reason}")
                    log.warning("market: on-demand price of %s in %s failed (%s)", itype, region, reason)
                    continue
                with self._lock:
                    self._on_demand_checked[key] = now
                    if usd is None:
                        self._on_demand.pop(key, None)
                    else:
                        self._on_demand[key] = usd

    # --- file
    def load_file(self) -> MarketFile:
        """The market file, re-read when it changed; ValueError naming the file when it is bad."""
        return self._load()

    def _load(self) -> MarketFile:
        mtime = os.stat(self.source).st_mtime
        if self._file is None or mtime != self._file_mtime:
            self._file = load_market_file(self.source)
            self._file_mtime = mtime
            self._kind = "sample" if self._file.sample else "file"
            if self._file.sample:
                log.warning("market: %s is labelled sample data: %s", self.source, self._file.comment)
        return self._file

    def _refresh_file(self, now: float) -> None:
        try:
            f = self._load()
        except (OSError, ValueError) as e:
            self._count("file", "BadFile" if isinstance(e, ValueError) else type(e).__name__)
            log.warning("market: %s", e)
            return
        by_region: dict[str, dict[tuple[str, str, str], SpotRow]] = {}
        for key, row in newest_per_key(self._wanted(f.rows)).items():
            by_region.setdefault(region_of_zone(row.zone), {})[key] = row
        wanted_od = {k: v for k, v in f.on_demand.items() if k[1] in self.instance_types
                     and (not self.regions or k[0] in self.regions)}
        with self._lock:
            self._spot = by_region
            self._on_demand = wanted_od
            for region in by_region:
                self._region_ok[region] = now
            self._last_success = now
