"""Synthetic fleet history shaped like the exporter's exposition, written as OpenMetrics for promtool backfill.

Used by the rules' equivalence test (small) and by benchmarks/fleet_rules.py (large): N nodes x H HPUs x D days of
what Prometheus would have scraped every ``step`` seconds, with what makes long windows hard in real fleets:
counter resets and a new ``instance`` when an exporter restarts (a DaemonSet rollout), and pods that move between
namespaces, so per-HPU series churn with their pod labels. With ``all_series`` it also writes what the dashboards
and health alerts read (prices, power, HBM, temperature, throttling, NIC, PCIe and HBM-row summaries, spot notices,
market prices, one training job per cluster), so the benchmark measures every panel. Every value is simulated and
deterministic for a seed; nothing here talks to a network.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

JOB = "gaudi-exporter"
NAMESPACES = ("ml-research", "serving", "batch")
# 2026-10-01T00:00:00Z: a fixed start so the data (and the test's figures) do not depend on the clock
DEFAULT_START = 1790812800


@dataclass
class _Hpu:
    index: int
    uuid: str
    pod: tuple[str, str] | None = None  # (namespace, pod) holding it, None = unallocated
    util: float = 0.0
    # per label set (pod) since the exporter started: cost, idle cost, busy seconds
    cost: float = 0.0
    idle: float = 0.0
    busy: float = 0.0
    ecc_corrected: float = 0.0
    ecc_uncorrected: float = 0.0
    energy: float = 0.0  # joules
    throttle_power: float = 0.0  # seconds clocks were held back, by reason
    throttle_thermal: float = 0.0
    read_errors: float = 0.0


@dataclass
class _Node:
    cluster: str
    name: str
    price: float  # USD per hour
    spot_saving: float  # USD per hour saved against on demand (0 on on-demand nodes)
    hpus: list[_Hpu]
    instance: str = ""
    restarts: int = 0
    cost: float = 0.0
    savings: float = 0.0
    unallocated: float = 0.0
    namespaces: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetData:
    """What was written: the OpenMetrics files (in time order), the time span and what it holds."""

    files: list[Path]
    start: int
    end: int  # timestamp of the last sample
    step: int
    nodes: int
    hpus: int
    clusters: tuple[str, ...]
    samples: int
    series: int  # distinct label sets over the whole span (churn included)


def _fmt(v: float) -> str:
    return repr(round(v, 9))


HBM_BYTES = 128 * 2**30  # Gaudi 3
POWER_LIMIT_W = 900.0
ZONES = ("a", "b", "c")
TRAINING_SAMPLES_PER_S = 500.0


def _power(h: _Hpu) -> float:
    """Watts: idle draw plus a share of the limit that grows with utilisation."""
    return 150.0 + 700.0 * h.util


class _Fleet:
    def __init__(self, nodes: int, hpus: int, clusters: Sequence[str], rng: random.Random,
                 all_series: bool = False) -> None:
        self.rng = rng
        self.all_series = all_series
        self.nodes: list[_Node] = []
        self._ip = 0
        self.trained: dict[str, float] = {c: 0.0 for c in clusters}  # samples of one training job per cluster
        for c in clusters:
            for n in range(nodes):
                price = rng.choice((8.0, 12.0, 19.92, 32.0))
                spot = rng.random() < 0.3
                node = _Node(c, f"gaudi-{n:04d}", price, price * 0.4 if spot else 0.0,
                             [_Hpu(h, f"{c[:1]}{n:04d}-{h}") for h in range(hpus)])
                self._restart(node, first=True)
                self.nodes.append(node)

    def _restart(self, node: _Node, first: bool = False) -> None:
        """A new exporter pod: a new address, every counter from 0 (the same addresses recur across clusters)."""
        self._ip += 1
        node.instance = f"10.{(self._ip >> 8) & 255}.{self._ip & 255}.{1 + node.restarts % 250}:9654"
        node.restarts += 0 if first else 1
        node.cost = node.savings = node.unallocated = 0.0
        node.namespaces = {}
        for h in node.hpus:
            h.cost = h.idle = h.busy = h.ecc_corrected = h.ecc_uncorrected = 0.0
            h.energy = h.throttle_power = h.throttle_thermal = h.read_errors = 0.0

    def _schedule(self, node: _Node) -> None:
        """Pods come and go: each HPU is held by a pod of some namespace, or by none; a new pod is a new series."""
        for h in node.hpus:
            before = h.pod
            if self.rng.random() < 0.25:
                h.pod = None
                h.util = self.rng.choice((0.0, 0.01))
            else:
                ns = self.rng.choice(NAMESPACES)
                h.pod = (ns, f"{ns}-{self.rng.randrange(10**6):06d}")
                h.util = self.rng.choice((0.02, 0.3, 0.6, 0.9, 0.97))
            if h.pod != before:  # a new label set starts from 0; an unchanged one keeps counting
                h.cost = h.idle = h.busy = h.ecc_corrected = h.ecc_uncorrected = 0.0
                h.energy = h.throttle_power = h.throttle_thermal = 0.0

    def advance(self, dt: float) -> None:
        for c in self.trained:
            self.trained[c] += TRAINING_SAMPLES_PER_S * dt
        for node in self.nodes:
            node.cost += node.price * dt / 3600
            node.savings += node.spot_saving * dt / 3600
            share = node.price / len(node.hpus)
            for h in node.hpus:
                c = share * dt / 3600
                h.cost += c
                h.idle += c * (1 - h.util)
                h.busy += h.util * dt
                if h.pod is None:
                    node.unallocated += c
                else:
                    node.namespaces[h.pod[0]] = node.namespaces.get(h.pod[0], 0.0) + c
                if self.rng.random() < 0.01:
                    h.ecc_corrected += self.rng.randrange(1, 20)
                if self.rng.random() < 0.0002:
                    h.ecc_uncorrected += 1
                h.energy += _power(h) * dt
                # busy devices near their power limit lose a little time to throttling
                h.throttle_power += dt * 0.05 * max(0.0, h.util - 0.9) / 0.1
                h.throttle_thermal += dt * 0.02 * max(0.0, h.util - 0.95) / 0.05

    def lines(self, ts: int) -> Iterator[str]:
        t = str(ts)
        for node in self.nodes:
            base = f'cluster="{node.cluster}",job="{JOB}",instance="{node.instance}",node="{node.name}"'
            yield f"up{{{base}}} 1 {t}"
            yield f"gaudi_node_cost_usd_total{{{base}}} {_fmt(node.cost)} {t}"
            yield f"gaudi_unallocated_cost_usd_total{{{base}}} {_fmt(node.unallocated)} {t}"
            if node.spot_saving:
                yield f"gaudi_spot_savings_usd_total{{{base}}} {_fmt(node.savings)} {t}"
            for ns, v in node.namespaces.items():
                yield f'gaudi_namespace_cost_usd_total{{{base},namespace="{ns}"}} {_fmt(v)} {t}'
            if self.all_series:
                yield from self._node_extras(node, base, ts)
            for h in node.hpus:
                ns, pod = h.pod or ("", "")
                dev = f'{base},hpu="{h.index}",uuid="{h.uuid}",namespace="{ns}",pod="{pod}",container=""'
                yield f"gaudi_hpu_up{{{dev}}} 1 {t}"
                yield f"gaudi_hpu_utilization_ratio{{{dev}}} {h.util} {t}"
                yield f"gaudi_hpu_cost_usd_total{{{dev}}} {_fmt(h.cost)} {t}"
                yield f"gaudi_hpu_idle_cost_usd_total{{{dev}}} {_fmt(h.idle)} {t}"
                yield f"gaudi_hpu_busy_seconds_total{{{dev}}} {_fmt(h.busy)} {t}"
                yield f'gaudi_hpu_ecc_errors_total{{{dev},type="corrected"}} {_fmt(h.ecc_corrected)} {t}'
                yield f'gaudi_hpu_ecc_errors_total{{{dev},type="uncorrected"}} {_fmt(h.ecc_uncorrected)} {t}'
                if self.all_series:
                    yield from _hpu_extras(h, dev, base, t)

    def _node_extras(self, node: _Node, base: str, ts: int) -> Iterator[str]:
        """What the dashboards read besides cost: prices, checkpoints and cost at risk, spot notices; on each
        cluster's first node a training job and the market watcher."""
        t = str(ts)
        spot = bool(node.spot_saving)
        paid = node.price - node.spot_saving
        where = f'region="us-east-1",zone="us-east-1{ZONES[int(node.name[-1]) % 3]}",instance_type="gaudi3.48xl"'
        yield (f'gaudi_node_price_usd_per_hour{{{base},source="{"aws_spot" if spot else "aws_on_demand"}",'
               f'{where},lifecycle="{"spot" if spot else "on-demand"}"}} {_fmt(paid)} {t}')
        yield f'gaudi_node_on_demand_price_usd_per_hour{{{base},source="aws_on_demand"}} {_fmt(node.price)} {t}'
        yield f"gaudi_cost_at_risk_usd{{{base}}} {_fmt(paid * (ts % 3600) / 3600)} {t}"
        yield f"gaudi_checkpoint_last_timestamp_seconds{{{base}}} {ts - ts % 3600} {t}"
        if spot:
            yield f"gaudi_spot_interruption_pending{{{base}}} 0 {t}"
            yield f"gaudi_spot_interruption_time_seconds{{{base}}} 0 {t}"
            yield f"gaudi_spot_rebalance_recommended{{{base}}} 0 {t}"
        if node.name.endswith("-0000"):  # one training job per cluster, scraped from its pod
            job = f'cluster="{node.cluster}",job="llama",namespace="ml-research",instance="llama-0:8000"'
            yield f"gaudi_training_samples_total{{{job}}} {_fmt(self.trained[node.cluster])} {t}"
            yield f"gaudi_training_tokens_total{{{job}}} {_fmt(self.trained[node.cluster] * 2048)} {t}"
        if node.name.endswith("-0000"):  # one market watcher per cluster
            for z in ZONES:
                yield (f'gaudi_spot_market_price_usd_per_hour{{{base},region="us-east-1",zone="us-east-1{z}",'
                       f'instance_type="gaudi3.48xl",product="Linux/UNIX",source="aws_spot"}} '
                       f"{_fmt(12.0 + ZONES.index(z))} {t}")
            yield (f'gaudi_on_demand_market_price_usd_per_hour{{{base},region="us-east-1",'
                   f'instance_type="gaudi3.48xl",source="aws_on_demand"}} 32.0 {t}')


