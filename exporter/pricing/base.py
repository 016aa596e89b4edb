"""Types every price source shares, and the retry schedule of the ones that call an API.

A price is a fact with a source and a time: the cost engine never sees a bare number, so the exposition can
always say where a price came from and how old it is.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    source: str  # "static", "static:<price-list entry>", "on_prem", "aws_spot", "aws_on_demand"
    as_of: float  # unix time the value was last confirmed


@dataclass(frozen=True)
class NodeIdentity:
    instance_type: str = ""
    region: str = ""
    zone: str = ""
    lifecycle: str = ""  # "spot" | "on-demand" | "" (unknown)
    source: str = "config"  # "config" | "imds"


@dataclass(frozen=True)
class NodePrices:
    paid: Price | None = None
    on_demand: Price | None = None
    last_success: dict[str, float] = field(default_factory=dict)  # source -> unix time
    errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, reason) -> cumulative count


@runtime_checkable
class PriceSource(Protocol):
    name: str

    def prices(self, now: float) -> NodePrices:
        """Cheap and from memory: never raises, never touches the network."""
        ...

    def refresh(self, now: float) -> None:
        """Network calls when due; never raises (failures are counted by reason)."""
        ...


def positive(value: object, key: str, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (or >= 0), else ValueError naming the config key."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


class Backoff:
    """When to call an API next: a fixed period after success, exponential backoff with jitter after failures.

    Jitter spreads a fleet's retries so that 1,000 nodes throttled together do not retry together.
    """

    def __init__(self, period: float, *, base: float = 30.0, cap: float = 3600.0,
                 random: Callable[[], float] = _random.random) -> None:
        self.period = period
        self.base = base
        self.cap = cap
        self._random = random
        self.failures = 0
        self.next_due = 0.0  # due at once
        self.last_delay = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def success(self, now: float) -> None:
        self.failures = 0
        self.last_delay = self.period
        self.next_due = now + self.period

    def failure(self, now: float) -> float:
        """Record a failure; return the delay before the next attempt (half fixed, half random)."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** (self.failures - 1))
        self.last_delay = ceiling * (0.5 + 0.5 * self._random())
        self.next_due = now + self.last_delay
        return self.last_delay


class FixedSource:
    """A price that does not change (static or on-prem): no network, always available."""

    def __init__(self, name: str, paid: Price, on_demand: Price | None = None) -> None:
        self.name = name
        self._paid = paid
        self._on_demand = on_demand

    def prices(self, now: float) -> NodePrices:
        # A configured price is current at every tick (it is never stale, whatever the date of a price list it
        # came from: that date is Price.as_of and in the source name).
        return NodePrices(paid=self._paid, on_demand=self._on_demand, last_success={self._paid.source: now})

    def refresh(self, now: float) -> None:
        return None
