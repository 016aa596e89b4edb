"""A fixed price: the operator's own figure, or a built-in sourced entry."""

from __future__ import annotations

import logging
from collections.abc import Callable

from exporter.pricing import price_list
from exporter.pricing.base import FixedSource, NodeIdentity, Price, positive

log = logging.getLogger(__name__)


def create_static(settings: dict, identity: NodeIdentity, clock: Callable[[], float],
                  device_model: str = "") -> FixedSource:
    """usd_per_hour wins; else the named entry; else the entry matching the instance type or device model."""
    now = clock()
    usd = settings.get("usd_per_hour")
    entry_name = settings.get("entry")
    if usd is not None:
        price = Price(positive(usd, "pricing.static.usd_per_hour"), "static", now)
        return FixedSource("static", price)
    if entry_name:
        if not isinstance(entry_name, str):
            raise ValueError(f"pricing.static.entry must be a string, got {entry_name!r}")
        entry = price_list.by_name(entry_name)
    else:
        entry = price_list.find(identity.instance_type, device_model)
        if entry is None:
            raise ValueError(
                "pricing.static: set pricing.static.usd_per_hour or pricing.static.entry; no built-in price "
                f"matches instance type {identity.instance_type or '(unknown)'!r} / device model "
                f"{device_model or '(unknown)'!r} (entries: {', '.join(e.name for e in price_list.ENTRIES)})")
    if entry.region and identity.region and identity.region != entry.region:
        log.warning("built-in price %s applies to %s, this node is in %s; set pricing.static.usd_per_hour to "
                    "override", entry.name, entry.region, identity.region)
    price = Price(entry.usd_per_hour, entry.source, entry.as_of_unix)
    # The price list's figures are on-demand list prices: they are also the reference for spot savings.
    on_demand = price if entry.lifecycle == "on-demand" else None
    log.info("pricing: static built-in %s = %.3f USD/h (%s, %s)", entry.name, entry.usd_per_hour,
             entry.published_by, entry.as_of)
    return FixedSource("static", price, on_demand)