def _hpu_extras(h: _Hpu, dev: str, base: str, t: str) -> Iterator[str]:
    """What the per-HPU panels and health alerts read: HBM, power, energy, temperature, throttling, NIC, HBM rows,
    PCIe, read errors."""
    yield f"gaudi_hpu_memory_used_bytes{{{dev}}} {int(HBM_BYTES * min(0.95, h.util + 0.02))} {t}"
    yield f"gaudi_hpu_memory_total_bytes{{{dev}}} {HBM_BYTES} {t}"
    yield f"gaudi_hpu_power_watts{{{dev}}} {_fmt(_power(h))} {t}"
    yield f"gaudi_hpu_power_limit_watts{{{dev}}} {POWER_LIMIT_W} {t}"
    yield f"gaudi_hpu_energy_joules_total{{{dev}}} {_fmt(h.energy)} {t}"
    yield f'gaudi_hpu_temperature_celsius{{{dev},sensor="aip"}} {_fmt(35.0 + 50.0 * h.util)} {t}'
    for reason, v in (("power", h.throttle_power), ("thermal", h.throttle_thermal)):
        yield f'gaudi_hpu_throttled{{{dev},reason="{reason}"}} {int(h.util > 0.95)} {t}'
        yield f'gaudi_hpu_throttle_seconds_total{{{dev},reason="{reason}"}} {_fmt(v)} {t}'
    yield f'gaudi_hpu_nic_ports{{{dev},state="up"}} 24 {t}'
    yield f'gaudi_hpu_nic_ports{{{dev},state="down"}} 0 {t}'
    yield f"gaudi_hpu_hbm_row_replacement_pending{{{dev}}} 0 {t}"
    for cause in ("multiple_single_bit", "double_bit"):
        yield f'gaudi_hpu_hbm_replaced_rows{{{dev},cause="{cause}"}} 0 {t}'
    yield f"gaudi_hpu_pcie_link_generation{{{dev}}} 5 {t}"
    yield f"gaudi_hpu_pcie_link_max_generation{{{dev}}} 5 {t}"
    yield f"gaudi_hpu_pcie_link_width{{{dev}}} 16 {t}"
    yield f"gaudi_hpu_pcie_link_max_width{{{dev}}} 16 {t}"
    # the exporter's own per-HPU counter: node labels and hpu only, 0 from the start (issue 14)
    yield f'gaudi_hpu_read_errors_total{{{base},hpu="{h.index}"}} {_fmt(h.read_errors)} {t}'


