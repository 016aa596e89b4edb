"""The cost engine: integrates rates over real elapsed time into counters that never decrease.

Each tick covers the interval (previous tick, this tick]. Device readings taken at the end of the interval (the
driver's utilisation is itself an average over the recent past) and the price in force at its start give the slope; a
price that changes mid-run changes the slope from the next interval on, never the past. A stalled tick (the process was
paused) is integrated once over the real elapsed time. No I/O here: readings, prices and the clock are arguments.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from exporter.readings import DeviceReading

JOULES_PER_KWH = 3_600_000.0
HISTORY_SECONDS = 24 * 3600.0  # how far back cost-at-risk can reach for a checkpoint's node cost


@dataclass(frozen=True)
class Rates:
    """The prices in force (USD per hour); None when unknown, and then nothing accrues for it."""

    paid_usd_per_hour: float | None = None
    on_demand_usd_per_hour: float | None = None
    spot: bool = False
    electricity_usd_per_kwh: float | None = None
    pue: float = 1.0


Owner = tuple[str, ...]  # attribution label values (namespace, pod, container) or (job,); () when off


@dataclass
class DeviceCounters:
    busy_seconds: float = 0.0
    cost_usd: float = 0.0
    idle_cost_usd: float = 0.0


@dataclass
class _Energy:
    total_joules: float = 0.0
    last_raw: float | None = None


@dataclass
class Accountant:
    efficiency_target: float = 0.8
    node_cost_usd: float = 0.0
    energy_cost_usd: float = 0.0
    spot_savings_usd: float = 0.0
    unallocated_cost_usd: float = 0.0
    namespace_cost_usd: dict[str, float] = field(default_factory=dict)
    devices: dict[tuple[str, Owner], DeviceCounters] = field(default_factory=dict)
    energy: dict[str, _Energy] = field(default_factory=dict)
    efficiency: float | None = None
    energy_priced: bool = False  # an electricity price was ever in force: gaudi_energy_cost_usd_total is meaningful
    priced: bool = False  # a node price was ever in force: the cost series mean something (never an invented 0)
    last_tick: float | None = None
    _rates: Rates = field(default_factory=Rates)
    _checkpoint: tuple[float, float] | None = None  # (checkpoint time, node cost then)
    _history_t: list[float] = field(default_factory=list)
    _history_cost: list[float] = field(default_factory=list)

    def advance(self, now: float, devices: Iterable[DeviceReading], rates: Rates,
                owners: Mapping[str, Owner] | None = None, namespace_index: int | None = 0) -> float:
        """Integrate the interval ending at ``now``; returns its length in seconds (0 on the first tick).

        ``owners`` maps a device key to its attribution labels; ``namespace_index`` says which of them is the
        namespace (None when the labels carry no namespace, as in HPC mode).
        """
        devices = list(devices)
        owners = owners or {}
        dt = 0.0 if self.last_tick is None else max(0.0, now - self.last_tick)
        in_force = self._rates
        self.energy_priced = self.energy_priced or _finite(rates.electricity_usd_per_kwh) is not None
        self.priced = self.priced or _price(rates.paid_usd_per_hour) is not None  # accrues from the next interval
        if dt > 0:
            self._integrate(dt, devices, in_force, owners, namespace_index)
        else:
            # first tick: start the energy counters at the driver's value, so nothing is integrated twice, and the
            # per-HPU counters at 0, so increase() over a window that holds the start counts the first interval
            for d in devices:
                self._energy_delta(d, 0.0)
                self.devices.setdefault((d.key, owners.get(d.key, ())), DeviceCounters())
        self._rates = rates
        self.last_tick = now
        self.efficiency = self._efficiency(devices)
        self._remember(now)
        return dt

    def _integrate(self, dt: float, devices: list[DeviceReading], rates: Rates,
                   owners: Mapping[str, Owner], namespace_index: int | None) -> None:
        hours = dt / 3600.0
        paid = _price(rates.paid_usd_per_hour)
        joules = sum(self._energy_delta(d, dt) for d in devices)
        if paid is not None:
            self.node_cost_usd += paid * hours
            if rates.spot and (od := _price(rates.on_demand_usd_per_hour)) is not None:
                self.spot_savings_usd += max(0.0, od - paid) * hours
        if (kwh_price := _price(rates.electricity_usd_per_kwh)) is not None:
            self.energy_cost_usd += joules / JOULES_PER_KWH * kwh_price * (_price(rates.pue) or 1.0)
        share = paid / len(devices) if paid is not None and devices else None
        for d in devices:
            owner = owners.get(d.key, ())
            c = self.devices.setdefault((d.key, owner), DeviceCounters())
            util = _clamp01(d.utilization)
            if util is not None:
                c.busy_seconds += util * dt
            if share is None:
                continue
            c.cost_usd += share * hours
            if util is not None:
                c.idle_cost_usd += share * (1.0 - util) * hours
            if namespace_index is not None and owner:
                ns = owner[namespace_index]
                self.namespace_cost_usd[ns] = self.namespace_cost_usd.get(ns, 0.0) + share * hours
            elif namespace_index is not None:
                self.unallocated_cost_usd += share * hours

    def _energy_delta(self, d: DeviceReading, dt: float) -> float:
        """Joules this device used in the interval: from the driver's counter, else power x time."""
        e = self.energy.setdefault(d.key, _Energy())
        raw = _price(d.energy_joules)  # finite and not negative, like a price
        if raw is not None:
            if e.last_raw is None:  # first sight: the counter starts at the driver's "since driver load" value
                e.total_joules += raw
                e.last_raw = raw
                return 0.0
            delta = raw - e.last_raw if raw >= e.last_raw else raw  # a smaller value: the driver reloaded
            e.last_raw = raw
        elif e.last_raw is not None:
            return 0.0  # the driver's counter skipped a tick: its next reading covers the gap, count it once
        else:
            power = _finite(d.power_watts)
            delta = max(power, 0.0) * dt if power is not None else 0.0
        e.total_joules += delta
        return delta

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the counters of devices the loop no longer knows (lost past their grace): memory stays bounded."""
        gone = set(keys)
        for pair in [p for p in self.devices if p[0] in gone]:
            del self.devices[pair]
        for key in gone:
            self.energy.pop(key, None)

    def _efficiency(self, devices: list[DeviceReading]) -> float | None:
        scores = []
        for d in devices:
            util = _clamp01(d.utilization)
            if util is None or not d.memory_total_bytes or d.memory_used_bytes is None:
                continue
            mem = min(1.0, max(0.0, d.memory_used_bytes / d.memory_total_bytes))
            scores.append(min(1.0, (0.7 * util + 0.3 * mem) / self.efficiency_target))
        return sum(scores) / len(scores) if scores else None

    def _remember(self, now: float) -> None:
        self._history_t.append(now)
        self._history_cost.append(self.node_cost_usd)
        cut = bisect.bisect_left(self._history_t, now - HISTORY_SECONDS)
        if cut > 1000:  # trim in batches: cheap amortised
            del self._history_t[:cut]
            del self._history_cost[:cut]

    def node_cost_at(self, t: float) -> float:
        """Node cost counter as it stood at time ``t`` (linear between ticks; 0 before the first tick)."""
        ts, cs = self._history_t, self._history_cost
        if not ts:
            return 0.0
        if t <= ts[0]:
            return 0.0 if t < ts[0] and cs[0] == 0.0 else cs[0]
        if t >= ts[-1]:
            return cs[-1]
        i = bisect.bisect_right(ts, t)
        t0, t1, c0, c1 = ts[i - 1], ts[i], cs[i - 1], cs[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1

    def cost_at_risk(self, checkpoint_time: float | None) -> float | None:
        """Node cost since the checkpoint; its base is looked up once, when the checkpoint is first seen.

        A checkpoint older than the retained history (24 h) counts from the oldest point still held.
        """
        if checkpoint_time is None:
            return None
        if self._checkpoint is None or self._checkpoint[0] != checkpoint_time:
            self._checkpoint = (checkpoint_time, self.node_cost_at(checkpoint_time))
        return max(0.0, self.node_cost_usd - self._checkpoint[1])


def _finite(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _price(x: float | None) -> float | None:
    """A usable price: finite and not negative; anything else is treated as unknown (nothing accrues)."""
    x = _finite(x)
    return x if x is not None and x >= 0 else None


def _clamp01(x: float | None) -> float | None:
    x = _finite(x)
    return None if x is None else min(1.0, max(0.0, x))
