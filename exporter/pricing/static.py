"""A fixed price: the operator's own figure, or a built-in sourced entry."""

from __future__ import annotations

import logging
from collections.abc import Callable

from exporter.pricing import price_list
from exporter.pricing.base import FixedSource, NodeIdentity, Price, positive
from exporter.pricing.unpriced import Unpriced

log = logging.getLogger(__name__)


def create_static(settings: dict, identity: NodeIdentity, clock: Callable[[], float]) -> FixedSource | Unpriced:
    """usd_per_hour wins; else the named entry; else the entry of this node's instance type; else no price."""
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
        found = price_list.find(identity.instance_type)
        if found is None:
            problem = no_price_message(identity.instance_type)
            log.warning("pricing: %s", problem)
            return Unpriced(problem)
        entry = found
    if entry.region and identity.region and identity.region != entry.region:
        log.warning("built-in price %s applies to %s, this node is in %s; set pricing.static.usd_per_hour to "
                    "override", entry.name, entry.region, identity.region)
    price = Price(entry.usd_per_hour, entry.source, entry.as_of_unix)
    # The price list's figures are on-demand list prices: they are also the reference for spot savings.
    on_demand = price if entry.lifecycle == "on-demand" else None
    log.info("pricing: static built-in %s = %.3f USD/h (%s, %s)", entry.name, entry.usd_per_hour,
             entry.published_by, entry.as_of)
    return FixedSource("static", price, on_demand)


def no_price_message(instance_type: str) -> str:
    """Why there is no price and which flag to set."""
    offerings = ", ".join(f"{e.instance_type} ({e.name})" for e in price_list.ENTRIES if e.instance_type)
    node = (f"instance type {instance_type!r}" if instance_type
            else "no instance type: no IMDS, no --node.instance-type")
    return (f"no price configured and this node ({node}) is not a built-in offering ({offerings}); set "
            "--pricing.static.usd-per-hour (pricing.static.usd_per_hour), or --pricing.static.entry for a node that "
            "is a listed offering, or --pricing.source on_prem / aws. Telemetry is exported; cost series are not "
            "until a price is set")
