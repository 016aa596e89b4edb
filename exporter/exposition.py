"""Renders one tick's state into metric families (a client_python custom collector) and then into bytes, once.

Every name comes from the catalogue. The scrape path never runs this: the loop renders after each tick and the HTTP
server hands out the cached bytes.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import catalogue, textformat
from exporter.accounting import Accountant, Owner
from exporter.readings import DeviceIdentity, Snapshot


@dataclass
class CollectorStat:
    duration_seconds: float
    success: bool


@dataclass
class View:
    """What the renderer reads: built by the loop, replaced (not mutated) each tick."""

    version: str
    backend: str
    mode: str = "node"
    snapshot: Snapshot | None = None
    stats: dict[str, CollectorStat] = field(default_factory=dict)
    accountant: Accountant | None = None
    attribution_labels: tuple[str, ...] = ()
    owners: dict[str, Owner] = field(default_factory=dict)
    known_devices: dict[str, DeviceIdentity] = field(default_factory=dict)
    read_errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (hpu, uuid) -> count
    prices: object | None = None  # exporter.pricing.base.NodePrices
    identity: object | None = None  # exporter.pricing.base.NodeIdentity
    notices: object | None = None  # exporter.aws.imds.SpotNotices
    checkpoint_time: float | None = None
    market: object | None = None  # exporter.market.fetch.MarketSnapshot
    ticks: int = 0
    last_collection: float | None = None


def _family(name: str, labels: tuple[str, ...] | None = None) -> Metric:
    m = catalogue.get(name)
    labelnames = labels if labels is not None else m.label_names()
    if m.kind is catalogue.Kind.COUNTER:
        return CounterMetricFamily(m.name, m.help, labels=labelnames, unit=m.unit)
    return GaugeMetricFamily(m.name, m.help, labels=labelnames, unit=m.unit)


NIC_PORT_MODES = ("summary", "per-port")  # --collector.hpu.nic-ports


class ViewCollector:
    """Yields the families of the current View.

    ``nic_ports``: "summary" exports ports up/down per device; "per-port" adds one series per port (24 per Gaudi 3:
    192 of an 8-HPU node's series), for nodes being debugged.
    """

    def __init__(self, nic_ports: str = "summary") -> None:
        if nic_ports not in NIC_PORT_MODES:
            raise ValueError(f"nic_ports must be one of {', '.join(NIC_PORT_MODES)}, not {nic_ports!r}")
        self.view: View | None = None
        self.nic_per_port = nic_ports == "per-port"

    def describe(self) -> list:
        return []  # collect() depends on the view; nothing to describe at registration

    def collect(self) -> Iterator[Metric]:
        v = self.view
        if v is None:
            return
        parts = (self._exporter, self._market) if v.mode == "market" else (
            self._exporter, self._devices, self._host, self._cost)
        for part in parts:
            for family in part(v):
                if family.samples:  # an empty family would only add HELP/TYPE noise
                    yield family

    # --- the exporter itself
    def _exporter(self, v: View) -> Iterator[Metric]:
        f = _family("gaudi_exporter_build_info")
        f.add_metric([v.version, v.backend, v.mode], 1)
        yield f
        dur = _family("gaudi_exporter_collector_duration_seconds")
        ok = _family("gaudi_exporter_collector_success")
        for name, st in sorted(v.stats.items()):
            dur.add_metric([name], st.duration_seconds)
            ok.add_metric([name], 1 if st.success else 0)
        yield dur
        yield ok
        if v.last_collection is not None:
            f = _family("gaudi_exporter_last_collection_timestamp_seconds")
            f.add_metric([], v.last_collection)
            yield f
        f = _family("gaudi_exporter_ticks_total")
        f.add_metric([], v.ticks)
        yield f

    # --- devices
    def _devices(self, v: View) -> Iterator[Metric]:
        snap = v.snapshot
        if snap is None:
            return
        attr = v.attribution_labels
        empty = ("",) * len(attr)

        def labels(ident: DeviceIdentity, key: str) -> list[str]:
            return [str(ident.index), ident.uuid, *v.owners.get(key, empty)]

        def fam(name: str) -> Metric:
            return _family(name, catalogue.get(name).label_names(attr))

        info, up = fam("gaudi_hpu_info"), fam("gaudi_hpu_up")
        util, busy = fam("gaudi_hpu_utilization_ratio"), fam("gaudi_hpu_busy_seconds_total")
        mem_used, mem_total = fam("gaudi_hpu_memory_used_bytes"), fam("gaudi_hpu_memory_total_bytes")
        power, limit = fam("gaudi_hpu_power_watts"), fam("gaudi_hpu_power_limit_watts")
        energy, temp = fam("gaudi_hpu_energy_joules_total"), fam("gaudi_hpu_temperature_celsius")
        clock, ecc = fam("gaudi_hpu_clock_hertz"), fam("gaudi_hpu_ecc_errors_total")
        throttled, replays = fam("gaudi_hpu_throttled"), fam("gaudi_hpu_pcie_replays_total")
        nic = fam("gaudi_hpu_nic_port_up")
        nic_ports = fam("gaudi_hpu_nic_ports")
        health = _HealthFamilies(fam)
        cost, idle = fam("gaudi_hpu_cost_usd_total"), fam("gaudi_hpu_idle_cost_usd_total")
        acct = v.accountant
        seen = set()
        for d in snap.devices:
            ident, key = d.identity, d.key
            seen.add(key)
            base = labels(ident, key)
            fw = d.slow.firmware_version if d.slow and d.slow.firmware_version else ident.firmware_version
            info.add_metric(base + [ident.serial, ident.name, ident.model, ident.pci_bus_id, ident.driver_version,
                                    fw, v.backend], 1)
            up.add_metric(base, 1)
            if d.utilization is not None:
                util.add_metric(base, d.utilization)
            if d.memory_used_bytes is not None:
                mem_used.add_metric(base, d.memory_used_bytes)
            if d.memory_total_bytes is not None:
                mem_total.add_metric(base, d.memory_total_bytes)
            if d.power_watts is not None:
                power.add_metric(base, d.power_watts)
            if d.power_limit_watts is not None:
                limit.add_metric(base, d.power_limit_watts)
            for sensor, celsius in d.temperatures:
                temp.add_metric(base + [sensor], celsius)
            for name, hz in d.clocks_hertz:
                clock.add_metric(base + [name], hz)
            for reason, active in d.throttled:
                throttled.add_metric(base + [reason], 1 if active else 0)
            health.add(base, d)
            if d.slow is not None:
                if d.slow.ecc_corrected is not None:
                    ecc.add_metric(base + ["corrected"], d.slow.ecc_corrected)
                if d.slow.ecc_uncorrected is not None:
                    ecc.add_metric(base + ["uncorrected"], d.slow.ecc_uncorrected)
                if d.slow.pcie_replays is not None:
                    replays.add_metric(base, d.slow.pcie_replays)
                if d.slow.nic_ports_up is not None:
                    up_count = sum(1 for _, is_up in d.slow.nic_ports_up if is_up)
                    nic_ports.add_metric(base + ["up"], up_count)
                    nic_ports.add_metric(base + ["down"], len(d.slow.nic_ports_up) - up_count)
                    if self.nic_per_port:
                        for port, is_up in d.slow.nic_ports_up:
                            nic.add_metric(base + [str(port)], 1 if is_up else 0)
            if acct is not None:
                e = acct.energy.get(key)
                if e is not None:
                    energy.add_metric(base, e.total_joules)
                counters = acct.devices.get((key, v.owners.get(key, ())))
                if counters is not None:
                    busy.add_metric(base, counters.busy_seconds)
                    if acct.priced:  # without a price there is no cost, not a cost of 0
                        cost.add_metric(base, counters.cost_usd)
                        idle.add_metric(base, counters.idle_cost_usd)
        for key, ident in sorted(v.known_devices.items()):
            if key not in seen:  # lost: only gaudi_hpu_up 0 remains, no stale values
                up.add_metric([str(ident.index), ident.uuid, *empty], 0)
        yield from (info, up, util, busy, mem_used, mem_total, power, limit, energy, temp, clock, ecc, throttled,
                    replays, nic_ports, nic, *health.families(), cost, idle)
        errors = _family("gaudi_hpu_read_errors_total")
        for (hpu, uuid), n in sorted(v.read_errors.items()):
            errors.add_metric([hpu, uuid], n)
        yield errors

    def _host(self, v: View) -> Iterator[Metric]:
        h = v.snapshot.host if v.snapshot else None
        if h is None:
            return
        for name, value in (("gaudi_host_cpu_utilization_ratio", h.cpu_utilization),
                            ("gaudi_host_memory_used_bytes", h.memory_used_bytes),
                            ("gaudi_host_memory_total_bytes", h.memory_total_bytes)):
            if value is not None:
                f = _family(name)
                f.add_metric([], value)
                yield f

    # --- prices and cost
    def _cost(self, v: View) -> Iterator[Metric]:
        acct, prices, ident = v.accountant, v.prices, v.identity
        if prices is not None:
            paid = getattr(prices, "paid", None)
            if paid is not None:
                f = _family("gaudi_node_price_usd_per_hour")
                f.add_metric([paid.source, getattr(ident, "instance_type", ""), getattr(ident, "region", ""),
                              getattr(ident, "zone", ""), getattr(ident, "lifecycle", "")], paid.usd_per_hour)
                yield f
            od = getattr(prices, "on_demand", None)
            if od is not None:
                f = _family("gaudi_node_on_demand_price_usd_per_hour")
                f.add_metric([od.source], od.usd_per_hour)
                yield f
            f = _family("gaudi_pricing_last_success_timestamp_seconds")
            for source, ts in sorted(getattr(prices, "last_success", {}).items()):
                f.add_metric([source], ts)
            yield f
            f = _family("gaudi_pricing_errors_total")
            for (source, reason), n in sorted(getattr(prices, "errors", {}).items()):
                f.add_metric([source, reason], n)
            yield f
        if acct is not None:
            # no node price ever in force: no node/HPU/namespace cost series at all, rather than an invented 0
            totals = [("gaudi_node_cost_usd_total", acct.node_cost_usd),
                      ("gaudi_spot_savings_usd_total", acct.spot_savings_usd)] if acct.priced else []
            if acct.energy_priced:
                totals.append(("gaudi_energy_cost_usd_total", acct.energy_cost_usd))
            for name, value in totals:
                f = _family(name)
                f.add_metric([], value)
                yield f
            if acct.efficiency is not None:
                f = _family("gaudi_cost_efficiency_ratio")
                f.add_metric([], acct.efficiency)
                yield f
            if "namespace" in v.attribution_labels and acct.priced:
                f = _family("gaudi_namespace_cost_usd_total")
                for ns, value in sorted(acct.namespace_cost_usd.items()):
                    f.add_metric([ns], value)
                yield f
                f = _family("gaudi_unallocated_cost_usd_total")
                f.add_metric([], acct.unallocated_cost_usd)
                yield f
            if v.checkpoint_time is not None:
                f = _family("gaudi_checkpoint_last_timestamp_seconds")
                f.add_metric([], v.checkpoint_time)
                yield f
            if "checkpoint" in v.stats and acct.priced:  # with no checkpoint yet, everything so far is at risk
                risk = acct.cost_at_risk(v.checkpoint_time)
                f = _family("gaudi_cost_at_risk_usd")
                f.add_metric([], acct.node_cost_usd if risk is None else risk)
                yield f
        n = v.notices
        if n is not None:
            for name, value in (
                ("gaudi_spot_interruption_pending", 1 if n.interruption_pending else 0),
                ("gaudi_spot_interruption_time_seconds", n.interruption_time or 0),
                ("gaudi_spot_rebalance_recommended", 1 if n.rebalance_recommended else 0),
            ):
                f = _family(name)
                f.add_metric([], value)
                yield f

    def _market(self, v: View) -> Iterator[Metric]:
        m = v.market
        if m is None:
            return
        spot = _family("gaudi_spot_market_price_usd_per_hour")
        for region, zone, itype, product, usd in m.spot:
            spot.add_metric([region, zone, itype, product, m.source], usd)
        yield spot
        od = _family("gaudi_on_demand_market_price_usd_per_hour")
        for region, itype, usd in m.on_demand:
            od.add_metric([region, itype, m.source], usd)
        yield od
        errors = _family("gaudi_market_errors_total")
        for (region, reason), n in sorted(getattr(m, "errors", {}).items()):
            errors.add_metric([region, reason], n)
        yield errors
        if m.last_success is not None:
            f = _family("gaudi_market_last_success_timestamp_seconds")
            f.add_metric([m.source], m.last_success)
            yield f


class _HealthFamilies:
    """The health and parity families (issue 11 section 3), filled device by device."""

    def __init__(self, fam) -> None:
        names = ("gaudi_hpu_memory_utilization_ratio", "gaudi_hpu_throttle_seconds_total",
                 "gaudi_hpu_pcie_throughput_bytes_per_second", "gaudi_hpu_ecc_volatile_errors_total",
                 "gaudi_hpu_ecc_enabled", "gaudi_hpu_hbm_replaced_rows", "gaudi_hpu_hbm_row_replacement_pending",
                 "gaudi_hpu_pcie_link_generation", "gaudi_hpu_pcie_link_max_generation", "gaudi_hpu_pcie_link_width",
                 "gaudi_hpu_pcie_link_max_width", "gaudi_hpu_temperature_threshold_celsius",
                 "gaudi_hpu_power_default_limit_watts", "gaudi_hpu_power_min_limit_watts",
                 "gaudi_hpu_power_max_limit_watts", "gaudi_hpu_clock_max_hertz")
        self.f = {name: fam(name) for name in names}

    def families(self) -> list[Metric]:
        return list(self.f.values())

    def add(self, base: list[str], d) -> None:
        f = self.f
        if d.memory_utilization is not None:
            f["gaudi_hpu_memory_utilization_ratio"].add_metric(base, d.memory_utilization)
        for reason, seconds in d.throttle_seconds:
            f["gaudi_hpu_throttle_seconds_total"].add_metric(base + [reason], seconds)
        for direction, rate in d.pcie_throughput_bytes:
            f["gaudi_hpu_pcie_throughput_bytes_per_second"].add_metric(base + [direction], rate)
        s = d.slow
        if s is None:
            return
        for kind, value in (("corrected", s.ecc_volatile_corrected), ("uncorrected", s.ecc_volatile_uncorrected)):
            if value is not None:
                f["gaudi_hpu_ecc_volatile_errors_total"].add_metric(base + [kind], value)
        for setting, enabled in s.ecc_mode:
            f["gaudi_hpu_ecc_enabled"].add_metric(base + [setting], 1 if enabled else 0)
        for cause, rows in s.replaced_rows:
            f["gaudi_hpu_hbm_replaced_rows"].add_metric(base + [cause], rows)
        if s.row_replacement_pending is not None:
            f["gaudi_hpu_hbm_row_replacement_pending"].add_metric(base, 1 if s.row_replacement_pending else 0)
        for what, n in s.pcie_link:
            f[PCIE_LINK_METRICS[what]].add_metric(base, n)
        for threshold, celsius in s.temperature_thresholds:
            f["gaudi_hpu_temperature_threshold_celsius"].add_metric(base + [threshold], celsius)
        for which, watts in s.power_limits_watts:
            f[f"gaudi_hpu_power_{which}_limit_watts"].add_metric(base, watts)
        for clock, hz in s.clocks_max_hertz:
            f["gaudi_hpu_clock_max_hertz"].add_metric(base + [clock], hz)


PCIE_LINK_METRICS = {"generation": "gaudi_hpu_pcie_link_generation",
                     "max_generation": "gaudi_hpu_pcie_link_max_generation",
                     "width": "gaudi_hpu_pcie_link_width", "max_width": "gaudi_hpu_pcie_link_max_width"}


@dataclass(frozen=True)
class Exposition:
    """The rendered bytes of one tick, in both formats, plain and gzipped."""

    text: bytes
    text_gz: bytes
    openmetrics: bytes
    openmetrics_gz: bytes


class Renderer:
    def __init__(self, registry: CollectorRegistry | None = None, process_metrics: bool = True,
                 nic_ports: str = "summary") -> None:
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.collector = ViewCollector(nic_ports)
        self.registry.register(self.collector)
        if process_metrics:
            ProcessCollector(registry=self.registry)

    def render(self, view: View) -> Exposition:
        self.collector.view = view
        families = list(self.registry.collect())
        text = textformat.text(families)
        om = textformat.openmetrics(families)
        return Exposition(text, gzip.compress(text, 1), om, gzip.compress(om, 1))
