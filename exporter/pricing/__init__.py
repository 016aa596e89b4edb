"""Price sources: where this node's price per hour comes from (static, on-prem or live AWS).

``create(settings, identity)`` validates the ``pricing`` config section and returns a ``PriceSource``; the
daemon calls ``refresh(now)`` from a background thread and ``prices(now)`` on each tick.
"""

from __future__ import annotations

import logging
import random as _random
import time
from collections.abc import Callable

from exporter.pricing.base import NodeIdentity, NodePrices, Price, PriceSource, positive

__all__ = ["NodeIdentity", "NodePrices", "Price", "PriceSource", "create", "electricity"]

SOURCES = ("static", "on_prem", "aws")
log = logging.getLogger(__name__)


def electricity(settings: dict) -> tuple[float | None, float]:
    """(USD per kWh or None when energy cost is off, PUE), validated."""
    section = settings.get("electricity") or {}
    usd = section.get("usd_per_kwh")
    usd_v = None if usd is None else positive(usd, "pricing.electricity.usd_per_kwh", allow_zero=True)
    pue = positive(section.get("pue", 1.0), "pricing.electricity.pue")
    if pue < 1.0:
        raise ValueError(f"pricing.electricity.pue must be >= 1.0 (facility power / IT power), got {pue!r}")
    return usd_v, pue


def create(settings: dict, identity: NodeIdentity, *, clock: Callable[[], float] = time.time, ec2_client=None,
           pricing_client=None, random: Callable[[], float] = _random.random) -> PriceSource:
    """Build the configured price source; ValueError naming the key on bad settings.

    A static source with no price and no built-in entry for this node's instance type is an Unpriced source
    (never an error: the daemon starts, the pricing collector reports the missing price).
    """
    source = settings.get("source", "static")
    if source not in SOURCES:
        raise ValueError(f"pricing.source must be one of {', '.join(SOURCES)}, got {source!r}")
    electricity(settings)
    if source == "static":
        from exporter.pricing.static import create_static

        return create_static(settings.get("static") or {}, identity, clock)
    if source == "on_prem":
        from exporter.pricing.on_prem import create_on_prem

        return create_on_prem(settings.get("on_prem") or {}, clock)
    return _create_aws(settings.get("aws") or {}, identity, ec2_client, pricing_client, random)


def _create_aws(aws: dict, identity: NodeIdentity, ec2_client, pricing_client, random) -> PriceSource:
    from exporter.pricing.aws import AwsSource, make_client

    spot_s = positive(aws.get("spot_refresh_seconds", 300), "pricing.aws.spot_refresh_seconds")
    od_s = positive(aws.get("on_demand_refresh_seconds", 21600), "pricing.aws.on_demand_refresh_seconds")
    product = aws.get("product_description", "Linux/UNIX")
    if not isinstance(product, str) or not product:
        raise ValueError(f"pricing.aws.product_description must be a non-empty string, got {product!r}")
    pricing_region = aws.get("pricing_region", "us-east-1")
    if pricing_region not in ("us-east-1", "eu-central-1", "ap-south-1"):
        raise ValueError("pricing.aws.pricing_region must be one of us-east-1, eu-central-1, ap-south-1 (the "
                         f"Pricing API endpoints), got {pricing_region!r}")
    attempts = aws.get("max_attempts", 3)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"pricing.aws.max_attempts must be an integer >= 1, got {attempts!r}")
    missing = _missing_identity(identity)
    if missing:  # IMDS did not answer at start, or this is not EC2: no price, but the telemetry still flows
        from exporter.pricing.unpriced import Unpriced

        what, key = missing
        problem = (f"pricing.source=aws needs {what}: set --node.{key.replace('_', '-')} (node.{key} in the config) "
                   "or run where instance metadata (IMDSv2) answers, then restart. Telemetry is exported; cost "
                   "series are not until there is a price")
        log.warning("pricing: %s", problem)
        return Unpriced(problem)
    if ec2_client is None:
        ec2_client = make_client("ec2", identity.region, attempts)
    if pricing_client is None:
        pricing_client = make_client("pricing", pricing_region, attempts)
    return AwsSource(identity, ec2_client=ec2_client, pricing_client=pricing_client,
                     spot_refresh_seconds=spot_s, on_demand_refresh_seconds=od_s,
                     product_description=product, random=random,
                     backoff_base=positive(aws.get("backoff_base_seconds", 30), "pricing.aws.backoff_base_seconds"),
                     backoff_cap=positive(aws.get("backoff_max_seconds", 3600), "pricing.aws.backoff_max_seconds"))


def _missing_identity(identity: NodeIdentity) -> tuple[str, str] | None:
    """(what, node.* key) the AWS source lacks to look a price up; None when it has all it needs."""
    if not identity.instance_type:
        return "the instance type", "instance_type"
    if not identity.region:
        return "the region", "region"
    if identity.lifecycle == "spot" and not identity.zone:
        return "the zone on a spot node", "zone"
    return None
