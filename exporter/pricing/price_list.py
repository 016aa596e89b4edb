"""Built-in prices: only sourced, dated facts, each a default that config overrides.

Nothing here is a guess. Each entry names who published the price and when; docs/pricing.md lists the same
entries (a test checks the two agree). To add one, add the publisher and the date, or do not add it.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass


@dataclass(frozen=True)
class PriceListEntry:
    name: str  # stable id used in config (pricing.static.entry) and in the price source label
    usd_per_hour: float
    provider: str
    offering: str  # what the provider sells under this price
    devices: int
    device_model: str  # product name of the cards: HL-205 = Gaudi 1, HL-225 = Gaudi 2, HL-325L = Gaudi 3
    published_by: str  # where the figure comes from
    as_of: str  # YYYY-MM or YYYY: the date of the price list
    instance_type: str = ""  # the cloud instance type, where there is one
    region: str = ""  # where the price applies, where it depends on the region
    lifecycle: str = "on-demand"

    @property
    def source(self) -> str:
        return f"static:{self.name}"

    @property
    def as_of_unix(self) -> float:
        """Start of the month (or year) of the price list, UTC."""
        parts = [int(p) for p in self.as_of.split("-")]
        year, month = parts[0], parts[1] if len(parts) > 1 else 1
        return float(calendar.timegm((year, month, 1, 0, 0, 0)))


ENTRIES: tuple[PriceListEntry, ...] = (
    PriceListEntry(
        name="aws-dl1.24xlarge-us-east-1-2026-08",
        usd_per_hour=13.109,
        provider="AWS",
        offering="dl1.24xlarge on demand, Linux, shared tenancy (8 x Gaudi 1, HL-205, 32 GB)",
        devices=8,
        device_model="HL-205",
        published_by="AWS price list (pricing:GetProducts, AmazonEC2, US East (N. Virginia))",
        as_of="2026-08",
        instance_type="dl1.24xlarge",
        region="us-east-1",
    ),
    PriceListEntry(
        name="intel-tiber-bm-gnr-gaudi3-smc-2026",
        usd_per_hour=19.92,
        provider="Intel Tiber AI Cloud",
        offering="bm-gnr-gaudi3-smc: 8 x Gaudi 3 bare metal",
        devices=8,
        device_model="HL-325L",
        published_by="Intel Tiber AI Cloud published price list",
        as_of="2026",
        instance_type="bm-gnr-gaudi3-smc",
    ),
    PriceListEntry(
        name="intel-tiber-gaudi2-8x-2026",
        usd_per_hour=10.40,
        provider="Intel Tiber AI Cloud",
        offering="8 x Gaudi 2 (HL-225)",
        devices=8,
        device_model="HL-225",
        published_by="Intel Tiber AI Cloud published price list",
        as_of="2026",
    ),
)


def by_name(name: str) -> PriceListEntry:
    for e in ENTRIES:
        if e.name == name:
            return e
    known = ", ".join(e.name for e in ENTRIES)
    raise ValueError(f"pricing.static.entry {name!r} is not a built-in price; known entries: {known}")


def find(instance_type: str) -> PriceListEntry | None:
    """The entry for this node's offering, by its instance type; None when the node is not a listed offering.

    Only the instance type can say that a node IS an offering: a device model alone never picks a price (an
    on-prem Gaudi 3 box is not Intel Tiber's rental, a 2-card box not an 8-card one).
    """
    if instance_type:
        for e in ENTRIES:
            if e.instance_type and e.instance_type == instance_type:
                return e
    return None
