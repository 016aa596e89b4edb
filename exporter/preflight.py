"""Everything in the settings that would make the daemon refuse to start, checked before anything starts.

``gaudi-exporter check-config`` and the daemon's start-up call the same :func:`check`, so a file check-config
accepts is a file the daemon starts with: what can still stop it are facts of the machine (no device, a port in
use), not of the file. Every error is a ConfigError naming the key (the CLI exits 2); nothing here touches the
network or a device.
"""

from __future__ import annotations

import os
import time

from exporter import extras
from exporter.config import BY_KEY, ConfigError, Settings


def check(settings: Settings):
    """Validate what start-up would refuse; return the loaded web config (or None) so it is read once."""
    check_extras(settings)
    if settings["mode"] == "market":
        check_market(settings)
    elif settings["collectors.pricing"]:
        check_pricing(settings)
    return load_web_config(settings)


def check_extras(settings: Settings) -> None:
    """Each optional feature the settings turn on has its packages installed."""
    if settings["mode"] == "market":
        if settings["market.source"] == "aws":
            extras.require("aws", "market.source aws")
        return
    if settings["backend"] == "hlml":
        extras.require("hlml", "backend hlml")
    if settings["collectors.kubernetes"]:
        extras.require("kubernetes", "collectors.kubernetes")
    if settings["collectors.pricing"] and settings["pricing.source"] == "aws":
        extras.require("aws", "pricing.source aws")


def check_pricing(settings: Settings) -> None:
    """The price settings the price sources would reject (their own checks, run on the settings alone)."""
    from exporter import pricing
    from exporter.pricing import price_list

    section = settings.section("pricing")
    source = settings["pricing.source"]
    try:
        pricing.electricity(section)
        if source == "on_prem":
            from exporter.pricing.on_prem import create_on_prem

            if settings["pricing.on_prem.hardware_usd"] is None:
                raise ValueError(f"pricing.source on_prem needs pricing.on_prem.hardware_usd (the purchase price of "
                                 f"the node, {BY_KEY['pricing.on_prem.hardware_usd'].flag} USD)")
            create_on_prem(section.get("on_prem") or {}, time.time)
        elif source == "static" and settings["pricing.static.entry"] and settings["pricing.static.usd_per_hour"] \
                is None:
            price_list.by_name(settings["pricing.static.entry"])
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_market(settings: Settings) -> None:
    source = settings["market.source"]
    if source != "aws" and not os.path.isfile(source):
        raise ConfigError(f"market.source {source!r} is neither 'aws' nor a readable file (the JSON that "
                          "`aws ec2 describe-spot-price-history` prints)")


def load_web_config(settings: Settings):
    """The parsed web config file, or None; its errors are the settings' errors (exit 2)."""
    path = settings["web.config.file"]
    if not path:
        return None
    from exporter.webconfig import WebConfigError, load

    try:
        return load(path)
    except WebConfigError as e:
        raise ConfigError(f"web.config.file: {e}") from None