def generate(out: Path, nodes: int, hpus: int, days: float, step: int = 30, *,
             clusters: Sequence[str] = ("east", "west"), start: int = DEFAULT_START, chunk_hours: float = 24,
             restart_every_hours: float = 5 * 24, move_every_hours: float = 36, seed: int = 1,
             all_series: bool = False) -> FleetData:
    """Write ``days`` of scrapes every ``step`` seconds for ``nodes`` nodes per cluster, one file per chunk.

    Each node's exporter restarts about every ``restart_every_hours`` (counters from 0, a new instance) and its
    pods are rescheduled about every ``move_every_hours`` (pods move between namespaces). ``all_series`` adds what
    only the dashboards and health alerts read (the benchmark; the equivalence test needs the cost series only).
    """
    if step <= 0 or step > 150:
        raise ValueError("step must be 1..150 s: a 5-minute increment needs two samples in its window")
    rng = random.Random(seed)
    fleet = _Fleet(nodes, hpus, clusters, rng, all_series)
    for node in fleet.nodes:
        fleet._schedule(node)
    out.mkdir(parents=True, exist_ok=True)
    total = int(days * 86400 // step) + 1
    per_chunk = max(1, int(chunk_hours * 3600 // step))
    p_restart = step / (restart_every_hours * 3600)
    p_move = step / (move_every_hours * 3600)
    files: list[Path] = []
    seen: set[str] = set()
    samples = 0
    fh = None
    try:
        for i in range(total):
            if i % per_chunk == 0:
                if fh:
                    fh.write("# EOF\n")
                    fh.close()
                files.append(out / f"chunk-{len(files):04d}.om")
                fh = files[-1].open("w", encoding="ascii")
            ts = start + i * step
            if i:
                fleet.advance(step)
                for node in fleet.nodes:
                    if rng.random() < p_restart:
                        fleet._restart(node)
                        fleet._schedule(node)
                    elif rng.random() < p_move:
                        fleet._schedule(node)
            chunk = list(fleet.lines(ts))
            samples += len(chunk)
            seen.update(line.rsplit(" ", 2)[0] for line in chunk)
            fh.write("\n".join(chunk))
            fh.write("\n")
    finally:
        if fh:
            fh.write("# EOF\n")
            fh.close()
    return FleetData(files, start, start + (total - 1) * step, step, nodes, hpus, tuple(clusters), samples,
                     len(seen))
