"""Static and on-prem prices: the values an operator configures, the built-in sourced entries, and bad settings."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter import pricing
from exporter.pricing import price_list
from exporter.pricing.base import NodeIdentity

REPO = Path(__file__).resolve().parents[1]
NOW = 1_790_000_000.0


def clock() -> float:
    return NOW


def make(settings: dict, identity: NodeIdentity | None = None, **kw):
    return pricing.create(settings, identity or NodeIdentity(), clock=clock, **kw)


def test_configured_static_price_is_paid_with_source_static():
    src = make({"source": "static", "static": {"usd_per_hour": 12.5}})
    p = src.prices(NOW + 10)
    assert p.paid is not None
    assert (p.paid.usd_per_hour, p.paid.source, p.paid.as_of) == (12.5, "static", NOW)
    assert p.last_success == {"static": NOW + 10}  # a configured price is current at every tick: never stale
    assert p.errors == {}
    src.refresh(NOW + 20)  # no network, nothing changes
    assert src.prices(NOW + 20).paid == p.paid


def test_config_price_wins_over_the_built_in_one():
    src = make({"source": "static", "static": {"usd_per_hour": 9.0, "entry": "intel-tiber-gaudi2-8x-2026"}},
               NodeIdentity(instance_type="dl1.24xlarge"))
    assert src.prices(NOW).paid.usd_per_hour == 9.0


@pytest.mark.parametrize(("entry", "usd", "date"), [
    ("aws-dl1.24xlarge-us-east-1-2026-08", 13.109, "2026-08"),
    ("intel-tiber-bm-gnr-gaudi3-smc-2026", 19.92, "2026"),
    ("intel-tiber-gaudi2-8x-2026", 10.40, "2026"),
])
def test_built_in_entry_by_name_carries_its_source_and_date(entry, usd, date):
    p = make({"source": "static", "static": {"entry": entry}}).prices(NOW)
    assert p.paid.usd_per_hour == usd
    assert p.paid.source == f"static:{entry}"
    # Dated by its price list (as_of); being configured, it is current at every tick (never stale).
    assert datetime.fromtimestamp(p.paid.as_of, UTC).strftime("%Y-%m").startswith(date)
    assert p.last_success == {f"static:{entry}": NOW}


def test_built_in_entry_chosen_by_instance_type_only():
    by_type = make({"source": "static", "static": {}}, NodeIdentity(instance_type="dl1.24xlarge"))
    assert by_type.prices(NOW).paid.source == "static:aws-dl1.24xlarge-us-east-1-2026-08"
    gaudi3 = make({"source": "static"}, NodeIdentity(instance_type="bm-gnr-gaudi3-smc"))
    assert gaudi3.prices(NOW).paid.usd_per_hour == 19.92
    assert make({"source": "static"}, NodeIdentity()).prices(NOW).paid is None  # no offering, no price


def test_no_invented_prices_in_the_price_list():
    # The old guide's $32.77 "Gaudi 3 instance" and dl2q are not Gaudi facts; only the three sourced entries exist.
    assert {e.usd_per_hour for e in price_list.ENTRIES} == {13.109, 19.92, 10.40}
    assert not any("dl2q" in e.name or "dl2q" in e.instance_type for e in price_list.ENTRIES)


def test_docs_list_every_built_in_price_with_source_and_date():
    doc = (REPO / "docs" / "pricing.md").read_text()
    for e in price_list.ENTRIES:
        line = next((ln for ln in doc.splitlines() if e.name in ln), None)
        assert line is not None, f"{e.name} missing from docs/pricing.md"
        assert re.search(rf"\$?{re.escape(f'{e.usd_per_hour:g}')}", line), line
        assert e.as_of in line, line


@pytest.mark.parametrize(("settings", "key"), [
    ({"source": "static", "static": {"usd_per_hour": 0}}, "pricing.static.usd_per_hour"),
    ({"source": "static", "static": {"usd_per_hour": -3}}, "pricing.static.usd_per_hour"),
    ({"source": "static", "static": {"usd_per_hour": "ten"}}, "pricing.static.usd_per_hour"),
    ({"source": "static", "static": {"usd_per_hour": math.nan}}, "pricing.static.usd_per_hour"),
    ({"source": "static", "static": {"entry": "dl2q.48xlarge"}}, "pricing.static.entry"),
    ({"source": "spot-market"}, "pricing.source"),
    ({"source": "on_prem", "on_prem": {"hardware_usd": 300000, "amortization_years": 0}},
     "pricing.on_prem.amortization_years"),
    ({"source": "on_prem", "on_prem": {"amortization_years": 3}}, "pricing.on_prem.hardware_usd"),
    ({"source": "on_prem", "on_prem": {"hardware_usd": 1, "amortization_years": 3, "opex_usd_per_hour": -1}},
     "pricing.on_prem.opex_usd_per_hour"),
    ({"source": "static", "static": {"usd_per_hour": 1}, "electricity": {"pue": 0.8}}, "pricing.electricity.pue"),
    ({"source": "static", "static": {"usd_per_hour": 1}, "electricity": {"usd_per_kwh": -0.1}},
     "pricing.electricity.usd_per_kwh"),
    ({"source": "aws", "aws": {"max_attempts": 0}}, "pricing.aws.max_attempts"),  # checked without an identity too
])
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        make(settings, NodeIdentity(instance_type="unknown.type") if key.startswith("pricing.static")
             else NodeIdentity())


def test_aws_source_without_identity_has_no_price_and_says_which_flag_to_set():
    # IMDS did not answer at start (or this is not EC2): the daemon runs unpriced rather than crash-looping
    for identity, flag in ((NodeIdentity(), "--node.instance-type"),
                           (NodeIdentity(instance_type="dl1.24xlarge"), "--node.region"),
                           (NodeIdentity("dl1.24xlarge", "us-east-1", "", "spot"), "--node.zone")):
        src = make({"source": "aws"}, identity)
        assert src.prices(NOW).paid is None
        assert flag in src.problem


def test_on_prem_price_is_amortised_hardware_plus_opex():
    src = make({"source": "on_prem", "on_prem": {"hardware_usd": 315_000, "amortization_years": 4,
                                                  "opex_usd_per_hour": 2.25}})
    p = src.prices(NOW + 7200)
    # 315,000 USD over 4 years of 8766 h, plus 2.25 USD/h opex.
    assert p.paid.usd_per_hour == pytest.approx(315_000 / (4 * 8766) + 2.25)
    assert p.paid.source == "on_prem"
    assert p.last_success == {"on_prem": NOW + 7200}


def test_electricity_settings():
    assert pricing.electricity({}) == (None, 1.0)
    assert pricing.electricity({"electricity": {"usd_per_kwh": 0.12, "pue": 1.4}}) == (0.12, 1.4)
